"""Reference activations for the kinds that need them (mean and resample ablation), computed once
before the intervened run.

`prepare_references()` asks each spec with a `reference_field` for its `prepare_reference()` on its
reference prompts (or on `default_prompts`, the inputs being run, when it names none). The kinds read
head outputs through `head_outputs()`: the capture engine (observe-only hooks, batched, padding masked)
on the layers they touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from ..capture.engine import capture
from ..capture.reducers import Reducer
from ..errors import InputError


@dataclass
class HeadOutputs:
    """hook_z of some layers: `sums[layer]` [head, d_head] over every real token, `count` of those
    tokens, and (when kept) `full[layer][prompt]` [pos, head, d_head]."""

    sums: dict
    count: int
    full: dict


class _HeadOutputs(Reducer):
    """Collects hook_z of chosen layers: a running sum for means, or every prompt's full tensor."""

    name = "head_outputs"
    needs = ("z",)
    result_type = HeadOutputs

    def __init__(self, layers, keep_full: bool):
        self.layers, self.keep_full = set(layers), keep_full

    def start(self, info, n_prompts):
        self.sums, self.count, self.full = {}, 0, {l: [None] * n_prompts for l in self.layers}

    def update_rows(self, layer, acts, rows):
        if layer not in self.layers:
            return
        z = acts["z"].float()  # [batch, pos, head, d_head] (acts other than the pattern come whole)
        valid = rows.valid  # [batch, pos]
        self.sums[layer] = self.sums.get(layer, 0) + (z * valid[..., None, None]).sum((0, 1))
        if layer == min(self.layers):
            self.count += int(valid.sum())
        if self.keep_full:
            for row, idx in enumerate(rows.index):
                self.full[layer][idx] = z[row, : int(valid[row].sum())].clone()

    def result(self, info, prompts=None) -> HeadOutputs:
        return HeadOutputs(self.sums, self.count, self.full)


def head_outputs(model, prompts, layers, *, keep_full: bool, batch_size: int = 8) -> HeadOutputs:
    """hook_z of `layers` on `prompts` (see HeadOutputs): the capture engine, observe-only."""
    collector = _HeadOutputs(layers, keep_full=keep_full)
    result = capture(model, prompts, [collector], layers=sorted(layers), batch_size=batch_size, progress=False)
    return cast(HeadOutputs, result[collector.name])  # the collector's result_type; capture types results as HeadScores


class Prepared:
    """Reference activations per spec, {spec: {layer: value}}; built by `prepare_references()`."""

    def __init__(self):
        self._by_spec: dict = {}

    def for_layer(self, spec, layer: int):
        """What `spec.edit` reads as ctx.reference at `layer`."""
        try:
            return self._by_spec[spec][layer]
        except KeyError:
            raise InputError(
                f"intervention {spec.kind!r} at layer {layer} has no prepared reference "
                "activations. Fix: build its hooks with prepare_references(model, specs), or use "
                "apply() / scan(), which prepare them"
            ) from None


def prepare_references(model, interventions, *, default_prompts=None, batch_size: int = 8) -> Prepared:
    """Capture what specs with a reference field need. `default_prompts` stands in for specs whose
    reference is None (scan passes its own inputs); without it such specs are an error."""
    prepared = Prepared()
    for spec in interventions:
        if not spec.needs_reference or spec in prepared._by_spec:
            continue
        prompts = getattr(spec, spec.reference_field)
        if prompts is None:
            prompts = default_prompts
        if prompts is None:
            raise InputError(
                f"intervention {spec.kind!r} needs {spec.reference_field}=[prompts] (the prompts whose "
                "activations it uses) when applied directly; scan() defaults it to the scanned inputs"
            )
        prompts = [list(p) if isinstance(p, tuple) else p for p in prompts]
        prepared._by_spec[spec] = spec.prepare_reference(model, prompts, batch_size)
    return prepared
