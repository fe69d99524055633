"""``qsm leaderboard {validate,score,build}``: dispatched here by ``qsm``'s CLI.

    qsm leaderboard validate PATH [PATH ...]            # schema, files, shapes; nothing is run
    qsm leaderboard score PATH [--seeds 16] [--episodes-per-seed 8] [--out scores.json]
    qsm leaderboard build [--submissions DIR] [--scores scores.json] [--out site] [--seeds 16] [--episodes-per-seed 8]

PATH is a submission folder (or its submission.json) or, for ``score``, a folder of
submissions (every folder below it holding a submission.json). Hidden seeds come from
``QSM_LEADERBOARD_SECRET`` (else the public release salt; see ``scorer``).

Exit status: 0 all good; 1 a submission flagged (claimed results disagree with the
re-evaluation); 2 a submission refused or bad arguments. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qsmgym.leaderboard.submission import SUBMISSION_FILE, SubmissionError

DEFAULT_SUBMISSIONS = Path(__file__).resolve().parent / "submissions"


def _counts(p) -> None:
    from qsmgym.leaderboard.scorer import DEFAULT_EPISODES_PER_SEED, DEFAULT_SEEDS

    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="hidden evaluation seeds per submission")
    p.add_argument("--episodes-per-seed", type=int, default=DEFAULT_EPISODES_PER_SEED,
                   help="episodes averaged per hidden seed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsm leaderboard", description="Validate, score and publish "
                                "leaderboard submissions (data only; never executed).")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="validate submissions without running them")
    v.add_argument("paths", nargs="+", help="submission folders or their submission.json")
    s = sub.add_parser("score", help="validate and re-evaluate on hidden seeds")
    s.add_argument("paths", nargs="+", help="submission folders, their submission.json, or folders of submissions")
    _counts(s)
    s.add_argument("--out", default=None, help="write all scores to this JSON file")
    b = sub.add_parser("build", help="render the static site (scores the submissions unless --scores)")
    b.add_argument("--submissions", default=str(DEFAULT_SUBMISSIONS), help="folder of submissions")
    b.add_argument("--scores", default=None, help="scores JSON from `qsm leaderboard score --out`")
    _counts(b)
    b.add_argument("--out", default="leaderboard_site", help="output folder of the site")
    return p


def _err(msg: str) -> None:
    print(f"qsm leaderboard: {msg}", file=sys.stderr)


def _expand(paths) -> list[Path]:
    from qsmgym.leaderboard.scorer import find_submissions

    out = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / SUBMISSION_FILE).exists():
            out += find_submissions(p)
        else:
            out.append(p)
    return out


def _validate(paths) -> int:
    from qsmgym.leaderboard.submission import load_submission

    status = 0
    for p in paths:
        try:
            sub = load_submission(p)
            print(f"ok {p}: {sub.env_id} / {sub.agent} ({sub.kind})")
        except SubmissionError as exc:
            _err(f"refused {p}: {exc}")
            status = 2
    return status


def _score(paths, counts, out) -> int:
    from qsmgym.leaderboard.scorer import score_submission, secret_and_source

    results, refused, refs = [], [], {}
    for p in _expand(paths):
        try:
            r = score_submission(p, **counts, references_cache=refs)
        except SubmissionError as exc:
            _err(f"refused {p}: {exc}")
            refused.append({"path": str(p), "error": str(exc)})
            continue
        r["path"] = str(p)
        results.append(r)
        n = r["normalised"]
        print(f"{r['env_id']} / {r['agent']}: normalised IQM {n['iqm']:.4f} [{n['low']:.4f}, {n['high']:.4f}] "
              f"over {r['n_seeds']} hidden seeds x {r['episodes_per_seed']} episodes" + (f"; {r['flag_message']}" if r["flagged"] else ""))
    if out:
        payload = {"secret_source": secret_and_source()[1], **counts,
                   "results": sorted(results, key=lambda r: (r["env_id"], -r["normalised"]["iqm"])),
                   "refused": refused}
        Path(out).write_text(json.dumps(payload, indent=1, allow_nan=False))
        print(f"wrote {out}")
    if refused:
        return 2
    return 1 if any(r["flagged"] for r in results) else 0


def _build(submissions, scores, counts, out) -> int:
    from qsmgym.leaderboard.scorer import score_all
    from qsmgym.leaderboard.site import build_site

    if scores:
        try:
            data = json.loads(Path(scores).read_text())
        except (OSError, ValueError) as exc:
            _err(f"--scores {scores!r} unreadable: {exc}")
            return 2
    else:
        data = score_all(submissions, **counts, log=print)
    index = build_site(data, out)
    print(f"wrote {index}")
    return 2 if data.get("refused") else 0


def main(argv=None) -> int:
    """Entry point of ``qsm leaderboard``; ``argv`` excludes the words ``qsm leaderboard``."""
    args = _parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)  # the physics needs complex128 (as `qsm results`)
    counts = {"n_seeds": getattr(args, "seeds", 1), "episodes_per_seed": getattr(args, "episodes_per_seed", 1)}
    for name, value in counts.items():
        if value < 1:
            _err(f"--{name.replace('n_', '').replace('_', '-')} must be >= 1, got {value}")
            return 2
    try:
        if args.command == "validate":
            return _validate(args.paths)
        if args.command == "score":
            return _score(args.paths, counts, args.out)
        return _build(args.submissions, args.scores, counts, args.out)
    except (ValueError, OSError) as exc:
        _err(str(exc))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
