"""The static leaderboard site: plain HTML/CSS and matplotlib PNGs, no JavaScript, no server.

    from qsmgym.leaderboard.scorer import score_all
    from qsmgym.leaderboard.site import build_site
    build_site(score_all("leaderboard/submissions"), "leaderboard_site")   # -> leaderboard_site/index.html

Layout (all links relative, so the folder can be opened from disk or served anywhere)::

    index.html              overview: ranking table of every task, normalised-score bars
    overview.png            every entry's normalised IQM with 95% CI whiskers
    style.css
    tasks/<Name-vN>.html    one page per task: table, bars, learning curves
    tasks/<Name-vN>_bars.png, tasks/<Name-vN>_curves.png

Every string that comes from a submission (agent name, description, flag message) is
HTML-escaped: submissions are data, and the site never lets them become markup.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 84rem; color: #222; padding: 0 1rem; }
h1, h2 { font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; font-size: 0.82rem; }
td small { color: #555; }
.scroll { overflow-x: auto; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fff0f0; }
.bar { display: inline-block; height: 0.7rem; background: #3a7bd5; vertical-align: middle; }
.barbox { display: inline-block; width: 8rem; background: #eee; margin-right: 0.4rem; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5rem 0; }
.note { color: #555; font-size: 0.9rem; }
nav a { margin-right: 1rem; }
"""


def _slug(env_id: str) -> str:
    return env_id.split("/", 1)[1]


def _fmt(ci: dict, key: str = "iqm") -> str:
    return f"{ci[key]:.3f}<br><small>[{ci['low']:.3f}, {ci['high']:.3f}]</small>"


def _fmt_mean(ci: dict) -> str:
    return _fmt(ci, "mean")


def _bar(value: float) -> str:
    width = max(0.0, min(1.0, value)) * 100.0
    return (f'<span class="barbox"><span class="bar" style="width:{width:.1f}%"></span></span>')


def _page(title: str, body: str, css_href: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<link rel=\"icon\" href=\"data:,\">\n"
            f"<title>{html.escape(title)}</title>\n<link rel=\"stylesheet\" href=\"{css_href}\">\n"
            f"</head>\n<body>\n{body}\n</body>\n</html>\n")


def _rows(results: list[dict], link_tasks: bool) -> str:
    out = []
    ranks: dict[str, int] = {}
    for r in results:
        ranks[r["env_id"]] = ranks.get(r["env_id"], 0) + 1
        task = html.escape(r["env_id"])
        if link_tasks:
            task = f'<a href="tasks/{html.escape(_slug(r["env_id"]))}.html">{task}</a>'
        flag = html.escape(r["flag_message"]) if r["flagged"] else "ok"
        out.append(
            f'<tr class="{"flagged" if r["flagged"] else "entry"}">'
            f"<td>{task}</td><td class=\"num\">{ranks[r['env_id']]}</td>"
            f"<td title=\"{html.escape(r['description'])}\">{html.escape(r['agent'])}</td>"
            f"<td>{html.escape(r['kind'])}</td>"
            f"<td class=\"num\">{_bar(r['normalised']['iqm'])}{_fmt(r['normalised'])}</td>"
            f"<td class=\"num\">{_fmt_mean(r['normalised_mean'])}</td>"
            f"<td class=\"num\">{_fmt(r['score'])}</td>"
            f"<td class=\"num\">{_fmt(r['claimed']['normalised'])}</td>"
            f"<td class=\"num\">{_fmt(r['episode_iqm'])}</td>"
            f"<td>{flag}</td><td class=\"num\">{r['n_seeds']} &times; {r['episodes_per_seed']}</td>"
            f"<td class=\"num\">{r['compute']['env_steps']:,}</td></tr>")
    return "\n".join(out)


HEADER = ("<tr><th>task</th><th>rank</th><th>agent</th><th>kind</th>"
          "<th>normalised IQM [95% CI]</th><th>normalised mean [95% CI]</th><th>return / limit IQM [95% CI]</th>"
          "<th>claimed per-episode IQM</th><th>measured per-episode IQM</th><th>check</th>"
          "<th>hidden seeds x episodes</th><th>training env steps</th></tr>")

NOTE = ("<p class=\"note\">Normalised score = (return - naive baseline) / (physical limit - naive "
        "baseline): 0 is the task's naive baseline, 1 its physical limit. Each submission is "
        "re-evaluated on hidden seeds (HMAC of a secret); a seed's score is the mean over its "
        "episodes; IQM and mean over seeds with 95% percentile bootstrap CIs. A submission is "
        "flagged when the CI of its claimed per-episode IQM and that of the re-evaluation's "
        "episodes are disjoint. Secret source: {source}.</p>")


