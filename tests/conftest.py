"""Test-wide setup: the physics needs complex128, so tests enable x64 explicitly (the
library itself only does so at env construction, with a warning)."""

import jax

jax.config.update("jax_enable_x64", True)
