"""Helpers of the leaderboard tests: small valid submissions to break, and a file-access recorder."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SUBMISSIONS = REPO / "leaderboard" / "submissions"
CI_SEEDS = 6  # hidden seeds (1 episode each) per submission in the default suite (fast); real scoring: 16 x 8
ENV_ID = "qsm/RepeaterDelivery-v0"  # cheapest task to build (0.1 s): the validation fixtures use it
ARCH = {"agent": "ppo", "network": "mlp", "hidden_sizes": [8, 8], "lstm_size": 4,
        "normalize_obs": True, "obs_clip": 10.0}


@pytest.fixture(scope="session")
def repeater():
    from qsmgym.envs.registry import make_task

    task = make_task(ENV_ID)
    return task, task.default_params()


def base_data(task, solution: dict) -> dict:
    return {
        "format": "qsmgym.leaderboard/1", "env_id": task.id, "qsmgym_version": "0.1.0",
        "qsmgym_commit": "0123456789abcdef0123456789abcdef01234567",
        "agent": {"name": "test agent", "description": "fixture"},
        "config": {"population": 8, "nested": {"lr": 0.001, "sizes": [8, 8]}},
        "training_seeds": [0, 1], "compute": {"device": "cpu", "wall_seconds": 1.5, "env_steps": 100},
        "solution": solution, "claimed_results": {"episode_returns": [-9.0, -8.0, -10.0], "eval_seeds": [0, 1, 2]},
    }


def open_loop_folder(root: Path, task, **overrides) -> Path:
    """A valid open-loop submission (swap ASAP: every flag 1) in ``root/sub``."""
    folder = root / "sub"
    folder.mkdir(parents=True, exist_ok=True)
    actions = np.ones((int(task.horizon), 3), int).tolist()
    data = base_data(task, {"kind": "open_loop", "actions": actions})
    data.update(overrides)
    (folder / "submission.json").write_text(json.dumps(data))
    return folder


def policy_weights(task, params, arch=ARCH) -> bytes:
    import flax.serialization
    import jax

    from qsmgym.leaderboard.submission import weights_template

    template = weights_template(arch, task, params)
    rng = np.random.default_rng(0)
    params_np = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), template)
    obs_dim = 10
    payload = {"params": params_np, "obs_rms": {"mean": np.zeros(obs_dim, np.float32),
                                                "var": np.ones(obs_dim, np.float32),
                                                "count": np.asarray(5.0, np.float32)}}
    return flax.serialization.msgpack_serialize(payload)


def policy_folder(root: Path, task, params, weights: bytes | None = None, arch=ARCH) -> Path:
    folder = root / "sub"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.msgpack").write_bytes(policy_weights(task, params) if weights is None else weights)
    data = base_data(task, {"kind": "policy", "architecture": arch, "weights_file": "policy.msgpack"})
    (folder / "submission.json").write_text(json.dumps(data))
    return folder


# ------------------------------------------------------------------ file-access recording
_RECORD: list | None = None


def _hook(event, args):
    if _RECORD is None:
        return
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        _RECORD.append(("write" if writes else "read", path))
    elif event in ("os.listdir", "os.scandir"):
        _RECORD.append(("list", args[0]))
    elif event in ("os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.truncate", "os.chmod"):
        _RECORD.append(("write", args[0]))


_HOOKED = False


@contextlib.contextmanager
def record_file_access():
    """Record every open/listdir/write of this process (Python audit events, PEP 578) in the
    block. Audit hooks cannot be removed, so one hook is installed once and records only here."""
    global _RECORD, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_hook)
        _HOOKED = True
    _RECORD = []
    try:
        yield _RECORD
    finally:
        events = _RECORD
        _RECORD = None
        events[:] = [(kind, os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else p)
                     for kind, p in events]


def outside(events, folder: Path) -> list:
    """Events touching a path not inside ``folder`` (file descriptors, ints, are ignored)."""
    root = os.path.realpath(folder)
    bad = []
    for kind, p in events:
        if not isinstance(p, str):
            continue
        real = os.path.realpath(p)
        if not (real == root or real.startswith(root + os.sep)):
            bad.append((kind, p))
    return bad
