"""Proximal policy optimisation (PPO, Schulman et al. 2017), jitted end to end (PureJaxRL shape).

``make_train(config, task, params)`` returns ``train(key, hyper) -> PPOResult``: static
settings (sizes, network, switches) in the frozen ``PPOConfig``, traced hyperparameters
(learning rate, gamma, lambda, clip, coefficients, gradient-norm limit) in the dict ``hyper``,
so ``jax.vmap(jax.vmap(train, (None, 0)), (0, None))`` sweeps seeds x hyperparameters in one
XLA program. The whole loop (rollouts through ``task.step_autoreset``, GAE, epochs of
minibatch updates) is one ``jax.lax.scan`` over updates.

    from qsmgym.agents import ppo
    task = make_task("qsm/TimeDependentEstimation-v0", n_bins=10, total_time=3.0)
    result = ppo.train_ppo(task, config=ppo.PPOConfig(total_timesteps=50_000), seed=0)
    result.metrics["episode_return"]            # (num_updates,) mean return of finished episodes
    returns = ppo.evaluate(task, task.default_params(), result.params, config, key, 16,
                           obs_rms=result.obs_rms)

Choices (each a known trap):
- Termination vs truncation. Same-step auto-reset returns the next episode's first
  observation, so on a truncated step the value target bootstraps from V(info["final_obs"]),
  the last observation of the finished episode; on a terminated step it does not bootstrap;
  the GAE recursion never crosses an episode end (``gae``).
- Box actions: Gaussian sample then clip to the bounds (log-prob of the unclipped sample, as
  CleanRL); Discrete: masked categorical; MultiBinary: Bernoullis with ineffective flags left
  out of log-prob and entropy. See ``qsmgym.agents.distributions``.
- LSTM: the carry is zeroed at the first step of every episode; each rollout keeps its initial
  carry so updates recompute the sequences; minibatches split over envs, never over time.
- Precision: the policy, values, advantages and losses are float32 (observations and rewards
  are cast); the env physics keeps its own precision.
- Observation normalisation: running mean/var (parallel Welford) updated on every observation
  the policy sees, clipped to +-obs_clip; frozen at evaluation (``PPOResult.obs_rms``).
  Reward scaling: rewards divided by the running std of the discounted return (the return
  accumulator restarts at every episode end); episode-return metrics are always unscaled.
- Checkpoints are flax msgpack plus a JSON sidecar (config and spaces); pickles are refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from qsmgym.agents import distributions as dist
from qsmgym.agents.distributions import PolicySpec
from qsmgym.agents.networks import NETWORKS, ActorCritic, initial_carry
from qsmgym.envs.core import FunctionalEnv

CHECKPOINT_FORMAT = "qsmgym.ppo/1"


# ----------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Static PPO settings (shapes and switches; changing one recompiles).

    Attributes:
        num_envs: parallel envs (vmapped functional cores).
        num_steps: rollout length per env per update.
        total_timesteps: env steps in all; updates = total_timesteps // (num_envs * num_steps).
        update_epochs: passes over each rollout.
        num_minibatches: minibatches per epoch (MLP: split over env steps; LSTM: over envs).
        network: "mlp" or "lstm".
        hidden_sizes: tanh layer widths (see ``networks.ActorCritic``).
        lstm_size: LSTM features.
        normalize_obs: running mean/var observation normalisation.
        normalize_reward: scale rewards by the running std of the discounted return.
        normalize_advantages: per-minibatch advantage standardisation.
        clip_value_loss: PPO2's clipped value loss (clip range = clip_eps).
        anneal_lr: linear learning-rate decay to 0 over the updates.
        init_log_std: initial log-std of the Box Gaussian, in units of the half-range.
        obs_clip: normalised observations are clipped to [-obs_clip, obs_clip].
    """

    num_envs: int = 16
    num_steps: int = 64
    total_timesteps: int = 100_000
    update_epochs: int = 4
    num_minibatches: int = 4
    network: str = "mlp"
    hidden_sizes: tuple = (64, 64)
    lstm_size: int = 64
    normalize_obs: bool = True
    normalize_reward: bool = False
    normalize_advantages: bool = True
    clip_value_loss: bool = True
    anneal_lr: bool = True
    init_log_std: float = -0.5
    obs_clip: float = 10.0

    def __post_init__(self):
        for name in ("num_envs", "num_steps", "total_timesteps", "update_epochs",
                     "num_minibatches", "lstm_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got network={self.network!r}")
        sizes = self.hidden_sizes
        if not isinstance(sizes, (tuple, list)) or not sizes or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes
        ):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive ints, got {sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(s) for s in sizes))
        for name in ("normalize_obs", "normalize_reward", "normalize_advantages",
                     "clip_value_loss", "anneal_lr"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {name}={getattr(self, name)!r}")
        if not (isinstance(self.obs_clip, (int, float)) and self.obs_clip > 0):
            raise ValueError(f"obs_clip must be > 0, got obs_clip={self.obs_clip!r}")
        batch = self.num_envs * self.num_steps
        if self.total_timesteps < batch:
            raise ValueError(
                f"total_timesteps must be >= num_envs * num_steps = {batch}, "
                f"got total_timesteps={self.total_timesteps}"
            )
        split = self.num_envs if self.network == "lstm" else batch
        if split % self.num_minibatches:
            what = "num_envs" if self.network == "lstm" else "num_envs * num_steps"
            raise ValueError(
                f"num_minibatches must divide {what} = {split} (network={self.network!r}), "
                f"got num_minibatches={self.num_minibatches}"
            )

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)


