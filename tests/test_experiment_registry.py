"""Evaluators and data generators are registries: a toy evaluator and a toy generator defined in this
file plug into `headscope run` end to end; the built-in ones register from the modules that own
them; spec errors list the registered names and parameters; experiments imports none of the owners."""

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from headscope.cli import main
from headscope.errors import InputError
from headscope.experiment_registry import EVALUATORS, GENERATORS, EvalRequest, Evaluator, Generator, Param
from headscope.experiments import parse_spec, run_experiment
from headscope.interventions import ZeroAblation, apply, scan
from headscope.models import model_info
from headscope.registry import registered_from
from headscope.results import HeadScores
from headscope.testing import planted_model, tiny_model

ROOT = Path(__file__).resolve().parent.parent


# ---- a toy generator and a toy evaluator, registered from this file ------------------------------------


@dataclass(frozen=True)
class Run:
    """A counting prompt and the token that would continue it."""

    ids: tuple
    target: int


def toy_runs(model, info, n: int = 3, start: int = 5, length: int = 6) -> list[Run]:
    """n prompts [BOS, s, s+1, ...] (s = start, start+1, ...), each wanting the next number."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    return [Run((info.bos_token_id, *range(s, s + length)), s + length) for s in range(start, start + n)]


def _positive(value):
    if value <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return float(value)


def toy_target_prob(req: EvalRequest, temperature: float = 1.0) -> dict:
    """Mean probability of each run's next number at its last position, with the interventions on."""
    probs = []
    with torch.no_grad(), apply(req.model, req.interventions):
        for run in req.data.items:
            logits = req.model(torch.tensor([run.ids]))[0, -1] / temperature
            probs.append(float(torch.softmax(logits.double(), -1)[run.target]))
    return {"value": float(np.mean(probs)), "per_prompt": probs}


@pytest.fixture(scope="module")
def toys():
    GENERATORS.register(
        "toy_runs", Generator(toy_runs, yields="toy_runs", token_ids=lambda items: [r.ids for r in items])
    )
    EVALUATORS.register(
        "toy_target_prob",
        Evaluator(
            toy_target_prob,
            data=("toy_runs",),
            better="higher",
            params=(Param("temperature", 1.0, _positive),),
            label="p(next number)",
        ),
    )
    yield
    GENERATORS.unregister("toy_runs")
    EVALUATORS.unregister("toy_target_prob")


TOY_SPEC = """
name: toy
model: testing:tiny
figures: []
data:
  runs: {generator: toy_runs, n: 3, start: 5}
units:
  - name: scan
    scan: zero
    metric: kl_last
    data: runs
  - name: prob
    evaluate: toy_target_prob
    data: runs
    params: {temperature: 2.0}
    intervention: {kind: zero}
    conditions:
      - {name: none, heads: []}
      - {name: top, top_k: [2], from: scan}
      - {name: pair, heads: [[0, 1], [1, 3]]}
"""


def _spec(tmp_path, text=TOY_SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_toy_evaluator_and_generator_run_end_to_end(toys, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(_spec(tmp_path)), "--out", str(out)]) == 0

    # The generator's items became the scan's prompts (its token_ids) ...
    model = tiny_model()
    runs = toy_runs(model, model_info(model))
    scores = HeadScores.load(out / "results" / "scan.parquet")
    assert scores.values.shape == (3, 2, 4)
    want = scan(model, [list(r.ids) for r in runs], "zero", "kl_last", progress=False)
    assert scores.allclose(want, atol=1e-6)

    # ... and the evaluator's numbers are its own function's, with the spec's parameter.
    table = pd.read_parquet(out / "results" / "prob.parquet").set_index("condition")
    top2 = sorted(
        tuple(int(x) for x in np.unravel_index(i, (2, 4)))
        for i in np.argsort(-want.mean_over_prompts().values.ravel(), kind="stable")[:2]
    )
    assert table.loc["top", "heads"] == " ".join(f"L{l}H{h}" for l, h in top2)
    for cond, heads in (("none", []), ("top", top2), ("pair", [(0, 1), (1, 3)])):
        req = EvalRequest(
            model,
            None,
            type("Data", (), {"items": runs}),
            [ZeroAblation(heads=heads)] if heads else [],
            "toy_target_prob",
        )
        assert table.loc[cond, "value"] == pytest.approx(toy_target_prob(req, temperature=2.0)["value"], abs=1e-12)
    assert table.loc["pair", "value"] != pytest.approx(table.loc["none", "value"])  # the heads matter
    summary = json.loads((out / "summary.json").read_text())["units"]["prob"]
    assert summary["better"] == "higher" and summary["target"] == "toy_target_prob"


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (
            ("evaluate: toy_target_prob", "evaluate: toy_target_pro"),
            "units[1].evaluate",
            "unknown evaluator 'toy_target_pro'; available: attack_success_rate, chair_i",
        ),
        (("evaluate: toy_target_prob", "evaluate: toy_target_pro"), "units[1].evaluate", "toy_target_prob"),
        (("{temperature: 2.0}", "{temprature: 2.0}"), "units[1].params", "did you mean 'temperature'"),
        (("{temperature: 2.0}", "{temperature: -1}"), "units[1].params.temperature", "must be > 0"),
        (("{temperature: 2.0}", "{temperature: hot}"), "units[1].params.temperature", "must be a number"),
        (
            ("generator: toy_runs,", "generator: toy_run,"),
            "data.runs.generator",
            "unknown data generator 'toy_run'; available: needle, prompt_set, repeat_samples, repeated_tokens, shapes, toy_runs",
        ),
        (("start: 5}", "strat: 5}"), "data.runs", "did you mean 'start'"),
        (("n: 3,", "n: three,"), "data.runs.n", "must be an integer"),
        (
            ("runs: {generator: toy_runs, n: 3, start: 5}", "runs: {prompts: [[1, 5, 6]]}"),
            "units[1].data",
            "toy_target_prob needs toy_runs data, dataset 'runs' yields tokens (use generator: toy_runs)",
        ),
    ],
)
def test_spec_errors_come_from_the_registry(toys, edit, field, words):
    old, new = edit
    assert old in TOY_SPEC
    with pytest.raises(InputError) as err:
        parse_spec(TOY_SPEC.replace(old, new, 1))
    assert str(err.value).startswith(field + ":"), str(err.value)
    assert words in str(err.value), str(err.value)


