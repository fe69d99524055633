"""Submissions are data: every hostile case of issue 9 is refused with a clear message, and
validation reads nothing outside the submission folder and writes nothing at all.

The file-access checks use Python audit events (PEP 578): every open/listdir of the process
during validation is recorded (after one warm-up validation, so lazy imports of JAX/flax
modules do not count) and must lie inside the submission folder and be read-only.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from lb_helpers import (ARCH, base_data, open_loop_folder, outside, policy_folder, policy_weights,
                        record_file_access, repeater)  # noqa: F401  (repeater is a fixture)
from qsmgym.leaderboard.submission import (MAX_JSON_BYTES, MAX_WEIGHTS_BYTES, SubmissionError,
                                           check_schema, load_schema, load_submission, read_limited)


def _refused(folder, match):
    with record_file_access() as events:
        with pytest.raises(SubmissionError, match=match) as info:
            load_submission(folder)
    assert outside(events, folder) == [], f"touched outside the folder: {outside(events, folder)}"
    assert not [e for e in events if e[0] == "write"], f"wrote: {events}"
    assert "\n" not in str(info.value)  # one-line message
    return str(info.value)


def _rewrite(folder, **changes):
    data = json.loads((folder / "submission.json").read_text())
    data.update(changes)
    (folder / "submission.json").write_text(json.dumps(data))


# --------------------------------------------------------------------------- valid baselines
def test_valid_open_loop_and_policy_load_reading_only_their_folder(tmp_path, repeater):
    task, params = repeater
    folder = open_loop_folder(tmp_path / "a", task)
    load_submission(folder)  # warm-up: lazy imports happen here, not in the recorded block
    with record_file_access() as events:
        sub = load_submission(folder)
    assert sub.actions.shape == (task.horizon, 3) and sub.actions.dtype == np.int32
    assert ("read", str(folder / "submission.json")) in events
    assert outside(events, folder) == [] and not [e for e in events if e[0] == "write"]

    folder = policy_folder(tmp_path / "b", task, params)
    load_submission(folder)
    with record_file_access() as events:
        sub = load_submission(folder)
    assert sub.weights["params"]["params"]["actor_torso"]["Dense_0"]["kernel"].shape == (10, 8)
    assert outside(events, folder) == [] and not [e for e in events if e[0] == "write"]


# ------------------------------------------------------------------------------------ pickle
class _Canary:
    """Unpickling this creates a file: if any loader unpickled it, the canary file would exist."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_refused_and_never_unpickled(tmp_path, repeater):
    task, params = repeater
    canary = tmp_path / "canary_created_by_unpickling"
    payload = pickle.dumps(_Canary(str(canary)))
    assert payload[:2] == b"\x80\x04" or payload[:1] == b"\x80"

    folder = policy_folder(tmp_path / "a", task, params, weights=payload)  # pickle named .msgpack
    assert "looks like a Python pickle" in _refused(folder, "pickle")

    folder = policy_folder(tmp_path / "b", task, params)
    (folder / "policy.pkl").write_bytes(payload)  # a pickle lying in the folder
    _refused(folder, r"'policy.pkl': extension not allowed")

    folder = open_loop_folder(tmp_path / "c", task)
    (folder / "submission.json").write_bytes(payload)  # the JSON itself is a pickle
    _refused(folder, "pickle")
    assert not canary.exists()


# ------------------------------------------------------------------ extra executable fields
@pytest.mark.parametrize("field,where", [
    ({"__reduce__": "os.system('rm -rf ~')"}, "submission: unexpected field '__reduce__'"),
    ({"exec": "import os; os.remove('x')"}, "submission: unexpected field 'exec'"),
    ({"agent": {"name": "a", "description": "d", "code": "lambda: 0"}}, "submission.agent: unexpected field 'code'"),
    ({"config": {"__class__": "subprocess.Popen"}}, "field name '__class__' not allowed"),
    ({"config": {"deep": {"__import__": "os"}}}, "field name '__import__' not allowed"),
    ({"config": {"lr\n": 1}}, r"field name 'lr\\n' not allowed"),
    ({"solution": {"kind": "python", "source": "print(1)"}}, r"submission.solution.kind must be one of"),
])
def test_extra_executable_looking_fields_refused(tmp_path, repeater, field, where):
    folder = open_loop_folder(tmp_path, repeater[0], **field)
    _refused(folder, where)


