"""Every extension point is a registry filled by the module that owns each entry; a toy testbed defined in
this file plugs in end to end (the toy kind, analyzer, evaluator and generator tests live next to their
engines: test_interventions_plugin.py, test_analyzer_contract.py, test_experiment_registry.py)."""

import pytest

from headscope.analyzers import REGISTRY as ANALYZERS
from headscope.errors import InputError
from headscope.experiment_registry import EVALUATORS, GENERATORS
from headscope.interventions import KINDS
from headscope.models import TESTBEDS, Testbed, default_image_prompts, load_model, model_info, register_testbed
from headscope.registry import registered_from
from headscope.testing import tiny_model

# Where each registry's entries may come from: the packages that own methods, never the code that uses them.
OWNERS = {
    "analyzer": ("headscope.analyzers.", "headscope.safety.", "headscope.vision."),
    "intervention kind": ("headscope.interventions.kinds.",),
    "bundled model or testbed": ("headscope.models.loading", "headscope.testbeds.", "headscope.testing.testbeds"),
    "evaluator": (
        "headscope.analyzers.",
        "headscope.safety.",
        "headscope.vision.",
        "headscope.experiments.metric_change",
    ),
    "data generator": ("headscope.inputs.", "headscope.safety.", "headscope.vision."),
}


@pytest.mark.parametrize("registry", [ANALYZERS, KINDS, TESTBEDS, EVALUATORS, GENERATORS], ids=lambda r: r.kind)
def test_each_entry_is_registered_by_the_module_that_owns_it(registry):
    assert len(registry) > 0
    for name in registry:
        origin = registered_from(registry, name)
        assert origin.startswith(OWNERS[registry.kind]), f"{registry.kind} {name!r} registered from {origin}"


def test_unknown_names_list_the_known_ones():
    with pytest.raises(InputError, match="unknown bundled model or testbed 'nope'; available: .*shapes-vlm"):
        TESTBEDS["nope"]


def _load_toy(cache_dir=None, device=None, dtype=None, seed: int = 0):
    return tiny_model(seed=seed)


def _toy_prompts(model, n=None):
    return [([1, 5], [40, 40], [6, 7])] * (n or 2)


@pytest.fixture
def toy():
    testbed = register_testbed(
        Testbed("toy-testbed", load=_load_toy, summary="a tiny model", accepts=_load_toy, image_prompts=_toy_prompts)
    )
    yield testbed
    TESTBEDS.unregister(testbed.name)


def test_a_toy_testbed_plugs_in_from_one_file(toy, tmp_path):
    from headscope.experiments import run_experiment

    assert registered_from(TESTBEDS, "toy-testbed") == f"{__name__}._load_toy"
    model = load_model("toy-testbed", seed=3)
    info = model_info(model)
    assert info.testbed == "toy-testbed" and info.n_layers == 2
    assert default_image_prompts(model, 3) == _toy_prompts(model, 3)  # the catalog serves its image prompts
    with pytest.raises(InputError, match="no parameter"):
        load_model("toy-testbed", n_layers=3)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: toy\nmodel: {name: toy-testbed, seed: 1}\ndata:\n  p: {prompts: [[1, 5, 6, 5, 6]]}\n"
        "units:\n  - name: u\n    scan: zero\n    metric: kl_last\n    data: p\n"
    )
    assert run_experiment(spec, out=tmp_path / "run").exists()