def test_unregistered_names_are_gone(toys):
    parse_spec(TOY_SPEC)
    GENERATORS.unregister("toy_runs")
    try:
        with pytest.raises(InputError, match=r"data\.runs\.generator: unknown data generator 'toy_runs'"):
            parse_spec(TOY_SPEC)
    finally:
        GENERATORS.register(
            "toy_runs", Generator(toy_runs, yields="toy_runs", token_ids=lambda items: [r.ids for r in items])
        )


def test_entries_are_checked_when_registered():
    with pytest.raises(TypeError, match="better='largest'"):
        Evaluator(toy_target_prob, data=("text",), better="largest")
    with pytest.raises(TypeError, match="known needs are"):
        Evaluator(toy_target_prob, data=("text",), better="higher", needs={"gpu"})
    assert "needle_accuracy" in EVALUATORS  # built-ins loaded first, so the clash is seen now
    with pytest.raises(TypeError, match="taken by"):
        EVALUATORS.register("needle_accuracy", Evaluator(toy_target_prob, data=("text",), better="higher"))
    # parameters default to the run function's keyword parameters
    assert [(p.name, p.default) for p in Evaluator(toy_target_prob, data="x", better="lower").params] == [
        ("temperature", 1.0)
    ]
    assert [p.name for p in Generator(toy_runs, yields="x").params] == ["n", "start", "length"]


# ---- the built-in entries: registered by their owners ---------------------------------------------------

OWNERS = {
    "evaluator": {
        "needle_accuracy": "headscope.analyzers.retrieval",
        "attack_success_rate": "headscope.safety.evaluate",
        **dict.fromkeys(
            ("image_qa_accuracy", "text_qa_accuracy", "pope_accuracy", "pope_f1", "chair_i", "chair_s"),
            "headscope.vision.shapes_vhr",
        ),
        **dict.fromkeys(("kl_last", "logit_diff", "loss"), "headscope.experiments.metric_change"),
    },
    "data generator": {
        "needle": "headscope.inputs.needle",
        "repeat_samples": "headscope.inputs.needle",
        "repeated_tokens": "headscope.inputs.probes",
        "prompt_set": "headscope.safety.prompts",
        "shapes": "headscope.vision.datasets",
    },
}


@pytest.mark.parametrize("registry", [EVALUATORS, GENERATORS], ids=["evaluators", "generators"])
def test_builtin_entries_register_from_their_owner_module(registry):
    owners = OWNERS[registry.kind]
    assert set(registry) - {"toy_runs", "toy_target_prob"} == set(owners)
    for name, module in owners.items():
        assert registered_from(registry, name).startswith(module + "."), (name, registered_from(registry, name))
    for name in owners:
        if registry is EVALUATORS:
            assert EVALUATORS[name].better in ("higher", "lower")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import statement, at any depth."""
    package = "headscope.experiments"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out.append((module, [a.name for a in node.names]))
    return out


def test_experiments_import_no_owner_and_resolve_no_strings():
    """Experiments look evaluators and generators up by name: no import of safety or vision, of
    analyzers only the analyzers' own registry (a layer below), and no module names as strings."""
    for path in sorted((ROOT / "headscope" / "experiments").glob("*.py")):
        for module, names in _imports(path):
            where = f"{path.name}: {module} {names}"
            assert not module.startswith(("headscope.safety", "headscope.vision")), where
            if module.startswith("headscope.analyzers"):
                assert module == "headscope.analyzers" and set(names) <= {"REGISTRY", "get_analyzer"}, where
            assert module not in ("importlib",), where
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {
            n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
        }
        assert not calls & {"__import__", "import_module"}, path.name


