"""Zero ablation: the head's output set to zero."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..edits import on_rows
from ..kind import Intervention


@dataclass(frozen=True)
class ZeroAblation(Intervention):
    """Set the head's output (hook_z) to zero."""

    kind: ClassVar[str] = "zero"
    site: ClassVar[str] = "z"

    def edit(self, sel, rows, ctx):
        return on_rows(sel, rows, torch.zeros_like)
