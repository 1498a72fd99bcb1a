"""The head atlas as a result object: step results + viewer data + provenance, with the head table
(`to_dataframe`), the role map (`plot`), `save`/`load` of scores/ and `write` of the page."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fileio import atomic_write, jsonable
from ..results import kinds_note
from .data import Column, StepResult
from .figures import role_map_figure
from .roles import NO_HEADS, ResolvedRole, RoleMap, assign

FORMAT = "headscope-atlas/1"


def _finite(obj):
    """NaN and infinities become null (JSON has none): a head with no data, a role no head passes.
    Runs on `jsonable` output, so numbers are plain floats by then."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, doc: dict) -> Path:
    text = json.dumps(_finite(jsonable(doc)), ensure_ascii=False, allow_nan=False)
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def step_file(folder: Path, index: int, key: str) -> Path:
    return folder / "scores" / "steps" / f"{index:02d}-{key}.json"


@dataclass
class Atlas:
    """Every step's result on one model. `steps` in page order; `viewer` the attention viewer's data."""

    model: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    preset: str
    steps: list[StepResult]
    viewer: dict | None = None
    provenance: dict = field(default_factory=dict)
    # A hybrid's per-layer kinds ("attention" or the mixer it has instead); None = every layer attends.
    # The head table lists the heads of attention layers only; the role map greys the other rows.
    layer_kinds: tuple[str, ...] | None = None

    @property
    def attention_layers(self) -> tuple[int, ...]:
        if self.layer_kinds is None:
            return tuple(range(self.n_layers))
        return tuple(i for i, k in enumerate(self.layer_kinds) if k == "attention")

    @property
    def note(self) -> str:
        """Which layers have no heads ("" unless a hybrid)."""
        return kinds_note(self.layer_kinds)

    # --- the head table and the role map ----------------------------------------------------------
    def columns(self) -> dict[str, Column]:
        return {c.name: c for s in self.steps if s.status == "ok" for c in s.columns}

    def roles(self) -> list[ResolvedRole]:
        return [r for s in self.steps if s.status == "ok" for r in s.roles]

    def role_map(self) -> RoleMap:
        rm = assign(self.roles(), {n: c.values for n, c in self.columns().items()}, (self.n_layers, self.n_heads))
        for layer in set(range(self.n_layers)) - set(self.attention_layers):
            rm.role[layer, :] = NO_HEADS  # drawn grey and labelled with the layer's kind
        return rm

    def top_heads_by_role(self, limit: int = 6) -> list[tuple[str, int, int]]:
        """(role, layer, head): each role's strongest head (specific roles first, a head once), for the
        token view's default heads."""
        columns = self.columns()
        best: dict[str, tuple[float, int, int]] = {}
        for r in sorted(self.roles(), key=lambda r: not r.specific):
            if r.name in best or not r.members or r.column not in columns:
                continue
            strength = r.strength(columns[r.column].values)
            for layer, head in sorted(r.members, key=lambda m: -np.nan_to_num(strength[m], nan=-1.0)):
                if all((layer, head) != (b[1], b[2]) for b in best.values()):
                    best[r.name] = (strength[layer, head], layer, head)
                    break
        return [(name, layer, head) for name, (_, layer, head) in best.items()][:limit]

    def to_dataframe(self, ci: bool = False) -> pd.DataFrame:
        """One row per head: label, layer, head, kv_group, role, every role it has, then every column;
        ci=True adds each column's interval as `<column>_ci_low` / `<column>_ci_high` (NaN where the
        column has none; scores/heads.csv has them)."""
        rm = self.role_map()
        layer, head = (a.ravel() for a in np.meshgrid(np.arange(self.n_layers), np.arange(self.n_heads), indexing="ij"))
        group = self.n_heads // self.n_kv_heads
        df = pd.DataFrame(
            {
                "label": [f"L{a}H{b}" for a, b in zip(layer, head)],
                "layer": layer,
                "head": head,
                "kv_group": head // group,
                "role": rm.role.ravel(),
                "role_strength": rm.strength.ravel(),
                "all_roles": [", ".join(rm.has[a][b]) for a, b in zip(layer, head)],
            }
        )
        for name, col in self.columns().items():
            df[name] = col.values.ravel()
            if ci:
                none = np.full(col.values.size, np.nan)
                df[f"{name}_ci_low"] = col.ci.low.ravel() if col.ci is not None else none
                df[f"{name}_ci_high"] = col.ci.high.ravel() if col.ci is not None else none
        df = df[df["layer"].isin(self.attention_layers)].reset_index(drop=True)  # a hybrid's heads only
        df.attrs = {"model": self.model, "preset": self.preset, "format": FORMAT, "note": self.note}
        return df

    def plot(self, **kw):
        """The role map: layer x head grid coloured by each head's role (see headscope.atlas.roles)."""
        return role_map_figure(self, **kw)

    # --- disk -------------------------------------------------------------------------------------
    def header(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "preset": self.preset,
            "provenance": self.provenance,
            "steps": [s.key for s in self.steps],
            "layer_kinds": list(self.layer_kinds) if self.layer_kinds else None,
        }

    def save(self, folder: str | os.PathLike, *, steps: bool = True) -> Path:
        """Write folder/scores/: atlas.json, steps/NN-key.json, viewer.json, heads.csv, heads.parquet.
        steps=False: the step files are already there (build_atlas writes each as it finishes)."""
        folder = Path(folder)
        for i, s in enumerate(self.steps if steps else ()):
            write_json(step_file(folder, i, s.key), s.to_json())
        if self.viewer is not None:
            write_json(folder / "scores" / "viewer.json", self.viewer)
        df = self.to_dataframe(ci=True)
        atomic_write(folder / "scores" / "heads.csv", lambda p: df.to_csv(p, index=False))
        atomic_write(folder / "scores" / "heads.parquet", lambda p: df.to_parquet(p, index=False))
        return write_json(folder / "scores" / "atlas.json", self.header())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Atlas:
        """Read an atlas saved by `save` (a report folder, or its scores/ folder)."""
        folder = Path(folder)
        scores = folder if (folder / "atlas.json").is_file() else folder / "scores"
        head = scores / "atlas.json"
        if not head.is_file():
            raise InputError(
                f"{folder} holds no saved atlas (no scores/atlas.json). Fix: pass the folder a "
                "`headscope report` wrote (--out), or run the report without --from"
            )
        doc = json.loads(head.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise InputError(f"{head}: format {doc.get('format')!r} is not {FORMAT!r}; rerun `headscope report`")
        steps = []
        for i, key in enumerate(doc["steps"]):
            path = step_file(scores.parent, i, key)
            if not path.is_file():
                raise InputError(f"{path} is missing: the atlas in {folder} is incomplete; rerun `headscope report`")
            steps.append(StepResult.from_json(json.loads(path.read_text(encoding="utf-8"))))
        viewer_path = scores / "viewer.json"
        viewer = json.loads(viewer_path.read_text(encoding="utf-8")) if viewer_path.is_file() else None
        kinds = doc.get("layer_kinds")
        return cls(
            doc["model"],
            doc["n_layers"],
            doc["n_heads"],
            doc["n_kv_heads"],
            doc["preset"],
            steps,
            viewer,
            doc.get("provenance", {}),
            tuple(kinds) if kinds else None,
        )
