"""Model-aware RL on differentiable cores: a closed-loop policy trained by backpropagation
through the simulated episode (pathwise / "analytic" policy gradients).

The task's functional core is the model. A deterministic policy network maps each
observation to an action, the episode is rolled out with ``jax.lax.scan`` over the core's
``step``, and the loss is minus the mean episode return over a vmapped batch of episodes
(random resets and per-episode noise come from keys, so the gradient is that of the expected
return). ``jax.grad`` differentiates the whole loop: through the physics (the cores' opt-in
transition gradients), the observations and the network at every step, so feedback is
credited exactly. Adam with global-norm clipping and a cosine learning-rate decay does the
rest. Actions are mapped into the bounds smoothly, a = mid + half * tanh(z) (as GRAPE does):
never clipped, so no gradient is lost at the bounds.

    from qsmgym.agents import model_aware as ma
    task = make_task("qsm/PhotonShaping-v0")
    params = task.default_params()
    train = ma.make_train(ma.ModelAwareConfig(iterations=500), task, params)
    result = jax.jit(train)(jax.random.PRNGKey(0), ma.default_hyper())
    result.history            # (iterations,) mean training return per gradient step
    result.eval_returns       # (eval_episodes,) returns of the final policy on fresh keys

Shapes follow ``make_train(config, task, params) -> train(key, hyper)`` as every agent here:
static sizes in the frozen ``ModelAwareConfig``, traced hyperparameters (learning rate,
gradient-norm limit, exploration noise) in ``hyper``, so
``jax.vmap(train, in_axes=(0, None))`` trains seeds in one XLA program.

Choices:
- Only continuous (Box) action spaces: a discrete or binary action has no pathwise
  derivative (``ValueError``; use PPO or CEM there).
- The policy computes in float32 (as PPO's); the physics keeps its own precision (float64 /
  complex128) and the gradient flows through the casts.
- ``action_noise`` (default 0) adds N(0, noise^2) to the pre-tanh output during training only
  (reparameterised, so the gradient stays pathwise); evaluation is deterministic.
- LSTM policies carry their memory through the episode (zero at reset); the MLP is
  memoryless (most observations here already hold the state and the time).
- Checkpoints are flax msgpack plus a JSON sidecar (config and spaces); pickles are refused.

References: pathwise gradients through differentiable simulators, e.g. Degrave et al.,
Front. Neurorobot. 13, 6 (2019); Mora et al., "PODS: Policy Optimization via Differentiable
Simulation", ICML 2021; in quantum control, Schäfer et al., "Control of stochastic quantum
dynamics by differentiable programming", Mach. Learn.: Sci. Technol. (2021).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from qsmgym.agents.distributions import PolicySpec
from qsmgym.agents.networks import _dense, orthogonal
from qsmgym.agents.ppo import _sidecar, read_msgpack_checkpoint, restore_params
from qsmgym.envs.core import FunctionalEnv

NETWORKS = ("mlp", "lstm")
HYPER_KEYS = ("learning_rate", "max_grad_norm", "action_noise")
CHECKPOINT_FORMAT = "qsmgym.model_aware/1"


# ----------------------------------------------------------------------------- configuration
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class ModelAwareConfig:
    """Static settings (shapes and sizes; changing one recompiles).

    Attributes:
        network: "mlp" or "lstm".
        hidden_sizes: widths of the tanh layers (LSTM: the input embedding uses the first,
            the head the rest).
        lstm_size: LSTM features.
        iterations: gradient steps.
        batch_episodes: episodes per gradient estimate (vmapped; 1 suffices for a
            deterministic task).
        eval_episodes: episodes of the final evaluation inside ``train``.
        n_steps: steps per episode; None (default): the task's fixed ``horizon``.
    """

    network: str = "mlp"
    hidden_sizes: tuple = (64, 64)
    lstm_size: int = 32
    iterations: int = 500
    batch_episodes: int = 4
    eval_episodes: int = 16
    n_steps: int | None = None

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got network={self.network!r}")
        sizes = self.hidden_sizes
        if not isinstance(sizes, (tuple, list)) or not sizes or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes
        ):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive ints, got {sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(s) for s in sizes))
        for name in ("lstm_size", "iterations", "batch_episodes", "eval_episodes"):
            _positive_int(name, getattr(self, name))
        if self.n_steps is not None:
            _positive_int("n_steps", self.n_steps)


def default_hyper() -> dict[str, jnp.ndarray]:
    """Traced hyperparameters: Adam's initial learning rate (cosine-decayed to 1% over the
    iterations), the global gradient-norm limit, and the training exploration noise (std of
    the pre-tanh perturbation; 0: none)."""
    return {
        "learning_rate": jnp.asarray(3e-3),
        "max_grad_norm": jnp.asarray(1.0),
        "action_noise": jnp.asarray(0.0),
    }


def _check_hyper(hyper: Any) -> dict:
    if not isinstance(hyper, dict) or set(hyper) != set(HYPER_KEYS):
        got = sorted(hyper) if isinstance(hyper, dict) else hyper
        raise ValueError(f"hyper must be a dict with keys {sorted(HYPER_KEYS)}, got {got!r}")
    return {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}


# ----------------------------------------------------------------------------------- policy
class DeterministicPolicy(nn.Module):
    """obs -> pre-tanh action z, one step for a batch (float32).

    ``carry, z = policy.apply(variables, carry, obs)`` with obs (B, obs_dim), z (B, action_dim);
    the carry is the LSTM's (c, h), each (B, lstm_size), or () for the MLP.

    Attributes:
        action_dim: flattened action size.
        network: "mlp" or "lstm".
        hidden_sizes, lstm_size: see ``ModelAwareConfig``.
    """

    action_dim: int
    network: str = "mlp"
    hidden_sizes: Sequence[int] = (64, 64)
    lstm_size: int = 32

    @nn.compact
    def __call__(self, carry, obs):
        x = jnp.asarray(obs, jnp.float32)
        sizes = tuple(self.hidden_sizes)
        if self.network == "lstm":
            x = nn.tanh(_dense(sizes[0], np.sqrt(2.0))(x))
            carry, x = nn.OptimizedLSTMCell(self.lstm_size, recurrent_kernel_init=orthogonal())(carry, x)
            sizes = sizes[1:]
        for size in sizes:
            x = nn.tanh(_dense(size, np.sqrt(2.0))(x))
        # small last layer: every episode starts near the middle of the action box
        return carry, _dense(self.action_dim, 0.01)(x)


def initial_carry(config: ModelAwareConfig, batch: int):
    """The zero carry of ``batch`` episodes: (c, h) each (batch, lstm_size), or () (MLP)."""
    if config.network == "lstm":
        zeros = jnp.zeros((batch, config.lstm_size), jnp.float32)
        return (zeros, zeros)
    return ()


def make_policy(config: ModelAwareConfig, spec: PolicySpec) -> DeterministicPolicy:
    """The policy network of ``config`` for the spaces ``spec``."""
    return DeterministicPolicy(spec.action_dim, config.network, config.hidden_sizes, config.lstm_size)


def policy_spec(task: FunctionalEnv, params: Any) -> PolicySpec:
    """The task's spaces as the policy sees them.

    Raises:
        ValueError: a non-Box action space (no pathwise gradient through a discrete choice),
            or a Box with infinite bounds.
    """
    space = task.action_space(params)
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(
            f"the model-aware agent needs a continuous (Box) action space to differentiate "
            f"through, got action_space={space} for task {task.id} (use PPO or CEM, or a "
            "continuous action_type where the task has one)"
        )
    return PolicySpec.from_task(task, params)  # ValueError on infinite bounds


def to_action(spec: PolicySpec, z: jnp.ndarray) -> jnp.ndarray:
    """Map a pre-tanh output (..., action_dim) into the bounds: mid + half * tanh(z), reshaped
    to (..., *action_shape). Smooth: never clipped, so the gradient is never cut."""
    low = jnp.asarray(spec.low, z.dtype)
    high = jnp.asarray(spec.high, z.dtype)
    action = 0.5 * (high + low) + 0.5 * (high - low) * jnp.tanh(z)
    return action.reshape(z.shape[:-1] + spec.action_shape)


# ---------------------------------------------------------------------------------- rollout
def _horizon(config: ModelAwareConfig, task: FunctionalEnv) -> int:
    n = config.n_steps if config.n_steps is not None else getattr(task, "horizon", None)
    if n is None:
        n = task.max_episode_steps
    if n is None:
        raise ValueError(f"config.n_steps must be given for task {task.id}, which has no fixed horizon")
    return _positive_int("n_steps", n)


def rollout_returns(task: FunctionalEnv, params: Any, cache: Any, spec: PolicySpec,
                    net: DeterministicPolicy, config: ModelAwareConfig, n_steps: int,
                    net_params: Any, key: jax.Array, n_episodes: int,
                    noise_std: jnp.ndarray | float = 0.0) -> jnp.ndarray:
    """Undiscounted returns (n_episodes,) of the policy, differentiable in ``net_params`` (and
    in ``params``) through the core. Rewards after an episode ends are not counted.

    ``noise_std`` > 0 perturbs the pre-tanh outputs with N(0, noise_std^2) (reparameterised).
    """
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.vmap(lambda k: task.reset(k, params, cache=cache))(jax.random.split(k_reset, n_episodes))
    # the LSTM carry takes the weights' precision (float32, or float64 in gradient checks)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(net_params))
    carry0 = jax.tree_util.tree_map(lambda c: c.astype(dtype), initial_carry(config, n_episodes))

    def body(carry, k):
        state, obs, rnn, done, ret = carry
        k_env, k_noise = jax.random.split(k)
        rnn, z = net.apply(net_params, rnn, obs.reshape(n_episodes, -1))
        z = z + noise_std * jax.random.normal(k_noise, z.shape, z.dtype)
        action = to_action(spec, z)
        obs, state, reward, term, trunc, _ = jax.vmap(
            lambda kk, s, a: task.step(kk, s, a, params, cache=cache)
        )(jax.random.split(k_env, n_episodes), state, action)
        ret = ret + jnp.where(done, 0.0, reward)
        return (state, obs, rnn, done | term | trunc, ret), None

    ret0 = jnp.zeros((n_episodes,), jnp.result_type(float))
    init = (state, obs, carry0, jnp.zeros((n_episodes,), bool), ret0)
    (_, _, _, _, returns), _ = jax.lax.scan(body, init, jax.random.split(k_steps, n_steps))
    return returns


def init_params(config: ModelAwareConfig, spec: PolicySpec, key: jax.Array):
    """Fresh network variables."""
    net = make_policy(config, spec)
    return net.init(key, initial_carry(config, 1), jnp.zeros((1, spec.obs_dim), jnp.float32))


# ---------------------------------------------------------------------------------- training
@struct.dataclass
class ModelAwareResult:
    params: Any  # final network variables
    history: jnp.ndarray  # (iterations,) mean training return of each gradient step's batch
    eval_returns: jnp.ndarray  # (eval_episodes,) deterministic returns of the final policy


def make_optimizer(config: ModelAwareConfig, hyper: dict) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam with a cosine decay to 1% of the rate (Adam at a fixed
    rate keeps oscillating near the optimum)."""
    schedule = optax.cosine_decay_schedule(hyper["learning_rate"], config.iterations, alpha=0.01)
    return optax.chain(optax.clip_by_global_norm(hyper["max_grad_norm"]), optax.adam(schedule))


