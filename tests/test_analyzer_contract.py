"""The analyzer contract, checked rule by rule on every registered analyzer (one test id per analyzer and
rule); the checker itself can fail and names every broken rule; a toy analyzer defined here plugs in from
this one file and runs from Python, the CLI and an experiment spec."""

import json
import re

import numpy as np
import pytest

from headscope.analyzers import REGISTRY, Analyzer, get_analyzer, register, select_heads
from headscope.analyzers.base import NotFittedError, example_prompts, prompts_or_default
from headscope.analyzers.params import Interval
from headscope.capture import capture
from headscope.capture.reducers import FirstTokenMass
from headscope.errors import InputError
from headscope.models.info import model_info
from headscope.registry import registered_from
from headscope.testing import analyzer_checks, check_analyzer, parametrize_with_checks, planted_model

CHECK_NAMES = [
    "class_attributes",
    "registry",
    "defaults",
    "parameter_constraints",
    "init_stores_parameters_only",
    "clone",
    "not_fitted",
    "parameter_errors",
    "fits_on_test_models",
    "fit_leaves_parameters_alone",
    "scores",
    "heads",
    "deterministic",
    "prepare_data",
    "refit",
    "results",
    "ci",
]


@parametrize_with_checks([REGISTRY[name] for name in sorted(REGISTRY)])
def test_registered_analyzer_meets_the_contract(analyzer, check):
    check(analyzer)


class FirstTokenHeads(Analyzer):
    """A toy: heads whose queries put more than `threshold` of their attention on the first token."""

    name = "toy-first-token"
    description = "Toy: attention mass on the first token."
    input_kind = "prompts (None: two random ones)"
    parameter_constraints = {"threshold": [Interval(float, 0, 1)]}

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def prepare_data(self, model, data=None):
        return prompts_or_default(data, lambda: example_prompts(model))

    @classmethod
    def example_data(cls, model):
        return example_prompts(model)

    def _fit(self, model, data):
        res = capture(model, data, [FirstTokenMass()], progress=False)
        self.scores_ = self._own(res["first_token_mass"])
        self.heads_ = select_heads(self.scores_, threshold=self.threshold)


@pytest.fixture
def toy():
    register(FirstTokenHeads)
    yield FirstTokenHeads
    REGISTRY.unregister(FirstTokenHeads.name)


def test_a_toy_analyzer_plugs_in_from_one_file(toy, tmp_path):
    from headscope.cli import main
    from headscope.experiments import run_experiment

    assert registered_from(REGISTRY, toy.name) == f"{__name__}.FirstTokenHeads"
    assert check_analyzer(toy) == ["tiny", "planted"]
    model, truth = planted_model()
    fitted = get_analyzer(toy.name, threshold=0.5).fit(model, example_prompts(model))
    assert fitted.heads_[0] == truth.sink  # the planted sink head puts all its mass on the first token
    # the CLI and an experiment spec find it by name
    assert main(["analyze", toy.name, "--model", "testing:planted", "--out", str(tmp_path / "cli"), "--no-static"]) == 0
    saved = json.loads((tmp_path / "cli" / f"{toy.name}.json").read_text())
    assert saved["provenance"]["analyzer"] == toy.name
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: toy\nmodel: testing:planted\ndata:\n  p: {{prompts: {example_prompts(model)}}}\n"
        f"units:\n  - name: u\n    analyze: {toy.name}\n    data: p\n    params: {{threshold: 0.5}}\n"
    )
    out = run_experiment(spec, out=tmp_path / "run")
    assert out.exists()


# The checker fails where it should: each broken analyzer below breaks one rule.


def _broken(**overrides):
    attrs = {
        "name": "broken",
        "description": "d",
        "input_kind": "k",
        "parameter_constraints": {"threshold": [Interval(float, 0, 1)]},
        **overrides,
    }
    return type("Broken", (FirstTokenHeads,), attrs)


def _fit_then(edit):
    """`_fit` overridden: fit the toy, then `edit(self)` breaks its result."""

    def _fit(self, model, data):
        FirstTokenHeads._fit(self, model, data)
        edit(self)

    return {"_fit": _fit}


def _two_d_scores(self):
    self.scores_ = self.scores_.mean_over_prompts()  # [layer, head], not [prompt, layer, head]


def _unmeasured_head_selected(self):
    self.scores_.values[:, 0, 0] = np.nan  # L0H0 not measured, so ranking_ leaves it out...
    self.heads_ = [(0, 0)]  # ...yet heads_ selects it


def _nothing_measured(self):
    self.scores_.values.fill(np.nan)
    self.heads_ = []


def _head_outside_the_model(self):
    self.heads_ = [(9, 9)]