HYPER_KEYS = ("learning_rate", "gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm")


def default_hyper() -> dict[str, jnp.ndarray]:
    """Traced hyperparameters (CleanRL's PPO defaults, entropy bonus 0.01)."""
    return {
        "learning_rate": jnp.asarray(3e-4),
        "gamma": jnp.asarray(0.99),
        "gae_lambda": jnp.asarray(0.95),
        "clip_eps": jnp.asarray(0.2),
        "ent_coef": jnp.asarray(0.01),
        "vf_coef": jnp.asarray(0.5),
        "max_grad_norm": jnp.asarray(0.5),
    }


def _check_hyper(hyper: dict) -> dict:
    if not isinstance(hyper, dict) or set(hyper) != set(HYPER_KEYS):
        got = sorted(hyper) if isinstance(hyper, dict) else hyper
        raise ValueError(f"hyper must be a dict with keys {sorted(HYPER_KEYS)}, got {got!r}")
    return {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}


def make_network(config: PPOConfig, spec: PolicySpec) -> ActorCritic:
    """The actor-critic of ``config`` for the spaces ``spec``."""
    return ActorCritic(spec=spec, network=config.network, hidden_sizes=config.hidden_sizes,
                       lstm_size=config.lstm_size, init_log_std=float(config.init_log_std))


# ------------------------------------------------------------------------ pure building blocks
@struct.dataclass
class RunningMeanStd:
    """Running mean and (population) variance of a stream of batches, and their count."""

    mean: jnp.ndarray
    var: jnp.ndarray
    count: jnp.ndarray

    @classmethod
    def create(cls, shape: tuple = ()) -> "RunningMeanStd":
        # count starts at 1e-4 (as gymnasium's wrappers) so the first batch dominates
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32),
                   jnp.asarray(1e-4, jnp.float32))

    def update(self, x: jnp.ndarray) -> "RunningMeanStd":
        """Merge a batch x (batch, *shape) (Chan et al.'s parallel form of Welford's update)."""
        x = jnp.asarray(x, jnp.float32)
        n = jnp.asarray(x.shape[0], jnp.float32)
        b_mean, b_var = x.mean(axis=0), x.var(axis=0)
        delta = b_mean - self.mean
        total = self.count + n
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        return RunningMeanStd(mean, m2 / total, total)

    def normalize(self, x: jnp.ndarray, clip: float) -> jnp.ndarray:
        z = (jnp.asarray(x, jnp.float32) - self.mean) / jnp.sqrt(self.var + 1e-8)
        return jnp.clip(z, -clip, clip)


