"""Declarative, serialisable head interventions (frozen dataclasses, round-trip via to_dict/from_dict).

Each spec names the heads it edits (any set of (layer, head)), the query positions it touches
("all", "decode" = positions >= the decode start given at run time, or a [start, end) span) and
its kind's parameters. Realising a spec as hooks is `headscope.interventions.hooks`' job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from ..errors import InputError

Positions = Union[str, tuple]  # "all" | "decode" | (start, end)
KINDS: dict[str, type["Intervention"]] = {}


def _kind(cls):
    KINDS[cls.kind] = cls
    return cls


def _norm_heads(heads) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple(sorted({(int(l), int(h)) for l, h in heads}))
    except (TypeError, ValueError):
        raise InputError(f"heads must be a list of (layer, head) pairs, got {heads!r}") from None
    if not out:
        raise InputError("heads is empty: name at least one (layer, head)")
    return out


def _norm_positions(positions) -> Positions:
    if positions in ("all", "decode"):
        return positions
    try:
        start, end = positions
        start, end = int(start), (None if end is None else int(end))
    except (TypeError, ValueError):
        raise InputError(f"positions must be 'all', 'decode' or a [start, end) pair, got {positions!r}") from None
    if start < 0 or (end is not None and end <= start):
        raise InputError(f"positions span {positions!r} is empty or negative")
    return (start, end)


@dataclass(frozen=True)
class Intervention:
    heads: tuple = ()
    positions: Positions = "all"
    kind: ClassVar[str] = ""
    site: ClassVar[str] = ""  # the capture-engine site name whose hook realises this kind

    def __post_init__(self):
        object.__setattr__(self, "heads", _norm_heads(self.heads))
        object.__setattr__(self, "positions", _norm_positions(self.positions))

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = [list(h) for h in value] if f.name == "heads" else (list(value) if isinstance(value, tuple) else value)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Intervention":
        if not isinstance(d, dict) or "kind" not in d:
            raise InputError(f"an intervention needs a 'kind' field (one of {sorted(KINDS)}), got {d!r}")
        cls = KINDS.get(d["kind"])
        if cls is None:
            raise InputError(f"unknown intervention kind {d['kind']!r}; known: {sorted(KINDS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"kind"}
        if unknown:
            raise InputError(f"intervention {d['kind']!r} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k != "kind"})


@_kind
@dataclass(frozen=True)
class UniformAttention(Intervention):
    """Scale the head's queries by epsilon (0 = exactly uniform attention over the causal prefix,
    so the head outputs the running mean of V). Ships uses 1e-5; the retrieval-head masking uses 0."""

    epsilon: float = 0.0
    kind: ClassVar[str] = "uniform_attention"
    site: ClassVar[str] = "q"


@_kind
@dataclass(frozen=True)
class ZeroAblation(Intervention):
    """Set the head's output (hook_z) to zero."""

    kind: ClassVar[str] = "zero"
    site: ClassVar[str] = "z"


@_kind
@dataclass(frozen=True)
class ScaleOutput(Intervention):
    """Multiply the head's output (hook_z) by alpha (VHR reinforcement uses 2)."""

    alpha: float = 2.0
    kind: ClassVar[str] = "scale"
    site: ClassVar[str] = "z"


@_kind
@dataclass(frozen=True)
class StreamingWindow(Intervention):
    """Let the head's queries see only the first `sink` keys plus the `recent` most recent ones
    (DuoAttention / StreamingLLM streaming head: key k visible iff k < sink or q - k < recent)."""

    sink: int = 4
    recent: int = 256
    kind: ClassVar[str] = "streaming_window"
    site: ClassVar[str] = "attn_scores"

    def __post_init__(self):
        super().__post_init__()
        if self.sink < 0 or self.recent < 1:
            raise InputError(f"streaming window needs sink >= 0 and recent >= 1, got sink={self.sink}, recent={self.recent}")
