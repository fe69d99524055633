"""The LAPACK-free orthogonal initialiser (agents/networks.py) and the absence of LAPACK QR calls
from the agents' vmapped training programs.

Why it matters: jaxlib 0.10.2's batched CPU LAPACK kernels (geqrf, potrf, ...) split their
batch over XLA's intra-op thread pool and block until the pieces finish; when as many run at
once as the pool has threads, the program deadlocks (docs/results/README.md). The orthogonal
initialisers of several layers, vmapped over seeds, were such calls (a native stack of a hung
results run had both pool threads in lapack_sgeqrf_ffi). The physics cores keep small LAPACK
calls of their own (the kicked top's eigh and expm), so the checks here are for the agents'
programs on other tasks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.agents import model_aware as ma
from qsmgym.agents import ppo
from qsmgym.agents.networks import householder_q, orthogonal
from qsmgym.envs.registry import make_task

jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("shape", [(3, 64), (64, 64), (64, 3), (4, 5, 8), (7, 1)])
def test_orthogonal_equals_jax_initializer(shape):
    # Same normal draw; the QR with a positive diagonal of R is unique, so the two agree up to
    # float64 Householder rounding (~ n * eps * cond(z); cond of a 64 x 64 Gaussian ~ 1e2-1e3).
    key = jax.random.PRNGKey(11)
    ours = orthogonal(1.7)(key, shape, jnp.float64)
    ref = jax.nn.initializers.orthogonal(1.7)(key, shape, jnp.float64)
    assert ours.shape == ref.shape == shape and ours.dtype == jnp.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_householder_q_is_orthonormal_and_triangularises():
    z = jax.random.normal(jax.random.PRNGKey(3), (6, 40, 25), jnp.float64)
    q = householder_q(z)
    assert q.shape == z.shape
    qt = jnp.swapaxes(q, -1, -2)
    np.testing.assert_allclose(qt @ q, np.broadcast_to(np.eye(25), (6, 25, 25)), rtol=0, atol=1e-13)
    r = np.asarray(qt @ z)  # R = Q^T z: upper triangular with a positive diagonal
    assert np.all(np.abs(np.tril(r, -1)) < 1e-12)
    assert np.all(np.diagonal(r, axis1=-2, axis2=-1) > 0)
    np.testing.assert_allclose(q @ np.triu(r), z, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="rows >= columns"):
        householder_q(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D shape"):
        orthogonal()(jax.random.PRNGKey(0), (4,))


def _lapack_calls(fn, *args) -> list[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return sorted({line.split("@")[1].split("(")[0] for line in text.splitlines()
                   if "custom_call" in line and "lapack" in line})


def _qr_calls(fn, *args) -> list[str]:
    return [c for c in _lapack_calls(fn, *args) if any(k in c for k in ("geqrf", "orgqr", "ungqr", "geqp3"))]


@pytest.mark.parametrize("network", ["mlp", "lstm"])
def test_ppo_training_program_has_no_qr_call(network):
    task = make_task("qsm/MemoryCutoff-v0", horizon=8)
    cfg = ppo.PPOConfig(network=network, num_envs=2, num_steps=4, total_timesteps=8, num_minibatches=1,
                        hidden_sizes=(16, 16), lstm_size=8)
    train = jax.vmap(ppo.make_train(cfg, task, task.default_params()), in_axes=(0, None))
    assert _lapack_calls(train, jax.random.split(jax.random.PRNGKey(0), 2), ppo.default_hyper()) == []  # none at all


def test_model_aware_training_program_has_no_lapack_call():
    task = make_task("qsm/PhotonShaping-v0")
    config = ma.ModelAwareConfig(hidden_sizes=(8,), iterations=2, batch_episodes=2, eval_episodes=2)
    train = jax.vmap(ma.make_train(config, task, task.default_params()), in_axes=(0, None))
    # none at all: the photon core's 4 x 4 solve is physics/cavity.solve_small, not LAPACK
    assert _lapack_calls(train, jax.random.split(jax.random.PRNGKey(0), 2), ma.default_hyper()) == []


def test_the_check_sees_a_lapack_call():
    # the detector itself: jax's own orthogonal initialiser, vmapped, lowers to geqrf
    init = jax.vmap(lambda k: jax.nn.initializers.orthogonal()(k, (8, 8), jnp.float32))
    assert any("geqrf" in c for c in _qr_calls(init, jax.random.split(jax.random.PRNGKey(0), 2)))
