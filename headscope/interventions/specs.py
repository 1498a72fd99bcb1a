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


def _plain(value):
    """Tuples (also nested) to lists, so a spec dumps to JSON and YAML alike."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


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
            d[f.name] = _plain(getattr(self, f.name))
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
    """Make the head attend (almost) uniformly over the keys it may see.

    Realised on the head's attention scores as the model computes them (after RoPE, any q/k norm,
    soft-capping and position bias such as ALiBi, with its causal / sliding-window / padding mask):
    every visible score is multiplied by `epsilon`, masked keys stay masked. epsilon = 0 gives
    exactly uniform attention over the visible keys on every architecture (the head outputs the
    mean of V over them); Ships' epsilon = 1e-5 is "scale the query by epsilon", which on a model
    without q-norm or score bias is the same thing (scores are linear in q) and elsewhere is the
    faithful generalisation (scaling hook_q would be undone by a q-norm and leave ALiBi's bias).
    """

    epsilon: float = 0.0
    kind: ClassVar[str] = "uniform_attention"
    site: ClassVar[str] = "attn_scores"


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
            raise InputError(f"streaming window needs sink >= 0 and recent >= 1, got sink={self.sink}, recent={self.recent}")


def _prompts_field(value, name: str):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        out = tuple(v if isinstance(v, str) else tuple(int(t) for t in v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of prompts (strings or token-id lists), got {value!r}") from None
    if not out:
        raise InputError(f"{name} is empty: give at least one prompt")
    return out


@_kind
@dataclass(frozen=True)
class MeanAblation(Intervention):
    """Replace the head's output (hook_z) by its mean over all tokens of a reference set of
    prompts. `reference=None` means "the inputs being run" inside `scan()`; `apply()` needs it set."""

    reference: tuple | None = None
    kind: ClassVar[str] = "mean"
    site: ClassVar[str] = "z"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "reference", _prompts_field(self.reference, "mean ablation reference"))


@_kind
@dataclass(frozen=True)
class ResampleAblation(Intervention):
    """Replace the head's output (hook_z) by its output on another prompt, position by position:
    batch row i takes source prompt (i + shift) mod n_sources. Sources must be at least as long as
    the inputs. `source=None` means "the inputs being run" inside `scan()` (shift 1: each prompt
    gets the next prompt's activations)."""

    source: tuple | None = None
    shift: int = 0
    kind: ClassVar[str] = "resample"
    site: ClassVar[str] = "z"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "source", _prompts_field(self.source, "resample source"))


@_kind
@dataclass(frozen=True)
class ACTCalibration(Intervention):
    """ACT attention calibration (Yu et al. 2024) at hook_pattern: keys whose mean received
    attention s_j exceeds `threshold` (the first such key, normally BOS, excepted) keep `beta` of
    their mass; the rest moves proportionally to the other keys. Rows stay stochastic."""

    beta: float = 0.4
    threshold: float = 0.1
    kind: ClassVar[str] = "act"
    site: ClassVar[str] = "pattern"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(f"ACT beta is the fraction of sink attention kept, in [0, 1]; got {self.beta}")


@_kind
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
        object.__setattr__(self, "targets", _norm_positions(self.targets))
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise InputError(f"VAR keep_fraction must be in [0, 1], got {self.keep_fraction}")