def gae(rewards, values, next_values, terminated, done, gamma, lam):
    """Generalised advantage estimation over a time-major rollout (T, ...).

    delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
    A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}

    Args:
        rewards, values: (T, ...).
        next_values: (T, ...) value of the observation that follows step t in the same
            episode: V(obs_{t+1}) when the episode goes on, V(final_obs) on a truncated step
            (the caller swaps it in); ignored on a terminated step.
        terminated: (T, ...) bool, the episode ended by the task (no bootstrap).
        done: (T, ...) bool, terminated or truncated (the recursion stops there).
        gamma, lam: discount and GAE lambda (scalars, may be traced).

    Returns:
        (advantages, returns) with returns = advantages + values (the value targets).
    """
    not_term = 1.0 - jnp.asarray(terminated, values.dtype)
    not_done = 1.0 - jnp.asarray(done, values.dtype)
    deltas = rewards + gamma * not_term * next_values - values

    def body(next_adv, inputs):
        delta, cont = inputs
        adv = delta + gamma * lam * cont * next_adv
        return adv, adv

    _, adv = jax.lax.scan(body, jnp.zeros_like(values[0]), (deltas, not_done), reverse=True)
    return adv, adv + values


def bootstrap_values(values, last_value, final_values, terminated, done):
    """The ``next_values`` of ``gae`` from a rollout with same-step auto-reset.

    Args:
        values: (T, ...) V(obs_t). last_value: (...) V of the observation after the rollout.
        final_values: (T, ...) V(info["final_obs"]_t), the last observation of the episode
            that step t ended (equal to obs_{t+1} when it did not end).
        terminated, done: (T, ...) bool.

    Returns:
        (T, ...): V(obs_{t+1}) within an episode, V(final_obs_t) on truncation, 0 on
        termination (never the value of the next episode's first observation).
    """
    following = jnp.concatenate([values[1:], last_value[None]], axis=0)
    truncated = jnp.logical_and(done, jnp.logical_not(terminated))
    next_values = jnp.where(truncated, final_values, following)
    return jnp.where(terminated, jnp.zeros_like(next_values), next_values)


def ppo_loss(log_prob, old_log_prob, advantages, values, old_values, returns, entropy,
             clip_eps, vf_coef, ent_coef, clip_value_loss: bool = True):
    """The PPO clipped surrogate with value loss and entropy bonus (means over the batch).

    L = -mean(min(rho A, clip(rho, 1-eps, 1+eps) A)) + vf_coef * L_V - ent_coef * mean(H),
    rho = exp(log_prob - old_log_prob), L_V = 0.5 mean(max((V - R)^2, (V_clip - R)^2)) with
    V_clip = V_old + clip(V - V_old, -eps, eps) (or 0.5 mean((V - R)^2) unclipped).

    Returns:
        (total loss, dict of policy_loss, value_loss, entropy, approx_kl, clip_fraction)
        where approx_kl = mean((rho - 1) - log rho) (Schulman's k3 estimator).
    """
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    policy_loss = -surrogate.mean()
    if clip_value_loss:
        clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        value_loss = 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * ((values - returns) ** 2).mean()
    mean_entropy = entropy.mean()
    total = policy_loss + vf_coef * value_loss - ent_coef * mean_entropy
    aux = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clip_fraction": (jnp.abs(ratio - 1.0) > clip_eps).mean(),
    }
    return total, aux


