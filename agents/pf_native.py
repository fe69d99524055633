"""A native CPU kernel for one step of the NV-DC particle filter, with its gradient.

What it computes: for a batch of one-parameter filters (the Ramsey frequency omega, d = 1), the
Bayes update with the Ramsey likelihood p(y | x, tau, phase) = [1 + y exp(-tau/T2) cos(x tau +
phase)] / 2, then ``particle_filter.maybe_resample`` with ``sw_order="qsensoropt"`` (soft
resampling, the Ścibior–Wood factor, the hard fallback, the Liu–West move and the clip), then
the posterior mean and variance of the result; and the vector-Jacobian product of all of that
(``jax.custom_vjp``), the drawn indices and the noise held fixed as in the JAX code. The JAX
functions of ``agents/particle_filter.py`` stay the reference: ``tests/agents/test_pf_native.py``
compares values and gradients in float64 and float32, and ``model_aware_pf`` uses this kernel
only when asked (``backend="native"``) or when it is available on a CPU (``"auto"``).

Two forms: ``pf_step`` / ``pf_step_split``, one step with its ``custom_vjp`` (any loop JAX
differentiates), and the loop form ``loop_init`` / ``loop_forward`` / ``loop_backward``, the same
step on stacks of every measurement's filters updated in place, for a caller that runs the
backward loop itself (``model_aware_pf`` with ``stop_gradient_input``; see "the loop form"
below).

Why: on CPUs the NV-DC-24 training step is a long chain of small element-wise kernels over
(256 filters, 480 particles) per measurement, forward and backward; XLA's CPU back end runs them
one after another, each reading and writing every array, and the resampling's gathers,
scatters and inverse-CDF search are not vectorised. One pass per filter that keeps a filter's
particles in cache, and an exact O(N) guide-table search, does the same work several times
faster (numbers in BENCHMARKS.md). On a GPU the JAX path is the one to use.

How: the C++ source ``native/pf_step.cc`` ships with the package; the first use compiles it with
the system C++ compiler (``$CXX`` or ``c++``; ``-O3 -march=native -ffp-contract=off -fopenmp-simd``: no
FMA contraction, so float32 rounds as the JAX code does; sums over particles vectorised with
16-lane partial sums, a different summation order from XLA's, within rounding) against the XLA FFI headers of the
installed jaxlib, into a cache folder (``$QSM_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/qsmgym`` or
``~/.cache/qsmgym``) under a name that hashes the source, compiler, flags, jaxlib version and
CPU, written by an atomic rename (concurrent test workers are safe). It is loaded with ctypes
and registered as XLA FFI targets for the CPU platform. ``QSM_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from qsmgym.agents.particle_filter import ResampleConfig, _check_config

SOURCE = Path(__file__).with_name("native") / "pf_step.cc"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGETS = {"float32": ("QsmPfStepF32", "QsmPfStepBwdF32"), "float64": ("QsmPfStepF64", "QsmPfStepBwdF64")}
_LOOP = {"float32": ("QsmPfLoopInitF32", "QsmPfLoopFwdF32", "QsmPfLoopBwdF32"),
         "float64": ("QsmPfLoopInitF64", "QsmPfLoopFwdF64", "QsmPfLoopBwdF64")}
_EXTRA = ("QsmNormalsF32", "QsmNormalsF64", *(n for names in _LOOP.values() for n in names))
_LOCK = threading.Lock()
_STATE: dict = {}


class NativeUnavailable(RuntimeError):
    """The native kernel cannot be used here; the message says why."""


def cache_dir() -> Path:
    if os.environ.get("QSM_NATIVE_CACHE"):
        return Path(os.environ["QSM_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qsmgym" / "native"


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
        model = next((line for line in text.splitlines() if line.startswith("model name")), "")
        return model + flags
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str:
    cxx = os.environ.get("CXX") or "c++"
    path = shutil.which(cxx)
    if path is None:
        raise NativeUnavailable(f"no C++ compiler: CXX={cxx!r} is not on PATH")
    return path


def _build() -> Path:
    cxx = _compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"the C++ compiler {cxx} does not run: {e}") from e
    include = jax.ffi.include_dir()
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(FLAGS).encode(), jax.__version__.encode(),
                 jaxlib.__version__.encode(), _cpu_id().encode()):
        digest.update(part)
        digest.update(b"\0")
    out = cache_dir() / f"pf_step-{digest.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, "-isystem", include, str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise NativeUnavailable(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
        os.replace(tmp, out)  # atomic: a concurrent builder's file is the same bytes
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def load() -> None:
    """Compile (once per machine and version) and register the FFI targets. Raises
    ``NativeUnavailable`` with the reason when that is not possible."""
    with _LOCK:
        if "error" in _STATE:
            raise NativeUnavailable(_STATE["error"])
        if "lib" in _STATE:
            return
        try:
            if os.environ.get("QSM_NATIVE", "1") == "0":
                raise NativeUnavailable("turned off by QSM_NATIVE=0")
            lib = ctypes.cdll.LoadLibrary(str(_build()))
            for name in [*(n for names in _TARGETS.values() for n in names), *_EXTRA]:
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
        except NativeUnavailable as e:
            _STATE["error"] = str(e)
            raise
        except (OSError, AttributeError, RuntimeError) as e:
            _STATE["error"] = f"loading the native kernel failed: {e!r}"
            raise NativeUnavailable(_STATE["error"]) from e
        _STATE["lib"] = lib


def available() -> tuple[bool, str]:
    """(True, "") if the kernel can run here (CPU back end, compiled and loaded), else (False,
    the reason)."""
    if jax.default_backend() != "cpu":
        return False, f"the native kernel is CPU-only; the default backend is {jax.default_backend()!r}"
    try:
        load()
    except NativeUnavailable as e:
        return False, str(e)
    return True, ""


@functools.lru_cache(maxsize=None)
def _attrs(config: ResampleConfig, low: float, high: float) -> tuple:
    _check_config(config)
    if config.sw_order != "qsensoropt":
        raise ValueError(f"the native kernel implements sw_order='qsensoropt' only, got sw_order={config.sw_order!r}")
    beta = float(config.beta)
    scale = (1.0 - beta**2) if config.jitter == "coded" else float(np.sqrt(1.0 - beta**2))
    return (("alpha", float(config.alpha)), ("beta", beta), ("threshold", float(config.threshold)),
            ("low", float(low)), ("high", float(high)), ("scale", scale),
            ("scibior_wood", bool(config.scibior_wood)), ("enabled", bool(config.enabled)))


def _call(name: str, outs, args, attrs, aliases=None):
    load()
    kwargs = {k: (np.bool_(v) if isinstance(v, bool) else np.float64(v)) for k, v in attrs}
    return jax.ffi.ffi_call(name, outs, vmap_method="broadcast_all", input_output_aliases=aliases)(*args, **kwargs)


def _forward(attrs, x, w, key_idx, key_jit, tau, phase, decay, y, allowed):
    dtype = x.dtype
    name = _TARGETS[jnp.dtype(dtype).name][0]
    batch = x.shape[:-1]
    outs = (jax.ShapeDtypeStruct(x.shape, dtype), jax.ShapeDtypeStruct(x.shape, dtype),
            jax.ShapeDtypeStruct(batch, dtype), jax.ShapeDtypeStruct(batch, dtype),
            jax.ShapeDtypeStruct(x.shape, jnp.int32), jax.ShapeDtypeStruct(batch, jnp.int32))
    return _call(name, outs, (x, w, key_idx, key_jit, tau, phase, decay, y, allowed), attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _step(attrs, x, w, key_idx, key_jit, tau, phase, decay, y, allowed):
    xo, wo, mo, vo, _, _ = _forward(attrs, x, w, key_idx, key_jit, tau, phase, decay, y, allowed)
    return xo, wo, mo, vo


def _step_fwd(attrs, x, w, key_idx, key_jit, tau, phase, decay, y, allowed):
    xo, wo, mo, vo, idx, flags = _forward(attrs, x, w, key_idx, key_jit, tau, phase, decay, y, allowed)
    # xo and wo are not kept: the backward kernel recomputes them from these
    return (xo, wo, mo, vo), (x, w, key_jit, tau, phase, decay, y, mo, idx, flags)


def _step_bwd(attrs, res, cts):
    x, w, key_jit, tau, phase, decay, y, mo, idx, flags = res
    gxo, gwo, gmo, gvo = cts
    dtype = x.dtype
    name = _TARGETS[jnp.dtype(dtype).name][1]
    batch = x.shape[:-1]
    outs = (jax.ShapeDtypeStruct(x.shape, dtype), jax.ShapeDtypeStruct(x.shape, dtype),
            jax.ShapeDtypeStruct(batch, dtype), jax.ShapeDtypeStruct(batch, dtype),
            jax.ShapeDtypeStruct(batch, dtype))
    gx, gw, gtau, gphase, gdecay = _call(
        name, outs, (x, w, key_jit, tau, phase, decay, y, mo, idx, flags, gxo, gwo, gmo, gvo), attrs)
    return gx, gw, None, None, gtau, gphase, gdecay, None, None


_step.defvjp(_step_fwd, _step_bwd)


def split_keys(key: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(key_idx, key_jit) of ``particle_filter.resample_noise`` for raw keys (..., 2):
    split(key, 3)[0] and [2], each (..., 2)."""
    flat = key.reshape(-1, 2)
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(flat)
    return parts[:, 0].reshape(key.shape), parts[:, 2].reshape(key.shape)


