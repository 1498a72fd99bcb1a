"""Screen, then verify: rank every head by attribution patching, run the exact scan on the top k.

`verify(model, inputs, request, estimate)` (what `scan(..., method="atp+exact")` or "atp*+exact" runs
after `estimate()`) returns a `ScreenedScan`: both tables, and which heads were verified exactly. What to trust: the exact column where `verified`, the estimate as a
ranking elsewhere (docs/attribution-patching.md says how good that ranking is on the bundled model).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..confidence import CIMethod
from ..errors import InputError
from ..fileio import atomic_write
from ..results import HeadScores

# The default number of heads verified exactly: a tenth of the heads screened, at least 20. Chosen from
# analyses/atp_agreement.py on SmolLM2 (270 heads: 27): where AtP ranks well (zero ablation, uniform
# attention with AtP*) the exact top-5 lies inside the top 22 of the estimate; a tenth keeps the exact
# part at a tenth of a full scan's cost on any model. Mean ablation needed 39-72 (docs/attribution-patching.md).
MIN_TOP_K = 20


def default_top_k(n_heads: int) -> int:
    """Heads verified exactly by default when `n_heads` heads were screened: max(20, ceil(n_heads / 10))."""
    return max(MIN_TOP_K, math.ceil(n_heads / 10))


def screen_order(estimate: HeadScores) -> list[tuple[int, int]]:
    """Every estimated head, largest |prompt-mean estimate| first (a head matters either way)."""
    mean = estimate.values.mean(axis=0) if estimate.values.ndim == 3 else estimate.values
    order = np.argsort(-np.nan_to_num(np.abs(mean), nan=-1.0), axis=None, kind="stable")
    H = mean.shape[1]
    return [(int(i // H), int(i % H)) for i in order if np.isfinite(mean.flat[i])]


@dataclass
class ScreenedScan:
    """An AtP screen of every head with the exact scan of its top `top_k`.

    estimate: HeadScores [prompt, layer, head] from attribution patching (every visited head).
    exact: HeadScores [prompt, layer, head] from the exact scan (NaN where not verified).
    verified: [layer, head] bool, the heads the exact scan ran on.
    """

    estimate: HeadScores
    exact: HeadScores
    verified: np.ndarray
    top_k: int

    @property
    def values(self) -> np.ndarray:
        """[prompt, layer, head]: the exact value where verified, the estimate elsewhere."""
        return np.where(self.verified[None], self.exact.values, self.estimate.values)

    @property
    def verified_heads(self) -> list[list[int]]:
        """[[layer, head], ...] of the verified heads (as provenance records them)."""
        return [[int(l), int(h)] for l, h in zip(*np.nonzero(self.verified))]

    @property
    def combined(self) -> HeadScores:
        """`values` as HeadScores (provenance says which heads were verified)."""
        e = self.estimate
        params = {
            **e.params,
            "method": f"{e.params.get('method', 'atp')}+exact",
            "top_k": self.top_k,
            "verified": self.verified_heads,
        }
        return HeadScores(
            self.values,
            name=e.name,
            n_kv_heads=e.n_kv_heads,
            model=e.model,
            analyzer="scan.screen",
            params=params,
            prompts=e.prompts,
            better=e.better,
            description=f"{e.description}; exact on the {self.top_k} heads ranked first",
            layer_kinds=e.layer_kinds,
        )

    def ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0, method: CIMethod = "percentile"):
        """Bootstrap CI over prompts of the combined values (exact where verified, the estimate elsewhere:
        an unverified head's interval is the estimate's spread, not the exact effect's)."""
        return self.combined.ci(level=level, n_boot=n_boot, seed=seed, method=method)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (prompt, layer, head): estimate, exact (NaN if not verified), verified, value."""
        df = self.estimate.to_dataframe().rename(columns={"score": "estimate"})
        exact = self.exact.to_dataframe()["score"].to_numpy()
        df["exact"] = exact
        df["verified"] = self.verified[df["layer"].to_numpy(), df["head"].to_numpy()]
        df["value"] = np.where(df["verified"], df["exact"], df["estimate"])
        df.attrs = self.combined.provenance
        return df

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k most important heads by the combined values (exact where verified), in the metric's
        direction, with the estimate, the exact value and whether the head was verified."""
        top = self.combined.top(k)
        mean = {name: s.values.mean(axis=0) for name, s in (("estimate", self.estimate), ("exact", self.exact))}
        ls, hs = top["layer"].to_numpy(), top["head"].to_numpy()
        top.insert(top.columns.get_loc("score"), "estimate", mean["estimate"][ls, hs])
        top.insert(top.columns.get_loc("score"), "exact", mean["exact"][ls, hs])
        top.insert(top.columns.get_loc("score"), "verified", self.verified[ls, hs])
        return top

    def agreement(self) -> dict:
        """On the verified heads (prompt means): Spearman correlation of estimate and exact, and the
        largest |estimate - exact|."""
        est, ex = (s.values.mean(axis=0)[self.verified] for s in (self.estimate, self.exact))
        rho = _spearman(est, ex)
        return {
            "n_verified": int(self.verified.sum()),
            "spearman": rho,
            "max_abs_error": float(np.max(np.abs(est - ex))) if len(est) else float("nan"),
        }

    def plot(self, **kw):
        """Scatter of the prompt-mean estimate (x) against the exact effect (y) of the verified heads."""
        import plotly.graph_objects as go

        est, ex = (s.values.mean(axis=0) for s in (self.estimate, self.exact))
        ls, hs = np.nonzero(self.verified)
        x, y = est[ls, hs], ex[ls, hs]
        labels = [f"L{l}H{h}" for l, h in zip(ls, hs)]
        lo, hi = float(np.nanmin([x.min(), y.min()])), float(np.nanmax([x.max(), y.max()]))
        fig = go.Figure(
            [
                go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="grey"), name="y = x"),
                go.Scatter(
                    x=x,
                    y=y,
                    mode="markers+text",
                    text=labels,
                    textposition="top center",
                    name="verified heads",
                    hovertemplate="%{text}<br>estimate %{x:.4g}<br>exact %{y:.4g}<extra></extra>",
                ),
            ]
        )
        a = self.agreement()
        fig.update_layout(
            title=kw.get(
                "title",
                f"{self.estimate.name}: {self.estimate.params.get('method')} vs exact "
                f"(top {self.top_k}; Spearman {a['spearman']:.2f})",
            ),
            xaxis_title="estimated change",
            yaxis_title="exact change",
            template="plotly_white",
        )
        return fig

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: .json (both tables and the verified heads) or .parquet (`to_dataframe()`)."""
        path = Path(path)
        if path.suffix == ".json":
            doc = {
                "format": "headscope.ScreenedScan",
                "top_k": self.top_k,
                "verified": self.verified.astype(int).tolist(),
                "estimate": self.estimate._json_doc(),
                "exact": self.exact._json_doc(),
            }
            text = json.dumps(doc, indent=1, allow_nan=False)
            return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
        if path.suffix == ".parquet":
            df = self.to_dataframe()
            return atomic_write(path, lambda p: df.to_parquet(p, index=False))
        raise InputError(f"ScreenedScan.save: unsupported suffix {path.suffix!r} in {path}; use .json or .parquet")

    def __repr__(self) -> str:
        return (
            f"ScreenedScan({self.estimate.name!r}, {self.estimate.params.get('method')}, "
            f"{int(self.verified.sum())} of {int(np.isfinite(self.estimate.values[0]).sum())} heads verified)"
        )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = (pd.Series(x[ok]).rank().to_numpy() for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])
