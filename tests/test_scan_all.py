"""Every registered analyzer runs end to end from the CLI on the bundled model and writes its figure."""

import json

import pytest
import yaml

from headscope.analyzers import REGISTRY
from headscope.cli import main

# Small settings so the whole sweep stays around a minute on 2 cores; defaults are exercised elsewhere.
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


def test_every_analyzer_has_a_quick_cli_setting():
    assert set(REGISTRY) <= set(QUICK), f"add CLI settings for {sorted(set(REGISTRY) - set(QUICK))}"


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_scan_from_cli(name, tmp_path):
    args = ["scan", name, "--out", str(tmp_path), "--no-static", "--top", "3"]
    if name in MODEL:
        args += ["--model", MODEL[name]]
    for p in QUICK[name]:
        args += ["--param", p]
    assert main(args) == 0
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["provenance"]["analyzer"] == name
    for p in QUICK[name]:  # the CLI parameters reached the analyzer and its provenance
        key, value = p.split("=", 1)
        assert saved["provenance"]["params"][key] == yaml.safe_load(value)
    assert (tmp_path / f"{name}.html").stat().st_size > 10_000  # the figure, with plotly inlined
