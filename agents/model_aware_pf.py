"""Model-aware RL with a differentiable particle filter, for ``qsm/BayesianMagnetometry-v0``.

The policy picks the Ramsey evolution time tau (and optionally the readout phase) from the
particle filter's posterior summary; it is trained by Adam on the *whole simulated loop*
(true omega drawn from the prior, sampled outcomes, Bayes updates, partial soft resampling),
differentiated end to end. After Belliardo, Zoratti, Marquardt & Giovannetti, Quantum 8, 1555
(2024), arXiv:2312.16985, and its library qsensoropt 1.1.0. Spec:
shared/reference/bayesian-magnetometry.md, sections 3-5 and 7.

Gradient estimator (spec section 4), per episode b and step t, with l_{b,t} the squared error
of the posterior mean of omega and S_{b,t} = sum_{s<=t} log p(y_{b,s} | omega_b, tau_{b,s}):

    l~_{b,t} = l_{b,t} + sg(l_{b,t} - baseline_t) (S_{b,t} - sg(S_{b,t}))

- pathwise part: policy -> tau -> p(y | theta_j, tau) at every particle -> Bayes weights ->
  soft-resampling ratios with the Ścibior–Wood factor, attached after the normalisation as
  qsensoropt does (agents/particle_filter.resample, ``sw_order``) ->
  Liu–West move -> posterior mean -> l;
- score-function part: the sampled outcomes y ~ p(y | omega_b, tau) depend on tau; the
  ``sg(l) (S - sg(S))`` term (zero in value, so the reported loss is the true one) is their
  REINFORCE term.

Losses (spec section 5): ``loss="log"``: the gradient of log mean_b l_{b,t} is taken as that
of mean_b l~_{b,t} / sg(mean_b l_{b,t}); ``loss="plain"``: mean_b l~_{b,t}. ``cumulative``:
average the per-step losses over t = 1..N (an episode that has finished keeps its last
estimate); otherwise only t = N counts. NV-DC-24 uses log + cumulative.

Policies:
- ``"nn"``: qsensoropt's ``standard_model``: ``layers`` Dense(``hidden``) layers with its
  variance-preserving gain x tanh activations (``tanh_gains``) and a tanh output o; tau = 1 + prefact |o_0| (qsensoropt's tau = prefact |NN| + 1), phase = pi o_1.
  Inputs: the env's observation features (see ``features``), gradient-stopped by default.
  Preconditioned (12 epochs, batch 1024, 16,384 uniform inputs in [-1, 1]^k) by an MSE fit of
  o_0 to (x_last + 1)/2, x_last the normalised resources, so that tau starts by growing
  linearly with the resources spent.
- ``"static"``: a learned, outcome-independent sequence: tau_k = |prefact v_k + 1| with
  v_k = k/N initially (phase_k learned from 0 with ``control_phase``).

Adam with qsensoropt's InverseSqrtDecay, lr_i = lr / sqrt(i + 1). The training run is split
into blocks of ``checkpoint_every`` steps and the parameters at the end of the block with the
lowest mean training loss are returned (qsensoropt's ``train(load_best=True)``).

    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry
    task = BayesianMagnetometry(); params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="static", iterations=256, batch=256)
    result = jax.jit(mapf.make_train(config, task, params), compiler_options=mapf.compiler_options())(
        jax.random.PRNGKey(0), mapf.default_hyper("static"))
    curves = mapf.evaluate(config, task, params, result.policy_params, jax.random.PRNGKey(1), 16384)
    curves["se"].mean(0)   # MSE(n), n = 1..N

``make_train(config, task, params) -> train(key, hyper)`` is jittable and vmappable over keys
and hyperparameters (one XLA program for seeds x learning rates), like every agent here.

Precision: ``dtype="float32"`` (default, qsensoropt's) runs the filter in single precision:
the weights are renormalised after every update and N = 24 likelihood factors stay far above
float32's range; MSEs down to ~1e-5 keep ~3 digits. Use "float64" for gradient checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from qsmgym.agents._programs import ProgramCache, values_key
from qsmgym.agents.particle_filter import (
    ParticleFilter,
    ResampleNoise,
    batch_chunk,
    bayes_update,
    init_uniform,
    maybe_resample,
    mean_cov,
    resample_noise,
    weighted_sum,
)
from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry, nrm, ramsey_probability
from qsmgym.physics import prng

POLICIES = ("nn", "static")
LOSSES = ("log", "plain")
BASELINES = ("none", "batch_mean")
DTYPES = ("float32", "float64")
BACKENDS = ("auto", "jax", "native")
_EPISODES = "episodes"  # the vmapped batch axis of episodes (the filters' fallback draw uses it)


@dataclass(frozen=True)
class ModelAwarePFConfig:
    """Static settings (shapes, switches); traced ones live in ``default_hyper``.

    Args:
        policy: "nn" (adaptive, from the posterior summary) or "static" (open loop).
        iterations: Adam steps.
        batch: episodes per Adam step.
        loss: "log" or "plain" (spec section 5).
        cumulative: average the loss over all steps (True) or use the last step only.
        score_function: add the outcome score term (False: pathwise only, biased).
        baseline: "none" or "batch_mean" (per-step batch mean of l, subtracted in the score
            term; includes episode b itself, an O(1/batch) bias).
        stop_gradient_input: no gradient from the policy inputs back into the filter.
        stop_gradient_filter: stop the gradient through the filter between steps (greedy).
        checkpoint_every: block length of the keep-the-best-block rule (divides iterations).
        warmup_steps: linear learning-rate warm-up: step i uses min(1, (i + 1)/warmup_steps)
            times InverseSqrtDecay's rate (0: none, qsensoropt's and the spec's setting). Adam's
            first steps move every weight by about the full rate whatever the gradient's
            noise; for the NN at 1e-3 a single such step can throw the policy into a poor
            region it does not leave in 256 steps (see ``learning_rate_schedule``).
        hidden, layers: the NN's width and depth.
        precondition_epochs, precondition_batch, precondition_samples: the NN's initial fit.
        n_steps: measurements per training episode (default: the task's horizon).
        dtype: "float32" or "float64" for the filter and the network.
        remat: recompute each measurement's forward pass during the backward pass
            (``jax.checkpoint`` of the loop body) instead of storing its intermediates. Same
            values; the gradient can differ in the last float32 bits (summation order). On
            this project's 2-core CPU the NV-DC-24 step got faster with it (session 18:
            value+grad 0.38 -> 0.29 s NN, 0.33 -> 0.23 s static): the loop kept ~25 arrays of
            (batch, particles) per measurement, and zero-filling, writing and reading them
            cost more than the recomputation. It also cuts the memory to the loop's carry.
            False: store them (measure on an accelerator before choosing). JAX backend only.
        backend: which code runs the particle filter. "jax": ``agents/particle_filter.py``
            (the reference; any device, any task). "native": the C++ CPU kernel of
            ``agents/pf_native.py`` (one unknown, omega: not ``unknown_t2``), one pass per filter
            and measurement, forward and backward, with the same random numbers as the JAX
            path; the values agree to rounding (float64: ~1e-15; float32: a resampling draw whose
            uniform lands within an ulp of a cumulative weight can pick the neighbouring
            particle). "auto" (default): "native" on a CPU when the task allows it and the
            kernel compiles, otherwise "jax" (with a warning saying why, on a CPU).
            In float32 the two backends' trainings therefore take different chaotic paths
            from the first Adam step on, and end with different networks; their outcomes
            agree in distribution (NV-DC-24 NN, seeds 0-34, one machine, session 26: MSE(24)
            medians 2.81e-3 native and 2.52e-3 jax, Mann-Whitney p = 0.69, equal block
            losses; session 25's p = 0.026 the other way did not replicate; README, NV-DC-24).
    """

    policy: str = "nn"
    iterations: int = 256
    batch: int = 256
    loss: str = "log"
    cumulative: bool = True
    score_function: bool = True
    baseline: str = "none"
    stop_gradient_input: bool = True
    stop_gradient_filter: bool = False
    checkpoint_every: int = 128
    warmup_steps: int = 0
    hidden: int = 64
    layers: int = 5
    precondition_epochs: int = 12
    precondition_batch: int = 1024
    precondition_samples: int = 16384
    n_steps: int | None = None
    dtype: str = "float32"
    remat: bool = True
    backend: str = "auto"

    def __post_init__(self):
        for name, value, choices in (("policy", self.policy, POLICIES), ("loss", self.loss, LOSSES),
                                     ("backend", self.backend, BACKENDS),
                                     ("baseline", self.baseline, BASELINES), ("dtype", self.dtype, DTYPES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")
        for name in ("iterations", "batch", "checkpoint_every", "hidden", "layers", "precondition_batch",
                     "precondition_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        for name in ("precondition_epochs", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {name}={value!r}")
        if self.n_steps is not None and (isinstance(self.n_steps, bool) or not isinstance(self.n_steps, (int, np.integer))
                                         or self.n_steps < 1):
            raise ValueError(f"n_steps must be a positive int or None, got n_steps={self.n_steps!r}")
        if self.iterations % self.checkpoint_every:
            raise ValueError(f"checkpoint_every must divide iterations, got checkpoint_every="
                             f"{self.checkpoint_every!r} with iterations={self.iterations!r}")
        if self.precondition_samples % self.precondition_batch:
            raise ValueError(f"precondition_batch must divide precondition_samples, got precondition_batch="
                             f"{self.precondition_batch!r} with precondition_samples={self.precondition_samples!r}")
        for name in ("cumulative", "score_function", "stop_gradient_input", "stop_gradient_filter", "remat"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {name}={getattr(self, name)!r}")


def default_hyper(policy: str = "nn") -> dict[str, jnp.ndarray]:
    """Traced hyperparameters (spec section 7): Adam's initial rate of InverseSqrtDecay (1e-3
    for the NN, 0.1 for the static sequence) and the preconditioning rate (Adam, constant)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got policy={policy!r}")
    return {"learning_rate": jnp.asarray(1e-3 if policy == "nn" else 0.1),
            "precondition_lr": jnp.asarray(1e-3)}


