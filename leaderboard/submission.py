"""Leaderboard submissions: data only, validated strictly, never executed.

A submission is a folder::

    my_submission/
        submission.json      # schema: qsmgym/leaderboard/schema.json (format qsmgym.leaderboard/1)
        policy.msgpack       # only for kind "policy": flax msgpack weights of the declared network

``load_submission(path)`` (path: the folder or its submission.json) returns a ``Submission``
or raises ``SubmissionError`` (a ValueError) with a one-line reason. What it guarantees:

- Nothing is imported, unpickled or evaluated: JSON is parsed by ``json`` (NaN/Infinity
  literals, duplicate keys and nesting deeper than ``MAX_DEPTH`` refused), weights by
  ``flax.serialization.msgpack_restore`` (arrays of plain dtypes), and files that start like a
  Python pickle are refused by their first bytes.
- Only files inside the folder are touched, and only read: every entry of the folder must be
  a regular file (or a symlink resolving inside the folder) with an allow-listed extension
  (``ALLOWED_EXTENSIONS``); referenced names must be plain names (no ``/``, ``..``, absolute
  paths); sizes are checked with ``os.stat`` *before* a file is opened (``MAX_JSON_BYTES``,
  ``MAX_WEIGHTS_BYTES``), and reads are capped at the same size.
- The JSON obeys schema.json with ``additionalProperties: false`` everywhere (interpreted by
  ``check_schema`` below, a small strict interpreter of the keywords schema.json uses, so the
  schema file is the single source of truth without a jsonschema dependency), finite numbers.
- The env id (with version) is registered; an open-loop sequence has the task's horizon and
  every action lies in the task's action space; policy weights match the declared
  architecture leaf by leaf (structure, shape, floating dtype, finite values).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "qsmgym.leaderboard/1"
SUBMISSION_FILE = "submission.json"
ALLOWED_EXTENSIONS = (".json", ".msgpack")
MAX_JSON_BYTES = 2 * 1024 * 1024  # 100k-step action sequences fit; anything bigger is refused unread
MAX_WEIGHTS_BYTES = 16 * 1024 * 1024  # 4 layers x 512 wide float32 LSTM actor-critic ~ 10 MB
MAX_FILES = 8
MAX_DEPTH = 12
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"


class SubmissionError(ValueError):
    """A submission refused by validation; the message says what and where."""


# ------------------------------------------------------------------------------ file access
def _check_plain_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise SubmissionError(f"{what} must be a non-empty file name, got {name!r}")
    if os.path.isabs(name) or "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise SubmissionError(f"{what} must be a plain file name inside the submission folder "
                              f"(no '/', '..' or absolute path), got {name!r}")
    if not _PLAIN_NAME.fullmatch(name):
        raise SubmissionError(f"{what} must match {_PLAIN_NAME.pattern}, got {name!r}")
    if os.path.splitext(name)[1].lower() not in ALLOWED_EXTENSIONS:
        raise SubmissionError(f"{what} {name!r}: extension not allowed (allowed: "
                              f"{', '.join(ALLOWED_EXTENSIONS)}; pickles are never accepted)")


def _resolve_inside(folder: Path, name: str) -> Path:
    """Path of ``name`` inside ``folder``, refusing symlinks that leave it and non-regular files."""
    path = folder / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SubmissionError(f"file {name!r} named by the submission does not exist in {folder}") from None
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        if target.parent != folder:
            raise SubmissionError(f"file {name!r} is a symlink leaving the submission folder "
                                  f"(-> {os.readlink(path)!r}); refused")
        st = os.stat(target)
        path = target
    if not stat.S_ISREG(st.st_mode):
        raise SubmissionError(f"file {name!r} is not a regular file; refused")
    return path


def read_limited(folder: Path, name: str, max_bytes: int) -> bytes:
    """Bytes of ``folder/name``: plain name, inside the folder, size checked with os.stat
    before opening (so an oversized file is never read), read capped at ``max_bytes``.

    Raises:
        SubmissionError: bad name, missing, symlink out of the folder, not a regular file,
            larger than ``max_bytes``, or starting like a Python pickle.
    """
    _check_plain_name(name, "file name")
    path = _resolve_inside(folder, name)
    size = os.stat(path).st_size
    if size > max_bytes:
        raise SubmissionError(f"file {name!r} is {size} bytes, more than the limit of {max_bytes} "
                              "bytes; refused without reading")
    # O_NOFOLLOW + fstat: a file swapped for a symlink or a bigger file after the checks above
    # is still refused (the read is capped in any case)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise SubmissionError(f"file {name!r} changed while being checked; refused")
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:  # grew between stat and read
        raise SubmissionError(f"file {name!r} exceeds {max_bytes} bytes; refused")
    if raw[:2] in _PICKLE_PROTOCOLS or raw[:1] == b"\x80" and raw[-1:] == b".":
        raise SubmissionError(f"file {name!r} looks like a Python pickle; pickles are never loaded")
    return raw


def _check_folder(folder: Path) -> None:
    """Every entry of the folder: allow-listed, regular (or a symlink kept inside), few."""
    entries = sorted(os.listdir(folder))
    if len(entries) > MAX_FILES:
        raise SubmissionError(f"submission folder holds {len(entries)} entries, more than {MAX_FILES}")
    for name in entries:
        _check_plain_name(name, "file in the submission folder")
        _resolve_inside(folder, name)


# ------------------------------------------------------------------------------------ JSON
def _reject_constant(name: str):
    raise SubmissionError(f"non-finite number {name} in JSON; numbers must be finite")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise SubmissionError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def parse_json(raw: bytes, what: str = SUBMISSION_FILE) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, nesting <= MAX_DEPTH."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except SubmissionError as exc:
        raise SubmissionError(f"{what}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SubmissionError(f"{what} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    _check_depth(data, what)
    return data


def _check_depth(data, what):
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SubmissionError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children)


_SCHEMA_CACHE: dict = {}


def load_schema() -> dict:
    """schema.json (package data), parsed once."""
    if "schema" not in _SCHEMA_CACHE:
        _SCHEMA_CACHE["schema"] = json.loads(SCHEMA_PATH.read_text())
    return _SCHEMA_CACHE["schema"]


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}
_KNOWN = {"$schema", "$id", "$defs", "title", "description", "type", "properties", "required",
          "additionalProperties", "propertyNames", "maxProperties", "items", "minItems", "maxItems",
          "minimum", "maximum", "maxLength", "pattern", "const", "enum", "oneOf", "$ref"}


def check_schema(value: Any, schema: dict, where: str = "submission", root: dict | None = None) -> None:
    """Validate ``value`` against the JSON-Schema subset schema.json uses, strictly.

    Keywords: type, properties, required, additionalProperties (false or a schema),
    propertyNames, maxProperties, items, minItems, maxItems, minimum, maximum, maxLength,
    pattern (re.fullmatch semantics via ^...$ anchors), const, enum, local $ref, and oneOf
    whose branches are told apart by ``properties.kind.const``. Every number must be finite.
    An unknown keyword in the schema is an error (so the schema cannot silently say more than
    is checked).

    Raises:
        SubmissionError: naming the JSON path, the rule and the offending value.
    """
    root = schema if root is None else root
    unknown = set(schema) - _KNOWN
    if unknown:
        raise RuntimeError(f"schema keyword(s) {sorted(unknown)} at {where} are not interpreted")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise RuntimeError(f"only local $ref supported, got {ref!r}")
        return check_schema(value, root["$defs"][ref[len("#/$defs/"):]], where, root)
    if isinstance(value, float) and not math.isfinite(value):
        raise SubmissionError(f"{where}: numbers must be finite, got {value!r}")
    if "oneOf" in schema:
        kinds = [b["properties"]["kind"]["const"] for b in schema["oneOf"]]
        kind = value.get("kind") if isinstance(value, dict) else None
        if kind not in kinds:
            raise SubmissionError(f"{where}.kind must be one of {kinds}, got {kind!r}")
        return check_schema(value, schema["oneOf"][kinds.index(kind)], where, root)
    if "const" in schema and value != schema["const"]:
        raise SubmissionError(f"{where} must be {schema['const']!r}, got {_short(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise SubmissionError(f"{where} must be one of {schema['enum']}, got {_short(value)}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            raise SubmissionError(f"{where} must be of type {'/'.join(types)}, got {_short(value)}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise SubmissionError(f"{where} must be >= {schema['minimum']}, got {value!r}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SubmissionError(f"{where} must be <= {schema['maximum']}, got {value!r}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SubmissionError(f"{where} must be at most {schema['maxLength']} characters, got {len(value)}")
        if "pattern" in schema and not _matches(schema["pattern"], value):
            raise SubmissionError(f"{where} must match {schema['pattern']}, got {_short(value)}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise SubmissionError(f"{where} must have at least {schema['minItems']} items, got {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SubmissionError(f"{where} must have at most {schema['maxItems']} items, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                check_schema(item, schema["items"], f"{where}[{i}]", root)
    if isinstance(value, dict):
        _check_object(value, schema, where, root)


def _check_object(value: dict, schema: dict, where: str, root: dict) -> None:
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise SubmissionError(f"{where} must have at most {schema['maxProperties']} fields, got {len(value)}")
    props = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            raise SubmissionError(f"{where}: missing required field {key!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if "propertyNames" in schema and not _matches(schema["propertyNames"]["pattern"], key):
            raise SubmissionError(f"{where}: field name {key!r} not allowed (must match "
                                  f"{schema['propertyNames']['pattern']})")
        if key in props:
            check_schema(item, props[key], f"{where}.{key}", root)
        elif extra is False:
            raise SubmissionError(f"{where}: unexpected field {key!r} (allowed: {sorted(props)})")
        elif isinstance(extra, dict):
            check_schema(item, extra, f"{where}.{key}", root)


def _matches(pattern: str, value: str) -> bool:
    """JSON Schema's ``pattern`` with ^...$ anchors, but '$' may not match before a trailing
    newline (Python's '$' does): the match must end at the end of the string."""
    m = re.search(pattern, value)
    return m is not None and m.end() == len(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------- submission
@dataclasses.dataclass(frozen=True)
class Submission:
    """A validated submission.

    Attributes:
        folder: the submission folder (resolved).
        data: the validated submission.json content.
        actions: kind "open_loop": (horizon, *action_shape) array (int32 for Discrete and
            MultiBinary, float64 for Box); else None.
        weights: kind "policy": {"params": network variables, "obs_rms": dict or None};
            else None.
        task: the functional core it was checked against (default arguments of env_id).
    """

    folder: Path
    data: dict
    actions: np.ndarray | None = None
    weights: dict | None = None
    task: Any = None

    @property
    def env_id(self) -> str:
        return self.data["env_id"]

    @property
    def kind(self) -> str:
        return self.data["solution"]["kind"]

    @property
    def agent(self) -> str:
        return self.data["agent"]["name"]

    @property
    def claimed_returns(self) -> np.ndarray:
        return np.asarray(self.data["claimed_results"]["episode_returns"], np.float64)


def _split(path) -> tuple[Path, str]:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return Path(os.path.realpath(path)), SUBMISSION_FILE
    if path.suffix == ".json":
        return Path(os.path.realpath(path.parent)), path.name
    raise SubmissionError(f"path must be a submission folder or its {SUBMISSION_FILE}, got {str(path)!r}")


def task_for(env_id: str):
    """The registered functional core of ``env_id`` (default arguments), or SubmissionError."""
    from qsmgym.envs.registry import TASKS, make_task

    if env_id not in TASKS:
        name = env_id.rsplit("-v", 1)[0]
        versions = sorted(t.rsplit("-", 1)[1] for t in TASKS if t.rsplit("-v", 1)[0] == name)
        hint = f" (registered versions of {name}: {', '.join(versions)})" if versions else \
            f" (registered: {', '.join(sorted(TASKS))})"
        raise SubmissionError(f"env_id {env_id!r} is not a registered task id{hint}")
    return make_task(env_id)


def load_submission(path, *, task=None) -> Submission:
    """Validate and load the submission at ``path`` (folder, or its submission.json).

    Args:
        path: the submission folder or the JSON file inside it.
        task: the functional core to check against (default: built from the env id).

    Returns:
        ``Submission``.

    Raises:
        SubmissionError: any refusal, with a one-line message.
    """
    folder, name = _split(path)
    if not folder.is_dir():
        raise SubmissionError(f"submission folder {str(folder)!r} does not exist")
    _check_folder(folder)
    data = parse_json(read_limited(folder, name, MAX_JSON_BYTES), name)
    check_schema(data, load_schema())
    if len(data["claimed_results"].get("eval_seeds", data["claimed_results"]["episode_returns"])) != \
            len(data["claimed_results"]["episode_returns"]):
        raise SubmissionError("claimed_results.eval_seeds must have one seed per entry of episode_returns")
    if "curve" in data and len(data["curve"]["env_steps"]) != len(data["curve"]["returns"]):
        raise SubmissionError("curve.env_steps and curve.returns must have the same length")
    task = task_for(data["env_id"]) if task is None else task
    params = task.default_params()
    solution = data["solution"]
    if solution["kind"] == "open_loop":
        return Submission(folder, data, actions=check_actions(solution["actions"], task, params), task=task)
    weights = load_weights(folder, solution["weights_file"], solution["architecture"], task, params)
    return Submission(folder, data, weights=weights, task=task)


def check_actions(actions: list, task, params) -> np.ndarray:
    """The open-loop sequence as an array, checked against the task's horizon and action space."""
    import gymnasium as gym

    space = task.action_space(params)
    horizon = int(task.horizon)
    if len(actions) != horizon:
        raise SubmissionError(f"solution.actions must have the task's horizon of {horizon} steps for "
                              f"{task.id}, got {len(actions)}")
    shape = () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)
    try:
        arr = np.asarray(actions, dtype=np.float64)
    except (ValueError, TypeError):
        raise SubmissionError(f"solution.actions must be a regular array of shape ({horizon}, "
                              f"{', '.join(map(str, shape))}) (ragged nesting)") from None
    if arr.shape != (horizon,) + shape:
        raise SubmissionError(f"solution.actions must have shape {(horizon,) + shape} for {task.id}, "
                              f"got {arr.shape}")
    if isinstance(space, gym.spaces.Box):
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        bad = np.argwhere(np.any((arr < low) | (arr > high), axis=tuple(range(1, arr.ndim))))
        if bad.size:
            t = int(bad[0][0])
            raise SubmissionError(f"solution.actions[{t}] = {arr[t].tolist()} lies outside the action "
                                  f"space [{space.low.min()}, {space.high.max()}]")
        return arr
    if not np.all(arr == np.round(arr)):
        raise SubmissionError(f"solution.actions must be integers for {space}, got non-integer entries")
    n = int(space.n) if isinstance(space, gym.spaces.Discrete) else 2
    start = int(getattr(space, "start", 0))
    bad = np.argwhere(np.any((arr < start) | (arr >= start + n), axis=tuple(range(1, arr.ndim))))
    if bad.size:
        t = int(bad[0][0])
        raise SubmissionError(f"solution.actions[{t}] = {arr[t].tolist()} is not in the action space {space}")
    return arr.astype(np.int32)


# ---------------------------------------------------------------------------------- weights
def ppo_config(architecture: dict):
    """The ``PPOConfig`` holding a submission's declared architecture (training fields default)."""
    from qsmgym.agents.ppo import PPOConfig

    return PPOConfig(num_envs=1, num_steps=1, total_timesteps=1, num_minibatches=1,
                     network=architecture["network"], hidden_sizes=tuple(architecture["hidden_sizes"]),
                     lstm_size=int(architecture["lstm_size"]),
                     normalize_obs=bool(architecture["normalize_obs"]),
                     obs_clip=float(architecture["obs_clip"]))


def weights_template(architecture: dict, task, params) -> dict:
    """Shapes/dtypes (jax.ShapeDtypeStruct leaves) of the declared network's variables."""
    import jax
    import jax.numpy as jnp

    from qsmgym.agents.distributions import PolicySpec
    from qsmgym.agents.networks import initial_carry
    from qsmgym.agents.ppo import make_network

    config = ppo_config(architecture)
    spec = PolicySpec.from_task(task, params)
    net = make_network(config, spec)
    carry = initial_carry(config.network, config.lstm_size, 1)
    return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), carry, jnp.zeros((1, 1, spec.obs_dim)),
                                           jnp.zeros((1, 1), bool)))