# --------------------------------------------------------------------------- path traversal
@pytest.mark.parametrize("name", ["../outside.msgpack", "/etc/passwd", "sub/policy.msgpack",
                                  "..%2Fpolicy.msgpack", "policy.msgpack/..", "policy.pkl",
                                  "policy.msgpack\n"])
def test_path_traversal_names_refused(tmp_path, repeater, name):
    task, params = repeater
    (tmp_path / "outside.msgpack").write_bytes(policy_weights(task, params))
    folder = policy_folder(tmp_path, task, params)
    data = json.loads((folder / "submission.json").read_text())
    data["solution"]["weights_file"] = name
    (folder / "submission.json").write_text(json.dumps(data))
    _refused(folder, "weights_file must match")
    # the file reader refuses the same names on its own (defence in depth)
    with pytest.raises(SubmissionError, match="file name"):
        read_limited(folder, name, 1000)


def test_symlink_leaving_the_folder_refused(tmp_path, repeater):
    task, params = repeater
    secret = tmp_path / "secret.msgpack"
    secret.write_bytes(policy_weights(task, params))
    folder = policy_folder(tmp_path, task, params)
    os.remove(folder / "policy.msgpack")
    os.symlink(secret, folder / "policy.msgpack")  # a trap: a valid file, but outside
    msg = _refused(folder, "symlink leaving the submission folder")
    assert "policy.msgpack" in msg


