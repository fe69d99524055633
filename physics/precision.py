"""Double precision for the physics core.

QFI values grow like t^2 (up to 4 j^2 t^2) and the SLD formula divides by eigenvalues of rho
that decay under damping, so single precision loses digits the tests check. JAX keeps 64-bit
types off by default; ``ensure_x64`` turns them on at a user-facing boundary (an env or agent
constructor), never at import time, and says so once.
"""

from __future__ import annotations

import warnings

import jax

_warned = False


def ensure_x64() -> None:
    """Enable ``jax_enable_x64`` if it is off, warning once per process.

    Call this before building arrays that must be complex128. Users who want to avoid the
    warning set ``jax.config.update("jax_enable_x64", True)`` themselves before creating an env.
    """
    global _warned
    if jax.config.jax_enable_x64:
        return
    jax.config.update("jax_enable_x64", True)
    if not _warned:
        _warned = True
        warnings.warn(
            "qsm-gym enabled jax_enable_x64: its physics needs complex128. Set "
            "jax.config.update('jax_enable_x64', True) before creating envs to silence this.",
            stacklevel=3,
        )