def make_optimizer(config: PPOConfig, hyper: dict) -> optax.GradientTransformation:
    """Adam (eps 1e-5) after global-norm clipping; both limits may be traced values."""
    lr = jnp.asarray(hyper["learning_rate"], jnp.float32)
    per_update = config.update_epochs * config.num_minibatches
    if config.anneal_lr:
        def schedule(count):
            frac = 1.0 - (count // per_update).astype(jnp.float32) / config.num_updates
            return lr * frac
    else:
        def schedule(count):
            return lr
    return optax.chain(
        optax.clip_by_global_norm(jnp.asarray(hyper["max_grad_norm"], jnp.float32)),
        optax.adam(schedule, eps=1e-5),
    )


# ---------------------------------------------------------------------------------- training
class Transition(NamedTuple):
    obs: jnp.ndarray  # (B, obs_dim) float32, as the policy saw it (normalised)
    first: jnp.ndarray  # (B,) bool: obs is an episode's first
    raw_action: jnp.ndarray
    log_prob: jnp.ndarray
    value: jnp.ndarray
    mask: jnp.ndarray
    reward: jnp.ndarray  # scaled if normalize_reward
    terminated: jnp.ndarray
    done: jnp.ndarray
    final_value: jnp.ndarray  # V(final_obs): the bootstrap of a truncated step
    episode_return: jnp.ndarray  # unscaled return of the episode ending here (if done)
    episode_length: jnp.ndarray


class _Runner(NamedTuple):
    env_state: Any
    obs: jnp.ndarray  # raw, flattened, float32
    first: jnp.ndarray
    carry: Any
    obs_rms: RunningMeanStd
    ret_rms: RunningMeanStd
    discounted: jnp.ndarray
    ep_return: jnp.ndarray
    ep_length: jnp.ndarray


@struct.dataclass
class PPOResult:
    """What ``train`` returns (leading vmap axes, if any, on every leaf).

    params: final flax variables of the actor-critic. obs_rms: observation statistics
    (use at evaluation when ``normalize_obs``). metrics: dict of (num_updates,) arrays:
    episode_return (mean unscaled return of episodes finished in the update's rollout, NaN
    if none), episode_length, episodes, and the loss terms (means over epochs and
    minibatches): loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction.
    """

    params: Any
    obs_rms: RunningMeanStd
    metrics: dict


def _first(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_train(config: PPOConfig, task: FunctionalEnv, params: Any):
    """Build the jittable ``train(key, hyper) -> PPOResult`` for ``task`` at ``params``.

    Raises:
        TypeError / ValueError: unsupported action space (see ``PolicySpec.from_task``).
    """
    if not isinstance(config, PPOConfig):
        raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
    spec = PolicySpec.from_task(task, params)
    net = make_network(config, spec)
    cache = task.precompute(params)
    n_envs, n_steps = config.num_envs, config.num_steps

    v_reset = jax.vmap(lambda k: task.reset(k, params, cache=cache))
    v_step = jax.vmap(lambda k, s, a: task.step_autoreset(k, s, a, params, cache=cache))
    v_mask = jax.vmap(lambda s: dist.mask_of(spec, task, s))
    v_to_env = jax.vmap(lambda r: dist.to_env_action(spec, r))

    def flat(obs):
        return jnp.asarray(obs, jnp.float32).reshape(obs.shape[0], -1)

    def policy_input(rms, obs):
        return rms.normalize(obs, config.obs_clip) if config.normalize_obs else obs

    def loss_fn(net_params, mb, hyper):
        _, pi, value = net.apply(net_params, mb["carry"], mb["obs"], mb["first"])
        log_prob = dist.log_prob(spec, pi, mb["raw_action"], mb["mask"])
        entropy = dist.entropy(spec, pi, mb["mask"])
        adv = mb["advantages"]
        if config.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return ppo_loss(log_prob, mb["log_prob"], adv, value, mb["value"], mb["returns"], entropy,
                        hyper["clip_eps"], hyper["vf_coef"], hyper["ent_coef"], config.clip_value_loss)

    def train(key, hyper):
        hyper = _check_hyper(hyper)
        tx = make_optimizer(config, hyper)
        key, k_init, k_reset = jax.random.split(key, 3)
        carry0 = initial_carry(config.network, config.lstm_size, n_envs)
        net_params = net.init(k_init, carry0, jnp.zeros((1, n_envs, spec.obs_dim), jnp.float32),
                              jnp.zeros((1, n_envs), bool))
        opt_state = tx.init(net_params)
        obs, env_state = v_reset(jax.random.split(k_reset, n_envs))
        obs = flat(obs)
        obs_rms = RunningMeanStd.create((spec.obs_dim,))
        if config.normalize_obs:
            obs_rms = obs_rms.update(obs)
        zeros = jnp.zeros((n_envs,), jnp.float32)
        runner = _Runner(env_state, obs, jnp.ones((n_envs,), bool), carry0, obs_rms,
                         RunningMeanStd.create(), zeros, zeros, jnp.zeros((n_envs,), jnp.int32))

        def env_step(state, key):
            net_params, r = state
            k_act, k_env = jax.random.split(key)
            x = policy_input(r.obs_rms, r.obs)
            mask = v_mask(r.env_state)
            carry, pi, value = net.apply(net_params, r.carry, x[None], r.first[None])
            pi, value = _first(pi), value[0]
            raw = dist.sample(spec, k_act, pi, mask)
            log_prob = dist.log_prob(spec, pi, raw, mask)
            next_obs, env_state, reward, term, trunc, info = v_step(
                jax.random.split(k_env, n_envs), r.env_state, v_to_env(raw))
            next_obs, final_obs = flat(next_obs), flat(info["final_obs"])
            done = jnp.logical_or(term, trunc)
            obs_rms = r.obs_rms.update(next_obs) if config.normalize_obs else r.obs_rms
            _, _, final_value = net.apply(net_params, carry, policy_input(obs_rms, final_obs)[None],
                                          jnp.zeros((1, n_envs), bool))
            reward = jnp.asarray(reward, jnp.float32)
            discounted = r.discounted * hyper["gamma"] + reward
            ret_rms = r.ret_rms.update(discounted) if config.normalize_reward else r.ret_rms
            scaled = reward / jnp.sqrt(ret_rms.var + 1e-8) if config.normalize_reward else reward
            ep_return, ep_length = r.ep_return + reward, r.ep_length + 1
            transition = Transition(x, r.first, raw, log_prob, value, mask, scaled, term, done,
                                    final_value[0], ep_return, ep_length)
            r = _Runner(env_state, next_obs, done, carry, obs_rms, ret_rms,
                        jnp.where(done, 0.0, discounted), jnp.where(done, 0.0, ep_return),
                        jnp.where(done, 0, ep_length))
            return (net_params, r), transition

        def update_step(state, key):
            net_params, opt_state, runner = state
            k_roll, k_epochs = jax.random.split(key)
            init_carry = runner.carry
            (_, runner), traj = jax.lax.scan(env_step, (net_params, runner),
                                             jax.random.split(k_roll, n_steps))
            _, _, last_value = net.apply(net_params, runner.carry,
                                         policy_input(runner.obs_rms, runner.obs)[None], runner.first[None])
            next_values = bootstrap_values(traj.value, last_value[0], traj.final_value,
                                           traj.terminated, traj.done)
            advantages, returns = gae(traj.reward, traj.value, next_values, traj.terminated, traj.done,
                                      hyper["gamma"], hyper["gae_lambda"])
            batch = {"obs": traj.obs, "first": traj.first, "raw_action": traj.raw_action,
                     "log_prob": traj.log_prob, "value": traj.value, "mask": traj.mask,
                     "advantages": advantages, "returns": returns}
            if config.network == "mlp":  # every step is independent: one long "sequence" axis
                batch = jax.tree_util.tree_map(lambda x: x.reshape((1, -1) + x.shape[2:]), batch)
                carries = ()
            else:
                carries = init_carry
            n_split = batch["obs"].shape[1]
            mb_size = n_split // config.num_minibatches

            def epoch(state, key):
                perm = jax.random.permutation(key, n_split)

                def split(x, axis):
                    x = jnp.take(x, perm, axis=axis)
                    shape = x.shape[:axis] + (config.num_minibatches, mb_size) + x.shape[axis + 1:]
                    return jnp.moveaxis(x.reshape(shape), axis, 0)

                mbs = jax.tree_util.tree_map(lambda x: split(x, 1), batch)
                mbs["carry"] = jax.tree_util.tree_map(lambda x: split(x, 0), carries)

                def minibatch(state, mb):
                    net_params, opt_state = state
                    grads, aux = jax.grad(loss_fn, has_aux=True)(net_params, mb, hyper)
                    updates, opt_state = tx.update(grads, opt_state, net_params)
                    return (optax.apply_updates(net_params, updates), opt_state), aux

                return jax.lax.scan(minibatch, state, mbs)

            (net_params, opt_state), aux = jax.lax.scan(
                epoch, (net_params, opt_state), jax.random.split(k_epochs, config.update_epochs))
            episodes = traj.done.sum()
            denom = jnp.maximum(episodes, 1)
            nan = jnp.asarray(jnp.nan, jnp.float32)
            metrics = {k: v.mean() for k, v in aux.items()}
            metrics["loss"] = (metrics["policy_loss"] + hyper["vf_coef"] * metrics["value_loss"]
                               - hyper["ent_coef"] * metrics["entropy"])
            metrics["episodes"] = episodes
            metrics["episode_return"] = jnp.where(
                episodes > 0, jnp.where(traj.done, traj.episode_return, 0.0).sum() / denom, nan)
            metrics["episode_length"] = jnp.where(
                episodes > 0, jnp.where(traj.done, traj.episode_length, 0).sum() / denom, nan)
            return (net_params, opt_state, runner), metrics

        (net_params, _, runner), metrics = jax.lax.scan(
            update_step, (net_params, opt_state, runner), jax.random.split(key, config.num_updates))
        return PPOResult(net_params, runner.obs_rms, metrics)

    return train


# -------------------------------------------------------------------------------- evaluation
def evaluate(task: FunctionalEnv, params: Any, network_params: Any, config: PPOConfig,
             key: jax.Array, num_episodes: int, *, obs_rms: RunningMeanStd | None = None,
             max_steps: int | None = None) -> jnp.ndarray:
    """Undiscounted returns of the deterministic policy (mean / argmax) over fresh episodes.

    Args:
        task, params: the task (``params=None``: its defaults).
        network_params: trained variables (``PPOResult.params``).
        config: the training config (network shape, normalize_obs).
        key: evaluation key (use seeds not seen in training).
        num_episodes: episodes, run in parallel.
        obs_rms: observation statistics (required when ``config.normalize_obs``).
        max_steps: steps to simulate (default: ``task.horizon``, else ``max_episode_steps``);
            rewards after an episode ends are not counted.

    Returns:
        (num_episodes,) float32 returns. Jittable (close over the static arguments).
    """
    params = task.default_params() if params is None else params
    if config.normalize_obs and obs_rms is None:
        raise ValueError("obs_rms must be given when config.normalize_obs is True (PPOResult.obs_rms)")
    if max_steps is None:
        max_steps = getattr(task, "horizon", None) or task.max_episode_steps
    if max_steps is None or int(max_steps) < 1:
        raise ValueError(f"max_steps must be given for a task without horizon, got max_steps={max_steps!r}")
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, (int, np.integer)) or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive int, got num_episodes={num_episodes!r}")
    spec = PolicySpec.from_task(task, params)
    net = make_network(config, spec)
    cache = task.precompute(params)
    n = int(num_episodes)
    k_reset, k_steps = jax.random.split(key)
    obs, env_state = jax.vmap(lambda k: task.reset(k, params, cache=cache))(jax.random.split(k_reset, n))
    no_reset = jnp.zeros((1, n), bool)

    def body(carry, k):
        env_state, obs, rnn, done, ret = carry
        x = jnp.asarray(obs, jnp.float32).reshape(n, -1)
        if config.normalize_obs:
            x = obs_rms.normalize(x, config.obs_clip)
        rnn, pi, _ = net.apply(network_params, rnn, x[None], no_reset)
        mask = jax.vmap(lambda s: dist.mask_of(spec, task, s))(env_state)
        action = jax.vmap(lambda r: dist.to_env_action(spec, r))(dist.mode(spec, _first(pi), mask))
        obs, env_state, reward, term, trunc, _ = jax.vmap(
            lambda kk, s, a: task.step(kk, s, a, params, cache=cache))(jax.random.split(k, n), env_state, action)
        ret = ret + jnp.where(done, 0.0, jnp.asarray(reward, jnp.float32))
        return (env_state, obs, rnn, done | term | trunc, ret), None

    init = (env_state, obs, initial_carry(config.network, config.lstm_size, n), jnp.zeros((n,), bool),
            jnp.zeros((n,), jnp.float32))
    (_, _, _, _, returns), _ = jax.lax.scan(body, init, jax.random.split(k_steps, int(max_steps)))
    return returns


# ------------------------------------------------------------------------------- checkpoints
class Checkpoint(NamedTuple):
    params: Any
    config: PPOConfig
    spec: PolicySpec
    obs_rms: RunningMeanStd | None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _template(config: PPOConfig, spec: PolicySpec):
    net = make_network(config, spec)
    carry = initial_carry(config.network, config.lstm_size, 1)
    return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), carry, jnp.zeros((1, 1, spec.obs_dim)),
                                           jnp.zeros((1, 1), bool)))


