"""The in-code test models as testbeds: `load_model("testing:tiny", n_layers=3)` and specs'
`model: {name: "testing:planted", seed: 1}` build them like any other named model."""

from __future__ import annotations

from headscope.models.catalog import Testbed, register_testbed
from headscope.testing.planted import planted_model
from headscope.testing.tiny import tiny_model


def _tiny(cache_dir=None, device=None, dtype=None, **params):
    return tiny_model(**params)


def _planted(cache_dir=None, device=None, dtype=None, **params):
    model, _truth = planted_model(**params)  # the ground truth comes from planted_model() itself
    return model


register_testbed(Testbed("testing:tiny", load=_tiny, accepts=tiny_model,
                         summary="a tiny random-weight Llama built in code (headscope.testing.tiny_model)"))
register_testbed(Testbed("testing:planted", load=_planted, accepts=planted_model,
                         summary="a tiny Llama with planted heads (headscope.testing.planted_model)"))
