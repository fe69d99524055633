"""`qsm sweep` (experiments.sweep): worker processes sharing one Optuna storage, crash
retries, resume after interruption, pruning over budget rungs, one-line errors.

The objective is real: CEM on qsm/MemoryCutoff-v0 (N=2, 200 slots, as in the results table)
at a small budget (population 64, 150 iterations, 3 seeds: ~2-3 s a trial on a loaded 2-core box after compilation, measured), long
enough to kill a worker mid-trial. Worker processes share a JAX persistent compilation cache
so that only the first one pays the compilation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from qsmgym.experiments import sweep

ENV = "qsm/MemoryCutoff-v0"
BASE = ["--env", ENV, "--agent", "cem", "--budget", "tiny", "--seeds", "3", "--pruner", "none",
        "--set", "population=64", "--set", "n_elite=8", "--set", "iterations=150",
        # a 1 s heartbeat, failed after 6 s of silence: margin for a loaded box
        "--heartbeat", "1", "--grace", "6"]
WAIT_S = 300  # generous ceiling for a worker on a loaded 2-core box; a hang fails the test


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu",
                PYTHONUNBUFFERED="1")


def _start(args, env, log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qsmgym.experiments.sweep", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _load(storage: str, name: str, tmp: Path):
    return optuna.load_study(study_name=name, storage=sweep.open_storage(storage, tmp)[0])


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = predicate()
        if out:
            return out
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_with_heartbeat(storage, name, tmp):
    def check():
        try:
            study = _load(storage, name, tmp)
        except KeyError:  # study not created yet
            return None
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                   if sweep.HEARTBEAT_ATTR in t.system_attrs]
        return (study, running[0]) if running else None
    return check


def _by_state(study) -> dict:
    out: dict = {}
    for t in study.get_trials():
        out.setdefault(t.state, []).append(t)
    return out


def _reported(log_text: str, state: str) -> list[int]:
    return [int(n) for n in re.findall(rf"\] trial (\d+) {state}\b", log_text)]


# --------------------------------------------------------------------------- worker processes
def test_three_workers_one_journal_complete_n_trials_without_duplicates(tmp_path, worker_env):
    storage = f"journal:{tmp_path / 'sweep.journal'}"
    args = BASE + ["--n-trials", "6", "--storage", storage, "--study", "three", "--out", str(tmp_path / "out")]
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [_start(args, worker_env, log, tmp_path) for log in logs]
    codes = [p.wait(timeout=WAIT_S) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], texts

    study = _load(storage, "three", tmp_path)
    states = _by_state(study)
    complete = states.get(TrialState.COMPLETE, [])
    assert len(complete) == 6  # exactly n-trials, although three workers raced for slots
    print("three workers:", {k.name: sorted(t.number for t in v) for k, v in states.items()},
          "by worker:", sorted((t.number, t.user_attrs[sweep.WORKER_ATTR]) for t in complete))
    assert set(states) <= {TrialState.COMPLETE, TrialState.FAIL}
    assert all(t.user_attrs[sweep.REASON_ATTR] == "over budget" for t in states.get(TrialState.FAIL, []))
    # every completed trial was run by exactly one worker, as the workers' own logs say
    ran = [n for text in texts for n in _reported(text, "COMPLETE")]
    assert sorted(ran) == sorted(t.number for t in complete)
    assert len({t.user_attrs[sweep.WORKER_ATTR] for t in complete}) >= 2  # the work was shared
    assert all("6/6 trials done" in text for text in texts)
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["best_value"] == max(t.value for t in complete)
    assert best["states"] == {"COMPLETE": 6, **({"FAIL": len(states[TrialState.FAIL])}
                                                if TrialState.FAIL in states else {})}


def test_sigkilled_worker_trial_fails_after_grace_and_restarted_worker_retries_it(tmp_path, worker_env):
    storage = f"journal:{tmp_path / 'sweep.journal'}"
    args = BASE + ["--n-trials", "3", "--storage", storage, "--study", "kill", "--out", str(tmp_path / "out")]
    w1 = _start(args, worker_env, tmp_path / "w1.log", tmp_path)
    _, victim = _wait_for(_running_with_heartbeat(storage, "kill", tmp_path), WAIT_S, "a running trial")
    w1.send_signal(signal.SIGKILL)
    assert w1.wait(timeout=30) == -signal.SIGKILL
    study = _load(storage, "kill", tmp_path)
    # killed mid-trial: exactly one trial is left RUNNING. (It is the one seen running above
    # unless that one finished in the instant before the signal landed and the worker had
    # already started the next: a race of the test, not of the sweep, so take it from the study.)
    (victim,) = study.get_trials(states=(TrialState.RUNNING,))

    w2 = _start(args, worker_env, tmp_path / "w2.log", tmp_path)
    assert w2.wait(timeout=WAIT_S) == 0, (tmp_path / "w2.log").read_text()
    log2 = (tmp_path / "w2.log").read_text()
    study = _load(storage, "kill", tmp_path)
    states = _by_state(study)
    print("sigkill: victim", victim.number, {k.name: sorted(t.number for t in v) for k, v in states.items()})
    assert len(states[TrialState.COMPLETE]) == 3
    assert set(states) == {TrialState.COMPLETE, TrialState.FAIL}  # nothing left RUNNING or WAITING
    (dead,) = states[TrialState.FAIL]
    assert dead.number == victim.number
    assert dead.user_attrs[sweep.REASON_ATTR].startswith("heartbeat silent")
    assert f"trial {victim.number} FAIL: heartbeat silent" in log2
    # failed only after the grace period (6 s) of silence; 0.5 s slack for clock resolution
    assert dead.datetime_complete.timestamp() - dead.system_attrs[sweep.HEARTBEAT_ATTR] >= 5.5
    (retry,) = [t for t in states[TrialState.COMPLETE] if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params
    assert retry.number > victim.number


def test_signal_inside_ask_closes_the_new_trial(tmp_path, monkeypatch):
    # Deterministic version of a CI flake (2026-11-24): SIGINT landing inside study.ask(),
    # after the storage created the trial but before the worker held it, left the trial
    # RUNNING. The signal is now held for the ask and raised once the worker holds the trial.
    real_ask = optuna.Study.ask

    def ask_then_signal(self, *a, **k):
        trial = real_ask(self, *a, **k)
        signal.raise_signal(signal.SIGINT)  # handler runs here, inside the worker's ask
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_signal)
    out = tmp_path / "out"
    assert sweep.main(BASE + ["--n-trials", "2", "--study", "ask", "--out", str(out)]) == 130
    study = _load(f"sqlite:///{out / 'sweep.db'}", "ask", tmp_path)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.user_attrs[sweep.REASON_ATTR] == "interrupted"
    assert [t.state for t in study.trials if t.number != failed.number] == [TrialState.WAITING]  # its retry
    assert not sweep.SIGNALS_DEFERRED.active


def test_interrupted_sweep_resumes_same_study(tmp_path, worker_env):
    out = tmp_path / "out"
    args = BASE + ["--n-trials", "4", "--study", "resume", "--out", str(out)]  # default: sqlite in out
    storage = f"sqlite:///{out / 'sweep.db'}"
    w1 = _start(args, worker_env, tmp_path / "w1.log", tmp_path)

    def one_done_and_one_running():
        got = _running_with_heartbeat(storage, "resume", tmp_path)() if (out / "sweep.db").exists() else None
        if got and any(t.state == TrialState.COMPLETE for t in got[0].trials):
            return got
        return None

    _, victim = _wait_for(one_done_and_one_running, WAIT_S, "a completed and a running trial")
    w1.send_signal(signal.SIGINT)
    assert w1.wait(timeout=60) == 130
    log1 = (tmp_path / "w1.log").read_text()
    assert "interrupted" in log1 and "Traceback" not in log1
    before = _load(storage, "resume", tmp_path)
    snapshot = {t.number: t.state.name for t in before.trials}  # Study objects read live
    done_before = {t.number: t.value for t in before.trials if t.state == TrialState.COMPLETE}
    # the trial running when SIGINT landed is closed as FAIL "interrupted" (normally the one seen
    # running above; if that one finished just before the signal, the next one: take it from the study)
    failed = [t for t in before.trials if t.state == TrialState.FAIL]
    if failed:
        (victim,) = failed
        assert victim.user_attrs[sweep.REASON_ATTR] == "interrupted"
        (queued,) = [t for t in before.trials if t.state == TrialState.WAITING]
        assert queued.params == victim.params and queued.system_attrs["failed_trial"] == victim.number
    else:  # SIGINT landed between two trials: nothing was running, so nothing to fail or retry
        assert not [t for t in before.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        queued = None

    w2 = _start(args, worker_env, tmp_path / "w2.log", tmp_path)
    assert w2.wait(timeout=WAIT_S) == 0, (tmp_path / "w2.log").read_text()
    after = _load(storage, "resume", tmp_path)
    assert after._study_id == before._study_id
    assert len(optuna.get_all_study_summaries(sweep.open_storage(storage, tmp_path)[0])) == 1
    complete = {t.number: t for t in after.trials if t.state == TrialState.COMPLETE}
    print("resume: before", snapshot,
          "after", {t.number: t.state.name for t in after.trials})
    assert len(complete) == 4
    assert {n: complete[n].value for n in done_before} == done_before  # kept, not rerun
    assert queued is None or queued.number in complete  # the queued retry ran
    new = set(complete) - set(done_before)
    assert min(new) > max(done_before)  # the count went on from where it stopped


# ------------------------------------------------------------------------------- bad input
BAD = [
    (["--env", "qsm/Nope-v0", "--agent", "cem", "--n-trials", "1"], "qsm/Nope-v0"),
    (["--env", ENV, "--agent", "dqn", "--n-trials", "1"], "dqn"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "0"], "--n-trials"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "x"], "'x'"),
    (["--agent", "cem", "--n-trials", "1"], "--env"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--budget", "huge"], "huge"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--pruner", "hyperband"], "hyperband"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--set", "iterations=abc"], "iterations=abc"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--set", "bogus=3"], "bogus"),
    (["--env", ENV, "--agent", "cem", "--budget", "tiny", "--n-trials", "1", "--set", "population=-3"],
     "population"),
    (["--env", ENV, "--agent", "cem", "--budget", "tiny", "--n-trials", "1", "--rungs", "3"], "--rungs 3"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--storage", "journal:/nonexistent-dir/x.journal"],
     "/nonexistent-dir"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--storage", "sqlite:////nonexistent-dir/x.db"],
     "cannot open"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--storage", "redis-ish"], "redis-ish"),
    (["--env", ENV, "--agent", "cem", "--n-trials", "1", "--heartbeat", "5", "--grace", "6"], "--grace"),
]


@pytest.mark.parametrize("argv, needle", BAD)
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    code = sweep.main(argv + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("qsm sweep: error:"), err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("space, needle", [
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.2}}, "learning_rate"),  # a PPO key
    ({"smoothing": {"type": "float", "low": 0.9, "high": 0.1}}, "smoothing"),
    ({"init_std": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "init_std"),
    ({"smoothing": {"type": "categorical", "choices": []}}, "smoothing"),
    ({"smoothing": {"type": "int", "low": 0, "high": 1}}, "smoothing"),
    ([1, 2], "[1, 2]"),
    ("not json", "not valid JSON"),
])
def test_malformed_search_space_is_one_line(space, needle, tmp_path, capsys):
    path = tmp_path / "space.json"
    path.write_text(space if isinstance(space, str) else json.dumps(space))
    code = sweep.main(["--env", ENV, "--agent", "cem", "--n-trials", "1", "--search-space", str(path),
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_unreachable_postgres_fails_fast_without_password(tmp_path, capsys):
    start = time.monotonic()
    code = sweep.main(["--env", ENV, "--agent", "cem", "--n-trials", "1", "--out", str(tmp_path),
                       "--storage", "postgresql+psycopg2://user:s3cret@127.0.0.1:1/db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "postgresql" in err, err
    assert "s3cret" not in err
    assert time.monotonic() - start < 30  # connect timeout is 5 s; no driver fails at once


def test_workers_opening_a_fresh_sqlite_together_all_get_it(tmp_path):
    # CI saw this: a worker creating sweep.db while another process opened it failed with
    # "UNIQUE constraint failed: alembic_version" (or "table studies already exists"); array jobs
    # on a cluster start the same way. Without the retry in open_storage every round below fails.
    import threading

    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'fresh{round_}.db'}"
        barrier, errors, names = threading.Barrier(4), [], []

        def worker(i):
            barrier.wait()
            try:
                storage, _ = sweep.open_storage(url, tmp_path)
                names.append(optuna.create_study(storage=storage, study_name=f"s{i}").study_name)
            except Exception as exc:  # collected and shown by the assert below
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [], errors
        assert sorted(names) == ["s0", "s1", "s2", "s3"]


def test_bad_input_in_a_real_process_no_traceback_unless_debug(tmp_path):
    cmd = [sys.executable, "-m", "qsmgym.experiments.sweep", "--env", "qsm/Nope-v0", "--agent", "cem",
           "--n-trials", "1", "--out", str(tmp_path)]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.strip().count("\n") == 0 and "qsm/Nope-v0" in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


# ----------------------------------------------------------------------------- pieces
def _memory_study():
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")


def test_reap_stale_fails_silent_trial_once_and_queues_its_retry():
    study = _memory_study()
    silent, alive = study.ask(), study.ask()
    for t in (silent, alive):
        t.suggest_float("smoothing", 0.1, 0.9)
    storage = study._storage
    storage.set_trial_system_attr(silent._trial_id, sweep.HEARTBEAT_ATTR, time.time() - 100.0)
    storage.set_trial_system_attr(alive._trial_id, sweep.HEARTBEAT_ATTR, time.time())
    messages: list[str] = []
    assert sweep.reap_stale(study, grace=10.0, max_retry=3, log=messages.append) == [silent.number]
    assert sweep.reap_stale(study, grace=10.0, max_retry=3, log=messages.append) == []  # no double retry
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].params == trials[0].params and trials[2].system_attrs["failed_trial"] == silent.number
    assert len(messages) == 1


def test_reap_stale_respects_max_retry():
    study = _memory_study()
    t = study.ask()
    study._storage.set_trial_system_attr(t._trial_id, sweep.HEARTBEAT_ATTR, time.time() - 100.0)
    assert sweep.reap_stale(study, grace=10.0, max_retry=0, log=lambda m: None) == [t.number]
    assert [x.state for x in study.get_trials()] == [TrialState.FAIL]  # failed, not retried


def test_slot_rank_counts_holders_below_a_trial():
    study = _memory_study()
    trials = [study.ask() for _ in range(3)]
    assert sweep._slot_rank(study, trials[2].number) == 2
    study.tell(trials[0], state=TrialState.FAIL)  # a failed trial frees its slot
    study.tell(trials[1], 0.5)
    assert sweep._slot_rank(study, trials[2].number) == 1


def test_search_space_names_are_the_agents_traced_hyperparameters():
    from qsmgym.agents import cem, ppo

    assert set(sweep._hyper_keys("cem")) == set(cem.default_hyper())
    assert set(sweep._hyper_keys("ppo")) == set(ppo.default_hyper())
    for agent in sweep.AGENTS:
        assert sweep.parse_search_space(sweep.DEFAULT_SPACES[agent], agent)


def test_rungs_grow_by_eta_and_too_few_are_refused():
    from qsmgym.envs.registry import make_task

    task = make_task(ENV, N=2, horizon=200)
    setup = sweep.make_setup(ENV, "cem", "tiny", 2, {"iterations": 28}, 3, 3, task)
    assert setup.rungs == (3, 9, 28)  # floor(28 / 9), floor(28 / 3), 28
    assert setup.steps == tuple(r * 8 * 200 for r in setup.rungs)  # population 8, horizon 200
    assert sweep.make_setup(ENV, "cem", "tiny", 2, {"iterations": 28}, 4, 3, task).rungs == (1, 3, 9, 28)
    with pytest.raises(sweep.SweepError, match="--rungs 5"):  # would need 3**4 = 81 iterations
        sweep.make_setup(ENV, "cem", "tiny", 2, {"iterations": 28}, 5, 3, task)


def test_objective_is_iqm_of_baseline_normalised_scores_of_results_runner():
    """The trial value must equal what experiments.results computes for the same settings
    (an independent path: separate jits for training and evaluation)."""
    from qsmgym.envs.registry import make_task
    from qsmgym.experiments.results import normalise, run_cem
    from qsmgym.experiments.stats import iqm

    setup = sweep.make_setup(ENV, "cem", "tiny", 4, {"iterations": 3}, 1, 3, make_task(ENV, N=2, horizon=200))
    runner = sweep.TrialRunner(setup)
    sampled = {"smoothing": 0.4, "init_std": 0.3, "min_std": 0.01}
    scores = runner.run(0, sampled)
    ref = run_cem(runner.task, runner.params, np.arange(4),
                  {"config": dict(population=8, n_elite=2, iterations=3), "hyper": sampled, "eval_episodes": 1})
    _, expected = normalise(ref.final_returns, runner.task.references(runner.params))
    # same keys, same float64 arithmetic; 1e-9 allows only XLA re-association between the programs
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-12)
    assert iqm(scores) == pytest.approx(iqm(expected), rel=1e-9)


def test_successive_halving_prunes_on_real_budget_rungs(tmp_path, capsys):
    # TimeDependentEstimation: continuous controls, so trial values do not tie (MemoryCutoff's
    # discrete cut-offs at this tiny budget often do, and ties are always promoted)
    env_id = "qsm/TimeDependentEstimation-v0"
    storage = f"journal:{tmp_path / 'sha.journal'}"
    code = sweep.main(["--env", env_id, "--agent", "cem", "--budget", "tiny", "--seeds", "3", "--n-trials", "6",
                       "--set", "iterations=9", "--rungs", "2", "--eta", "3", "--sampler-seed", "0",
                       "--storage", storage, "--study", "sha", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()
    study = _load(storage, "sha", tmp_path)
    states = _by_state(study)
    print("sha:", {t.number: (t.state.name, t.intermediate_values) for t in study.trials})
    pruned, complete = states.get(TrialState.PRUNED, []), states.get(TrialState.COMPLETE, [])
    assert len(pruned) + len(complete) == 6 and set(states) <= {TrialState.PRUNED, TrialState.COMPLETE}
    assert pruned, "successive halving pruned nothing"
    from qsmgym.envs.registry import make_task

    horizon = int(make_task(env_id).horizon)
    steps = (3 * 8 * horizon, 9 * 8 * horizon)  # iterations x population x horizon per rung
    rung0 = {t.number: t.intermediate_values[steps[0]] for t in study.trials}
    for t in complete:
        assert sorted(t.intermediate_values) == list(steps)
        assert t.value == t.intermediate_values[steps[1]]
    for t in pruned:
        assert sorted(t.intermediate_values) == [steps[0]]
        assert "scores_rung1" not in t.user_attrs  # never trained at the larger budget
        # SHA keeps a trial at least as good as every earlier one at its rung
        assert rung0[t.number] < max(v for n, v in rung0.items() if n < t.number)


# --------------------------------------------------------------------------- cluster launcher
def _launcher():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "experiments" / "cluster" / "submitit_sweep.py"
    spec = importlib.util.spec_from_file_location("submitit_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_needs_shared_storage_and_names_missing_submitit(capsys):
    launcher = _launcher()
    assert launcher.worker_command(["--env", ENV, "--storage", "journal:/x.journal"])[-4:] == [
        "--env", ENV, "--storage", "journal:/x.journal"]
    assert launcher.main(["--local", "--workers", "2", "--", "--env", ENV, "--n-trials", "2"]) == 2
    assert "shared --storage" in capsys.readouterr().err
    try:
        import submitit  # noqa: F401
    except ImportError:
        assert launcher.main(["--workers", "2", "--", "--storage", "journal:/x.journal"]) == 2
        assert "submitit is not installed" in capsys.readouterr().err


def test_slurm_template_runs_the_sweep_command_with_shared_storage():
    text = (Path(__file__).resolve().parents[2] / "experiments" / "cluster" / "slurm_sweep.sbatch").read_text()
    assert "#SBATCH --array=" in text and "--signal=B:TERM@" in text
    assert re.search(r"exec qsm sweep .*--storage \"\$STORAGE\"", text.replace("\\\n", " "))
    # the template's own heartbeat settings pass the sweep's validation
    hb, grace = re.search(r"--heartbeat (\d+) --grace (\d+)", text).groups()
    assert int(grace) > 2 * int(hb)
    subprocess.run(["bash", "-n", str(Path(__file__).resolve().parents[2] / "experiments" / "cluster"
                                     / "slurm_sweep.sbatch")], check=True)


@pytest.mark.slow
def test_ppo_sweep_learns_time_dependent_estimation(tmp_path, capsys):
    """A short real PPO sweep (2 rungs, successive halving): the best trial must be far above
    the naive constant-control baseline (0 on this scale). The results table's PPO reaches
    0.995 of the limit at 192k steps; 0.5 at a quarter of that budget leaves room for seed noise."""
    storage = f"journal:{tmp_path / 'ppo.journal'}"
    code = sweep.main(["--env", "qsm/TimeDependentEstimation-v0", "--agent", "ppo", "--seeds", "3",
                       "--n-trials", "4", "--rungs", "2", "--set", "total_timesteps=48000",
                       "--sampler-seed", "0", "--storage", storage, "--study", "ppo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    study = _load(storage, "ppo", tmp_path)
    states = _by_state(study)
    assert len(states.get(TrialState.COMPLETE, [])) + len(states.get(TrialState.PRUNED, [])) == 4
    assert study.best_value > 0.5
