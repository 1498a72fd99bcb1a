"""Every registered analyzer runs end to end from the CLI (`headscope analyze NAME`) on the bundled model
and writes its figure; `headscope scan KIND` runs the exact all-heads scan; `scan NAME` of an analyzer points to `analyze NAME`."""

import json

import pytest
import yaml

from headscope.analyzers import REGISTRY
from headscope.cli import main

# Settings that keep this sweep around a minute on 2 cores on the bundled model (an analyzer without an
# entry runs with its defaults); defaults are exercised elsewhere.
QUICK = {
    "attention-sinks": [],
    "head-importance": ["top_k=5"],
    "preplan-anchor": ["layers=[10, 12, 15]"],
    "streaming-heads": ["seg_len=48", "n_repeats=2", "n_prompts=1", "recent=12", "n_random=1"],
    "head-divergence": [],
    "retrieval-heads": ["n_samples=2"],
    "ships": ["heads=[[2, 0], [2, 1], [20, 0]]"],
    "sahara": ["search_steps=1", "heads=[[2, 0], [2, 1], [20, 0]]"],
    "visual-sink": ["n_default_prompts=2"],
    "vit-heads": [],
}
# Analyzers that need a vision-language testbed run on it instead of the bundled SmolLM2.
MODEL = {"visual-sink": "smollm2-visual-sinks", "vit-heads": "shapes-vlm"}


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_analyze_from_cli(name, tmp_path):
    args = ["analyze", name, "--out", str(tmp_path), "--no-static", "--top", "3"]
    if name in MODEL:
        args += ["--model", MODEL[name]]
    for p in QUICK.get(name, []):
        args += ["--param", p]
    assert main(args) == 0
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["provenance"]["analyzer"] == name
    for p in QUICK.get(name, []):  # the CLI parameters reached the analyzer and its provenance
        key, value = p.split("=", 1)
        assert saved["provenance"]["params"][key] == yaml.safe_load(value)
    html = (tmp_path / f"{name}.html").read_text()
    assert "Plotly.newPlot" in html and 'src="plotly.min.js"' in html  # the figure, plotly.js beside it
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000


def test_scan_of_an_analyzer_name_points_to_analyze(tmp_path, capsys):
    args = ["scan", "head-importance", "--model", "testing:planted", "--out", str(tmp_path), "--no-static"]
    assert main(args) == 2
    assert "headscope analyze head-importance" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was computed or written


def test_scan_verb_runs_the_all_heads_scan(tmp_path):
    """`headscope scan zero` on the planted model equals the library's scan() on the same prompts."""
    from headscope.interventions import scan
    from headscope.models import load_model
    from headscope.results import HeadScores

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["t5 t6 t7 t5 t6 t7", "t9 t10 t11 t9 t10"]))
    args = [
        "scan",
        "zero",
        "--metric",
        "kl_last",
        "--model",
        "testing:planted",
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--no-static",
    ]
    assert main(args) == 0
    saved = HeadScores.load(tmp_path / "out" / "scan-zero-kl_last.json")
    direct = scan(load_model("testing:planted"), json.loads(prompts.read_text()), "zero", "kl_last")
    assert saved.values.shape == direct.values.shape and (abs(saved.values - direct.values) < 1e-9).all()
