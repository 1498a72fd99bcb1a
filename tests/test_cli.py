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
    assert ran == {
        "classic",
        "head-divergence",
        "head-importance",
        "preplan-anchor",
        "retrieval-heads",
        "attention-sinks",
        "streaming-heads",
        "ships",
        "sahara",
    }  # a chat model, no image tokens
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
    assert (
        main(
            [
                "scan",
                "zero",
                "--metric",
                "loss",
                "--model",
                "testing:planted",
                "--prompts",
                str(prompts),
                "--method",
                "atp*+exact",
                "--top-k",
                "3",
                "--out",
                str(out),
                "--no-static",
            ]
        )
        == 0
    )
    doc = json.loads((out / "scan-zero-loss-atpstar-exact.json").read_text())
    assert doc["format"] == "headscope.ScreenedScan" and sum(map(sum, doc["verified"])) == 3
    assert "Spearman(estimate, exact)" in capsys.readouterr().out


def test_scan_logit_diff_from_the_command_line(tmp_path, capsys):
    """logit_diff runs from the CLI with inline pairs or a file; the table ranks the most negative change
    first (the head that helped most) and equals the Python scan."""
    import numpy as np

    from headscope.interventions import scan
    from headscope.models import load_model

    prompts = tmp_path / "p.json"
    prompts.write_text('["t5 t6 t7 t8 t5 t6 t7", "t9 t10 t11 t12 t9 t10 t11"]')
    pairs = ["t8|t6", "t12|t10"]
    (tmp_path / "a.txt").write_text("\n".join(pairs) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([p.split("|") for p in pairs]))
    ref = scan(
        load_model("testing:planted"),
        json.loads(prompts.read_text()),
        "zero",
        "logit_diff",
        metric_kwargs={"answers": [tuple(p.split("|")) for p in pairs]},
    )
    for answers in (pairs, [str(tmp_path / "a.txt")], [str(tmp_path / "a.json")]):
        out = tmp_path / f"out{len(answers)}{answers[0][-4:]}"
        assert (
            main(
                [
                    "scan",
                    "zero",
                    "--metric",
                    "logit_diff",
                    "--answers",
                    *answers,
                    "--model",
                    "testing:planted",
                    "--prompts",
                    str(prompts),
                    "--out",
                    str(out),
                    "--no-static",
                    "--top",
                    "3",
                ]
            )
            == 0
        )
        printed = capsys.readouterr().out
        first = printed.splitlines()[1].split()  # rank label layer head kv_group score
        assert first[1] == ref.top(1).label.iloc[0] and float(first[-1]) == pytest.approx(
            np.nanmean(ref.values, 0).min(), rel=1e-3
        )
    assert (
        main(["scan", "zero", "--metric", "logit_diff", "--model", "testing:planted", "--prompts", str(prompts)]) == 2
    )
    assert "--answers" in capsys.readouterr().err
    assert (
        main(
            [
                "scan",
                "zero",
                "--metric",
                "logit_diff",
                "--answers",
                "t8|t6",
                "--model",
                "testing:planted",
                "--prompts",
                str(prompts),
            ]
        )
        == 2
    )
    assert "1 pairs for 2 prompts" in capsys.readouterr().err


def test_screened_scan_prints_a_verified_column(tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text('["t5 t6 t7 t8 t5 t6 t7", "t9 t10 t11 t12 t9 t10 t11"]')
    assert (
        main(
            [
                "scan",
                "zero",
                "--metric",
                "loss",
                "--model",
                "testing:planted",
                "--prompts",
                str(prompts),
                "--method",
                "atp+exact",
                "--top-k",
                "2",
                "--out",
                str(tmp_path / "o"),
                "--no-static",
                "--top",
                "4",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["rank", "label"]).split()
    assert header[-4:] == ["estimate", "exact", "verified", "score"]
    rows = lines[lines.index(next(line for line in lines if line.split()[:2] == ["rank", "label"])) + 1 :][:4]
    assert [r.split()[-2] for r in rows[:2]] == ["True", "True"]  # the top 2 by |estimate| were verified


def test_version_analyze_prompts_and_model_options(tmp_path, capsys):
    from headscope import __version__

    with pytest.raises(SystemExit) as code:
        main(["--version"])
    assert code.value.code == 0 and capsys.readouterr().out.strip() == f"headscope {__version__}"
    prompts = tmp_path / "p.txt"
    prompts.write_text("t5 t6 t7 t8 t5 t6 t7\n\nt9 t10 t11 t9 t10 t11\n")
    assert (
        main(
            [
                "analyze",
                "attention-sinks",
                "--model",
                "testing:tiny",
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "a"),
                "--no-static",
                "--device",
                "cpu",
                "--dtype",
                "float64",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "a" / "attention-sinks.json").read_text())
    assert doc["shape"][0] == 2  # the two prompts of the file, not the analyzer's default data
    assert main(["info", "--model", "testing:tiny", "--dtype", "bfloat16"]) == 0
    for verb in ("report", "analyze", "scan", "info"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        helptext = capsys.readouterr().out
        assert "--device" in helptext and "--dtype" in helptext, verb


def test_list_descriptions_are_whole_sentences(capsys):
    assert main(["scan", "--list"]) == 0
    out = capsys.readouterr().out
    assert "key k visible iff k < sink or q - k < recent" in out  # past the docstring's first line
    for line in out.splitlines():
        if line and not line.startswith((" ", "metrics", "(")):
            assert line.rstrip().endswith((".", ")")), line