def save_checkpoint(path, network_params: Any, config: PPOConfig, spec: PolicySpec,
                    obs_rms: RunningMeanStd | None = None) -> Path:
    """Write the network variables (flax msgpack) to ``path`` and ``path + ".json"``
    (format tag, config, spaces). ``obs_rms``: the observation statistics, if used.

    Returns the msgpack path.
    """
    path = Path(path)
    payload = {"params": jax.tree_util.tree_map(np.asarray, network_params)}
    if obs_rms is not None:
        payload["obs_rms"] = {"mean": np.asarray(obs_rms.mean), "var": np.asarray(obs_rms.var),
                              "count": np.asarray(obs_rms.count)}
    path.write_bytes(flax.serialization.msgpack_serialize(payload))
    meta = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "spec": spec.to_json(),
            "has_obs_rms": obs_rms is not None}
    _sidecar(path).write_text(json.dumps(meta, indent=2))
    return path


def read_msgpack_checkpoint(path: Path, fmt: str) -> tuple[Any, dict]:
    """(msgpack state, JSON sidecar) of a checkpoint file and ``<file>.json``; never unpickles.

    Shared by every agent's ``load_checkpoint`` (PPO, model-aware); the caller checks the
    state's structure against its own network.

    Raises:
        FileNotFoundError: the JSON sidecar is missing.
        ValueError: a pickle, not msgpack, or a sidecar whose format is not ``fmt``.
    """
    raw = path.read_bytes()
    meta_path = _sidecar(path)
    if not meta_path.exists():
        raise FileNotFoundError(f"checkpoint sidecar {meta_path} is missing (written by save_checkpoint)")
    if raw[:1] == b"\x80" and raw[-1:] == b".":
        raise ValueError(f"{path} looks like a Python pickle; checkpoints are flax msgpack only "
                         "and pickles are never loaded")
    try:
        state = flax.serialization.msgpack_restore(raw)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"{path} is not a flax msgpack checkpoint ({type(exc).__name__}: {exc})") from exc
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != fmt:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {fmt!r}")
    return state, meta


