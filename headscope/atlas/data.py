"""The atlas's plain-data results: head-table columns and step results (JSON round trip for `--from`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .roles import ResolvedRole


@dataclass
class Column:
    """One head-table column: prompt-mean values over the model's [layer, head] grid."""

    name: str
    values: np.ndarray
    description: str
    higher_is_more: bool
    step: str

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "higher_is_more": self.higher_is_more,
                "step": self.step, "values": self.values.tolist()}  # write_json turns NaN into null

    @classmethod
    def from_json(cls, doc: dict) -> "Column":
        values = np.array(doc["values"], dtype=float)  # null -> NaN
        return cls(doc["name"], values, doc["description"], doc["higher_is_more"], doc["step"])


@dataclass
class StepResult:
    """What one step left for the page: status "ok", or "skipped" with the reason."""

    key: str
    title: str
    what: str
    docs: str
    status: str = "ok"
    reason: str = ""
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    columns: list[Column] = field(default_factory=list)
    roles: list[ResolvedRole] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # plotly figure JSON
    top: list[dict] = field(default_factory=list)     # top heads of the step's first column
    notes: list[str] = field(default_factory=list)    # facts a reader should see (accuracy, sink rate, ...)

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "what": self.what, "docs": self.docs, "status": self.status,
                "reason": self.reason, "params": self.params, "seconds": self.seconds,
                "columns": [c.to_json() for c in self.columns], "roles": [r.to_json() for r in self.roles],
                "figures": self.figures, "top": self.top, "notes": self.notes}

    @classmethod
    def from_json(cls, doc: dict) -> "StepResult":
        return cls(**{**doc, "columns": [Column.from_json(c) for c in doc["columns"]],
                      "roles": [ResolvedRole.from_json(r) for r in doc["roles"]]})
