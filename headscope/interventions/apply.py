"""Apply interventions for the duration of a call; the user's model is never mutated."""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..models.info import model_info
from .hooks import build_hooks, check_editable, check_specs
from .prepare import prepare_references


@contextlib.contextmanager
def apply(model, interventions, *, decode_start: int | None = None):
    """Context manager: attach the interventions' hooks, always remove them on exit (also on error).

    Kinds with reference activations (mean and resample ablation) first run their reference prompts
    once (observe-only) to get the head outputs they substitute.

    Example:
        >>> from headscope.testing import planted_model
        >>> from headscope.interventions import UniformAttention, apply
        >>> model, truth = planted_model()
        >>> with apply(model, [UniformAttention(heads=[truth.induction])]):
        ...     logits = model(torch.tensor([[1, 5, 6, 7, 5, 6, 7]]))
    """
    info = model_info(model)
    specs = check_specs(interventions, info)  # validate before any compute
    check_editable(model, specs)
    prepared = prepare_references(model, specs)
    hooks = build_hooks(specs, info, decode_start, prepared)
    with model.hooks(fwd_hooks=hooks):
        yield model


def forward_with(model, tokens, interventions, *, decode_start: int | None = None, **forward_kw):
    """One forward pass with the interventions applied; returns the model's output (logits).

    Example:
        >>> logits = forward_with(model, tokens, [ZeroAblation(heads=[(3, 1)])], attention_mask=mask)
    """
    with torch.no_grad(), apply(model, interventions, decode_start=decode_start):
        return model(tokens, **forward_kw)


def run(model, tokens, interventions, *, decode_start: int | None = None, **forward_kw):
    """Deprecated alias of `forward_with` (the name `run` is the `headscope run` experiment command)."""
    warnings.warn("headscope.run / headscope.interventions.run is renamed forward_with (run is the `headscope run` "
                  "experiment command); the old name goes in the next release", DeprecationWarning, stacklevel=2)
    return forward_with(model, tokens, interventions, decode_start=decode_start, **forward_kw)
