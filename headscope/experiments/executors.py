"""Work units of `analyze` and `scan` units, and how each unit's results are combined.

Every unit becomes a list of `Item`s (one analyzer fit; one scan per chunk of `layers_per_unit`
layers; one evaluation per (condition, K, seed)). An item is done iff its marker file exists,
and it writes that marker last, so a resumed run skips exactly the finished items.
`finish(unit)` then rebuilds the unit's combined results from the item files alone, so it gives
the same output whether the items came from one run or several.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.io as pio

from ..analyzers import get_analyzer
from ..confidence import Better
from ..interventions import ScanRequest, estimate, exact, verify
from ..interventions.screen import ScreenedScan, default_top_k
from ..results import HeadScores, rank_heads
from ..viz.figures import title_block
from .conditions import RANK_BETTER


@dataclass
class Item:
    unit: object
    key: str
    marker: Path
    run: Callable[[], None]
    # What run() reads from other items' files: (unit name, item key), key None = every item of that unit.
    # The local executor's order satisfies it already; a parallel executor waits for them and ships the
    # folders of those units to the worker.
    needs: tuple = ()

    @property
    def done(self) -> bool:
        return self.marker.is_file()


@dataclass
class Context:
    """What executors share during one run."""

    spec: Any  # ExperimentSpec
    store: Any  # the run's results store
    model: Any
    info: Any  # ModelInfo
    datasets: dict  # DataSpec path -> Dataset
    memo: dict = field(default_factory=dict)
    _scores: dict = field(default_factory=dict)

    def dataset(self, unit):
        return None if unit.data is None else self.datasets[unit.data.path]

    def scores(self, unit_name: str) -> HeadScores:
        """Combined scores of a finished analyze/scan unit (read from its item files)."""
        if unit_name not in self._scores:
            unit = self.spec.unit(unit_name)
            self._scores[unit_name] = analyze_scores(unit, self) if unit.type == "analyze" else scan_scores(unit, self)
        return self._scores[unit_name]

    def ranked(self, unit_name: str, rank: str) -> tuple[list, int]:
        """Heads of a unit best first, and how many of them lead as the analyzer's own selection."""
        better = self.auto_better(unit_name) if rank in ("auto", "selected") else RANK_BETTER[rank]
        by_score = rank_heads(self.scores(unit_name), better)
        if rank != "selected":
            return by_score, 0
        info = json.loads((self.store.unit_dir(unit_name) / "info.json").read_text(encoding="utf-8"))
        chosen = [tuple(h) for h in info["heads"]]
        return chosen + [h for h in by_score if h not in set(chosen)], len(chosen)

    def auto_better(self, unit_name: str) -> Better:
        """rank: auto: the scores' own direction (a scan's: its metric's `important` end)."""
        return self.scores(unit_name).better


# ---- analyze --------------------------------------------------------------------------------------------


def plan_analyze(unit, ctx: Context) -> list[Item]:
    folder = ctx.store.unit_dir(unit.name)

    def run():
        ds = ctx.dataset(unit)
        analyzer = get_analyzer(unit.target, **unit.params)
        analyzer.validate_params(ctx.model)
        # The analyzer's one normaliser turns the dataset into what it runs on (or its built-in data).
        analyzer.fit(ctx.model, analyzer.prepare_data(ctx.model, None if ds is None else ds.analyzer_input))
        heads = [list(map(int, h)) for h in analyzer.heads_]
        ctx.store.write_json(
            folder / "info.json", {"analyzer": unit.target, "params": analyzer.get_params(), "heads": heads}
        )
        ctx.store.write_text(folder / "figure.plotly.json", analyzer.plot().to_json())
        analyzer.scores_.save(folder / "scores.parquet")  # the marker, written last

    return [Item(unit, "fit", folder / "scores.parquet", run)]


def analyze_scores(unit, ctx: Context) -> HeadScores:
    return HeadScores.load(ctx.store.unit_dir(unit.name) / "scores.parquet")


