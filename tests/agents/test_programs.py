"""The compiled-program store behind rollout_tau_policies and model_aware_pf.evaluate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.agents._programs import ProgramCache, values_key


def test_values_key_tells_values_apart_and_is_none_under_tracing():
    a = {"x": jnp.arange(3.0), "y": np.float32(2.0)}
    assert values_key(a) == values_key({"x": jnp.arange(3.0), "y": np.float32(2.0)})
    assert values_key(a) != values_key({"x": jnp.arange(3.0) + 1, "y": np.float32(2.0)})
    assert values_key(a) != values_key({"x": jnp.arange(3.0), "y": np.float64(2.0)})  # dtype counts
    assert values_key(a) != values_key((jnp.arange(3.0), np.float32(2.0)))  # structure counts
    seen = []
    jax.jit(lambda x: seen.append(values_key({"x": x})) or x)(jnp.ones(2))
    assert seen == [None]


def test_program_cache_reuses_evicts_least_recent_and_skips_unhashable_keys():
    built = []

    def build(name):
        return lambda: built.append(name) or name

    cache = ProgramCache(2)
    assert cache.get("a", build("a")) == "a" and cache.get("a", build("a2")) == "a"
    cache.get("b", build("b"))
    cache.get("a", build("a3"))  # a is now the most recent
    cache.get("c", build("c"))  # evicts b
    assert len(cache) == 2
    assert cache.get("b", build("b2")) == "b2" and cache.get("a", build("a4")) == "a4"  # b evicted a
    assert built == ["a", "b", "c", "b2", "a4"]
    assert cache.get(None, build("n")) == "n" and cache.get(("x", [1]), build("u")) == "u"
    assert cache.get(None, build("n2")) == "n2" and len(cache) == 2  # neither was kept
    with pytest.raises(ValueError, match="size"):
        ProgramCache(0)
