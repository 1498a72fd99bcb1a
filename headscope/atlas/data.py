"""The atlas's plain-data results: head-table columns and step results (JSON round trip for `--from`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..confidence import CIMethod
from ..errors import InputError
from ..results import HeadScores
from .roles import ResolvedRole

# Resamples per column for the head table's intervals: 200 keep the atlas's cost negligible (two
# matrix products per column) and the 2.5% / 97.5% ends within a few percent of the width of n_boot=1000's.
ATLAS_N_BOOT = 200
ATLAS_CI_SEED = 0


@dataclass
class ColumnCI:
    """A column's bootstrap interval per head ([layer, head] low / high), over `n` prompts (or samples)."""

    low: np.ndarray
    high: np.ndarray
    level: float
    n: int
    unit: str = "prompts"
    method: CIMethod = "percentile"
    n_boot: int = ATLAS_N_BOOT

    @classmethod
    def of(cls, ci) -> ColumnCI:
        """From a HeadScoresCI."""
        return cls(
            np.asarray(ci.low, dtype=float),
            np.asarray(ci.high, dtype=float),
            ci.level,
            ci.n_prompts,
            ci.unit,
            ci.method,
            ci.n_boot,
        )

    def to_json(self) -> dict:
        return {
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "level": self.level,
            "n": self.n,
            "unit": self.unit,
            "method": self.method,
            "n_boot": self.n_boot,
        }

    @classmethod
    def from_json(cls, doc: dict) -> ColumnCI:
        return cls(**{**doc, "low": np.array(doc["low"], dtype=float), "high": np.array(doc["high"], dtype=float)})


@dataclass
class Column:
    """One head-table column: prompt-mean values over the model's [layer, head] grid, and their
    bootstrap interval over prompts where the step kept per-prompt scores (`ci`, else None)."""

    name: str
    values: np.ndarray
    description: str
    higher_is_more: bool
    step: str
    ci: ColumnCI | None = None

    def to_json(self) -> dict:
        doc = {
            "name": self.name,
            "description": self.description,
            "higher_is_more": self.higher_is_more,
            "step": self.step,
            "values": self.values.tolist(),
        }  # write_json turns NaN into null
        if self.ci is not None:
            doc["ci"] = self.ci.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> Column:
        values = np.array(doc["values"], dtype=float)  # null -> NaN
        ci = ColumnCI.from_json(doc["ci"]) if doc.get("ci") else None  # atlases saved before intervals have none
        return cls(doc["name"], values, doc["description"], doc["higher_is_more"], doc["step"], ci)


def column_ci(scores: HeadScores, analyzer=None) -> ColumnCI | None:
    """The head table's interval for a column: the analyzer's own ci() for its main score (retrieval and
    head importance resample their per-sample data), else the prompt mean's; None where the scores
    cannot be resampled (one row on the prompt axis, a refusal, infinite values)."""
    try:
        if analyzer is not None and scores is analyzer.scores_:
            ci = analyzer.ci(n_boot=ATLAS_N_BOOT, seed=ATLAS_CI_SEED)
        else:
            ci = scores.ci(n_boot=ATLAS_N_BOOT, seed=ATLAS_CI_SEED)
    except InputError:
        return None
    return ColumnCI.of(ci)


StepStatus = Literal["ok", "skipped"]


@dataclass
class StepResult:
    """What one step left for the page: status "ok", or "skipped" with the reason."""

    key: str
    title: str
    what: str
    docs: str
    status: StepStatus = "ok"
    reason: str = ""
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    columns: list[Column] = field(default_factory=list)
    roles: list[ResolvedRole] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # plotly figure JSON
    top: list[dict] = field(default_factory=list)  # top heads of the step's first column
    notes: list[str] = field(default_factory=list)  # facts a reader should see (accuracy, sink rate, ...)

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "what": self.what,
            "docs": self.docs,
            "status": self.status,
            "reason": self.reason,
            "params": self.params,
            "seconds": self.seconds,
            "columns": [c.to_json() for c in self.columns],
            "roles": [r.to_json() for r in self.roles],
            "figures": self.figures,
            "top": self.top,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, doc: dict) -> StepResult:
        return cls(
            **{
                **doc,
                "columns": [Column.from_json(c) for c in doc["columns"]],
                "roles": [ResolvedRole.from_json(r) for r in doc["roles"]],
            }
        )
