"""Vision heads from the CLI: `headscope run` with shapes data, shapes metrics and a VHR condition gives
the numbers of the library calls, and `headscope scan head-divergence` finds the image on its own."""

import json

import numpy as np
import pandas as pd
import pytest

import headscope
from headscope.cli import main
from headscope.errors import InputError
from headscope.experiments import parse_spec, run_experiment
from headscope.interventions import ZeroAblation
from headscope.vision import shapes_eval as E
from headscope.vision import shapes_vhr as V
from headscope.vision.datasets import shapes_set

SPEC = """
name: vision
model: shapes-vlm
figures: [html]
data:
  detect: {generator: shapes, split: image_qa, n: 24, seed: 7000}
  qa: {generator: shapes, split: image_qa, n: 40}
  pope: {generator: shapes, split: pope, n: 20}
units:
  - name: vhd
    analyze: head-divergence
    data: detect
  - name: qa
    evaluate: image_qa_accuracy
    data: qa
    intervention: {kind: zero}
    conditions:
      - {name: top, top_k: [0, 3], from: vhd, rank: largest}
      - {name: vhr, vhr: {alpha: 2, layers: [1, 2, 3]}}
  - name: pope
    evaluate: pope_f1
    data: pope
    params: {noise: 0.3}
    conditions:
      - {name: vhr, vhr: {}}
"""


@pytest.fixture(scope="module")
def model():
    return headscope.load_model("shapes-vlm")


def test_spec_results_equal_library_calls(tmp_path, model):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = run_experiment(spec, tmp_path / "out", model=model, progress=False)
    qa = pd.read_parquet(out / "results" / "qa.parquet")
    items = shapes_set("image_qa", n=40)
    from headscope.analyzers.head_divergence import HeadDivergence
    from headscope.vision.shapes import item_prompt

    hd = HeadDivergence().fit(model, [item_prompt(it) for it in shapes_set("image_qa", n=24, seed=7000)])
    mean = hd.scores_.mean_over_prompts().values
    top3 = [tuple(int(x) for x in np.unravel_index(i, mean.shape)) for i in np.argsort(-mean.ravel())[:3]]
    row = qa[(qa["condition"] == "top") & (qa["k"] == 3)].iloc[0]
    assert row["heads"] == " ".join(f"L{l}H{h}" for l, h in sorted(top3))
    assert row["value"] == pytest.approx(
        E.image_qa_accuracy(model, items, interventions=[ZeroAblation(heads=top3)]).accuracy
    )
    assert qa[qa["k"] == 0]["value"].iloc[0] == pytest.approx(E.image_qa_accuracy(model, items).accuracy)
    vhr = qa[qa["condition"] == "vhr"]["value"].iloc[0]
    assert vhr == pytest.approx(V.vhr_image_qa(model, items, layers=[1, 2, 3], alpha=2.0)["accuracy"])
    pope = json.loads((out / "units" / "pope" / "vhr.json").read_text())
    pope_table = pd.read_parquet(out / "results" / "pope.parquet")
    assert pope_table["value"].iloc[0] == pytest.approx(V.vhr_pope(model, shapes_set("pope", n=20), noise=0.3)["f1"])
    assert pope["vhr"] == {"alpha": 2.0, "layers": None}


@pytest.mark.parametrize(
    "edit, field, words",
    [
        ("{name: vhr, vhr: {alpha: 2, layers: [1, 2, 3]}}", "units[1].conditions[1]", None),
        ("split: image_qa, n: 40", "units[1].data", "needs split: image_qa"),
    ],
)
def test_vision_spec_errors_name_the_field(edit, field, words):
    if words is None:  # VHR needs an image metric: text QA has no image to compare against
        bad = SPEC.replace("evaluate: image_qa_accuracy", "evaluate: text_qa_accuracy").replace(
            "split: image_qa, n: 40", "split: text_qa"
        )
        words = "vhr condition needs a shapes image metric"
    else:
        bad = SPEC.replace(edit, "split: pope, n: 40")
    with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]") + ".*" + words):
        parse_spec(bad)


def test_scan_head_divergence_finds_the_image_itself(tmp_path):
    assert main(["analyze", "head-divergence", "--model", "shapes-vlm", "--out", str(tmp_path), "--no-static"]) == 0
    saved = json.loads((tmp_path / "head-divergence.json").read_text())
    assert saved["provenance"]["model"] == "shapes-vlm"
    assert len(saved["prompts"]) == 64 and saved["shape"][0] == 64  # the 64 built-in image questions