def _bars_png(results: list[dict], path: Path, title: str, with_task: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{_slug(r['env_id'])}: {r['agent']}" if with_task else r["agent"] for r in results]
    y = np.arange(len(results))[::-1]
    iqm = np.array([r["normalised"]["iqm"] for r in results])
    lo = iqm - np.array([r["normalised"]["low"] for r in results])
    hi = np.array([r["normalised"]["high"] for r in results]) - iqm
    tasks = list(dict.fromkeys(r["env_id"] for r in results))
    colors = [f"C{tasks.index(r['env_id']) % 10}" for r in results]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(results) + 1.4))
    ax.barh(y, iqm, xerr=np.vstack([lo, hi]), color=colors, capsize=3, alpha=0.85)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.axvline(1.0, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("normalised score IQM (0 = naive baseline, 1 = physical limit), 95% CI")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curves_png(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    any_curve = False
    for i, r in enumerate(results):
        color = f"C{i % 10}"
        c = r.get("curve")
        if c:
            any_curve = True
            ax.plot(np.maximum(np.asarray(c["env_steps"], float), 1.0), c["normalised"], color=color,
                    label=f"{r['agent']} ({c['label']})")
        ax.axhline(r["normalised"]["iqm"], color=color, ls=":", lw=1.2,
                   label=f"{r['agent']}: re-evaluated IQM")
    ax.axhline(0.0, color="k", ls="--", lw=0.8, label="naive baseline")
    ax.axhline(1.0, color="gray", ls="--", lw=0.8, label="physical limit")
    if any_curve:
        ax.set_xscale("log")
    ax.set_xlabel("training env steps" + ("" if any_curve else " (no learning curves submitted)"))
    ax.set_ylabel("normalised return")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_site(scores: dict, out_dir) -> Path:
    """Render the site from a ``scorer.score_all`` result (or the JSON of ``qsm leaderboard
    score --out``) into ``out_dir``; returns the path of index.html.

    Raises:
        ValueError: ``scores`` holds no results.
    """
    results = scores.get("results") if isinstance(scores, dict) else None
    if not results:
        raise ValueError("scores must hold at least one scored submission under 'results'")
    results = sorted(results, key=lambda r: (r["env_id"], -r["normalised"]["iqm"]))
    out = Path(out_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    (out / "style.css").write_text(CSS)
    note = NOTE.format(source=html.escape(str(scores.get("secret_source", "?"))))
    tasks = list(dict.fromkeys(r["env_id"] for r in results))
    _bars_png(results, out / "overview.png", "All entries", True)
    nav = " ".join(f'<a href="tasks/{html.escape(_slug(t))}.html">{html.escape(_slug(t))}</a>' for t in tasks)
    refused = scores.get("refused") or []
    refused_html = ""
    if refused:
        items = "".join(f"<li>{html.escape(x['path'])}: {html.escape(x['error'])}</li>" for x in refused)
        refused_html = f"<h2>Refused submissions</h2><ul>{items}</ul>"
    body = (f"<h1>qsm-gym leaderboard</h1>\n<nav>{nav}</nav>\n{note}\n"
            f"<div class=\"scroll\"><table id=\"ranking\">\n<thead>{HEADER}</thead>\n<tbody>\n{_rows(results, True)}\n</tbody>\n</table></div>\n"
            f"<h2>Normalised scores</h2>\n<img src=\"overview.png\" alt=\"normalised scores of all entries\">\n"
            f"{refused_html}")
    (out / "index.html").write_text(_page("qsm-gym leaderboard", body, "style.css"))
    for t in tasks:
        rows = [r for r in results if r["env_id"] == t]
        slug = _slug(t)
        _bars_png(rows, out / "tasks" / f"{slug}_bars.png", t, False)
        _curves_png(rows, out / "tasks" / f"{slug}_curves.png", f"{t}: learning curves")
        ref = rows[0]["references"]
        body = (f"<nav><a href=\"../index.html\">overview</a></nav>\n<h1>{html.escape(t)}</h1>\n"
                f"<p>physical limit {ref['physical_limit']:.6g}, naive baseline {ref['naive_baseline']:.6g} "
                f"(units of the episode return)</p>\n{note}\n"
                f"<div class=\"scroll\"><table id=\"ranking\">\n<thead>{HEADER}</thead>\n<tbody>\n{_rows(rows, False)}\n</tbody>\n</table></div>\n"
                f"<h2>Normalised scores</h2>\n<img src=\"{html.escape(slug)}_bars.png\" alt=\"normalised scores\">\n"
                f"<h2>Learning curves</h2>\n<img src=\"{html.escape(slug)}_curves.png\" alt=\"learning curves\">\n"
                + "".join(f"<h3>{html.escape(r['agent'])}</h3><p>{html.escape(r['description'])}</p>" for r in rows))
        (out / "tasks" / f"{slug}.html").write_text(_page(t, body, "../style.css"))
    return out / "index.html"
