"""The in-code test models as testbeds: `load_model("testing:tiny", n_layers=3)` and specs'
`model: {name: "testing:planted", seed: 1}` build them like any other named model."""

from __future__ import annotations

from headscope.models.catalog import Testbed, register_testbed
from headscope.testing.planted import planted_model
from headscope.testing.tiny import tiny_model


def _placed(model, device, dtype):
    """The built model moved to `device` / cast to `dtype` when asked (a Ray worker loads on its GPU)."""
    if device is not None or dtype is not None:
        model.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        if device is not None:
            model.cfg.device = str(device)
    return model


def _tiny(cache_dir=None, device=None, dtype=None, **params):
    return _placed(tiny_model(**params), device, dtype)


def _planted(cache_dir=None, device=None, dtype=None, **params):
    model, _truth = planted_model(**params)  # the ground truth comes from planted_model() itself
    return _placed(model, device, dtype)


register_testbed(
    Testbed(
        "testing:tiny",
        load=_tiny,
        accepts=tiny_model,
        summary="a tiny random-weight Llama built in code (headscope.testing.tiny_model)",
    )
)
register_testbed(
    Testbed(
        "testing:planted",
        load=_planted,
        accepts=planted_model,
        summary="a tiny Llama with planted heads (headscope.testing.planted_model)",
    )
)