def make_loss(config: ModelAwareConfig, task: FunctionalEnv, params: Any) -> Callable:
    """``loss(net_params, key, cache, noise_std) -> -mean return`` over ``batch_episodes``
    episodes (pure; what ``train`` differentiates)."""
    spec = policy_spec(task, params)
    net = make_policy(config, spec)
    n_steps = _horizon(config, task)

    def loss(net_params, key, cache, noise_std=0.0):
        returns = rollout_returns(task, params, cache, spec, net, config, n_steps, net_params, key,
                                  config.batch_episodes, noise_std)
        return -jnp.mean(returns)

    return loss


def make_train(config: ModelAwareConfig, task: FunctionalEnv, params: Any
               ) -> Callable[[jax.Array, dict], ModelAwareResult]:
    """Build ``train(key, hyper) -> ModelAwareResult`` for one task and params (jittable,
    vmappable over keys and hypers).

    Raises:
        TypeError: ``config`` is not a ``ModelAwareConfig``.
        ValueError: a non-Box action space (see ``policy_spec``), a task without horizon
            and no ``config.n_steps``.
    """
    if not isinstance(config, ModelAwareConfig):
        raise TypeError(f"config must be a ModelAwareConfig, got config={config!r}")
    spec = policy_spec(task, params)
    net = make_policy(config, spec)
    n_steps = _horizon(config, task)
    loss = make_loss(config, task, params)

    def train(key: jax.Array, hyper: dict) -> ModelAwareResult:
        hyper = _check_hyper(hyper)
        cache = task.precompute(params)
        k_init, k_train, k_eval = jax.random.split(key, 3)
        net_params = init_params(config, spec, k_init)
        opt = make_optimizer(config, hyper)
        value_and_grad = jax.value_and_grad(loss)

        def step(carry, k):
            net_params, opt_state = carry
            value, grad = value_and_grad(net_params, k, cache, hyper["action_noise"])
            updates, opt_state = opt.update(grad, opt_state, net_params)
            return (optax.apply_updates(net_params, updates), opt_state), -value

        (net_params, _), history = jax.lax.scan(
            step, (net_params, opt.init(net_params)), jax.random.split(k_train, config.iterations))
        eval_returns = rollout_returns(task, params, cache, spec, net, config, n_steps, net_params,
                                       k_eval, config.eval_episodes)
        return ModelAwareResult(net_params, history, eval_returns)

    return train


