"""Minimal reproducer of the XLA CPU hang (jaxlib 0.10.2): two batched LAPACK QRs in one program.

    python docs/results/lapack_hang_repro.py            # jnp.linalg.qr: hangs (0% CPU) on 2 cores
    python docs/results/lapack_hang_repro.py --ours     # agents.networks.householder_q: finishes

Each chain is a large elementwise kernel (parallelised over XLA's intra-op pool) followed by a
batched QR. The QR runs on the pool thread that finished the kernel; jaxlib 0.10.2's
ParallelBatchMap then queues the batch's pieces on the same pool and blocks in
BlockingCounter::Wait. With both pool threads (2 cores) blocked like that, nobody runs the
queued pieces: gdb shows both "tf_XLAEigen" threads in lapack_sgeqrf_ffi ->
QrFactorizationKernel -> ParallelBatchMap -> BlockingCounter::Wait, and Python in
block_until_ready. Exit status 124 from `timeout` = hung.
"""

import sys
import time

import jax
import jax.numpy as jnp

from qsmgym.agents.networks import householder_q

OURS = "--ours" in sys.argv
BATCH, N, ITERS = 16, 128, 3000


def chain(x):
    x = jnp.tanh(x * 1.01) + jnp.sin(x)
    q = householder_q(x) if OURS else jnp.linalg.qr(x)[0]
    return q.sum()


f = jax.jit(lambda a, b: (chain(a), chain(b)))
a = jax.random.normal(jax.random.PRNGKey(0), (BATCH, N, N), jnp.float32)
b = a + 1.0
t0 = time.time()
for i in range(ITERS):
    jax.block_until_ready(f(a, b))
    if i % 500 == 0:
        print(f"iteration {i}, {time.time() - t0:.1f} s", flush=True)
print(f"finished {ITERS} iterations in {time.time() - t0:.1f} s ({'householder_q' if OURS else 'jnp.linalg.qr'})")