@pytest.mark.parametrize(
    "overrides, check_name, words",
    [
        ({"input_kind": ""}, "class_attributes", "(class attributes): `input_kind` empty"),
        (
            {"parameter_constraints": {}},
            "parameter_constraints",
            "(parameter_constraints): no constraints for ['threshold']",
        ),
        (
            {"parameter_constraints": {"threshold": [Interval(float, 2, 3)]}},
            "parameter_constraints",
            "(parameter_constraints): the default threshold=0.5 is rejected by its own constraints",
        ),
        (
            {
                "__init__": lambda self, threshold=0.5: (
                    setattr(self, "threshold", float(threshold)) or setattr(self, "cache", {})
                )
            },
            "init_stores_parameters_only",
            "(__init__ stores parameters only): __init__ also set ['cache']",
        ),
        (
            _fit_then(_unmeasured_head_selected),
            "heads",
            "(heads_): on tiny: heads_ [(0, 0)] holds heads that ranking_ does not",
        ),
        (_fit_then(_nothing_measured), "scores", "(scores_): every score is NaN on every test model (tiny, planted)"),
        # the base class's fit itself refuses these two: the fit fails, naming the rule
        (_fit_then(_two_d_scores), "fits_on_test_models", "must set scores_ to a [prompt, layer, head] HeadScores"),
        (
            _fit_then(_head_outside_the_model),
            "fits_on_test_models",
            "must set heads_ to a list of (layer, head) tuples",
        ),
    ],
    ids=[
        "no-input_kind",
        "no-constraints",
        "default-rejected",
        "init-sets-more",
        "unmeasured-head-selected",
        "nothing-measured",
        "2d-scores",
        "head-outside-the-model",
    ],
)
def test_the_checker_catches_a_broken_analyzer(overrides, check_name, words):
    broken = _broken(**overrides)
    with pytest.raises(
        AssertionError, match=rf"\n- {check_name}: Broken breaks the analyzer contract [^\n]*{re.escape(words)}"
    ):
        check_analyzer(broken)
    check = {c.name: c for c in analyzer_checks(broken)}[check_name]  # the rule's own test fails alone too
    with pytest.raises(AssertionError, match=re.escape(words)):
        check(broken)


def test_the_checker_reports_every_broken_rule_and_only_those():
    both = _broken(input_kind="", **_fit_then(_unmeasured_head_selected))
    with pytest.raises(AssertionError) as err:
        check_analyzer(both)
    message = str(err.value)
    assert message.startswith(f"Broken fails 2 of {len(CHECK_NAMES)} checks of the analyzer contract:")
    assert [line.split(":")[0] for line in message.splitlines()[1:]] == ["- class_attributes", "- heads"]


def test_a_fit_that_raises_is_reported_once_by_every_check_that_reads_it():
    def _fit(self, model, data):
        raise ValueError("boom")

    with pytest.raises(AssertionError) as err:
        check_analyzer(_broken(_fit=_fit))
    lines = str(err.value).splitlines()[1:]
    assert sum("fit raised ValueError: boom" in line for line in lines) == 1
    assert lines[0].startswith("- parameter_errors") is False and "fits_on_test_models" in lines[0]
    assert all(line.endswith("not checked: the fit failed (above)") for line in lines[1:])


def test_checks_are_named_rules_that_share_one_set_of_fits(toy):
    fits = []

    class Counted(FirstTokenHeads):
        name = "counted"

        def _fit(self, model, data):
            fits.append(model)
            super()._fit(model, data)

    checks = list(analyzer_checks(Counted))
    assert [c.name for c in checks] == CHECK_NAMES and all(c.analyzer is Counted for c in checks)
    for check in checks:
        check(Counted)
    # per test model: the fit, the determinism refit, the fit on prepared data and the refit (an invalid
    # parameter is refused before _fit), whether the rules run one by one or all at once
    assert len(fits) == 2 * 4
    fits.clear()
    assert check_analyzer(Counted) == ["tiny", "planted"] and len(fits) == 2 * 4
    with pytest.raises(InputError, match="made for Counted"):
        checks[0](toy)
    mark = parametrize_with_checks([toy, Counted()])  # a class or an instance (its class)
    assert mark.args[0] == "analyzer, check"
    assert [p.id for p in mark.args[1]] == [f"{a}-{n}" for a in (toy.name, "counted") for n in CHECK_NAMES]
    assert [p.values[0] for p in mark.args[1]] == [toy] * len(CHECK_NAMES) + [Counted] * len(CHECK_NAMES)


def test_fitted_attributes_and_parameters_fail_clearly():
    an = FirstTokenHeads()
    with pytest.raises(NotFittedError, match="not fitted"):
        _ = an.heads_
    assert not hasattr(an, "ranking_")
    model = planted_model()[0]
    with pytest.raises(InputError, match="threshold=2"):
        FirstTokenHeads(threshold=2).fit(model)
    fitted = FirstTokenHeads().fit(model)
    assert fitted.ranking_[0] == fitted.heads_[0] and len(fitted.ranking_) == model_info(model).n_layers * 4
    assert np.isfinite(fitted.scores_.values).all() and fitted.clone().get_params() == fitted.get_params()
