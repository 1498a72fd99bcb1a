"""`headscope run spec.yaml`: validation before compute (field paths in messages), the results
folder, resume after SIGKILL with identical results, and the example specs in analyses/."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from headscope.cli import main
from headscope.errors import InputError
from headscope.experiments import check_model, load_spec, parse_spec, run_experiment
from headscope.experiments import runner as runner_mod
from headscope.experiments import units as units_mod
from headscope.interventions import scan
from headscope.models import ModelInfo
from headscope.results import HeadScores
from headscope.testing import planted_model

ROOT = Path(__file__).resolve().parent.parent
# attention-sinks on the planted model has no massive activation: its phi warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:no massive activation:UserWarning")

# Planted model: previous-token head (0, 1) and induction head (1, 3) make it copy repeats exactly.
SPEC = """
name: planted
model: testing:planted
figures: [html]
data:
  rep: {generator: repeated_tokens, seq_len: 8, n_prompts: 3, seed: 0}
  copy: {generator: repeat_samples, n: 4, seq_len: 12, answer_len: 3, seed: 1}
units:
  - name: sinks
    analyze: attention-sinks
    params: {epsilon: 0.3}
  - name: zero
    scan: zero
    metric: kl_last
    data: rep
  - name: acc
    evaluate: needle_accuracy
    data: copy
    intervention: {kind: uniform_attention}
    conditions:
      - {name: top, top_k: [0, 1, 2], from: zero}
      - {name: random, random: [3], seeds: [0, 1, 2, 3, 4, 5], from: zero, exclude_top: 2}
      - {name: induction, heads: [[1, 3]]}
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def unit_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "units").rglob("*") if p.is_file()) if (out / "units").is_dir() else []


def is_marker(p: Path) -> bool:
    """The file whose presence means a unit of work is done (side files like info.json are not)."""
    return not p.name.startswith(".") and (p.suffix == ".parquet" or (p.parent.name == "acc" and p.suffix == ".json"))


