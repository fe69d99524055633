"""`qsm reproduce`: argument handling (fast) and one real schuff2020 run (slow)."""

import json
import re

import pytest

from qsmgym.experiments import cli, reproduce
from qsmgym.experiments.runs import QsmError


def test_papers_and_runners_agree():
    assert set(reproduce.PAPERS) == set(reproduce.RUNNERS) == {
        "schuff2020", "xiao2022", "reiss2023", "cai", "belliardo2024"}


def test_unknown_paper_is_rejected_before_any_work(tmp_path):
    with pytest.raises(QsmError, match="unknown paper 'x'; choose from schuff2020"):
        reproduce.main(["x", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []  # no run folder for a rejected command
    with pytest.raises(QsmError, match="unrecognized arguments: --fast"):
        reproduce.main(["cai", "--fast"])


def test_help_lists_full(capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--full" in out and "schuff2020" in out


def test_table_formatting():
    text = reproduce.format_table([reproduce._row("a", 1.5, None, "n"), reproduce._row("bb", None, "> 10")])
    assert "1.5" in text and "> 10" in text and text.splitlines()[0].startswith("quantity")


@pytest.mark.slow
def test_schuff2020_prints_both_numbers_and_writes_the_plot(tmp_path, capsys):
    rc = cli.main(["reproduce", "schuff2020", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    print(out)
    (run,) = list(tmp_path.iterdir())
    png = run / "plots" / "schuff2020.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run / "metrics.json").read_text())
    rows = {r["quantity"]: r for r in metrics["rows"]}
    ratio = next(r for q, r in rows.items() if q.startswith("CEM / periodic"))
    assert ratio["reference"] == "> 10 (some settings)" and ratio["ours"] > 0
    # ours and the reference both printed on the ratio line
    line = next(l for l in out.splitlines() if l.startswith("CEM / periodic"))
    assert re.search(r"\d+\.\d+", line) and "> 10" in line
    # the learning agents must beat both baselines (the abstract's qualitative claim)
    best_baseline = max(rows["QFI I(T), no kicks"]["ours"], rows["QFI I(T), periodic kicks k=3"]["ours"])
    for agent in ("CEM", "PPO"):
        (qfi,) = [r["ours"] for q, r in rows.items() if q.startswith(f"QFI I(T), {agent} (IQM")]
        assert qfi > best_baseline
    assert f"plot: {png}" in out