# ---------------------------------------------------------------------------------- size
def test_one_gigabyte_file_refused_by_size_before_reading(tmp_path, repeater):
    task, params = repeater
    folder = policy_folder(tmp_path / "w", task, params)
    with open(folder / "policy.msgpack", "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GB by stat, no disk used
    load_submission(open_loop_folder(tmp_path / "warm", task))
    with record_file_access() as events:
        with pytest.raises(SubmissionError, match=r"is 1073741824 bytes, more than the limit of "
                           rf"{MAX_WEIGHTS_BYTES} bytes; refused without reading"):
            load_submission(folder)
    assert ("read", str(folder / "policy.msgpack")) not in events  # never opened

    folder = open_loop_folder(tmp_path / "j", task)
    with open(folder / "submission.json", "r+b") as f:
        f.truncate(1 << 30)
    with record_file_access() as events:
        with pytest.raises(SubmissionError, match=rf"more than the limit of {MAX_JSON_BYTES} bytes"):
            load_submission(folder)
    assert ("read", str(folder / "submission.json")) not in events


# ----------------------------------------------------------------------- non-finite claims
@pytest.mark.parametrize("literal,match", [("NaN", "non-finite number NaN"), ("Infinity", "non-finite number Infinity"),
                                           ("-Infinity", "non-finite number -Infinity"),
                                           ("1e999", r"numbers must be finite, got inf")])
def test_nan_and_inf_claimed_scores_refused(tmp_path, repeater, literal, match):
    folder = open_loop_folder(tmp_path, repeater[0])
    text = (folder / "submission.json").read_text().replace('"episode_returns": [-9.0,', f'"episode_returns": [{literal},')
    assert literal in text
    (folder / "submission.json").write_text(text)
    _refused(folder, match)


def test_duplicate_keys_and_deep_nesting_refused(tmp_path, repeater):
    folder = open_loop_folder(tmp_path, repeater[0])
    text = (folder / "submission.json").read_text()
    (folder / "submission.json").write_text(text[:-1] + ', "env_id": "qsm/KickedTopSensor-v0"}')
    _refused(folder, "duplicate JSON key 'env_id'")
    (folder / "submission.json").write_text("[" * 100000 + "]" * 100000)
    _refused(folder, "not valid JSON|nested deeper")


# --------------------------------------------------------------------- unknown env / version
@pytest.mark.parametrize("env_id,match", [
    ("qsm/RepeaterDelivery-v7", r"'qsm/RepeaterDelivery-v7' is not a registered task id \(registered versions of qsm/RepeaterDelivery: v0\)"),
    ("qsm/NoSuchTask-v0", "'qsm/NoSuchTask-v0' is not a registered task id"),
    ("CartPole-v1", "submission.env_id must match"),
])
def test_unknown_env_id_or_version_refused(tmp_path, repeater, env_id, match):
    folder = open_loop_folder(tmp_path, repeater[0], env_id=env_id)
    _refused(folder, match)


# ---------------------------------------------------------------------------- wrong shapes
def test_weights_of_the_wrong_shape_refused(tmp_path, repeater):
    task, params = repeater
    wider = dict(ARCH, hidden_sizes=[16, 8])
    folder = policy_folder(tmp_path, task, params, weights=policy_weights(task, params, wider))
    msg = _refused(folder, r"weights: params/params/actor_torso/Dense_0/bias has shape \(16,\), "
                           r"the declared architecture needs \(8,\)")
    assert "policy" not in msg
    deeper = dict(ARCH, hidden_sizes=[8, 8, 8])
    folder = policy_folder(tmp_path / "d", task, params, weights=policy_weights(task, params, deeper))
    _refused(folder, "do not match the declared architecture: missing \\[\\], unexpected")


def test_action_sequence_of_the_wrong_length_or_range_refused(tmp_path, repeater):
    task, _ = repeater
    folder = open_loop_folder(tmp_path, task)
    _rewrite(folder, solution={"kind": "open_loop", "actions": np.ones((task.horizon - 1, 3), int).tolist()})
    _refused(folder, rf"must have the task's horizon of {task.horizon} steps for qsm/RepeaterDelivery-v0, got {task.horizon - 1}")
    _rewrite(folder, solution={"kind": "open_loop", "actions": np.ones((task.horizon, 2), int).tolist()})
    _refused(folder, r"must have shape \(1000, 3\)")
    bad = np.ones((task.horizon, 3), int)
    bad[7, 1] = 2
    _rewrite(folder, solution={"kind": "open_loop", "actions": bad.tolist()})
    _refused(folder, r"solution.actions\[7\] = \[1.0, 2.0, 1.0\] is not in the action space")


def test_schema_file_is_strict_everywhere():
    """additionalProperties is false on every fixed-field object of schema.json (config is
    the one open map, with restricted key names)."""
    schema = load_schema()

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                if where.endswith("config") or where.endswith("config_value"):
                    assert "propertyNames" in node, where
                else:
                    assert node.get("additionalProperties") is False, where
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(schema, "schema")
    check_schema(base_data(type("T", (), {"id": "qsm/RepeaterDelivery-v0"})(),
                           {"kind": "open_loop", "actions": [[1, 1, 1]]}), schema)
    with pytest.raises(SubmissionError, match="must be of type integer, got True"):
        check_schema(dict(base_data(type("T", (), {"id": "qsm/X-v0"})(), {"kind": "open_loop", "actions": [1]}),
                          training_seeds=[True]), schema)


def test_validation_writes_nothing_anywhere(tmp_path, repeater):
    """Whole-tree snapshot around validation of every refused and accepted case above."""
    task, params = repeater
    folder = policy_folder(tmp_path, task, params)

    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}

    before = snapshot()
    with record_file_access() as events:
        load_submission(folder)
    assert snapshot() == before
    assert not [e for e in events if e[0] == "write"]


def test_scoring_reads_only_the_submission_folder_and_writes_nothing(tmp_path, repeater):
    """Re-evaluation (policy path: weights restored, network run) touches nothing outside the
    folder: after a warm-up scoring of one copy (lazy imports, compilation), scoring a second
    copy records only reads inside that copy, and the tree is unchanged."""
    from qsmgym.leaderboard.scorer import score_submission

    task, params = repeater
    score_submission(policy_folder(tmp_path / "warm", task, params), n_seeds=2, episodes_per_seed=1)
    folder = policy_folder(tmp_path / "real", task, params)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with record_file_access() as events:
        result = score_submission(folder, n_seeds=2, episodes_per_seed=1)
    assert len(result["returns"]) == 2
    assert ("read", str(folder / "policy.msgpack")) in events
    assert outside(events, folder) == [] and not [e for e in events if e[0] == "write"]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