def tanh_gains(n_inputs: int, hidden: int, outputs: int, sigma_input: float = 0.33) -> tuple[float, float, float]:
    """qsensoropt's ``standard_model(normalize_activation=True)`` gains (first hidden layer,
    middle ones, last hidden layer): g = sigma_input / sqrt(E[tanh(z)^2]), z ~ N(0, s^2) with s
    the Glorot pre-activation spread of that layer (s = sqrt(2 fan_in/(fan_in + fan_out))
    sigma_input; sigma_input for the middle layers), so g tanh keeps the activations' spread."""
    from scipy import integrate

    def gain(s):
        pdf = lambda z: math.exp(-0.5 * z * z / (s * s)) / (math.sqrt(2 * math.pi) * s)  # noqa: E731
        c = integrate.quad(lambda z: math.tanh(z) ** 2 * pdf(z), -math.inf, math.inf)[0]
        return sigma_input / math.sqrt(c)

    return (gain(math.sqrt(2 * n_inputs / (n_inputs + hidden)) * sigma_input), gain(sigma_input),
            gain(math.sqrt(2 * hidden / (outputs + hidden)) * sigma_input))


class TauNetwork(nn.Module):
    """qsensoropt's ``standard_model``: ``layers`` x Dense(``hidden``) with gain x tanh
    activations (``gains`` = first, middle, last hidden layer; see ``tanh_gains``), then
    Dense(``outputs``) + tanh. Glorot-uniform kernels and zero biases (Keras' defaults)."""

    hidden: int = 64
    layers: int = 5
    outputs: int = 1
    gains: tuple = (1.0, 1.0, 1.0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda n: nn.Dense(n, kernel_init=nn.initializers.glorot_uniform(), dtype=self.dtype,  # noqa: E731
                                   param_dtype=self.dtype)
        for i in range(self.layers):
            g = self.gains[0] if i == 0 else (self.gains[2] if i == self.layers - 1 else self.gains[1])
            x = g * jnp.tanh(dense(self.hidden)(x))
        return jnp.tanh(dense(self.outputs)(x))


@struct.dataclass
class ModelAwarePFResult:
    policy_params: Any  # the kept parameters (end of the best block)
    final_params: Any  # the parameters after the last step
    history: jnp.ndarray  # (iterations,) training loss (log form for loss="log") per step
    block_losses: jnp.ndarray  # (iterations // checkpoint_every,) mean training loss per block
    best_block: jnp.ndarray  # () index of the kept block
    precondition_loss: jnp.ndarray  # () final MSE of the NN's preconditioning fit (0 for static)


def _check_task(task) -> None:
    if not isinstance(task, BayesianMagnetometry):
        raise TypeError(f"task must be a BayesianMagnetometry core, got task={task!r}")


class _Setup:
    """Everything static derived from (config, task, params): the network, sizes, bounds."""

    def __init__(self, config: ModelAwarePFConfig, task: BayesianMagnetometry, params: Any):
        _check_task(task)
        if not isinstance(config, ModelAwarePFConfig):
            raise TypeError(f"config must be a ModelAwarePFConfig, got config={config!r}")
        self.config, self.task = config, task
        self.dtype = jnp.float32 if config.dtype == "float32" else jnp.float64
        self.params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, self.dtype), params)
        self.n_steps = task.horizon if config.n_steps is None else int(config.n_steps)
        if self.n_steps > task.horizon:
            raise ValueError(f"n_steps must be <= the task's horizon {task.horizon}, got n_steps={config.n_steps!r}")
        self.n_features = task.d**2 + 2 * task.d + 2
        self.n_controls = 2 if task.control_phase else 1
        gains = tanh_gains(self.n_features, config.hidden, self.n_controls)
        self.network = TauNetwork(config.hidden, config.layers, self.n_controls, gains, self.dtype)
        self.native = resolve_backend(config, task) == "native"
        if self.native:  # the kernel takes the prior box as static attributes
            with jax.ensure_compile_time_eval():
                self.box = tuple(float(np.asarray(b)[0]) for b in task.prior_box(self.params))

    # ------------------------------------------------------------------ policy
    def init_policy(self, key) -> Any:
        if self.config.policy == "nn":
            return self.network.init(key, jnp.zeros((self.n_features,), self.dtype))
        v = jnp.arange(self.n_steps, dtype=self.dtype) / self.n_steps  # spec: v_k = k/N
        out = {"v": v}
        if self.task.control_phase:
            out["phase"] = jnp.zeros((self.n_steps,), self.dtype)
        return out

    def controls(self, policy_params, feats, step) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(tau, phase) of one episode at measurement ``step`` (0-based)."""
        prefact = self.params.prefact
        if self.config.policy == "nn":
            o = self.network.apply(policy_params, feats)
            tau = 1.0 + prefact * jnp.abs(o[0])
            phase = jnp.pi * o[1] if self.task.control_phase else jnp.zeros((), self.dtype)
            return tau, phase
        tau = jnp.abs(prefact * policy_params["v"][step] + 1.0)
        phase = policy_params["phase"][step] if self.task.control_phase else jnp.zeros((), self.dtype)
        return tau, phase

    # ------------------------------------------------------------------ one episode
    def step_keys(self, key) -> jnp.ndarray:
        """The per-measurement keys (n_steps, 2) of the episode with key ``key``."""
        return jax.random.split(jax.random.split(key, 3)[2], self.n_steps)

    def step_noise(self, step_key) -> tuple[jnp.ndarray, ResampleNoise]:
        """One measurement's random numbers: the outcome's uniform and the filter's resampling
        noise (from split(step_key) = (k_y, k_rs), as ``jax.random.uniform(k_y, ())`` and
        ``resample_noise(k_rs, ...)`` draw them)."""
        k_y, k_rs = jax.random.split(step_key)
        d = self.task.prior_box(self.params)[0].shape[0]
        return prng.uniform(k_y, (), self.dtype), resample_noise(k_rs, self.task.n_particles, d, self.dtype)

    def batch(self, policy_params, keys) -> dict[str, jnp.ndarray]:
        """``episode`` for each key of ``keys`` (B, 2): arrays (B, n_steps). With the native
        backend, ``_batch_native`` (the same episodes, same random numbers). Every step's random
        numbers are drawn before the episodes' loop, time-major (n_steps, B, ...), so that
        XLA's CPU back end computes each once, in the layout the loop reads (drawn in the loop,
        the jitter's erf_inv was fused into 3 of the gradient's residual stores; drawn per
        episode, they were transposed). The values are the same as drawing them in the loop."""
        if self.native:
            return self._batch_native(policy_params, keys)
        step_keys = jax.vmap(self.step_keys)(keys)  # (B, T, 2)
        noise = jax.vmap(jax.vmap(self.step_noise))(jnp.swapaxes(step_keys, 0, 1))  # (T, B, ...)
        return jax.vmap(lambda k, nz: self.episode(policy_params, k, nz), in_axes=(0, 1),
                        axis_name=_EPISODES)(keys, noise)

    def start(self, key) -> tuple[jnp.ndarray, ParticleFilter]:
        """The episode's true parameters theta (d,), drawn from the prior box, and its initial
        filter, from the first two of split(key, 3) (the third: ``step_keys``)."""
        k_theta, k_pf, _ = jax.random.split(key, 3)
        low, high = (jnp.asarray(b, self.dtype) for b in self.task.prior_box(self.params))
        theta = low + (high - low) * jax.random.uniform(k_theta, low.shape, self.dtype)
        return theta, init_uniform(k_pf, self.task.n_particles, low, high, self.dtype)

    def outcome(self, omega, rate, tau, phase, u, resources, done) -> tuple[jnp.ndarray, jnp.ndarray]:
        """A measurement's outcome y = +-1 sampled from p(y | omega, tau, phase) with the uniform
        u, and whether the measurement is taken (``allowed``: the episode is not done and, with
        a time budget, tau fits in it). Elementwise: one episode or a batch."""
        params = self.params
        p_plus = ramsey_probability(1.0, omega, tau, phase, rate)
        y = jnp.where(u < jax.lax.stop_gradient(p_plus), 1.0, -1.0).astype(self.dtype)
        if self.task.budget == "time":
            return y, ~done & (resources + tau <= params.total_time)
        return y, ~done

    def account(self, omega, rate, tau, phase, y, allowed, mu, resources, done, score) -> tuple:
        """After the filter step: the running score S += log p(y | omega, tau) of a taken
        measurement, the resources spent, done, and the step's outputs (``episode``'s keys;
        mu: the posterior mean of omega). Elementwise: one episode or a batch. Returns
        (resources, done, score, outputs)."""
        params, dtype, time_budget = self.params, self.dtype, self.task.budget == "time"
        log_p = jnp.log(jnp.maximum(ramsey_probability(y, omega, tau, phase, rate), jnp.finfo(dtype).tiny))
        score = score + jnp.where(allowed, log_p, 0.0)
        resources = resources + jnp.where(allowed, tau if time_budget else 1.0, 0.0)
        if time_budget:
            done = done | ~allowed | (params.total_time - resources < 1.0)
        out = {"se": (mu - omega) ** 2, "score": score, "tau": tau, "phase": phase, "active": allowed.astype(dtype)}
        return resources, done, score, out

    def episode(self, policy_params, key, noise=None) -> dict[str, jnp.ndarray]:
        """One simulated episode, to be called under ``jax.vmap(..., axis_name=_EPISODES)`` (the
        filters' fallback draw branches on the whole batch; ``batch`` does this). Returns
        per-step arrays (n_steps,): "se", "score" (running sum S of log p(y | omega, tau),
        gradient attached), "tau", "phase", "active". ``noise``: the steps' random numbers as
        ``step_noise`` of ``step_keys(key)`` gives them (drawn here if None)."""
        task, params, dtype, config = self.task, self.params, self.dtype, self.config
        if noise is None:
            noise = jax.vmap(self.step_noise)(self.step_keys(key))
        low, high = (jnp.asarray(b, dtype) for b in task.prior_box(params))
        theta, pf = self.start(key)
        lik = task.likelihood(params)
        rate = theta[1] if task.unknown_t2 else params.inv_t2

        def body(carry, inputs):
            pf, resources, done, score = carry
            u, rs_noise, step = inputs  # this step's outcome uniform and resampling noise
            if config.stop_gradient_filter:
                pf = jax.lax.stop_gradient(pf)
            feats = features(task, params, pf, step, resources)
            if config.stop_gradient_input:
                feats = jax.lax.stop_gradient(feats)
            tau, phase = self.controls(policy_params, feats, step)
            y, allowed = self.outcome(theta[0], rate, tau, phase, u, resources, done)
            new = bayes_update(pf, y, (tau, phase), lik)
            new, _ = maybe_resample(None, new, low, high, task.resample_config, axis_name=_EPISODES, noise=rs_noise,
                                    active=allowed)
            pf = jax.tree_util.tree_map(lambda a, b: jnp.where(allowed, a, b), new, pf)
            mu = weighted_sum(pf.weights, pf.particles[:, 0])
            resources, done, score, out = self.account(theta[0], rate, tau, phase, y, allowed, mu, resources, done,
                                                       score)
            return (pf, resources, done, score), out

        carry = (pf, jnp.zeros((), dtype), jnp.zeros((), bool), jnp.zeros((), dtype))
        steps = jnp.arange(self.n_steps)
        if config.remat:  # prevent_cse=False: the loop already keeps XLA from merging the recomputation
            body = jax.checkpoint(body, prevent_cse=False)
        _, out = jax.lax.scan(body, carry, (noise[0], noise[1], steps))
        return out

    def _batch_native(self, policy_params, keys) -> dict[str, jnp.ndarray]:
        """``batch`` with the filter step in the native kernel (``pf_native``): the episodes of
        ``episode`` (same keys, same initial filters, same outcomes and resampling noise), the
        whole batch one kernel call per measurement. The kernel draws the resampling noise
        itself, from each step's key, for the filters that resample. No remat: the kernel keeps
        only its inputs and the drawn indices for the backward pass.

        With ``stop_gradient_input`` (the default) the controls depend on the filter only through
        gradient-stopped inputs, so the loss's gradient reaches the policy parameters only
        through the controls: ``_controls_after_loop`` runs the loop with the kernel's in-place
        stacks (``_native_forward``), then the filter's backward pass as a loop of its own
        (``_native_backward``), then the policy's backward pass once, batched over all
        measurements. Without it, the per-step ``pf_native.pf_step_split`` (a ``custom_vjp``)
        inside the loop, and JAX differentiates the loop."""
        if self.config.stop_gradient_input:
            return _controls_after_loop(self, policy_params, keys)
        return self._native_loop(policy_params, keys, self._pf_step_split, self._xw)[0]

    # the filter state of the two native loops: (x, w) for the per-step kernel, the stacks
    # (X, W, IDX) for the in-place one; each step returns (state, mu, var, residuals)
    @staticmethod
    def _xw(x, w) -> tuple:
        return (x, w)

    def _stacks(self, x, w) -> tuple:
        from qsmgym.agents import pf_native

        return pf_native.loop_init(x, w, self.n_steps)

    def _pf_step_split(self, state, step, key_idx, key_jit, tau, phase, decay, y, allowed) -> tuple:
        from qsmgym.agents import pf_native

        x, w, mu, var = pf_native.pf_step_split(*state, key_idx, key_jit, tau, phase, decay, y, allowed,
                                                config=self.task.resample_config, low=self.box[0], high=self.box[1])
        return (x, w), mu, var, ()

    def _loop_forward(self, stacks, step, key_idx, key_jit, tau, phase, decay, y, allowed) -> tuple:
        from qsmgym.agents import pf_native

        stacks, mu, var, flags = pf_native.loop_forward(stacks, step, key_idx, key_jit, tau, phase, decay, y, allowed,
                                                        config=self.task.resample_config, low=self.box[0],
                                                        high=self.box[1])
        return stacks, mu, var, (decay, y, mu, flags)

    def _native_loop(self, policy_params, keys, filter_step, make_state) -> tuple:
        """The native batch's loop over measurements, with ``filter_step`` (``_pf_step_split``
        or ``_loop_forward``) on the filter state ``make_state(x0, w0)``. Returns (outputs (B, T),
        the policy inputs (T, B, n_features), the final filter state, (omega (B,), the
        jitter keys (T, B, 2), the per-step outputs (T, B), the steps' residuals (T, B, ...)))."""
        from qsmgym.agents import pf_native

        task, params, dtype, config = self.task, self.params, self.dtype, self.config
        theta, pf = jax.vmap(self.start)(keys)
        omega, rate = theta[:, 0], params.inv_t2
        mu, cov = jax.vmap(mean_cov)(pf)
        mu, var = mu[:, 0], cov[:, 0, 0]
        b = keys.shape[0]
        step_keys = jnp.swapaxes(jax.vmap(self.step_keys)(keys), 0, 1)  # (T, B, 2)
        pairs = jax.vmap(jax.vmap(jax.random.split))(step_keys)  # (T, B, 2, 2): k_y, k_rs of step_noise
        # every random number of the loop is split off before it, in one batch (inside the loop
        # each split was a small rolled Threefry loop of its own, per measurement)
        u_y = jax.vmap(jax.vmap(lambda k: prng.uniform(k, (), dtype)))(pairs[:, :, 0])  # (T, B)
        key_idx, key_jit = pf_native.split_keys(pairs[:, :, 1])  # (T, B, 2) each

        def body(carry, inputs):
            state, mu, var, resources, done, score = carry
            u, key_idx, key_jit, step = inputs
            if config.stop_gradient_filter:
                state, mu, var = jax.lax.stop_gradient((state, mu, var))
            feats = jax.vmap(lambda m, v, r: features_from_moments(task, params, m[None], v[None, None], step, r)
                             )(mu, var, resources)
            if config.stop_gradient_input:
                feats = jax.lax.stop_gradient(feats)
            tau, phase = jax.vmap(lambda f: self.controls(policy_params, f, step))(feats)
            y, allowed = self.outcome(omega, rate, tau, phase, u, resources, done)
            decay = jnp.exp(-tau * rate)
            state, mu, var, res = filter_step(state, step, key_idx, key_jit, tau, phase, decay, y, allowed)
            resources, done, score, out = self.account(omega, rate, tau, phase, y, allowed, mu, resources, done, score)
            return (state, mu, var, resources, done, score), (out, feats, res)

        zeros = jnp.zeros((b,), dtype)
        carry = (make_state(pf.particles[..., 0], pf.weights), mu, var, zeros, jnp.zeros((b,), bool), zeros)
        (state, *_), (out, feats, res) = jax.lax.scan(body, carry, (u_y, key_idx, key_jit,
                                                                     jnp.arange(self.n_steps, dtype=jnp.int32)))
        return {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}, feats, state, (omega, key_jit, out, res)

    def _native_forward(self, policy_params, keys) -> tuple:
        """The native batch's values (no JAX derivative) with the in-place stacks, and what
        ``_native_backward`` needs: (outputs (B, T), residuals)."""
        out, feats, stacks, rest = self._native_loop(jax.lax.stop_gradient(policy_params), keys, self._loop_forward,
                                                     self._stacks)
        return out, (feats, stacks, *rest)

    def _native_backward(self, residuals, ct) -> jnp.ndarray:
        """The cotangent of the controls (T, B, n_controls) (tau, then phase with
        ``control_phase``) for the cotangent ``ct`` of ``_native_forward``'s outputs, the
        policy inputs held fixed (``stop_gradient_input``): the outputs' own dependence on the
        controls and on the posterior means (``account``, by ``jax.vjp``), then the filter's,
        step by step from the last (``pf_native.loop_backward``)."""
        from qsmgym.agents import pf_native

        _, stacks, omega, key_jit, steps, (decay, y, mu, flags) = residuals
        task, params, dtype = self.task, self.params, self.dtype
        rate, tiny = params.inv_t2, jnp.finfo(dtype).tiny
        allowed = steps["active"] > 0
        ct = {k: jnp.swapaxes(v, 0, 1) for k, v in ct.items()}  # (T, B)

        def outputs(mu, tau, phase):  # account's differentiable outputs, all steps at once
            log_p = jnp.log(jnp.maximum(ramsey_probability(y, omega, tau, phase, rate), tiny))
            score = jnp.cumsum(jnp.where(allowed, log_p, 0.0), axis=0)
            return (mu - omega) ** 2, score, tau, phase

        _, vjp_out = jax.vjp(outputs, mu, steps["tau"], steps["phase"])
        g_mu, g_tau, g_phase = vjp_out((ct["se"], ct["score"], ct["tau"], ct["phase"]))
        b, n = stacks[0].shape[-2:]

        def body(carry, inputs):
            gx, gw = carry
            if self.config.stop_gradient_filter:  # the next step's input filter was gradient-stopped
                gx, gw = jnp.zeros_like(gx), jnp.zeros_like(gw)
            step, kj, tau, phase, dec, yy, m, f, gm = inputs
            gx, gw, gt, gp, gd = pf_native.loop_backward(stacks, step, kj, tau, phase, dec, yy, m, f, gx, gw, gm,
                                                          jnp.zeros_like(gm), config=task.resample_config,
                                                          low=self.box[0], high=self.box[1])
            return (gx, gw), (gt, gp, gd)

        zeros = jnp.zeros((b, n), dtype)
        _, (gt, gp, gd) = jax.lax.scan(body, (zeros, zeros), (jnp.arange(self.n_steps, dtype=jnp.int32), key_jit,
                                                              steps["tau"], steps["phase"], decay, y, mu, flags, g_mu),
                                       reverse=True)
        _, vjp_decay = jax.vjp(lambda tau: jnp.exp(-tau * rate), steps["tau"])
        g_tau = g_tau + gt + vjp_decay(gd)[0]
        g_phase = g_phase + gp
        return jnp.stack([g_tau, g_phase], axis=-1)[..., : self.n_controls]

    def controls_batched(self, policy_params, feats) -> jnp.ndarray:
        """The controls of all measurements at once: feats (T, B, n_features) -> (T, B,
        n_controls) (tau, then phase with ``control_phase``)."""

        def one(f, step):
            tau, phase = self.controls(policy_params, f, step)
            return jnp.stack([tau, phase])[: self.n_controls]

        steps = jnp.arange(feats.shape[0])
        return jax.vmap(lambda fs, step: jax.vmap(lambda f: one(f, step))(fs))(feats, steps)

    def mlp_forward(self, policy_params, x) -> tuple[jnp.ndarray, tuple]:
        """``TauNetwork`` on a batch of inputs x (..., n_features), written out: (outputs o
        (..., n_controls), the hidden layers' tanh values). The same operations as the flax
        module (Dense = x @ kernel + bias, gain x tanh, tanh output)."""
        layers = self.config.layers
        p = policy_params["params"]
        h, acts = x, []
        for i in range(layers):
            a = jnp.tanh(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"])
            acts.append(a)
            h = self._gain(i) * a
        o = jnp.tanh(h @ p[f"Dense_{layers}"]["kernel"] + p[f"Dense_{layers}"]["bias"])
        return o, (tuple(acts), o)

    def mlp_backward(self, policy_params, x, acts, g_o) -> Any:
        """The parameter gradient of sum(g_o * o) for ``mlp_forward``'s outputs and activations,
        over all rows of x (M, n_features) at once: one matrix product per layer and direction.
        With the forward pass included, 9.1 ms against 13.8 ms for JAX's vjp of
        ``controls_batched`` at 24 x 256 rows here (session 24)."""
        layers = self.config.layers
        p = policy_params["params"]
        hidden, o = acts
        hs = [x] + [self._gain(i) * hidden[i] for i in range(layers)]
        dz = g_o * (1.0 - o * o)
        grads = {f"Dense_{layers}": {"kernel": hs[layers].T @ dz, "bias": jnp.sum(dz, axis=0)}}
        dh = dz @ p[f"Dense_{layers}"]["kernel"].T
        for i in reversed(range(layers)):
            dz = dh * self._gain(i) * (1.0 - hidden[i] * hidden[i])
            grads[f"Dense_{i}"] = {"kernel": hs[i].T @ dz, "bias": jnp.sum(dz, axis=0)}
            if i:
                dh = dz @ p[f"Dense_{i}"]["kernel"].T
        return {"params": grads}

    def _gain(self, i: int) -> float:
        g = self.network.gains
        return g[0] if i == 0 else (g[2] if i == self.config.layers - 1 else g[1])

    # ------------------------------------------------------------------ loss
    def loss(self, policy_params, key) -> tuple[jnp.ndarray, dict]:
        """Surrogate over ``config.batch`` episodes (its gradient is the estimator); aux
        "loss": the value reported (log mean SE averaged over steps for log + cumulative)."""
        config = self.config
        out = self.batch(policy_params, jax.random.split(key, config.batch))
        se, score = out["se"], out["score"]  # (B, T)
        if config.score_function:
            base = jnp.mean(se, axis=0, keepdims=True) if config.baseline == "batch_mean" else 0.0
            surrogate = se + jax.lax.stop_gradient(se - base) * (score - jax.lax.stop_gradient(score))
        else:
            surrogate = se
        mean_se = jnp.mean(se, axis=0)  # (T,)
        if config.loss == "log":
            per_step = jnp.mean(surrogate, axis=0) / jax.lax.stop_gradient(mean_se)
            # value of the surrogate is 1 per step; shift it to log mean SE (same gradient)
            per_step = per_step - jax.lax.stop_gradient(per_step) + jax.lax.stop_gradient(jnp.log(mean_se))
        else:
            per_step = jnp.mean(surrogate, axis=0)
        value = jnp.mean(per_step) if config.cumulative else per_step[-1]
        return value, {"loss": value, "mse": mean_se}


def _controls_after_loop_impl(setup: "_Setup", policy_params, keys) -> dict[str, jnp.ndarray]:
    """The native batch with the policy's gradient taken after the loop (valid when the policy
    inputs are gradient-stopped: they are then constants of the policy parameters, as the
    loop's controls are): the loop with the kernel's in-place stacks; its backward pass
    (``_native_backward``) gives the loss's cotangent of every control, then one batched
    vector-Jacobian product over all T x B policy inputs (for the NN, its forward pass again,
    batched, and ``mlp_backward``: keeping the loop's activations instead cost more in stacking
    than the recomputation)."""
    return setup._native_forward(policy_params, keys)[0]


def _controls_after_loop_fwd(setup, policy_params, keys):
    out, residuals = setup._native_forward(policy_params, keys)
    return out, (policy_params, residuals)


def _controls_after_loop_bwd(setup, res, ct):
    policy_params, residuals = res
    feats = residuals[0]
    g_controls = setup._native_backward(residuals, ct)  # (T, B, n_controls): d loss / d (tau, phase)
    if setup.config.policy == "nn":
        rows = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731  (T, B, ...) -> (T B, ...)
        o, acts = setup.mlp_forward(policy_params, rows(feats))  # recomputed, batched over T x B
        g_o = rows(g_controls)
        g_o = g_o.at[:, 0].multiply(setup.params.prefact * jnp.sign(o[:, 0]))  # tau = 1 + prefact |o_0|
        if setup.task.control_phase:
            g_o = g_o.at[:, 1].multiply(jnp.pi)  # phase = pi o_1
        g_params = setup.mlp_backward(policy_params, rows(feats), acts, g_o)
        return g_params, None
    _, vjp_params = jax.vjp(lambda p: setup.controls_batched(p, feats), policy_params)
    (g_params,) = vjp_params(g_controls)
    return g_params, None


_controls_after_loop = jax.custom_vjp(_controls_after_loop_impl, nondiff_argnums=(0,))
_controls_after_loop.defvjp(_controls_after_loop_fwd, _controls_after_loop_bwd)


def features(task: BayesianMagnetometry, params, pf: ParticleFilter, step, resources) -> jnp.ndarray:
    """The env's observation (qsensoropt's features) from a filter, in the filter's dtype:
    [nrm(mu), nrm(log sigma, (-10, 0)), correlation matrix, nrm(step, (0, horizon)),
    nrm(resources, (0, budget))], each clipped to [-1, 1]. Same formula as
    ``BayesianMagnetometry._obs`` (checked in the tests)."""
    mu, cov = mean_cov(pf)
    return features_from_moments(task, params, mu, cov, step, resources)


def features_from_moments(task: BayesianMagnetometry, params, mu, cov, step, resources) -> jnp.ndarray:
    """``features`` from the posterior mean (d,) and covariance (d, d) of the filter."""
    dtype = mu.dtype
    low, high = (jnp.asarray(b, dtype) for b in task.prior_box(params))
    var = jnp.maximum(jnp.diag(cov), jnp.finfo(dtype).tiny)
    sigma = jnp.sqrt(var)
    corr = cov / (sigma[:, None] * sigma[None, :])
    budget = task.n_measurements if task.budget == "measurements" else params.total_time
    feats = jnp.concatenate([
        nrm(mu, low, high), nrm(jnp.log(sigma), -10.0, 0.0), jnp.ravel(corr),
        jnp.stack([nrm(jnp.asarray(step, dtype), 0.0, task.horizon), nrm(resources, 0.0, budget)]).astype(dtype),
    ])
    return jnp.clip(feats, -1.0, 1.0)


def native_support(task: BayesianMagnetometry) -> tuple[bool, str]:
    """(True, "") if the native kernel can run ``task``'s filter here, else (False, why)."""
    from qsmgym.agents import pf_native

    if task.unknown_t2:
        return False, "the native kernel filters omega alone; the task has unknown_t2=True"
    if task.resample_config.sw_order != "qsensoropt":
        return False, f"the native kernel has sw_order='qsensoropt' only, got {task.resample_config.sw_order!r}"
    if task.resample_config.batch_fraction is not None:
        return False, ("the native kernel decides resampling per filter; the task resamples whole batches "
                       f"(resample_fraction={task.resample_config.batch_fraction!r})")
    return pf_native.available()


_WARNED: set = set()


def resolve_backend(config: ModelAwarePFConfig, task: BayesianMagnetometry) -> str:
    """The backend ``config.backend`` means for ``task`` here: "jax" or "native".

    Raises:
        ValueError: backend="native" and the kernel cannot run (the reason in the message)."""
    if config.backend == "jax":
        return "jax"
    ok, why = native_support(task)
    if ok:
        return "native"
    if config.backend == "native":
        raise ValueError(f"backend='native' cannot run here: {why}")
    if jax.default_backend() == "cpu" and not task.unknown_t2 and why not in _WARNED:
        _WARNED.add(why)
        import warnings

        warnings.warn(f"model_aware_pf: backend='auto' uses the JAX particle filter: {why}", RuntimeWarning, stacklevel=3)
    return "jax"


def compiler_options() -> dict[str, str] | None:
    """XLA options to jit this module's programs with: ``jax.jit(train,
    compiler_options=compiler_options())`` (``evaluate`` and the NV-DC-24 benchmark do).

    On CPU: YNNPACK fusions for dot products only, not for reductions. jaxlib 0.10.2's CPU
    back end turned the filter's batched row sums (256 filters x 480 particles) into YNNPACK
    reduce fusions that ran several times slower than XLA's own loops: with them the NV-DC-24
    value-and-gradient step took 0.46-0.49 s here, without them 0.31-0.36 s (session 17, same
    code, same machine). Other back ends: None (the option is CPU-only)."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def make_loss(config: ModelAwarePFConfig, task: BayesianMagnetometry, params: Any
              ) -> tuple[Callable, Callable]:
    """(init_policy(key) -> policy_params, loss(policy_params, key) -> (surrogate, aux)) for
    gradient checks and custom loops; ``jax.grad(loss, has_aux=True)`` is the estimator."""
    setup = _Setup(config, task, params)
    return setup.init_policy, setup.loss


def _precondition(setup: _Setup, key, policy_params, hyper) -> tuple[Any, jnp.ndarray]:
    """Fit o_0 to (x_last + 1)/2 on uniform random inputs (spec section 7); Adam, MSE."""
    config = setup.config
    x = jax.random.uniform(key, (config.precondition_samples, setup.n_features), setup.dtype, -1.0, 1.0)
    target = (x[:, -1] + 1.0) / 2.0
    n_batches = config.precondition_samples // config.precondition_batch
    opt = optax.adam(hyper["precondition_lr"])

    def mse(p, xb, tb):
        o = jax.vmap(lambda xi: setup.network.apply(p, xi))(xb)
        return jnp.mean((o[:, 0] - tb) ** 2)

    def epoch(carry, k):
        perm = jax.random.permutation(k, config.precondition_samples)
        xb = x[perm].reshape(n_batches, config.precondition_batch, -1)
        tb = target[perm].reshape(n_batches, config.precondition_batch)

        def step(carry, batch):
            p, s = carry
            value, g = jax.value_and_grad(mse)(p, *batch)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), value

        carry, values = jax.lax.scan(step, carry, (xb, tb))
        return carry, values[-1]

    keys = jax.random.split(jax.random.fold_in(key, 1), config.precondition_epochs)
    (p, _), values = jax.lax.scan(epoch, (policy_params, opt.init(policy_params)), keys)
    return p, (values[-1] if config.precondition_epochs else jnp.zeros((), setup.dtype))


def precondition(config: ModelAwarePFConfig, task: BayesianMagnetometry, params: Any, key: jax.Array,
                 hyper: dict) -> tuple[Any, jnp.ndarray]:
    """Initialise the NN with ``key`` and fit it as ``train`` does before its first Adam step
    (``config.precondition_*``). Returns (network params, final batch MSE of the fit)."""
    setup = _Setup(config, task, params)
    if config.policy != "nn":
        raise ValueError(f"precondition needs policy='nn', got policy={config.policy!r}")
    k_init, k_pre = jax.random.split(key)
    return _precondition(setup, k_pre, setup.init_policy(k_init), hyper)


def learning_rate_schedule(lr0, warmup_steps: int = 0, dtype=jnp.float32) -> Callable:
    """Adam's rate at update ``count`` (0-based): qsensoropt's InverseSqrtDecay,
    lr0 / sqrt(count + 1), times a linear warm-up min(1, (count + 1)/warmup_steps) when
    warmup_steps > 0.

    Why a warm-up: Adam's first update is lr0 * sign(g) for every weight (its second-moment
    estimate is one batch's g^2). On NV-DC-24 with the NN at lr0 = 1e-3, one such step from the
    preconditioned network raised the log loss from -5.1 to about -2.9 for 4 of 6 of our
    batch gradients and 2 of 6 of qsensoropt's (same weights, same expected gradient), and for
    the exact mean gradient too; 2 of 5 of our seeds never recovered."""
    lr0 = jnp.asarray(lr0, dtype)

    def schedule(count):
        count = jnp.asarray(count, dtype)
        rate = lr0 / jnp.sqrt(count + 1.0)
        if warmup_steps:
            rate = rate * jnp.minimum(1.0, (count + 1.0) / warmup_steps)
        return rate

    return schedule


def make_train(config: ModelAwarePFConfig, task: BayesianMagnetometry, params: Any
               ) -> Callable[[jax.Array, dict], ModelAwarePFResult]:
    """Build ``train(key, hyper, start=None) -> ModelAwarePFResult`` (jittable, vmappable over
    keys and hypers). ``key`` seeds the network initialisation, the preconditioning data and every
    training episode; ``hyper`` as ``default_hyper(config.policy)``. ``start``: policy params to
    train from instead (no initialisation, no preconditioning; e.g. another library's
    preconditioned network, to compare two training loops from one start); the training
    episodes still come from ``key``, as without it.

    Raises:
        TypeError: task is not a BayesianMagnetometry core, or config has the wrong type.
        ValueError: n_steps beyond the task's horizon.
    """
    setup = _Setup(config, task, params)
    grad_fn = jax.value_and_grad(setup.loss, has_aux=True)
    n_blocks = config.iterations // config.checkpoint_every

    def train(key: jax.Array, hyper: dict, start: Any = None) -> ModelAwarePFResult:
        for name in ("learning_rate", "precondition_lr"):
            if name not in hyper:
                raise ValueError(f"hyper must contain {name!r}, got keys {sorted(hyper)}")
        k_init, k_train = jax.random.split(key)
        k_net, k_pre = jax.random.split(k_init)
        p0 = setup.init_policy(k_net)
        pre_loss = jnp.zeros((), setup.dtype)
        if start is not None:
            if jax.tree_util.tree_structure(start) != jax.tree_util.tree_structure(p0) or any(
                    a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(p0))):
                raise ValueError(f"start must have the policy's structure and shapes "
                                 f"{jax.tree_util.tree_map(jnp.shape, p0)}, got {jax.tree_util.tree_map(jnp.shape, start)}")
            p0 = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), start, p0)
        elif config.policy == "nn" and config.precondition_epochs:
            p0, pre_loss = _precondition(setup, k_pre, p0, hyper)
        opt = optax.adam(learning_rate_schedule(hyper["learning_rate"], config.warmup_steps, setup.dtype))

        def step(carry, k):
            p, s = carry
            (_, aux), g = grad_fn(p, k)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), aux["loss"]

        def block(carry, keys):
            (p, s), best_p, best_loss = carry
            (p, s), losses = jax.lax.scan(step, (p, s), keys)
            mean_loss = jnp.mean(losses)
            better = mean_loss < best_loss
            best_p = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), p, best_p)
            return ((p, s), best_p, jnp.minimum(mean_loss, best_loss)), (losses, mean_loss)

        keys = jax.random.split(k_train, config.iterations).reshape(n_blocks, config.checkpoint_every, -1)
        init = ((p0, opt.init(p0)), p0, jnp.asarray(jnp.inf, setup.dtype))
        ((p_final, _), best_p, _), (losses, block_losses) = jax.lax.scan(block, init, keys)
        return ModelAwarePFResult(policy_params=best_p, final_params=p_final, history=losses.reshape(-1),
                                  block_losses=block_losses, best_block=jnp.argmin(block_losses),
                                  precondition_loss=pre_loss)

    return train


# (config, task, params' values, sizes) -> the jitted evaluation: evaluating many networks (one per
# trained seed) under the same settings compiles once; the policy params and key are arguments.
_EVALUATORS = ProgramCache(8)


def evaluate(config: ModelAwarePFConfig, task: BayesianMagnetometry, params: Any, policy_params: Any,
             key: jax.Array, n_episodes: int, *, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Run the policy on ``n_episodes`` fresh episodes (episode i uses fold_in(key, i); vmapped
    in chunks of ``chunk`` under lax.map; with the task's ``resample_fraction`` a chunk is the
    batch whose filters resample together). Returns numpy arrays (n_episodes, n_steps): "se",
    "tau", "phase", "active". MSE(n) = out["se"].mean(0). The compiled program is kept per
    (config, task, params values, n_episodes, chunk), so another network or key reuses it."""
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
        raise ValueError(f"n_episodes must be a positive int, got n_episodes={n_episodes!r}")
    chunk = batch_chunk(int(n_episodes), chunk, task.resample_config)
    values = values_key(params)
    cache_key = None if values is None else (config, task, values, int(n_episodes), chunk)
    run = _EVALUATORS.get(cache_key, lambda: _build_evaluator(config, task, params, int(n_episodes), chunk))
    out = run(policy_params, key)
    return {k: np.asarray(v).reshape(n_episodes, -1) for k, v in out.items()}


def _build_evaluator(config: ModelAwarePFConfig, task: BayesianMagnetometry, params: Any, n_episodes: int,
                     chunk: int) -> Callable:
    setup = _Setup(config, task, params)
    ids = jnp.arange(n_episodes).reshape(-1, chunk)

    def run(policy_params, key):
        def chunk_of(i):
            out = setup.batch(policy_params, jax.vmap(lambda j: jax.random.fold_in(key, j))(i))
            return {k: out[k] for k in ("se", "tau", "phase", "active")}

        return jax.lax.map(chunk_of, ids)

    return jax.jit(run, compiler_options=compiler_options())