def pf_step(x, w, key, tau, phase, decay, y, allowed, *, config: ResampleConfig = ResampleConfig(),
            low: float = 0.0, high: float = 1.0):
    """One filter step for a batch of filters: particles x and weights w (..., N); the
    resampling key (..., 2) (raw uint32 Threefry keys; the kernel draws the uniforms and
    normals ``particle_filter.resample_noise(key, N, 1)`` draws, and only for the filters that
    resample); per filter (...): tau, phase, decay = exp(-tau / T2), the outcome y = +-1 and
    allowed (bool: take the step, or keep the filter). Floats in one dtype (float32/float64).

    Returns (x', w', mu', var'): the new particles and weights and their posterior mean and
    variance. Differentiable in x, w, tau, phase and decay (not in y, allowed or the key).

    Raises:
        NativeUnavailable: the kernel cannot run here (reason in the message).
        ValueError: unsupported dtype, shapes that do not match, or an unsupported config.
    """
    load()
    x = jnp.asarray(x)
    dtype = jnp.dtype(x.dtype)
    if dtype.name not in _TARGETS:
        raise ValueError(f"x must be float32 or float64, got x.dtype={dtype}")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a non-empty particle axis, got x.shape={x.shape}")
    batch = x.shape[:-1]
    w = jnp.asarray(w)
    if w.shape != x.shape or w.dtype != dtype:
        raise ValueError(f"w must have x's shape {x.shape} and dtype {dtype}, got w {w.shape} {w.dtype}")
    key = jnp.asarray(key)
    if key.shape != batch + (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"key must be uint32 of shape {batch + (2,)}, got key {key.shape} {key.dtype}")
    conv = {}
    for name, value in {"tau": tau, "phase": phase, "decay": decay, "y": y, "allowed": allowed}.items():
        value = jnp.asarray(value)
        if value.shape != batch:
            raise ValueError(f"{name} must have shape {batch} (x.shape={x.shape}), got {name}.shape={value.shape}")
        want = jnp.bool_ if name == "allowed" else dtype
        if value.dtype != want:
            raise ValueError(f"{name} must have dtype {jnp.dtype(want)}, got {name}.dtype={value.dtype}")
        conv[name] = value
    key_idx, key_jit = split_keys(key)
    return _step(_attrs(config, float(low), float(high)), x, w, key_idx, key_jit, conv["tau"], conv["phase"],
                 conv["decay"], conv["y"], conv["allowed"])


