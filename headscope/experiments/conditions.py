"""Conditions of an `evaluate` unit: which heads get the intervention, one result per (condition, K, seed).

conditions:
  - {name: none, heads: []}                          # the unmodified model
  - {name: top, top_k: [1, 5, 10], from: scores}     # best K heads of an earlier analyze/scan unit
  - {name: random, random: [1, 5, 10], seeds: [0, 1, 2], from: scores, exclude_top: 10}
  - {name: pair, heads: [[17, 3], [18, 6]]}          # an explicit list
  - {name: mixed, interventions: [{kind: zero, heads: [[3, 1]]}, {kind: scale, alpha: 2, heads: [[5, 0]]}]}
  - {name: vhr, vhr: {alpha: 2, layers: [1, 2, 3]}}   # VHR, heads chosen per prompt (evaluators with vhr)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

import numpy as np

from ..confidence import Better
from ..errors import InputError
from ..interventions import KINDS, Intervention
from ._fields import Section, as_heads, as_int_list, as_list, as_name, as_str, check_call_params, fail, int_at_least

Rank = Literal["auto", "largest", "smallest", "magnitude", "selected"]
RANKS: tuple[Rank, ...] = get_args(Rank)
# How a condition names its heads: the one field of these it has (see the module docstring).
Mode = Literal["heads", "interventions", "top_k", "random", "vhr"]
MODES: tuple[Mode, ...] = get_args(Mode)
# The spec's `rank:` words (kept: specs use them) in headscope's one spelling of "which heads come
# first" (`better` of headscope.results.rank_heads).
RANK_BETTER: dict[str, Better] = {"largest": "higher", "smallest": "lower", "magnitude": "magnitude"}


@dataclass
class Condition:
    name: str
    path: str
    mode: Mode
    heads: list | None = None
    interventions: list[dict] | None = None
    ks: list[int] | None = None
    seeds: list = field(default_factory=lambda: [None])
    source: str | None = None  # `from:` an earlier analyze/scan unit
    exclude_top: int | None = None
    rank: Rank = "auto"
    vhr: dict | None = None  # {"alpha": float, "layers": list | None}

    def head_lists(self):
        """(field path, heads) of every explicit head list, for range checks once the model is loaded."""
        if self.heads:
            yield f"{self.path}.heads", self.heads
        for j, iv in enumerate(self.interventions or []):
            yield f"{self.path}.interventions[{j}].heads", [tuple(p) for p in iv["heads"]]

    def items(self) -> list[tuple[str, int, int | None]]:
        """(file stem, K, seed) of each work unit of this condition."""
        if self.mode == "heads":
            return [(self.name, len(_given(self.heads, self, "heads")), None)]
        if self.mode == "interventions":
            ivs = _given(self.interventions, self, "interventions")
            return [(self.name, len({tuple(h) for iv in ivs for h in iv["heads"]}), None)]
        if self.mode == "vhr":
            return [(self.name, 0, None)]
        ks = _given(self.ks, self, self.mode)
        if self.mode == "top_k":
            return [(f"{self.name}_k{k}", k, None) for k in ks]
        return [(f"{self.name}_k{k}_seed{s}", k, s) for k in ks for s in self.seeds]


T = TypeVar("T")


def _given(value: T | None, c: Condition, name: str) -> T:
    """A field that `c`'s mode requires: `parse_conditions` sets it; a hand-built Condition may not."""
    if value is None:
        raise InputError(f"{c.path}: a {c.mode!r} condition needs {name}")
    return value


def check_intervention(d: dict, path: str, kind_path: str | None = None):
    """Validate an intervention dict (heads may be absent: a template), naming the field on error."""
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise fail(
            kind_path or f"{path}.kind", f"unknown intervention kind {kind!r}; known: {', '.join(sorted(KINDS))}"
        )
    if "heads" in d:
        as_heads(d["heads"], f"{path}.heads")
    # Names and obvious types of the kind's parameters (the dataclass itself does not check types).
    check_call_params({k: v for k, v in d.items() if k not in ("kind", "heads")}, KINDS[kind], path, skip={"heads"})
    try:
        return Intervention.from_dict({**d, "heads": d.get("heads") or [[0, 0]]})
    except InputError as e:
        raise fail(path, str(e)) from None
    except TypeError as e:  # a parameter of the wrong type inside the dataclass
        raise fail(path, f"bad parameter: {e}") from None


