"""Run folders and their records, shared by ``qsm train``, ``qsm evaluate`` and ``qsm reproduce``.

Every run writes one folder::

    <root>/<name>-<UTC time>/
        config.json      the frozen config dataclass of the run (``dataclasses.asdict``)
        meta.json        git commit (or null), package versions, JAX backend and devices,
                         Python, platform, command line, start and end time (UTC, ISO 8601)
        metrics.json     final numbers and the learning curve
        metrics.csv      the learning curve, one row per (seed, point)
        plots/*.png      learning curve, control pulses, final-state pictures

Everything is plain JSON / CSV / PNG (plus msgpack or .npy for policies): never pickle.
User errors surface as ``QsmError``, which the CLI prints as one line (exit code 2).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

PACKAGES = ("qsm-gym", "jax", "jaxlib", "flax", "optax", "gymnasium", "qutip", "numpy")


class QsmError(Exception):
    """Bad input from the command line (unknown id, malformed value, missing run folder...).

    The CLI prints ``qsm: error: <message>`` on one line and exits with code 2; ``--debug``
    shows the traceback instead.
    """


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``QsmError`` (one line, exit code 2 in the CLI) instead of printing
    the usage block and exiting."""

    def error(self, message):
        raise QsmError(f"{self.prog}: {message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- folders
def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def create_run_dir(root, name: str) -> Path:
    """Create and return a fresh ``root/<name>-<YYYYmmdd-HHMMSS>[-k]`` with a ``plots/`` folder.

    Args:
        root: parent folder (created if missing).
        name: run name; letters, digits and ``-_.`` only (env ids' ``/`` become ``_``).

    Raises:
        QsmError: an empty name.
    """
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(name)).strip("._")
    if not safe:
        raise QsmError(f"run name must contain letters or digits, got name={name!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = root / (f"{safe}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "plots").mkdir()
        return path
    raise QsmError(f"could not create a fresh run folder under {root} for {safe}")


# ----------------------------------------------------------------------------- records
def git_commit() -> str | None:
    """HEAD of the repository holding this file, or None (not a checkout, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None where a package is not installed)."""
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    """JAX backend and devices (imports jax)."""
    import jax

    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "x64": bool(jax.config.jax_enable_x64)}


def to_jsonable(x: Any) -> Any:
    """Config values as JSON: dataclasses and numpy/JAX scalars and arrays become dicts,
    numbers and lists; non-finite floats become None."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        arr = np.asarray(x)
        return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def write_json(path, data) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False))
    return path


def read_json(path) -> Any:
    """Read a JSON record; QsmError when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise QsmError(f"{path} does not exist (not a qsm run folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QsmError(f"{path} is not valid JSON ({exc})") from None


def write_config(run_dir, config) -> Path:
    """config.json: the run's frozen config dataclass."""
    return write_json(Path(run_dir) / "config.json", config)


def write_meta(run_dir, *, command: list[str], start: str, end: str | None = None, **extra) -> Path:
    """meta.json: git commit, package versions, device, Python, platform, command line, times."""
    meta = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": list(command),
        "start_time": start,
        "end_time": end,
        **extra,
    }
    return write_json(Path(run_dir) / "meta.json", meta)


def write_metrics(run_dir, metrics: dict, curve_rows: list[dict]) -> tuple[Path, Path]:
    """metrics.json (``metrics`` plus the curve) and metrics.csv (``curve_rows``, one dict per
    row with identical keys)."""
    run_dir = Path(run_dir)
    write_json(run_dir / "metrics.json", dict(metrics, curve=curve_rows))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        if curve_rows:
            writer = csv.DictWriter(f, fieldnames=list(curve_rows[0]))
            writer.writeheader()
            writer.writerows(to_jsonable(curve_rows))
    return run_dir / "metrics.json", run_dir / "metrics.csv"


# --------------------------------------------------------------------------- overrides
def parse_overrides(pairs: Iterable[str], sections: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``--set section.key=value`` strings -> {section: {key: value}}.

    Values are read as JSON (numbers, true/false, null, lists, quoted strings); anything that
    is not valid JSON is kept as a plain string. Nothing is evaluated as code.

    Raises:
        QsmError: a pair without ``=``, an unknown section, an empty key, a repeated key.
    """
    sections = tuple(sections)
    out: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for pair in pairs:
        if "=" not in pair:
            raise QsmError(f"--set expects section.key=value, got {pair!r}")
        lhs, raw = pair.split("=", 1)
        section, _, key = lhs.strip().partition(".")
        if section not in out or not key:
            raise QsmError(f"--set key must be one of {', '.join(s + '.<name>' for s in sections)}, "
                           f"got {lhs!r}")
        if key in out[section]:
            raise QsmError(f"--set {lhs} given twice")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[section][key] = value
    return out


# ------------------------------------------------------------------------- experiment logs
class ExperimentLoggers:
    """Optional TensorBoard / Weights & Biases loggers (off by default; imported lazily).

    Args:
        run_dir: the run folder (TensorBoard events go to ``run_dir/tensorboard``).
        tensorboard: write TensorBoard scalars (needs ``tensorboard`` with torch or
            ``tensorboardX``).
        wandb: log to W&B (needs ``wandb``; honours its own environment, e.g. WANDB_MODE).
        config: logged as the W&B run config.

    Raises:
        QsmError: a requested logger whose package is missing.
    """

    def __init__(self, run_dir, *, tensorboard: bool = False, wandb: bool = False, config=None):
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                try:
                    from tensorboardX import SummaryWriter
                except ImportError:
                    raise QsmError("--tensorboard needs the tensorboard package "
                                   "(pip install tensorboard)") from None
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as _wandb
            except ImportError:
                raise QsmError("--wandb needs the wandb package (pip install wandb)") from None
            self._wandb = _wandb.init(project="qsm-gym", dir=str(run_dir), name=Path(run_dir).name,
                                      config=to_jsonable(config))

    @staticmethod
    def check(*, tensorboard: bool = False, wandb: bool = False) -> None:
        """Fail fast (before any work) when a requested logger's package is missing.

        Raises:
            QsmError: naming the flag and the package to install.
        """
        import importlib.util

        if tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise QsmError("--tensorboard needs the tensorboard package (pip install tensorboard)")
        if wandb and importlib.util.find_spec("wandb") is None:
            raise QsmError("--wandb needs the wandb package (pip install wandb)")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        if self._tb is not None:
            self._tb.add_scalar(tag, float(value), int(step))
        if self._wandb is not None:
            self._wandb.log({tag: float(value)}, step=int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
