"""VAR visual-attention redistribution (Kang et al. 2025): sink mass moves to the image tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import InputError
from ..edits import move_mass
from ..kind import Intervention, norm_positions


def var_redistribute(
    pattern: torch.Tensor,
    rows: slice,
    sinks: tuple[int, ...],
    targets: tuple[int, int],
    keep_fraction: float,
    min_target_mass: float,
    max_sink_share: float,
) -> torch.Tensor:
    """VAR (Kang et al. 2025): sink columns keep `keep_fraction`; the freed mass moves to the
    non-sink keys of the target span in proportion to their attention. A query row is edited
    only if it gives the target span at least `min_target_mass` and the sinks inside the span
    hold at most `max_sink_share` of that (the paper's image-centric-head test per row)."""
    _n_q, n_k = pattern.shape[-2:]
    bad = [s for s in sinks if not 0 <= s < n_k]
    if bad:
        raise InputError(f"VAR sink positions {bad} are outside the sequence (length {n_k})")
    start, end = targets[0], (n_k if targets[1] is None else min(targets[1], n_k))
    sink_cols = torch.zeros(n_k, dtype=torch.bool)
    sink_cols[list(sinks)] = True
    span = torch.zeros(n_k, dtype=torch.bool)
    span[start:end] = True
    span_mass = (pattern * span).sum(-1)  # [n, q]
    sink_in_span = (pattern * (span & sink_cols)).sum(-1)
    ok = (span_mass >= min_target_mass) & (sink_in_span <= max_sink_share * span_mass)
    selected = torch.zeros(pattern.shape[:2], dtype=torch.bool)
    selected[:, rows] = True
    return move_mass(pattern, sink_cols[None].expand(len(pattern), -1), span[None], keep_fraction, selected & ok)


@dataclass(frozen=True)
class VARRedistribution(Intervention):
    """VAR visual-attention redistribution (Kang et al. 2025) at hook_pattern: the `sinks` key
    positions keep `keep_fraction` of their attention and the freed mass moves, proportionally,
    to the non-sink keys of the `targets` [start, end) span (e.g. the image tokens). A row is
    edited only if it puts >= `min_target_mass` on the span and the span's sinks hold <=
    `max_sink_share` of it (the paper's image-centric test; defaults 0 and 1 edit every row)."""

    sinks: tuple = ()
    targets: tuple = (0, None)
    keep_fraction: float = 0.6
    min_target_mass: float = 0.0
    max_sink_share: float = 1.0
    kind: ClassVar[str] = "var"
    site: ClassVar[str] = "pattern"

    def __post_init__(self):
        super().__post_init__()
        try:
            object.__setattr__(self, "sinks", tuple(sorted({int(s) for s in self.sinks})))
        except (TypeError, ValueError):
            raise InputError(f"VAR sinks must be a list of key positions, got {self.sinks!r}") from None
        if not self.sinks:
            raise InputError("VAR needs at least one sink position (sinks=[...])")
        if isinstance(self.targets, str):
            raise InputError(f"VAR targets must be a [start, end) span of key positions, got {self.targets!r}")
        object.__setattr__(self, "targets", norm_positions(self.targets))
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise InputError(f"VAR keep_fraction must be in [0, 1], got {self.keep_fraction}")

    def edit(self, sel, rows, ctx):
        return var_redistribute(
            sel, rows, self.sinks, self.targets, self.keep_fraction, self.min_target_mass, self.max_sink_share
        )
