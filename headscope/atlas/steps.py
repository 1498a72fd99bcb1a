"""The atlas's steps: every registered analyzer with an `atlas` entry that applies to the model, the
classic pattern statistics first (their entry's `order`). A step's result is plain data (columns, resolved roles, figures as
plotly JSON, top heads), so the page can be rebuilt from disk without the model (`--from`)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analyzers import REGISTRY, Analyzer
from ..analyzers.atlas_entry import AtlasEntry
from ..analyzers.vit_heads import vision_tower
from ..errors import InputError
from ..inputs.prompts import load_prompts
from ..models import model_info
from ..options import Preset
from ..results import HeadScores
from .data import Column, StepResult, column_ci
from .roles import resolve


@dataclass
class Step:
    """A unit of the atlas: one analyzer and its AtlasEntry; `run_step` returns its StepResult."""

    key: str
    title: str
    entry: AtlasEntry
    analyzer: type[Analyzer]

    def skip_reason(self, model) -> str | None:
        info = model_info(model)
        needs = self.analyzer.requires
        if "image_tokens" in needs and not info.image_token_ids:
            return "needs prompts with image tokens: run the atlas on a VLM (e.g. --model smollm2-visual-sinks)"
        if "vision_tower" in needs:  # --list must say what the run will do: ask the analyzer's own check
            try:
                vision_tower(model)
            except InputError as err:
                return str(err)
        return self.entry.applies(model) if self.entry.applies else None


def plan(model) -> list[Step]:
    """Each registered analyzer that declares an atlas entry, by the entry's `order`, then registry order."""
    steps = []
    for name in REGISTRY:
        cls = REGISTRY[name]
        entry = getattr(cls, "atlas", None)
        if entry is not None:
            steps.append(Step(name, entry.title or name, entry, cls))
    return sorted(steps, key=lambda s: s.entry.order)  # stable: registry order within an order


def _has_data(fig) -> bool:
    """Whether any trace has a finite value to draw (z for a heatmap, else y; x alone is only axes)."""
    for trace in fig.data:
        values = getattr(trace, "z", None)
        values = getattr(trace, "y", None) if values is None else values
        if values is None:
            continue
        arr = np.asarray(values, dtype=object).ravel()
        if any(isinstance(v, (int, float, np.number)) and np.isfinite(v) for v in arr):
            return True
    return False


def _title(fig) -> str:
    text = fig.layout.title.text if fig.layout.title is not None else None
    return (text or "figure").split("<")[0].strip()


def _mean_2d(scores: HeadScores) -> np.ndarray:
    return np.asarray(scores.mean_over_prompts().values, dtype=float)


def run_analyzer(step: Step, model, preset: Preset, *, prompts_file=None) -> StepResult:
    """Fit the step's analyzer with the preset's parameters and read its columns, roles and figures.
    An entry with `text_prompts` fits on the atlas's text prompts (`prompts_file`, else the built-in ones)."""
    entry, info = step.entry, model_info(model)
    params = entry.params(preset, info)
    analyzer = step.analyzer(**params)
    data: Any = None  # None: the analyzer's built-in data
    if entry.text_prompts:
        data = load_prompts(prompts_file)
    elif entry.data:
        data = entry.data(model, preset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analyzer.fit(model, data)
    result = StepResult(step.key, step.title, entry.what, entry.docs, params=analyzer.get_params())
    result.notes = list(dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)))
    grid = (info.n_layers, info.n_heads)
    for name, scores in entry.columns(analyzer).items():
        values = _mean_2d(scores)
        if entry.grid != "model" or values.shape != grid:
            continue  # another grid (a vision tower's heads): shown in the section, not in the head table
        result.columns.append(
            Column(
                name,
                values,
                scores.description or analyzer.description,
                bool(scores.higher_is_more),
                step.key,
                column_ci(scores, analyzer),
            )
        )
    by_name = {c.name: c for c in result.columns}
    for role in entry.roles_for(analyzer):
        col = by_name.get(role.column)
        if col is None:
            raise TypeError(
                f"{step.key}: role {role.name!r} reads column {role.column!r}, which its atlas "
                f"entry does not return (columns: {sorted(by_name)})"
            )
        result.roles.append(resolve(role, col.values, analyzer, step.key))
    for fig in entry.figures(analyzer):
        if _has_data(fig):
            result.figures.append(fig.to_json())
        else:  # an all-NaN heatmap draws nothing: say so instead of showing an empty frame
            result.notes.append(f"figure '{_title(fig)}' left out: it has no finite values")
    result.notes = (list(entry.notes(analyzer)) if entry.notes else []) + result.notes
    top = analyzer.scores_.top(10)
    result.top = top[["rank", "label", "layer", "head", "score"]].to_dict("records")
    return result


def run_step(step: Step, model, preset: Preset, *, prompts_file=None) -> StepResult:
    """Run one step, timed; a step that does not apply, or whose input the model rejects, is skipped
    with the reason (shown on the page) instead of failing the whole atlas."""
    reason = step.skip_reason(model)
    if reason:
        return StepResult(step.key, step.title, step.entry.what, step.entry.docs, status="skipped", reason=reason)
    t0 = time.perf_counter()
    try:
        result = run_analyzer(step, model, preset, prompts_file=prompts_file)
    except InputError as err:  # e.g. a causal-only analyzer on BERT: the analyzer says why
        return StepResult(
            step.key,
            step.title,
            step.entry.what,
            step.entry.docs,
            status="skipped",
            reason=str(err),
            seconds=round(time.perf_counter() - t0, 2),
        )
    result.seconds = round(time.perf_counter() - t0, 2)
    return result