def evaluate(task: FunctionalEnv, params: Any, network_params: Any, config: ModelAwareConfig,
             key: jax.Array, num_episodes: int) -> jnp.ndarray:
    """Undiscounted returns (num_episodes,) of the deterministic policy on fresh episodes
    (jittable; close over the static arguments). ``params=None``: the task's defaults."""
    params = task.default_params() if params is None else params
    num_episodes = _positive_int("num_episodes", num_episodes)
    spec = policy_spec(task, params)
    return rollout_returns(task, params, task.precompute(params), spec, make_policy(config, spec),
                           config, _horizon(config, task), network_params, key, num_episodes)


def train_model_aware(task_or_id: FunctionalEnv | str, params: Any = None,
                      config: ModelAwareConfig | None = None, seed: int = 0,
                      hyper: dict | None = None) -> ModelAwareResult:
    """Convenience: jit and run once; returns the ``ModelAwareResult`` as numpy arrays.

    Args:
        task_or_id: a functional core or a registered id (built with default arguments).
        params: task params (default: ``task.default_params()``).
        config: ``ModelAwareConfig`` (default: ``ModelAwareConfig()``).
        seed: training seed. hyper: traced hyperparameters (default: ``default_hyper()``).
    """
    if isinstance(task_or_id, str):
        from qsmgym.envs.registry import make_task

        task = make_task(task_or_id)
    else:
        task = task_or_id
    params = task.default_params() if params is None else params
    config = ModelAwareConfig() if config is None else config
    hyper = default_hyper() if hyper is None else hyper
    train = jax.jit(make_train(config, task, params))
    return jax.tree_util.tree_map(np.asarray, train(jax.random.PRNGKey(seed), hyper))


