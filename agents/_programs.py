"""A small least-recently-used store of compiled programs, keyed by the values they close over.

Evaluation helpers (``nv_heuristics.rollout_tau_policies``, ``model_aware_pf.evaluate``) build a
jitted program around a task, its params and sizes. Called again with equal ones (16 runs of a
heuristic, one evaluation per trained seed), they should reuse the program instead of tracing
and compiling it anew. Params are pytrees of arrays, so they are keyed by their values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import jax
import numpy as np


def values_key(tree) -> tuple | None:
    """A hashable key of a pytree's structure and leaf values; None if a leaf is traced."""
    try:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return (treedef, tuple((a.shape, a.dtype.str, a.tobytes()) for a in map(np.asarray, leaves)))
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class ProgramCache:
    """``get(key, build)``: the program stored under ``key``, else ``build()`` (stored unless the
    key is None or unhashable, e.g. a lambda task). Keeps the ``size`` most recently used."""

    def __init__(self, size: int = 8):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got size={size!r}")
        self.size = size
        self._store: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: Hashable | None, build: Callable[[], Any]) -> Any:
        try:
            hash(key)
        except TypeError:  # an unhashable part: compile for this call only
            key = None
        if key is not None and key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        program = build()
        if key is not None:
            self._store[key] = program
            while len(self._store) > self.size:
                self._store.popitem(last=False)
        return program