# ---- built-in evaluators through the registry ----------------------------------------------------------

ASR_SPEC = """
name: asr
model: testing:planted
figures: []
data:
  requests: {prompts: ["t5 t6 t7 t5", "t9 t4 t8 t9"]}
units:
  - name: asr
    evaluate: attack_success_rate
    data: requests
    params: {max_new_tokens: 2, judge: {min_length: 5}}
    intervention: {kind: zero}
    conditions:
      - {name: none, heads: []}
      - {name: previous, heads: [[0, 1]]}
"""


def _chat_planted():
    model, truth = planted_model()
    model.tokenizer.chat_template = "{% for m in messages %}<s> {{ m['content'] }}{% endfor %}"  # BOS + words
    return model, truth


def test_attack_success_rate_spec_equals_the_library_call(tmp_path):
    from headscope.safety import RefusalPhraseJudge, attack_success_rate

    model, truth = _chat_planted()
    out = run_experiment(_spec(tmp_path, ASR_SPEC), tmp_path / "out", model=model, progress=False)
    prompts = ["t5 t6 t7 t5", "t9 t4 t8 t9"]
    for cond, heads in (("none", []), ("previous", [truth.previous_token])):
        rec = json.loads((out / "units" / "asr" / f"{cond}.json").read_text())
        want = attack_success_rate(
            model,
            prompts,
            interventions=[ZeroAblation(heads=heads)] if heads else [],
            judge=RefusalPhraseJudge(min_length=5),
            max_new_tokens=2,
        )
        assert rec["responses"] == want.responses and rec["value"] == want.rate
        assert rec["per_prompt"] == [float(h) for h in want.harmful]


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (("judge: {min_length: 5}", "judge: {min_len: 5}"), "units[0].params.judge", "did you mean 'min_length'"),
        (
            ("judge: {min_length: 5}", "judge: {min_length: -1}"),
            "units[0].params.judge",
            "min_length must be a non-negative",
        ),
        (("judge: {min_length: 5}", "judge: strict"), "units[0].params.judge", "must be a mapping"),
        (("{kind: zero}", "{kind: zero, positions: decode}"), None, None),  # generation: decode is fine
    ],
)
def test_attack_success_rate_spec_errors(edit, field, words):
    spec = ASR_SPEC.replace(*edit)
    if field is None:
        parse_spec(spec)
        return
    with pytest.raises(InputError) as err:
        parse_spec(spec)
    assert str(err.value).startswith(field + ":") and words in str(err.value), str(err.value)


def test_a_chat_evaluator_needs_a_chat_model_before_any_forward(tmp_path):
    model, _ = planted_model()  # no chat template

    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran before the needs were checked")

    model.register_forward_pre_hook(boom)
    with pytest.raises(InputError, match=r"units\[0\]\.evaluate: attack_success_rate needs a chat model"):
        run_experiment(_spec(tmp_path, ASR_SPEC), tmp_path / "out", model=model, progress=False)


def test_whole_prompt_and_data_rules_from_the_registry():
    shapes = (
        "name: s\nmodel: testing:tiny\ndata:\n  d: {generator: shapes, split: text_qa, n: 4}\nunits:\n"
        "  - name: u\n    evaluate: text_qa_accuracy\n    data: d\n    params: {noise: 0.3}\n"
        "    conditions: [{name: none, heads: []}]\n"
    )
    with pytest.raises(InputError, match=r"units\[0\]\.params: takes no parameters, got \['noise'\]"):
        parse_spec(shapes)  # text QA has no image to add noise to
    with pytest.raises(InputError, match=r"units\[0\]\.params\.noise: must be a number >= 0"):
        parse_spec(shapes.replace("text_qa", "image_qa").replace("0.3", "-1"))
    with pytest.raises(InputError, match=r"data\.d\.split: unknown split 'colour'; known: image_qa, text_qa, pope"):
        parse_spec(shapes.replace("split: text_qa", "split: colour"))
    with pytest.raises(InputError, match=r"data\.d\.name: unknown prompt set 'advbench'; known: harmful-train"):
        parse_spec(
            shapes.replace("{generator: shapes, split: text_qa, n: 4}", "{generator: prompt_set, name: advbench}")
        )
    logits = (
        "name: k\nmodel: testing:tiny\ndata:\n  d: {prompts: [[1, 2, 3]]}\nunits:\n  - name: u\n"
        "    evaluate: kl_last\n    data: d\n    intervention: {kind: zero, positions: decode}\n"
        "    conditions: [{name: a, heads: [[0, 0]]}]\n"
    )
    with pytest.raises(
        InputError,
        match=r"units\[0\]\.intervention\.positions: 'decode' is for evaluators that "
        r"generate \(attack_success_rate, needle_accuracy\); kl_last runs whole",
    ):
        parse_spec(logits)
