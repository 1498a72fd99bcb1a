"""The intervention-kind contract: the `Intervention` base class every kind subclasses, and `KINDS`.

A kind is one frozen dataclass that owns everything about itself:

- `kind`: its name: the `KINDS` key, a spec's `kind:` field (YAML, `headscope run`), `scan(kind=...)`;
- its parameters: dataclass fields after the shared `heads` and `positions`, checked in `__post_init__`;
- `site`: the capture-engine site whose hook it edits ("z", "attn_scores", "pattern", ...);
- `edit(sel, rows, ctx)`: the tensor edit on the selected heads' slices (see `EditContext`);
- `reference_field` and `prepare_reference()`: reference activations captured before the run (mean,
  resample), and `with_default_reference()`, how "the inputs being run" stand in for missing ones;
- `whole_query`: its edit reads the whole query axis, so a KV-cached decode step cannot reproduce it;
- `causal_only`: its edit assumes causal attention (ACT's sink statistic): refused on an encoder;
- `scan_template()`: the one-head template `scan()` visits heads with.

Defining the subclass registers it in `KINDS` (`__init_subclass__`): the hook builder, `prepare`,
`scan()`, experiments and safety only call these attributes, so no other file names a kind.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch

from ..capture.engine import SITES
from ..errors import InputError
from ..registry import Registry

PositionMode = Literal["all", "decode"]  # every query position | those past the decode start
Positions = PositionMode | tuple[int, int | None]  # or a [start, end) span (end None: to the end)
KINDS: Registry[type[Intervention]] = Registry(
    "intervention kind", fix="or define one: subclass headscope.interventions.Intervention, see docs/interventions.md"
)
# Sites whose tensors are [batch, head, q, k] (attention scores/patterns); the others are [batch, pos, head, d].
ATTENTION_SITES = ("attn_scores", "pattern")


@dataclass(frozen=True)
class EditContext:
    """What an edit may need besides the slices: the layer, the head and the prompt of each selected
    slice, what `prepare_reference()` computed for this spec at this layer (None if nothing), and
    `offset`, the absolute position of the slice's first query row (0 for a whole sequence; a
    KV-cached decode step's one query sits at its position in the sequence)."""

    layer: int
    heads: torch.Tensor  # [n] head index of each selected slice
    prompts: torch.Tensor  # [n] the prompt its batch row holds (scan stacks copies of the batch)
    reference: Any = None
    offset: int = 0


def norm_heads(heads) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple(sorted({(int(l), int(h)) for l, h in heads}))
    except (TypeError, ValueError):
        raise InputError(f"heads must be a list of (layer, head) pairs, got {heads!r}") from None
    if not out:
        raise InputError("heads is empty: name at least one (layer, head)")
    return out


def norm_positions(positions) -> Positions:
    if positions in get_args(PositionMode):
        return positions
    try:
        start, end = positions
        start, end = int(start), (None if end is None else int(end))
    except (TypeError, ValueError):
        modes = ", ".join(repr(m) for m in get_args(PositionMode))
        raise InputError(f"positions must be {modes} or a [start, end) pair, got {positions!r}") from None
    if start < 0 or (end is not None and end <= start):
        raise InputError(f"positions span {positions!r} is empty or negative")
    return (start, end)


def prompts_field(value, name: str):
    """A list of prompts (strings or token-id lists) as a hashable tuple; None stays None."""
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