# ---- scan ---------------------------------------------------------------------------------------------


def _chunks(unit, info) -> list[list[int]]:
    layers = sorted(unit.layers) if unit.layers else list(info.attention_layers)
    n = unit.layers_per_unit
    return [layers[i : i + n] for i in range(0, len(layers), n)]


def _chunk_file(unit, ctx, chunk) -> Path:
    return ctx.store.unit_dir(unit.name) / f"layers_{chunk[0]:03d}-{chunk[-1]:03d}.parquet"


def _estimate_file(unit, ctx) -> Path:
    return ctx.store.unit_dir(unit.name) / "estimate.parquet"


def _exact_file(unit, ctx) -> Path:
    return ctx.store.unit_dir(unit.name) / "exact.parquet"


SCREEN_FILE = "screen.json"  # the verified heads and top_k exactly as verify() returned them


def _request(unit, ctx, **fields) -> ScanRequest:
    """The unit's scan request (the spec was validated before the model loaded; this adds the data's answers)."""
    ds = ctx.dataset(unit)
    kwargs = {"answers": ds.answers} if unit.metric == "logit_diff" else None
    return ScanRequest.build(
        unit.target,
        unit.metric,
        batch_size=unit.batch_size,
        metric_kwargs=kwargs,
        progress=False,
        **fields,
        **unit.params,
    )


def _visited(unit, ctx) -> list:
    layers = unit.layers if unit.layers else ctx.info.attention_layers
    return [(l, h) for l in layers for h in range(ctx.info.n_heads)]


def load_screened(folder: Path) -> ScreenedScan:
    """The ScreenedScan of a finished '+exact' scan unit from its folder, identical to the one its verify
    item's `verify()` returned (the estimate, the exact table, and verify()'s own verified mask and top_k)."""
    screen = json.loads((folder / SCREEN_FILE).read_text(encoding="utf-8"))
    est = HeadScores.load(folder / "estimate.parquet")
    verified = np.zeros(est.values.shape[1:], dtype=bool)
    for l, h in screen["verified"]:
        verified[l, h] = True
    return ScreenedScan(est, HeadScores.load(folder / "exact.parquet"), verified, int(screen["top_k"]))


def _plan_attribution(unit, ctx: Context) -> list[Item]:
    """Attribution patching as `scan()` runs it, in its two steps: one item calling `estimate()` for every
    head of `layers` (one forward + backward per batch: not worth splitting), then for the '+exact' methods
    one item calling `verify()` on that saved estimate (so a resumed run verifies the same heads). The verify
    item writes verify()'s verified heads and top_k, then the exact table last (its marker)."""
    estimate_file = _estimate_file(unit, ctx)

    def request() -> ScanRequest:
        return _request(unit, ctx, method=unit.method, layers=unit.layers, graddrop=unit.graddrop, top_k=unit.top_k)

    def run_estimate():
        estimate(ctx.model, ctx.dataset(unit).token_lists, request()).save(estimate_file)

    estimator = unit.method.removesuffix("+exact")
    items = [Item(unit, f"{estimator} estimate", estimate_file, run_estimate)]
    if unit.method.endswith("+exact"):
        exact_file = _exact_file(unit, ctx)

        def run_verify():
            screened = verify(ctx.model, ctx.dataset(unit).token_lists, request(), HeadScores.load(estimate_file))
            ctx.store.write_json(
                exact_file.parent / SCREEN_FILE, {"top_k": screened.top_k, "verified": screened.verified_heads}
            )
            screened.exact.save(exact_file)  # the marker, written last

        top = unit.top_k or f"{default_top_k(len(_visited(unit, ctx)))}"
        items.append(
            Item(unit, f"exact scan of the top {top}", exact_file, run_verify, needs=((unit.name, items[0].key),))
        )
    return items


