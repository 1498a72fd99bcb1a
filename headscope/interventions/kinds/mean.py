"""Mean ablation: the head's output replaced by its mean over a reference set of prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..edits import on_rows
from ..kind import Intervention, prompts_field
from ..prepare import head_outputs


@dataclass(frozen=True)
class MeanAblation(Intervention):
    """Replace the head's output (hook_z) by its mean over all tokens of a reference set of
    prompts. `reference=None` means "the inputs being run" inside `scan()`; `apply()` needs it set."""

    reference: tuple | None = None
    kind: ClassVar[str] = "mean"
    site: ClassVar[str] = "z"
    reference_field: ClassVar[str] = "reference"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "reference", prompts_field(self.reference, "mean ablation reference"))

    def prepare_reference(self, model, prompts, batch_size):
        """{layer: [head, d_head]}: the mean of hook_z over every real token of the prompts."""
        got = head_outputs(model, prompts, self.layers, keep_full=False, batch_size=batch_size)
        return {layer: got.sums[layer] / got.count for layer in self.layers}

    def edit(self, sel, rows, ctx):
        mean = ctx.reference[ctx.heads][:, None, :]  # [n, 1, d_head]
        return on_rows(sel, rows, lambda x: mean.to(x.dtype).expand_as(x))
