"""The streaming mask (StreamingLLM / DuoAttention): a head sees only its sink and recent keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import InputError
from ..kind import Intervention


def streaming_hidden(
    n_q: int, n_k: int, sink: int, recent: int, rows: slice, offset: int | None = None
) -> torch.Tensor:
    """[q, k] bool: keys a streaming head may NOT see (key k visible iff k < sink or q - k < recent).
    Query positions are absolute: row i is position `offset` + i (default n_k - n_q: a KV-cached step
    puts its queries at the end of the keys; a block of rows of blocked attention starts at its offset)."""
    offset = n_k - n_q if offset is None else offset
    q = torch.arange(offset, offset + n_q)[:, None]
    k = torch.arange(n_k)[None, :]
    hidden = ~((k < sink) | (q - k < recent))
    touched = torch.zeros(n_q, dtype=torch.bool)
    touched[rows] = True
    return hidden & touched[:, None]


@dataclass(frozen=True)
class StreamingWindow(Intervention):
    """Let the head's queries see only the first `sink` keys plus the `recent` most recent ones
    (the StreamingLLM / DuoAttention streaming mask: key k visible iff k < sink or q - k < recent). The
    defaults are StreamingLLM's 4 sinks with a 256 window; DuoAttention evaluates with sink=64,
    recent=256 (and trains with 128 + 256): pass those to reproduce it."""

    sink: int = 4
    recent: int = 256
    kind: ClassVar[str] = "streaming_window"
    site: ClassVar[str] = "attn_scores"

    def __post_init__(self):
        super().__post_init__()
        if self.sink < 0 or self.recent < 1:
            raise InputError(
                f"streaming window needs sink >= 0 and recent >= 1, got sink={self.sink}, recent={self.recent}"
            )

    def edit(self, sel, rows, ctx):
        hidden = streaming_hidden(sel.shape[-2], sel.shape[-1], self.sink, self.recent, rows, ctx.offset)
        return sel.masked_fill(hidden, torch.finfo(sel.dtype).min)