def plan_scan(unit, ctx: Context) -> list[Item]:
    if unit.method != "exact":
        return _plan_attribution(unit, ctx)
    items = []
    for chunk in _chunks(unit, ctx.info):
        marker = _chunk_file(unit, ctx, chunk)

        def run(chunk=chunk, marker=marker):
            exact(ctx.model, ctx.dataset(unit).token_lists, _request(unit, ctx, layers=chunk)).save(marker)

        items.append(Item(unit, f"layers {chunk[0]}-{chunk[-1]}", marker, run))
    return items


def scan_scores(unit, ctx: Context) -> HeadScores:
    """The per-chunk files stitched into one HeadScores [prompt, layer, head] (NaN = not scanned); for
    attribution patching the estimate, with the exact values of the verified heads over it."""
    ds = ctx.dataset(unit)
    params = {
        "kind": unit.target,
        "metric": unit.metric,
        **unit.params,
        "data": unit.data.name,
        "layers": unit.layers or "all",
    }
    if unit.method != "exact":
        first = HeadScores.load(_estimate_file(unit, ctx))
        values = first.values
        params.update(method=unit.method, **({"graddrop": True} if unit.graddrop else {}))
        if unit.method.endswith("+exact"):
            screened = load_screened(ctx.store.unit_dir(unit.name))
            values = screened.values
            params.update(top_k=screened.top_k, verified=screened.verified_heads)
    else:
        first, values = _stitched(unit, ctx)
    return HeadScores(
        values,
        name=unit.name,
        n_kv_heads=first.n_kv_heads,
        model=first.model,
        analyzer="scan",
        params=params,
        prompts=ds.labels,
        better=first.better,
        description=first.description,
        layer_kinds=first.layer_kinds,
    )


def _stitched(unit, ctx: Context) -> tuple[HeadScores, np.ndarray]:
    """The first chunk's scores (for their provenance) and every chunk's layers in one [prompt, layer, head]."""
    parts = [(chunk, HeadScores.load(_chunk_file(unit, ctx, chunk))) for chunk in _chunks(unit, ctx.info)]
    values = np.full(parts[0][1].values.shape, np.nan)
    for chunk, part in parts:
        values[:, chunk, :] = part.values[:, chunk, :]  # [prompt, layer, head]
    return parts[0][1], values


# ---- combining ----------------------------------------------------------------------------------------


def _top_rows(scores: HeadScores, better: Better, n: int = 10) -> list[dict]:
    mean = scores.mean_over_prompts().values
    return [
        {"label": f"L{l}H{h}", "layer": l, "head": h, "score": float(mean[l, h])}
        for l, h in rank_heads(scores, better)[:n]
    ]


def finish_heads(unit, ctx: Context) -> dict:
    """Write results/<unit>.{parquet,json} and return the figure + summary of an analyze/scan unit."""
    scores = ctx.scores(unit.name)
    scores.save(ctx.store.path("results", f"{unit.name}.parquet"))
    scores.save(ctx.store.path("results", f"{unit.name}.json"))
    better = ctx.auto_better(unit.name)
    summary = {
        "type": unit.type,
        "target": unit.target,
        "better": better,
        "top": _top_rows(scores, better),
        "shape": list(scores.values.shape),
    }
    if unit.type == "analyze":
        folder = ctx.store.unit_dir(unit.name)
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
        summary["selected_heads"] = [f"L{l}H{h}" for l, h in info["heads"]]
        fig = pio.from_json((folder / "figure.plotly.json").read_text(encoding="utf-8"))
    else:
        summary["metric"] = unit.metric
        extra = (
            f"{unit.target} on one head at a time; mean over {scores.values.shape[0]} prompts; "
            f"{scores.n_kv_heads} KV groups (lines)"
        )
        fig = scores.plot(title=title_block(f"{unit.name}: {unit.metric} change", scores.model, extra))
    return {"figure": fig, "summary": summary}