def pf_step_split(x, w, key_idx, key_jit, tau, phase, decay, y, allowed, *,
                  config: ResampleConfig = ResampleConfig(), low: float = 0.0, high: float = 1.0):
    """``pf_step`` with the resampling key already split (``split_keys``): a loop over
    measurements can split all its keys at once, before the loop (``model_aware_pf`` does).
    No argument checks beyond the kernel's own sizes: call ``pf_step`` first when in doubt."""
    load()
    return _step(_attrs(config, float(low), float(high)), x, w, key_idx, key_jit, tau, phase, decay, y, allowed)


# ---------------------------------------------------------------- the loop form
# A measurement loop over T steps that keeps every step's filter for its own backward pass
# (model_aware_pf with stop_gradient_input): stacks (X, W, IDX) of shapes (T + 1, B, N), (T + 1,
# B, N) and (T, B, N) int32 hold the filters before each step and the drawn indices, and the
# kernel updates them in place (the call's outputs alias its inputs). Inside a scan, XLA then
# neither copies the (B, N) carry nor stores residual slices per step: measured on the NV-DC-24
# training step (2-core CPU), memmove was 13 % of the static arm's CPU time with the per-step
# custom_vjp, whose residuals scan stacks; with the loop form a training step took 14.7 ms
# against 20.9 (static) and 26.8 against 32.9 (NN), medians of 8 64-step trainings. These
# functions have no JAX derivative: the caller runs the backward loop itself
# (``loop_backward``; step t reads the stacks where they are).