def _parse_one(raw, path: str, earlier, has_template: bool) -> Condition:
    sec = Section(raw, path)
    modes = [m for m in MODES if m in sec.raw]
    if len(modes) != 1:
        raise fail(
            path,
            "needs exactly one of heads (explicit list), interventions (full specs), top_k "
            "(best K of an earlier unit, with from:), random (K random heads) or vhr (VHR, "
            f"per-prompt heads); got {modes or 'none'}",
        )
    c = Condition(name=sec.get("name", as_name), path=path, mode=modes[0])
    if c.mode == "heads":
        c.heads = sec.get("heads", as_heads)
    elif c.mode == "vhr":
        c.vhr = _vhr_params(sec.get("vhr"), sec.at("vhr"))
    elif c.mode == "interventions":
        items = sec.get("interventions", as_list)
        if not items:
            raise fail(sec.at("interventions"), "is empty: list at least one intervention")
        for j, iv in enumerate(items):
            ipath = f"{path}.interventions[{j}]"
            Section(iv, ipath)  # must be a mapping
            if "heads" not in iv:
                raise fail(f"{ipath}.heads", "required field is missing")
            check_intervention(iv, ipath)
        c.interventions = [dict(iv) for iv in items]
    else:
        c.ks = sec.get(c.mode, as_int_list(0 if c.mode == "top_k" else 1))
    if c.mode in ("top_k", "random"):
        c.source = sec.get("from", as_str, None)
        if c.mode == "top_k" and c.source is None:
            raise fail(sec.at("from"), "top_k needs from: the name of an earlier analyze or scan unit")
        if c.source is not None:
            ref = next((u for u in earlier if u.name == c.source), None)
            if ref is None or ref.type == "evaluate":
                names = [u.name for u in earlier if u.type != "evaluate"]
                raise fail(
                    sec.at("from"),
                    f"{c.source!r} is not an earlier analyze/scan unit; earlier ones: {', '.join(names) or 'none'}",
                )
            c.rank = sec.get("rank", _rank, "auto")
            if c.rank == "selected" and ref.type != "analyze":
                raise fail(
                    sec.at("rank"), "selected (the analyzer's own heads_, in its order) needs from: an analyze unit"
                )
    if c.mode == "random":
        c.seeds = sec.get("seeds", as_int_list(0), [0])
        default = max(_given(c.ks, c, "random")) if c.source else None
        c.exclude_top = sec.get("exclude_top", int_at_least(0), default)
        if c.exclude_top and c.source is None:
            raise fail(sec.at("exclude_top"), "needs from: (the unit whose top heads are excluded)")
    if c.mode in ("heads", "top_k", "random") and not has_template and (c.mode != "heads" or c.heads):
        raise fail(
            path,
            "this condition needs the unit's 'intervention' template (e.g. "
            "{kind: uniform_attention}) to know what to do to its heads",
        )
    sec.finish()
    return c


def _vhr_params(raw, path: str) -> dict:
    sec = Section(raw if raw is not None else {}, path)
    alpha = sec.get("alpha", lambda v, p: v, 2.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise fail(sec.at("alpha"), f"must be a number (the paper uses 2), got {alpha!r}")
    layers = sec.get("layers", lambda v, p: None if v is None else as_int_list(0)(v, p), None)
    sec.finish()
    return {"alpha": float(alpha), "layers": layers}


def _rank(value, path):
    if value not in RANKS:
        raise fail(path, f"must be one of {', '.join(RANKS)}, got {value!r}")
    return value


def parse_conditions(value, path: str, earlier, has_template: bool) -> list[Condition]:
    items = as_list(value, path)
    if not items:
        raise fail(path, "is empty: list at least one condition")
    out: list[Condition] = []
    for i, raw in enumerate(items):
        c = _parse_one(raw, f"{path}[{i}]", earlier, has_template)
        if any(o.name == c.name for o in out):
            raise fail(f"{path}[{i}].name", f"{c.name!r} is used by another condition of this unit")
        out.append(c)
    stems = [s for c in out for s, _, _ in c.items()]
    if len(set(stems)) != len(stems):
        raise fail(path, f"condition names clash once K and seeds are appended: {sorted(stems)}")
    return out


def choose_heads(c: Condition, k: int, seed, ranked, all_heads, n_selected: int = 0) -> list[tuple[int, int]]:
    """The heads of one work unit: top K of `ranked`, or K seeded random heads outside the top.
    With rank: selected, `ranked` starts with the analyzer's `n_selected` heads_."""
    if c.mode == "heads":
        return sorted(_given(c.heads, c, "heads"))
    if c.mode == "top_k":
        limit = n_selected if c.rank == "selected" else len(ranked)
        if k > limit:
            raise InputError(f"{c.path}: top_k {k} but {c.source!r} ranks only {limit} heads")
        return sorted(ranked[:k])
    pool = (ranked if c.source else all_heads)[c.exclude_top or 0 :]
    if k > len(pool):
        raise InputError(f"{c.path}: random {k} but only {len(pool)} heads are left after exclude_top")
    picks = np.random.default_rng(seed).choice(len(pool), k, replace=False)
    return sorted(pool[int(i)] for i in picks)