def _plain(value):
    """Tuples (also nested) to lists, so a spec dumps to JSON and YAML alike."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


@dataclass(frozen=True)
class Intervention:
    """A head intervention: which heads (edited together, in one forward), which query positions
    ("all", "decode" = positions >= the decode start given at run time, or a [start, end) span), and
    the kind's parameters. Subclass it to add a kind (see the module docstring)."""

    heads: Sequence[tuple[int, int]] = ()  # any (layer, head) pairs; __post_init__ stores a sorted tuple
    positions: Positions = "all"
    kind: ClassVar[str] = ""
    site: ClassVar[str] = ""
    reference_field: ClassVar[str | None] = None  # the field holding reference prompts (mean, resample)
    whole_query: ClassVar[bool] = False  # True: the edit reads every query row (ACT's column means)
    causal_only: ClassVar[bool] = False  # True: the edit assumes causal attention (refused on encoders)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:  # an intermediate base class, or a subclass tweaking a kind
            return
        for name in (
            "kind",
            "site",
            "reference_field",
            "whole_query",
            "causal_only",
        ):  # without ClassVar: a dataclass field
            annotation = inspect.get_annotations(cls).get(name)
            if annotation is not None and "ClassVar" not in str(annotation):
                raise TypeError(
                    f"{cls.__qualname__}.{name} must be declared as a class fact, "
                    f"`{name}: ClassVar[...] = ...`, not as a dataclass field"
                )
        if cls.site not in SITES:
            raise TypeError(
                f"intervention kind {cls.kind!r} ({cls.__qualname__}) has site {cls.site!r}; "
                f"use one of the capture-engine sites {sorted(SITES)}"
            )
        if cls.edit is Intervention.edit:
            raise TypeError(
                f"intervention kind {cls.kind!r} ({cls.__qualname__}) must define edit(self, sel, rows, ctx)"
            )
        KINDS.register(cls.kind, cls)

    def __post_init__(self):
        object.__setattr__(self, "heads", norm_heads(self.heads))
        object.__setattr__(self, "positions", norm_positions(self.positions))

    # ---- what the hooks call ------------------------------------------------------------------------

    def edit(self, sel: torch.Tensor, rows: slice, ctx: EditContext) -> torch.Tensor:
        """The edited slices, same shape as `sel`: [n, pos, d] at head-output sites (hook_z, hook_q, ...),
        [n, q, k] at attention sites, one slice per selected (batch row, head). Edit only the query
        rows `rows` (the spec's positions). Must not modify `sel` in place."""
        raise NotImplementedError

    @property
    def edits_attention(self) -> bool:
        """Whether the edit is on attention scores/patterns ([n, q, k] slices) rather than head outputs."""
        return self.site in ATTENTION_SITES

    @property
    def row_local(self) -> bool:
        """Whether the edit treats each query row on its own, so blocked attention (rows a block at a
        time) gives what eager attention gives: head-output edits and row-wise score edits; not a
        redistribution of the pattern (ACT, VAR)."""
        return not self.edits_attention or (self.site == "attn_scores" and not self.whole_query)

    @property
    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.heads})

    # ---- reference activations (kinds with a reference_field) --------------------------------------

    @property
    def needs_reference(self) -> bool:
        return self.reference_field is not None

    def prepare_reference(self, model, prompts: list, batch_size: int) -> dict[int, Any]:
        """{layer: value} that `edit` receives as `ctx.reference`, computed on `prompts` before the run."""
        raise NotImplementedError(
            f"intervention kind {self.kind!r} sets reference_field but has no prepare_reference()"
        )

    def with_default_reference(self, prompts: tuple) -> Intervention:
        """This spec with `prompts` (the data being run) as its reference if it has none."""
        if self.reference_field is None or getattr(self, self.reference_field) is not None:
            return self
        return dataclasses.replace(self, **{self.reference_field: prompts})

    # ---- scan and specs ----------------------------------------------------------------------------

    @classmethod
    def scan_template(cls, positions: Positions = "all", **params) -> Intervention:
        """The spec `scan()` edits one head at a time with (its heads are a placeholder). A kind whose
        defaults would make every one-head variant a no-op inside a scan overrides this."""
        return cls(heads=[(0, 0)], positions=positions, **params)

    @classmethod
    def param_names(cls) -> list[str]:
        """The kind's own parameters (its fields other than heads and positions)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("heads", "positions")]

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for f in dataclasses.fields(self):
            d[f.name] = _plain(getattr(self, f.name))
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Intervention:
        if not isinstance(d, dict) or "kind" not in d:
            raise InputError(f"an intervention needs a 'kind' field (one of {sorted(KINDS)}), got {d!r}")
        cls = KINDS.get(d["kind"]) if isinstance(d["kind"], str) else None
        if cls is None:
            raise InputError(f"unknown intervention kind {d['kind']!r}; known: {sorted(KINDS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"kind"}
        if unknown:
            raise InputError(f"intervention {d['kind']!r} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k != "kind"})
