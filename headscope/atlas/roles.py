"""The role map's rule: one role per head, from the head table and the roles the steps declare.

The rule (also on the page and in docs/report.md):

1. A head *has* a role when its column value passes the role's cut: a fixed threshold with a source
   (Gu et al.'s epsilon = 0.3 for sinks, Wu et al.'s 0.1 for retrieval, headscope's 0.4 for the
   classic pattern scores), or the analyzer's own selection (then the cut is the weakest selected head).
2. Its *strength* in that role is its score relative to the role's best head in this model: score /
   best score (best / score for a role of small values, e.g. a short attention distance), so 1 for the
   most induction-like head, the most retrieval-like head, ... whatever the scales of the scores.
3. The head's role is the strongest **specific** role it has (induction, previous-token, duplicate,
   retrieval, safety, vision-aware, ...); only if it has none, the strongest **generic** one (sink,
   local, global): most heads of a chat model attend to the first token, and a sink score would
   otherwise hide every other behaviour.
   A tie goes to the role listed first in ROLE_COLOURS (e.g. sink before local and global).
4. A head with no role is "no clear role". Every role a head has is listed on hover and in the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NO_ROLE = "no clear role"
NO_HEADS = "no heads"  # a hybrid's layer without attention (linear attention, Mamba): no head to have a role

# Fixed colours so the same role looks the same in every atlas; roles from plugins get the spares.
ROLE_COLOURS = {
    "induction": "#d62728",
    "previous-token": "#ff7f0e",
    "duplicate": "#bcbd22",
    "retrieval": "#9467bd",
    "safety": "#e377c2",
    "vision-aware": "#17becf",
    "sink": "#7f7f7f",
    "local": "#2ca02c",
    "global": "#1f77b4",
    NO_ROLE: "#f2f2f2",
    NO_HEADS: "#c4c4c4",
}
_PRIORITY = {name: i for i, name in enumerate(ROLE_COLOURS)}
_SPARE = ["#8c564b", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d"]


def role_colour(name: str, others: Sequence[str] = ()) -> str:
    if name in ROLE_COLOURS:
        return ROLE_COLOURS[name]
    extra = [n for n in others if n not in ROLE_COLOURS]
    return _SPARE[extra.index(name) % len(_SPARE)] if name in extra else _SPARE[0]


@dataclass
class ResolvedRole:
    """A role with its cut fixed (after the step ran): what the page and `--from` need, no analyzer."""

    name: str
    column: str
    rule: str
    cut: float
    higher_is_more: bool
    specific: bool
    members: list[tuple[int, int]] = field(default_factory=list)  # heads that pass (the analyzer's own set)
    step: str = ""

    def strength(self, values: np.ndarray) -> np.ndarray:
        """[layer, head] score relative to the role's best head in this model (1 = the best; for a role of
        small values, best / score); NaN where the head does not pass the cut."""
        v = np.asarray(values, dtype=float)
        member = np.zeros(v.shape, dtype=bool)
        for layer, head in self.members:
            member[layer, head] = True
        finite = v[member & np.isfinite(v)]
        with np.errstate(divide="ignore", invalid="ignore"):
            if finite.size and self.higher_is_more and finite.max() > 0:
                ratio = v / finite.max()
            elif finite.size and not self.higher_is_more and finite.min() > 0:
                ratio = finite.min() / v
            else:  # scores at or below 0 have no meaningful ratio: every head that passes counts the same
                ratio = np.ones_like(v)
        ratio = np.where(np.isfinite(ratio), ratio, 1.0)
        return np.where(member, ratio, np.nan)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "column": self.column,
            "rule": self.rule,
            "cut": self.cut,
            "higher_is_more": self.higher_is_more,
            "specific": self.specific,
            "members": [list(m) for m in self.members],
            "step": self.step,
        }

    @classmethod
    def from_json(cls, doc: dict) -> ResolvedRole:
        cut = float("nan") if doc["cut"] is None else doc["cut"]  # JSON null: no head passed
        return cls(**{**doc, "cut": cut, "members": [tuple(m) for m in doc["members"]]})


def resolve(role, values: np.ndarray, fitted=None, step: str = "") -> ResolvedRole:
    """Fix a declared Role's cut and members on this run's [layer, head] values."""
    v = np.asarray(values, dtype=float)
    higher_is_more = not role.below
    if role.selected is not None:
        members = [(int(a), int(b)) for a, b in role.selected(fitted)]
        picked = [v[m] for m in members if np.isfinite(v[m])]
        cut = float(min(picked) if higher_is_more else max(picked)) if picked else float("nan")
    else:
        cut = float(role.threshold)
        passes = v >= cut if higher_is_more else v <= cut
        members = [(int(a), int(b)) for a, b in zip(*np.nonzero(np.nan_to_num(passes, nan=False)))]
    return ResolvedRole(role.name, role.column, role.rule, cut, higher_is_more, role.specific, members, step)


@dataclass
class RoleMap:
    """role[layer][head] (a name or NO_ROLE), strength (NaN for no role), and every role each head has."""

    role: np.ndarray
    strength: np.ndarray
    has: list[list[list[str]]]
    names: list[str]

    def counts(self) -> dict[str, int]:
        return {n: int((self.role == n).sum()) for n in [*self.names, NO_ROLE]}


def assign(roles: list[ResolvedRole], columns: dict[str, np.ndarray], shape: tuple[int, int]) -> RoleMap:
    """Apply the rule in the module docstring."""
    n_layers, n_heads = shape
    role = np.full(shape, NO_ROLE, dtype=object)
    strength = np.full(shape, np.nan)
    has: list[list[list[str]]] = [[[] for _ in range(n_heads)] for _ in range(n_layers)]
    names = list(dict.fromkeys(r.name for r in roles))
    specific: dict[str, bool] = {}  # a role name's tier (its first declaration)
    for r in roles:
        specific.setdefault(r.name, r.specific)
    for tier in (True, False):  # specific roles first; generic only where no specific role applies
        # Ties (each role's best head has strength 1) go to the role listed first in ROLE_COLOURS.
        ranked = sorted((r for r in roles if r.specific == tier), key=lambda r: _PRIORITY.get(r.name, len(_PRIORITY)))
        for r in ranked:
            s = r.strength(columns[r.column])
            for layer, head in zip(*np.nonzero(np.isfinite(s))):
                has[layer][head].append(r.name)
                free = role[layer, head] == NO_ROLE or (
                    specific[role[layer, head]] == tier and s[layer, head] > strength[layer, head]
                )
                if free:
                    role[layer, head], strength[layer, head] = r.name, s[layer, head]
    return RoleMap(role, strength, [[list(dict.fromkeys(x)) for x in row] for row in has], names)