def loop_init(x0, w0, n_steps: int):
    """Stacks (X, W, IDX) for ``n_steps`` steps from the filters x0, w0 (B, N): slot 0 holds
    them; the other slots are written by ``loop_forward`` (they start as whatever memory XLA
    gives: read a slot only after the step that writes it)."""
    dtype = jnp.dtype(x0.dtype)
    b, n = x0.shape[-2:]
    lead = x0.shape[:-2]
    outs = (jax.ShapeDtypeStruct(lead + (n_steps + 1, b, n), dtype),
            jax.ShapeDtypeStruct(lead + (n_steps + 1, b, n), dtype),
            jax.ShapeDtypeStruct(lead + (n_steps, b, n), jnp.int32))
    load()
    return tuple(jax.ffi.ffi_call(_LOOP[dtype.name][0], outs, vmap_method="broadcast_all")(x0, w0))


def loop_forward(stacks, t, key_idx, key_jit, tau, phase, decay, y, allowed, *,
                 config: ResampleConfig = ResampleConfig(), low: float = 0.0, high: float = 1.0):
    """Step t (int32 scalar) of the loop: ``pf_step_split``'s forward pass from slot t of the
    stacks into slot t + 1, in place (same arguments otherwise). Returns (stacks, mo, vo,
    flags): the new posterior mean and variance (B,) and the step's flags (B,) int32, which
    ``loop_backward`` takes."""
    xs, ws, idx = stacks
    dtype = xs.dtype
    batch = tau.shape
    outs = (jax.ShapeDtypeStruct(xs.shape, dtype), jax.ShapeDtypeStruct(ws.shape, dtype),
            jax.ShapeDtypeStruct(idx.shape, jnp.int32), jax.ShapeDtypeStruct(batch, dtype),
            jax.ShapeDtypeStruct(batch, dtype), jax.ShapeDtypeStruct(batch, jnp.int32))
    xs, ws, idx, mo, vo, flags = _call(_LOOP[jnp.dtype(dtype).name][1], outs,
                                       (xs, ws, idx, jnp.asarray(t, jnp.int32), key_idx, key_jit, tau, phase, decay,
                                        y, allowed), _attrs(config, float(low), float(high)),
                                       aliases={0: 0, 1: 1, 2: 2})
    return (xs, ws, idx), mo, vo, flags


def loop_backward(stacks, t, key_jit, tau, phase, decay, y, mo, flags, gxo, gwo, gmo, gvo, *,
                  config: ResampleConfig = ResampleConfig(), low: float = 0.0, high: float = 1.0):
    """The vector-Jacobian product of ``loop_forward``'s step t (as ``pf_step``'s backward
    pass): the cotangents (gxo, gwo) (B, N) of the step's new filter, updated in place into
    those of its input filter, and (gmo, gvo) (B,) of its moments. Returns (gx, gw, gtau,
    gphase, gdecay)."""
    xs, ws, idx = stacks
    dtype = xs.dtype
    batch = tau.shape
    outs = (jax.ShapeDtypeStruct(gxo.shape, dtype), jax.ShapeDtypeStruct(gwo.shape, dtype),
            *(jax.ShapeDtypeStruct(batch, dtype) for _ in range(3)))
    return _call(_LOOP[jnp.dtype(dtype).name][2], outs,
                 (xs, ws, idx, jnp.asarray(t, jnp.int32), key_jit, tau, phase, decay, y, mo, flags, gxo, gwo, gmo,
                  gvo), _attrs(config, float(low), float(high)), aliases={11: 0, 12: 1})


def normals(key, n: int, dtype=jnp.float32) -> jnp.ndarray:
    """The kernel's standard normals for raw keys (..., 2): (..., n), to compare with
    ``physics.prng.normal(key, (n,), dtype)`` (the tests do)."""
    load()
    key = jnp.asarray(key)
    name = {"float32": "QsmNormalsF32", "float64": "QsmNormalsF64"}[jnp.dtype(dtype).name]
    return jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(key.shape[:-1] + (n,), dtype),
                            vmap_method="broadcast_all")(key)