def restore_params(path: Path, state, template, kind: str):
    """``state["params"]`` from a msgpack checkpoint, checked leaf by leaf against ``template``
    (the network the checkpoint's config describes) and cast to its dtypes.

    Raises:
        ValueError: no "params" entry ("not a ``kind`` checkpoint"), or a structure or shapes
            that differ from the template's.
    """
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(f"{path} holds no 'params' entry; not a {kind} checkpoint")
    got = jax.tree_util.tree_map(lambda x: np.shape(x), state["params"])
    want = jax.tree_util.tree_map(lambda x: tuple(x.shape), template)
    if jax.tree_util.tree_structure(state["params"]) != jax.tree_util.tree_structure(template) or got != want:
        raise ValueError(f"{path}: parameter structure/shapes do not match the network of its config "
                         f"(got {got}, expected {want})")
    return jax.tree_util.tree_map(lambda x, t: jnp.asarray(x, t.dtype), state["params"], template)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; never unpickles anything.

    Raises:
        FileNotFoundError: the file or its JSON sidecar is missing.
        ValueError: not a msgpack checkpoint of this format (e.g. a pickle), or arrays whose
            structure or shapes differ from the network the config describes.
    """
    path = Path(path)
    state, meta = read_msgpack_checkpoint(path, CHECKPOINT_FORMAT)
    config = PPOConfig(**meta["config"])
    spec = PolicySpec.from_json(meta["spec"])
    params = restore_params(path, state, _template(config, spec), "PPO")
    obs_rms = None
    if meta.get("has_obs_rms"):
        s = state["obs_rms"]
        obs_rms = RunningMeanStd(jnp.asarray(s["mean"], jnp.float32), jnp.asarray(s["var"], jnp.float32),
                                 jnp.asarray(s["count"], jnp.float32))
    return Checkpoint(params, config, spec, obs_rms)


# ------------------------------------------------------------------------------- convenience
def train_ppo(task_or_id: FunctionalEnv | str, params: Any = None, config: PPOConfig | None = None,
              seed: int = 0, hyper: dict | None = None) -> PPOResult:
    """Jit and run PPO once; returns the ``PPOResult`` as numpy arrays.

    Args:
        task_or_id: a functional core or a registered id (built with default arguments).
        params: task params (default: ``task.default_params()``).
        config: ``PPOConfig`` (default: ``PPOConfig()``).
        seed: training seed. hyper: traced hyperparameters (default: ``default_hyper()``).
    """
    if isinstance(task_or_id, str):
        from qsmgym.envs.registry import make_task

        task = make_task(task_or_id)
    else:
        task = task_or_id
    params = task.default_params() if params is None else params
    config = PPOConfig() if config is None else config
    hyper = default_hyper() if hyper is None else hyper
    train = jax.jit(make_train(config, task, params))
    return jax.tree_util.tree_map(np.asarray, train(jax.random.PRNGKey(seed), hyper))
