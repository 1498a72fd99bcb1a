"""A reducer that keeps each head's output z (hook_z, before W_O) at a few chosen positions per prompt.

Head-divergence needs the *vectors* z of two runs (with and without a segment) to compare them, so
this reducer stores them, but only at the requested positions: prompts x layers x positions x heads
x d_head floats, never a pattern (SmolLM2: 69 KB per position per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..capture.reducers import Reducer
from ..errors import InputError
from ..results import HeadScores


@dataclass
class ZResult:
    """`z[i]`: float32 [layer, n_positions_i, head, d_head] of prompt i (NaN for layers not captured);
    `sq_norm`: the mean squared norm ||z||^2 over the positions per (prompt, layer, head), VHR's "TA"
    when run on the prompts without the segment."""

    z: list
    sq_norm: HeadScores


class ZAtPositions(Reducer):
    """Collect hook_z [batch, pos, head, d_head] at `positions[i]` (absolute indices into prompt i);
    the result is a ZResult."""

    result_type = ZResult
    needs = ("z",)
    higher_is_more = True
    description = "Mean squared norm ||z||^2 of each head's output (hook_z) over the chosen positions."

    def __init__(self, positions: list[list[int]], name: str = "z_sq_norm"):
        self.positions = [[int(p) for p in pos] for pos in positions]
        if not self.positions or any(not pos for pos in self.positions):
            raise InputError("ZAtPositions: give at least one position for every prompt")
        self.name = name

    def params(self) -> dict:
        return {"n_positions": [len(p) for p in self.positions]}

    def start(self, info, n_prompts: int) -> None:
        if n_prompts != len(self.positions):
            raise InputError(
                f"ZAtPositions has positions for {len(self.positions)} prompts but capture got {n_prompts}"
            )
        self.z = [
            torch.full((info.n_layers, len(pos), info.n_heads, info.d_head), float("nan")) for pos in self.positions
        ]

    def update_rows(self, layer, acts, ctx) -> None:
        z = acts["z"]  # [batch, pos, head, d_head]
        for row, idx in enumerate(ctx.index):  # one gather per prompt; heads stay vectorised
            pos = torch.tensor(self.positions[idx])
            n_real = int(ctx.valid[row].sum())
            if int(pos.max()) >= n_real:  # a position in the padding would silently read garbage
                raise InputError(f"prompt {idx}: position {int(pos.max())} is beyond its {n_real} tokens")
            self.z[idx][layer] = z[row, pos].float().cpu()  # [n_pos, head, d_head]

    def result(self, info, prompts=None) -> ZResult:
        # [prompt, layer, head]: mean over positions of sum over d_head of z^2
        values = np.stack([(z.double() ** 2).sum(-1).mean(1).numpy() for z in self.z])
        return ZResult(
            self.z,
            HeadScores(
                values,
                name=self.name,
                n_kv_heads=info.n_kv_heads,
                model=info.name,
                layer_kinds=info.layer_kinds,
                analyzer=f"capture.{type(self).__name__}",
                params=self.params(),
                prompts=prompts,
                higher_is_more=self.higher_is_more,
                description=self.description,
            ),
        )
