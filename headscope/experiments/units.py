"""What every executor shares: load the spec's model, prepare its datasets, plan each unit's items
(`PLANNERS`) and combine a finished unit's files (`FINISHERS`)."""

from __future__ import annotations

from ..errors import ModelNotFoundError
from ..models import load_model, model_info
from ..options import torch_dtype
from . import evaluate as _evaluate
from . import executors
from .data import materialize
from .spec import Spec, check_model

PLANNERS = {"analyze": executors.plan_analyze, "scan": executors.plan_scan, "evaluate": _evaluate.plan_evaluate}
FINISHERS = {"analyze": executors.finish_heads, "scan": executors.finish_heads, "evaluate": _evaluate.finish_evaluate}


def load_spec_model(spec: Spec, **options):
    """The spec's model: a `load_model` name/path, or a testbed with its parameters (`testing:tiny`);
    `options` = where to load it (device, n_devices)."""
    if spec.model_dtype is not None:
        options = {"dtype": torch_dtype(spec.model_dtype), **options}
    try:
        return load_model(spec.model, **spec.model_params, **options)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"model: {e}") from None


def prepare(spec: Spec, model=None):
    """Steps 3 of the module docstring: (model, info, datasets by path), no forward pass yet."""
    model = load_spec_model(spec) if model is None else model
    info = model_info(model)
    check_model(spec, info)
    _evaluate.check_needs(spec, model, info)
    specs = {**{d.path: d for d in spec.data.values()}, **{u.data.path: u.data for u in spec.units if u.data}}
    datasets = {path: materialize(d, model, info) for path, d in specs.items()}
    return model, info, datasets