def _flatten(tree, prefix=()) -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str):
                raise SubmissionError(f"weights: non-string key {k!r} at {'/'.join(prefix) or 'root'}")
            out.update(_flatten(v, prefix + (k,)))
        return out
    return {prefix: tree}


def _leaf(value, where: str, shape: tuple) -> np.ndarray:
    if isinstance(value, np.generic):  # msgpack stores numpy scalars apart from arrays
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise SubmissionError(f"weights: {where} must be a floating-point array, got "
                              f"{type(value).__name__} {getattr(value, 'dtype', '')}")
    if value.shape != tuple(shape):
        raise SubmissionError(f"weights: {where} has shape {value.shape}, the declared architecture "
                              f"needs {tuple(shape)}")
    if not np.all(np.isfinite(value)):
        raise SubmissionError(f"weights: {where} holds non-finite values")
    return value.astype(np.float32)


def load_weights(folder: Path, name: str, architecture: dict, task, params) -> dict:
    """Restore the flax msgpack ``folder/name`` into the declared architecture, leaf by leaf.

    The file must hold ``{"params": <network variables>}`` and, iff ``normalize_obs``,
    ``"obs_rms": {"mean": (obs_dim,), "var": (obs_dim,), "count": ()}`` (what
    ``agents.ppo.save_checkpoint`` writes). Every leaf: the template's path and shape, a
    floating dtype, finite values; no other entries.

    Raises:
        SubmissionError: unreadable, not msgpack, or any structure/shape/dtype mismatch.
    """
    import flax.serialization

    from qsmgym.agents.distributions import PolicySpec

    raw = read_limited(folder, name, MAX_WEIGHTS_BYTES)
    try:
        state = flax.serialization.msgpack_restore(raw)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise SubmissionError(f"weights file {name!r} is not flax msgpack ({type(exc).__name__})") from None
    want_keys = {"params", "obs_rms"} if architecture["normalize_obs"] else {"params"}
    if not isinstance(state, dict) or set(state) != want_keys:
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise SubmissionError(f"weights file {name!r} must hold exactly {sorted(want_keys)}, got {got}")
    template = _flatten(weights_template(architecture, task, params))
    got = _flatten(state["params"])
    if set(got) != set(template):
        missing = sorted("/".join(k) for k in set(template) - set(got))
        extra = sorted("/".join(k) for k in set(got) - set(template))
        raise SubmissionError(f"weights do not match the declared architecture: missing {missing[:4]}, "
                              f"unexpected {extra[:4]}")
    flat = {k: _leaf(got[k], "params/" + "/".join(k), template[k].shape) for k in sorted(template)}
    out = {"params": _unflatten(flat), "obs_rms": None}
    if architecture["normalize_obs"]:
        obs_dim = PolicySpec.from_task(task, params).obs_dim
        rms = state["obs_rms"]
        if not isinstance(rms, dict) or set(rms) != {"mean", "var", "count"}:
            raise SubmissionError("weights: obs_rms must hold exactly mean, var, count")
        out["obs_rms"] = {
            "mean": _leaf(rms["mean"], "obs_rms/mean", (obs_dim,)),
            "var": _leaf(rms["var"], "obs_rms/var", (obs_dim,)),
            "count": _leaf(rms["count"], "obs_rms/count", ()),
        }
        if np.any(out["obs_rms"]["var"] < 0):
            raise SubmissionError("weights: obs_rms/var must be >= 0")
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return out