@pytest.fixture
def no_forward(monkeypatch):
    """A planted model whose every forward pass fails, handed to the runner instead of loading one."""
    model, _ = planted_model()

    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran before validation finished")

    model.register_forward_pre_hook(boom)
    return model


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (("analyze: attention-sinks", "analyze: no-such-analyzer"), "units[0].analyze", "available: attention-sinks"),
        (("params: {epsilon: 0.3}", "params: {epsilonn: 0.3}"), "units[0].params", "did you mean 'epsilon'"),
        (("params: {epsilon: 0.3}", "params: {epsilon: high}"), "units[0].params.epsilon", "must be a number"),
        (("metric: kl_last", "metrc: kl_last"), "units[1].metric", "is 'metrc' a misspelling of 'metric'"),
        (
            ("metric: kl_last", "metric: kl_last\n    batchsize: 4"),
            "units[1]",
            "'batchsize' (did you mean 'batch_size'?)",
        ),
        (("metric: kl_last", "metric: accuracy"), "units[1].metric", "known: kl_last"),
        (("scan: zero", "scan: obliterate"), "units[1].scan", "unknown intervention kind 'obliterate'"),
        (("top_k: [0, 1, 2]", "top_k: [0, one, 2]"), "units[2].conditions[0].top_k[1]", "must be an integer"),
        (("heads: [[1, 3]]", "heads: [[1]]"), "units[2].conditions[2].heads[0]", "[layer, head] pair"),
        (
            ("from: zero}\n      - {name: random", "from: acc}\n      - {name: random"),
            "units[2].conditions[0].from",
            "not an earlier analyze/scan unit",
        ),
        (("data: copy", "data: cpy"), "units[2].data", "no dataset named 'cpy'"),
        (("seq_len: 12,", "seq_lenn: 12,"), "data.copy", "did you mean 'seq_len'"),
        (
            ("{kind: uniform_attention}", "{kind: uniform_attention, epsilon: [1]}"),
            "units[2].intervention.epsilon",
            "must be a number",
        ),
        (
            ("{kind: uniform_attention}", "{kind: uniform_attention, heads: [[0, 0]]}"),
            "units[2].intervention.heads",
            "leave heads out",
        ),
        (("figures: [html]", "figures: [gif]"), "figures", "unsupported format"),
    ],
)
def test_malformed_spec_fails_before_loading_with_field_path(tmp_path, monkeypatch, edit, field, words):
    old, new = edit
    assert old in SPEC
    monkeypatch.setattr(units_mod, "load_spec_model", lambda spec: pytest.fail("model loaded before validation"))
    with pytest.raises(InputError) as err:
        run_experiment(write(tmp_path, SPEC.replace(old, new, 1)), tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith(field + ":"), msg
    assert words in msg, msg
    assert not (tmp_path / "out").exists()  # refused before the results folder was even made


@pytest.mark.parametrize(
    "edit, field",
    [
        (("heads: [[1, 3]]", "heads: [[1, 3], [2, 0]]"), "units[2].conditions[2].heads[1]"),
        (("heads: [[1, 3]]", "heads: [[1, 4]]"), "units[2].conditions[2].heads[0]"),
        (
            (
                "{name: induction, heads: [[1, 3]]}",
                "{name: induction, interventions: [{kind: zero, heads: [[0, 0], [9, 1]]}]}",
            ),
            "units[2].conditions[2].interventions[0].heads[1]",
        ),
        (("data: rep\n", "data: rep\n    layers: [0, 2]\n"), "units[1].layers[1]"),
        (("exclude_top: 2", "exclude_top: 7"), "units[2].conditions[1]"),
    ],
)
def test_out_of_range_heads_fail_after_loading_but_before_any_forward(tmp_path, no_forward, edit, field):
    old, new = edit
    assert old in SPEC
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        run_experiment(write(tmp_path, SPEC.replace(old, new, 1)), out, model=no_forward)
    assert str(err.value).startswith(field + ":"), str(err.value)
    assert "out of range" in str(err.value) or "has 8" in str(err.value)
    assert unit_files(out) == []


def test_unfixed_spec_passes_the_same_guard(tmp_path, no_forward):
    """The guard above is not what rejects the specs: the valid spec gets past validation to compute."""
    with pytest.raises(AssertionError, match="forward pass ran"):
        run_experiment(write(tmp_path, SPEC), tmp_path / "out", model=no_forward, progress=False)


def test_folder_of_a_spec_that_failed_validation_accepts_the_fixed_spec(tmp_path, no_forward):
    out = tmp_path / "out"
    with pytest.raises(InputError):
        run_experiment(write(tmp_path, SPEC.replace("heads: [[1, 3]]", "heads: [[1, 4]]")), out, model=no_forward)
    assert (out / "state.json").is_file() and unit_files(out) == []
    fixed = write(tmp_path, SPEC.replace("figures: [html]", "figures: []"), "fixed.yaml")
    run_experiment(fixed, out, progress=False)  # nothing was finished, so the folder is not bound to the bad spec
    assert json.loads((out / "state.json").read_text())["spec_hash"] == load_spec(fixed).hash


def test_cli_run_reports_spec_errors_in_one_line(tmp_path, capsys):
    bad = write(tmp_path, SPEC.replace("analyze: attention-sinks", "analyze: nope"))
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headscope: error: units[0].analyze: unknown analyzer 'nope'") and "Traceback" not in err


def test_yaml_syntax_and_logit_diff_without_answers(tmp_path):
    with pytest.raises(InputError, match="not valid YAML"):
        parse_spec("units: [a: b: c]")
    spec = SPEC.replace("metric: kl_last", "metric: logit_diff")
    with pytest.raises(InputError, match=r"units\[1\]\.data: metric logit_diff needs answers"):
        parse_spec(spec)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run of SPEC (the comparison point of the round-trip and resume tests)."""
    base = tmp_path_factory.mktemp("ref")
    path = write(base, SPEC)
    out = run_experiment(path, base / "out", progress=False)
    return path, out


def test_results_folder_round_trip(reference_run):
    path, out = reference_run
    assert (out / "spec.yaml").read_text() == path.read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["computed_now"] == summary["run"]["items"] == 1 + 2 + 10
    assert set(summary["units"]) == {"sinks", "zero", "acc"}
    for unit in ("sinks", "zero", "acc"):
        html = (out / "figures" / f"{unit}.html").read_text()
        assert html.lower().startswith("<!doctype html>") and "Plotly.newPlot" in html
        assert f"## {unit}" in (out / "summary.md").read_text()

    # The scan stitched from per-layer units equals one whole scan() of the same prompts.
    model, truth = planted_model()
    from headscope.inputs import repeated_random_tokens

    probes = repeated_random_tokens(model.cfg.d_vocab, 8, n_prompts=3, seed=0, token_range=None, first_token=1)
    whole = scan(model, probes, "zero", "kl_last", progress=False)
    stitched = HeadScores.load(out / "results" / "zero.parquet")
    assert stitched.allclose(whole, atol=1e-6)
    ranked = stitched.top(8)
    assert {tuple(r) for r in ranked[["layer", "head"]].values[:2]} == {truth.previous_token, truth.induction}

    # Evaluate table: baseline copies perfectly; masking the top heads / the induction head breaks it;
    # random heads come from outside the top 2 and never touch the copying circuit.
    table = pd.read_parquet(out / "results" / "acc.parquet")
    row = {(r.condition, r.k, r.seed if not pd.isna(r.seed) else None): r for r in table.itertuples()}
    assert row[("top", 0, None)].value == 1.0 and row[("top", 2, None)].value == 0.0
    assert row[("induction", 1, None)].value == 0.0
    assert row[("top", 2, None)].heads == "L0H1 L1H3"
    for seed in range(6):
        r = row[("random", 3, seed)]
        assert "L0H1" not in r.heads and "L1H3" not in r.heads and r.value == 1.0
    assert len({row[("random", 3, s)].heads for s in range(6)}) > 1  # seeds draw different heads


def test_changed_spec_in_same_folder_is_refused_unless_fresh(reference_run, tmp_path):
    path, out = reference_run
    changed = write(tmp_path, path.read_text().replace("seq_len: 8", "seq_len: 9"))
    with pytest.raises(InputError, match="holds results of a different spec.*--fresh"):
        run_experiment(changed, out, progress=False)
    # the refused run touched nothing: the folder still resumes with the original spec, computing nothing
    assert json.loads((out / "state.json").read_text())["spec_hash"] == load_spec(path).hash
    fresh_out = tmp_path / "copy"
    run_experiment(path, fresh_out, progress=False)
    run_experiment(changed, fresh_out, fresh=True, progress=False)
    assert json.loads((fresh_out / "summary.json").read_text())["run"]["reused"] == 0


def _records(out: Path) -> dict:
    """Every unit file's content (minus timings) and every result's values, for exact comparison."""
    recs = {}
    for p in unit_files(out):
        rel = str(p.relative_to(out))
        if p.suffix == ".parquet":
            recs[rel] = HeadScores.load(p).values
        elif p.name.endswith(".json") and "figure" not in p.name:
            doc = json.loads(p.read_text())
            doc.pop("seconds", None)
            recs[rel] = doc
    for p in sorted((out / "results").glob("*.parquet")):
        recs[str(p.relative_to(out))] = pd.read_parquet(p).drop(columns=["prompt_text"], errors="ignore")
    return recs


def test_killed_run_resumes_to_the_same_results(reference_run, tmp_path, monkeypatch):
    path, ref_out = reference_run
    out = tmp_path / "out"
    env = {**os.environ, runner_mod.DELAY_ENV: "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "headscope.cli", "run", str(path), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not any(map(is_marker, unit_files(out))) and proc.poll() is None:  # wait for a finished unit
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)  # mid-way: the run sleeps 2 s after each finished unit
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "summary.json").exists()
    before = {p: p.stat().st_mtime_ns for p in unit_files(out) if is_marker(p)}
    assert 1 <= len(before) < 13

    monkeypatch.delenv(runner_mod.DELAY_ENV, raising=False)
    assert main(["run", str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["run"]
    assert summary["reused"] == len(before) and summary["computed_now"] == 13 - len(before)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished units were not recomputed

    got, want = _records(out), _records(ref_out)
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], np.ndarray):
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=key)
        elif isinstance(want[key], pd.DataFrame):
            pd.testing.assert_frame_equal(got[key], want[key], atol=1e-6)
        else:
            assert got[key] == want[key], key


def test_example_specs_validate():
    smol = ModelInfo(
        name="smollm2-135m-instruct", n_layers=30, n_heads=9, n_kv_heads=3, d_head=64, d_model=576, n_ctx=8192
    )
    for name in ("ablation_scan", "retrieval_masking", "safety_heads"):
        spec = load_spec(ROOT / "analyses" / f"{name}.yaml")
        assert spec.name == name and spec.units
        check_model(spec, smol)  # head/layer/K ranges against SmolLM2's shape, without loading it
    docs = (ROOT / "docs" / "experiments.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]  # the short spec in the docs
    check_model(parse_spec(example), smol)


@pytest.mark.real_model
def test_ablation_example_data_is_valid_on_the_bundled_model(smol):
    """The IOI example's premise: its prompts tokenize, its answers are single tokens, and the
    unablated model prefers the indirect object on every prompt (so a logit-diff drop means something)."""
    import torch

    from headscope.experiments import prepare
    from headscope.interventions.metrics import resolve_metric

    spec = load_spec(ROOT / "analyses" / "ablation_scan.yaml")
    _, _info, datasets = prepare(spec, smol)
    (ioi,) = datasets.values()
    ids = resolve_metric("logit_diff", smol, len(ioi.token_lists), {"answers": ioi.answers}).answer_ids
    assert ids.shape == (len(ioi.token_lists), 2) == (4, 2)
    with torch.no_grad():
        last = torch.stack([smol(torch.tensor([t]))[0, -1] for t in ioi.token_lists])  # [prompt, vocab]
    diff = last.gather(1, ids[:, :1]) - last.gather(1, ids[:, 1:])
    assert bool((diff > 1.0).all()), diff


# ---- evaluate with the scan metrics: pinned against scan() and a plain per-prompt loop -----------------

METRIC_SPEC = """
name: metric_change
model: testing:tiny
figures: []
data:
  ids:
    prompts: [[1, 5, 6, 7, 5, 6], [1, 9, 4, 8, 9], [1, 3, 2, 3, 2, 3, 2, 11]]
    answers: [[7, 9], [4, 5], [3, 12]]
units:
""" + "".join(
    f"""
  - name: {metric}
    evaluate: {metric}
    data: ids
    batch_size: 2
    intervention: {{kind: zero}}
    conditions:
      - {{name: none, heads: []}}
      - {{name: one, heads: [[1, 3]]}}
      - {{name: pair, heads: [[0, 1], [1, 3]]}}
      - {{name: mixed, interventions: [{{kind: zero, heads: [[0, 2]]}}, {{kind: scale, alpha: 3.0, heads: [[1, 0]]}}]}}
"""
    for metric in ("kl_last", "logit_diff", "loss")
)


def _plain_metric(metric, base, variant, answer):
    """The three scan metrics on one prompt's [pos, vocab] logits, written out by hand."""
    import torch.nn.functional as F

    if metric == "kl_last":
        p, q = F.log_softmax(base[-1].double(), -1), F.log_softmax(variant[-1].double(), -1)
        return float((p.exp() * (p - q)).sum())
    if metric == "logit_diff":
        c, w = answer
        return float((variant[-1, c] - variant[-1, w]) - (base[-1, c] - base[-1, w]))
    return None  # loss: below


def test_evaluate_scan_metrics_equal_scan_and_a_plain_loop(tmp_path):
    """An evaluate unit with one head gives scan()'s number for that head; with several heads (or mixed
    kinds) the numbers of a plain unbatched loop under apply(). Pins _metric_change's numbers."""
    import torch
    import torch.nn.functional as F

    from headscope.interventions import Intervention, ScaleOutput, ZeroAblation, apply
    from headscope.testing import tiny_model

    out = run_experiment(write(tmp_path, METRIC_SPEC), tmp_path / "out", progress=False)
    model = tiny_model()
    spec = load_spec(tmp_path / "spec.yaml")
    prompts, answers = spec.data["ids"].prompts, spec.data["ids"].answers
    conditions = {
        "none": [],
        "one": [ZeroAblation(heads=[(1, 3)])],
        "pair": [ZeroAblation(heads=[(0, 1), (1, 3)])],
        "mixed": [ZeroAblation(heads=[(0, 2)]), ScaleOutput(heads=[(1, 0)], alpha=3.0)],
    }
    for metric in ("kl_last", "logit_diff", "loss"):
        kwargs = {"answers": answers} if metric == "logit_diff" else None
        single = scan(model, prompts, "zero", metric, visit=[(1, 3)], metric_kwargs=kwargs, progress=False)
        for cond, specs in conditions.items():
            rec = json.loads((out / "units" / metric / f"{cond}.json").read_text())
            assert [Intervention.from_dict(d) for d in rec["interventions"]] == specs
            want = []
            for p, ans in zip(prompts, answers):
                with torch.no_grad():
                    base = model(torch.tensor([p]))[0]
                    with apply(model, specs):
                        variant = model(torch.tensor([p]))[0]
                if metric == "loss":
                    t = torch.tensor(p[1:])
                    want.append(float(F.cross_entropy(variant[:-1], t) - F.cross_entropy(base[:-1], t)))
                else:
                    want.append(_plain_metric(metric, base, variant, ans))
            np.testing.assert_allclose(rec["per_prompt"], want, atol=2e-6, err_msg=f"{metric} {cond}")
            assert rec["value"] == pytest.approx(np.mean(rec["per_prompt"]), abs=1e-12)
            if cond == "one":
                np.testing.assert_allclose(rec["per_prompt"], single.values[:, 1, 3], atol=2e-6)
        assert any(abs(v) > 1e-3 for v in json.loads((out / "units" / metric / "pair.json").read_text())["per_prompt"])


def test_model_dtype_in_the_spec():
    text = SPEC.replace("model: testing:planted", "model: {name: testing:tiny, dtype: float64}")
    spec = parse_spec(text)
    assert spec.model_dtype == "float64"
    model = units_mod.load_spec_model(spec)
    assert next(model.parameters()).dtype == torch.float64
    assert model(torch.tensor([[1, 2, 3]])).dtype == torch.float64  # and it runs so
    with pytest.raises(InputError, match=r"model\.dtype: dtype 'bf16' is not one of float32, bfloat16"):
        parse_spec(SPEC.replace("model: testing:planted", "model: {name: testing:tiny, dtype: bf16}"))
