"""`headscope report` end to end on the bundled model, through the installed console script."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from headscope.cli import main


@pytest.mark.real_model
def test_report_end_to_end_writes_the_atlas(tmp_path):
    """`headscope report` (what `make report` runs) on the bundled model, through the console script."""
    out = tmp_path / "rep"
    exe = shutil.which("headscope") or f"{sys.executable} -m headscope.cli"
    proc = subprocess.run(exe.split() + ["report", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (out / "report.html").read_text()
    assert "Head atlas of smollm2-135m-instruct" in html and len(html.encode()) < 6e6
    atlas = json.loads((out / "scores" / "atlas.json").read_text())
    steps = {p.stem.split("-", 1)[1]: json.loads(p.read_text()) for p in (out / "scores" / "steps").glob("*.json")}
    assert set(atlas["steps"]) == set(steps)
    ran = {k for k, s in steps.items() if s["status"] == "ok"}
    assert ran == {"classic", "head-divergence", "head-importance", "preplan-anchor", "retrieval-heads",
                   "attention-sinks", "streaming-heads", "ships", "sahara"}  # a chat model, no image tokens
    heads = pd.read_csv(out / "scores" / "heads.csv")
    assert len(heads) == 30 * 9
    # The real model's atlas shows the roles the methods are about (the head table says which heads).
    assert {"induction", "previous-token", "retrieval", "sink", "safety"} <= set(heads["role"])
    assert (heads.loc[heads.role == "induction", "layer"] >= 10).all()  # induction needs earlier layers
    assert sorted(p.name for p in out.rglob("plotly*.js")) == ["plotly.min.js"]
    pngs = list((out / "figures").glob("*.png"))
    assert len(pngs) == len(list((out / "figures").glob("*.svg"))) == len(list((out / "figures").glob("*.html"))) > 10
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_user_errors_in_one_line(capsys):
    assert main(["info", "--model", "no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headscope: error: Unknown model 'no/such/model'") and "Traceback" not in err


def test_analyze_rejects_unknown_analyzer_and_parameter(capsys):
    assert main(["analyze", "no-such-analyzer"]) == 2
    assert "unknown analyzer 'no-such-analyzer'; available:" in capsys.readouterr().err
    assert main(["analyze", "head-importance", "--param", "topk=3"]) == 2
    assert "has no parameter(s) ['topk']" in capsys.readouterr().err


def test_scan_rejects_unknown_kind(capsys):
    assert main(["scan", "no-such-kind", "--model", "testing:tiny"]) == 2
    assert "unknown intervention kind 'no-such-kind'; available:" in capsys.readouterr().err


def test_scan_with_attribution_patching_writes_both_tables(tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text('["t5 t6 t7 t8 t5 t6 t7", "t9 t10 t11 t12 t9 t10 t11"]')
    out = tmp_path / "out"
    assert main(["scan", "zero", "--metric", "loss", "--model", "testing:planted", "--prompts", str(prompts),
                 "--method", "atp*+exact", "--top-k", "3", "--out", str(out), "--no-static"]) == 0
    doc = json.loads((out / "scan-zero-loss-atpstar-exact.json").read_text())
    assert doc["format"] == "headscope.ScreenedScan" and sum(map(sum, doc["verified"])) == 3
    assert "spearman" in capsys.readouterr().out
