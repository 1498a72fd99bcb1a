"""Scaling a head's output (VHR's reinforcement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..edits import on_rows
from ..kind import Intervention


@dataclass(frozen=True)
class ScaleOutput(Intervention):
    """Multiply the head's output (hook_z) by alpha (VHR reinforcement uses 2)."""

    alpha: float = 2.0
    kind: ClassVar[str] = "scale"
    site: ClassVar[str] = "z"

    def edit(self, sel, rows, ctx):
        return on_rows(sel, rows, lambda x: x * self.alpha)
