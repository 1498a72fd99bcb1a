"""`headscope report` end to end on the bundled model, through the installed console script."""

import json
import shutil
import subprocess
import sys

import pytest

from headscope.cli import main


@pytest.mark.real_model
def test_report_end_to_end_writes_html_and_figures(tmp_path):
    out = tmp_path / "rep"
    exe = shutil.which("headscope") or f"{sys.executable} -m headscope.cli"
    proc = subprocess.run(exe.split() + ["report", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (out / "report.html").read_text()
    assert html.count("<h2") >= 6 and "smollm2-135m-instruct" in html
    for stat in ["first_token_mass", "attention_entropy", "mean_attention_distance",
                 "previous_token_score", "duplicate_token_score", "induction_score"]:
        saved = json.loads((out / "scores" / f"{stat}.json").read_text())
        assert saved["provenance"]["model"] == "smollm2-135m-instruct"
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert sum(name.endswith(".png") for name in figures) == 6, figures
    assert sum(name.endswith(".svg") for name in figures) == 6, figures
    for png in (out / "figures").glob("*.png"):
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