# ------------------------------------------------------------------------------- checkpoints
class Checkpoint(NamedTuple):
    params: Any
    config: ModelAwareConfig
    spec: PolicySpec




def _template(config: ModelAwareConfig, spec: PolicySpec):
    return jax.eval_shape(lambda: init_params(config, spec, jax.random.PRNGKey(0)))


def save_checkpoint(path, network_params: Any, config: ModelAwareConfig, spec: PolicySpec) -> Path:
    """Write the policy variables (flax msgpack) to ``path`` and ``path + ".json"`` (format
    tag, config, spaces). Returns the msgpack path."""
    if not isinstance(config, ModelAwareConfig):
        raise TypeError(f"config must be a ModelAwareConfig, got config={config!r}")
    if not isinstance(spec, PolicySpec):
        raise TypeError(f"spec must be a PolicySpec, got spec={spec!r}")
    path = Path(path)
    payload = {"params": jax.tree_util.tree_map(np.asarray, network_params)}
    path.write_bytes(flax.serialization.msgpack_serialize(payload))
    meta = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "spec": spec.to_json()}
    _sidecar(path).write_text(json.dumps(meta, indent=2))
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; never unpickles anything.

    Raises:
        FileNotFoundError: the file or its JSON sidecar is missing.
        ValueError: not a msgpack checkpoint of this format (e.g. a pickle), or arrays whose
            structure or shapes differ from the network the config describes.
    """
    path = Path(path)
    state, meta = read_msgpack_checkpoint(path, CHECKPOINT_FORMAT)
    cfg = dict(meta["config"])
    cfg["hidden_sizes"] = tuple(cfg["hidden_sizes"])
    config = ModelAwareConfig(**cfg)
    spec = PolicySpec.from_json(meta["spec"])
    return Checkpoint(restore_params(path, state, _template(config, spec), "model-aware"), config, spec)
