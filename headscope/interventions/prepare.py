"""Reference activations for mean and resample ablation, computed once before the intervened run.

Both read the heads' outputs (hook_z) on other prompts: the mean over every real token of a
reference set, or the full per-position outputs of source prompts. They are captured with the
capture engine (observe-only hooks, batched, padding masked) for the layers the specs touch.
"""

from __future__ import annotations

import torch

from ..capture.engine import capture
from ..capture.reducers import Reducer
from ..errors import InputError
from .specs import MeanAblation, ResampleAblation


class _HeadOutputs(Reducer):
    """Collects hook_z of chosen layers: a running sum for means, or every prompt's full tensor."""

    name = "head_outputs"
    needs = ("z",)

    def __init__(self, layers, keep_full: bool):
        self.layers, self.keep_full = set(layers), keep_full

    def start(self, info, n_prompts):
        self.sums, self.count, self.full = {}, 0, {l: [None] * n_prompts for l in self.layers}

    def update(self, layer, acts, ctx):
        if layer not in self.layers:
            return
        z = acts["z"].float()  # [batch, pos, head, d_head]
        valid = ctx.valid  # [batch, pos]
        self.sums[layer] = self.sums.get(layer, 0) + (z * valid[..., None, None]).sum((0, 1))
        if layer == min(self.layers):
            self.count += int(valid.sum())
        if self.keep_full:
            for row, idx in enumerate(ctx.index):
                self.full[layer][idx] = z[row, : int(valid[row].sum())].clone()

    def result(self, info, prompts=None):
        return self


class Prepared:
    """Reference activations per (spec, layer); built by `prepare()`."""

    def __init__(self):
        self._means: dict = {}
        self._sources: dict = {}  # (spec, layer) -> ([n_src, T_max, head, d], lengths [n_src])

    def mean_z(self, spec, layer: int) -> torch.Tensor:
        return self._means[(spec, layer)]

    def resampled_z(self, spec, layer: int, head_idx, local_row, n_pos: int) -> torch.Tensor:
        """[n, n_pos, d_head]: for each selected (row, head), the source prompt's outputs."""
        z, lengths = self._sources[(spec, layer)]
        src = (local_row + spec.shift) % len(lengths)
        short = lengths[src] < n_pos
        if bool(short.any()):
            raise InputError(f"resample ablation: source prompt {int(src[short][0])} has {int(lengths[src[short][0]])} "
                             f"tokens but the inputs have {n_pos}; give sources at least as long as the inputs")
        return z[src, :n_pos, head_idx]


def _layers(spec) -> list[int]:
    return sorted({l for l, _ in spec.heads})


def prepare(model, interventions, *, default_prompts=None, batch_size: int = 8) -> Prepared:
    """Capture what mean/resample specs need. `default_prompts` stands in for specs whose
    reference/source is None (scan passes its own inputs); without it such specs are an error."""
    prepared = Prepared()
    for spec in interventions:
        if not isinstance(spec, (MeanAblation, ResampleAblation)):
            continue
        prompts = spec.reference if isinstance(spec, MeanAblation) else spec.source
        if prompts is None:
            prompts = default_prompts
        if prompts is None:
            field = "reference" if isinstance(spec, MeanAblation) else "source"
            raise InputError(f"{spec.kind} ablation needs {field}=[prompts] (the prompts whose head outputs are "
                             f"used) when applied directly; scan() defaults it to the scanned inputs")
        collector = _HeadOutputs(_layers(spec), keep_full=isinstance(spec, ResampleAblation))
        capture(model, [list(p) if isinstance(p, tuple) else p for p in prompts], [collector],
                layers=_layers(spec), batch_size=batch_size, progress=False)
        for layer in _layers(spec):
            if isinstance(spec, MeanAblation):
                prepared._means[(spec, layer)] = collector.sums[layer] / collector.count
            else:
                full = collector.full[layer]
                lengths = torch.tensor([len(z) for z in full])
                padded = torch.nn.utils.rnn.pad_sequence(full, batch_first=True)  # [n_src, T_max, head, d]
                prepared._sources[(spec, layer)] = (padded, lengths)
    return prepared
