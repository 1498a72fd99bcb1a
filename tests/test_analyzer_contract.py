"""The analyzer contract, checked on every registered analyzer; the checker itself can fail; a toy
analyzer defined here plugs in from this one file and runs from Python, the CLI and an experiment spec."""

import json

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
from headscope.testing import check_analyzer, planted_model


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registered_analyzer_meets_the_contract(name):
    assert check_analyzer(REGISTRY[name])  # fits on two test models


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


@pytest.mark.parametrize(
    "overrides, rule",
    [
        ({"input_kind": ""}, "class attributes"),
        ({"parameter_constraints": {}}, "parameter_constraints"),
        ({"parameter_constraints": {"threshold": [Interval(float, 2, 3)]}}, "parameter_constraints"),
        (
            {
                "__init__": lambda self, threshold=0.5: (
                    setattr(self, "threshold", float(threshold)) or setattr(self, "cache", {})
                )
            },
            "__init__ stores parameters only",
        ),
        (
            {
                "_fit": lambda self, model, data: (
                    setattr(
                        self,
                        "scores_",
                        FirstTokenHeads()
                        ._own(capture(model, data, [FirstTokenMass()], progress=False)["first_token_mass"])
                        .mean_over_prompts(),
                    ),
                    setattr(self, "heads_", []),
                )
            },
            "scores_",
        ),
        (
            {
                "parameter_constraints": {"threshold": [None, Interval(float, 0, 1)]},
                "_fit": lambda self, model, data: (
                    FirstTokenHeads._fit(self, model, data) or setattr(self, "heads_", [(9, 9)])
                ),
            },
            "heads_",
        ),
    ],
)
def test_the_checker_catches_a_broken_analyzer(overrides, rule):
    with pytest.raises((AssertionError, TypeError), match=rule.replace("(", r"\(")):
        check_analyzer(_broken(**overrides))


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
