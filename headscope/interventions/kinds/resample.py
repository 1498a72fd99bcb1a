"""Resample ablation: the head's output replaced by its output on another prompt, position by position."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import InputError
from ..edits import on_rows
from ..kind import Intervention, prompts_field
from ..prepare import head_outputs


@dataclass(frozen=True)
class ResampleAblation(Intervention):
    """Replace the head's output (hook_z) by its output on another prompt, position by position:
    batch row i takes source prompt (i + shift) mod n_sources. Sources must be at least as long as
    the inputs (in generation: as the prompt plus the generated tokens). `source=None` means "the inputs being run" inside `scan()` (shift 1: each prompt
    gets the next prompt's activations)."""

    source: tuple | None = None
    shift: int = 0
    kind: ClassVar[str] = "resample"
    site: ClassVar[str] = "z"
    reference_field: ClassVar[str] = "source"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "source", prompts_field(self.source, "resample source"))

    def prepare_reference(self, model, prompts, batch_size):
        """{layer: (z [n_src, T_max, head, d_head], lengths [n_src])}: every source's full hook_z."""
        got = head_outputs(model, prompts, self.layers, keep_full=True, batch_size=batch_size)
        out = {}
        for layer in self.layers:
            full = got.full[layer]
            out[layer] = (torch.nn.utils.rnn.pad_sequence(full, batch_first=True), torch.tensor([len(z) for z in full]))
        return out

    def edit(self, sel, rows, ctx):
        z, lengths = ctx.reference
        end = ctx.offset + sel.shape[1]  # absolute positions offset .. end-1 (a KV-cached step: one)
        src = (ctx.prompts + self.shift) % len(lengths)
        short = lengths[src] < end
        if bool(short.any()):
            raise InputError(
                f"resample ablation: source prompt {int(src[short][0])} has {int(lengths[src[short][0]])} "
                f"tokens but the inputs have {end}; give sources at least as long as the inputs"
            )
        resampled = z[src, ctx.offset : end, ctx.heads]  # [n, n_pos, d_head]
        return on_rows(sel, rows, lambda x: resampled[:, rows].to(x.dtype))

    def with_default_reference(self, prompts):
        # Each prompt takes the next one's outputs: resampling a prompt from itself would be a no-op.
        if self.source is not None:
            return self
        return dataclasses.replace(self, source=prompts, shift=self.shift or 1)

    @classmethod
    def scan_template(cls, positions="all", **params):
        if params.get("source") is None:  # scan() sources the scanned inputs: shift 1, as above
            params = {"shift": 1, **params}
        return super().scan_template(positions, **params)
