"""Run an experiment spec: validate everything, then execute the unfinished work units in order.

Order of events (nothing touches the model before step 4):
1. parse and validate the spec (`load_spec`);
2. open the results folder (a different spec there is refused before the model loads);
3. load the model, check head/layer ranges, generate and tokenize every dataset;
4. run each unit's unfinished items, each saved atomically the moment it finishes;
5. rebuild every unit's combined results and figures from the item files; write the summary.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import HeadscopeError, ModelNotFoundError
from ..models import load_model, model_info
from . import evaluate as _evaluate
from . import executors
from .data import materialize
from .spec import Spec, check_model, load_spec
from .store import Store
from .summary import write_summary

PLANNERS = {"analyze": executors.plan_analyze, "scan": executors.plan_scan, "evaluate": _evaluate.plan_evaluate}
FINISHERS = {"analyze": executors.finish_heads, "scan": executors.finish_heads, "evaluate": _evaluate.finish_evaluate}
# Test-only: seconds to sleep after each finished item, so a test can kill a run between items.
DELAY_ENV = "HEADSCOPE_UNIT_DELAY_S"


def load_spec_model(spec: Spec):
    """The spec's model: a `load_model` name/path, or a testbed with its parameters (`testing:tiny`)."""
    try:
        return load_model(spec.model, **spec.model_params)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"model: {e}") from None


def prepare(spec: Spec, model=None):
    """Steps 3 of the module docstring: (model, info, datasets by path), no forward pass yet."""
    model = load_spec_model(spec) if model is None else model
    info = model_info(model)
    check_model(spec, info)
    _evaluate.check_needs(spec, model, info)
    specs = {**{d.path: d for d in spec.data.values()}, **{u.data.path: u.data for u in spec.units if u.data}}
    datasets = {path: materialize(d, model, info) for path, d in specs.items()}
    return model, info, datasets


def default_out(spec: Spec) -> Path:
    return Path(f"headscope-run-{spec.name}")


def run_experiment(spec, out=None, *, fresh: bool = False, model=None, progress: bool | None = None) -> Path:
    """Run (or resume) an experiment; returns the results folder.

    Args:
        spec: a path to a YAML spec, or a `Spec` from `load_spec`/`parse_spec`.
        out: results folder (default ./headscope-run-<name>). Re-running into the same folder
            skips every finished unit of work; a different spec there is refused.
        fresh: discard the folder's earlier results first.
        model: an already-loaded model to use instead of loading `spec.model` (same model!).
        progress: progress bar over units of work (default: on).

    Example:
        >>> from headscope.experiments import run_experiment
        >>> run_experiment("analyses/ablation_scan.yaml", "runs/ablation")     # doctest: +SKIP
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    store = Store(out, spec, fresh=fresh)
    try:
        model, info, datasets = prepare(spec, model)
        ctx = executors.Context(spec, store, model, info, datasets)
        plans = [(unit, PLANNERS[unit.type](unit, ctx)) for unit in spec.units]
        total = sum(len(items) for _, items in plans)
        done_before = sum(item.done for _, items in plans for item in items)
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        start, computed = time.time(), 0
        with tqdm(total=total, initial=done_before, desc=spec.name, unit="unit",
                  disable=progress is False) as bar:
            for unit, items in plans:
                for item in items:
                    if item.done:
                        continue
                    bar.set_postfix_str(f"{unit.name}: {item.key}")
                    try:
                        item.run()
                    except HeadscopeError as e:
                        raise type(e)(f"{unit.path} ({unit.name}), {item.key}: {e}") from None
                    computed += 1
                    bar.update()
                    if delay:
                        time.sleep(delay)
        finished = {unit.name: FINISHERS[unit.type](unit, ctx) for unit, _ in plans}
        write_summary(store, spec, info, finished, {"items": total, "computed_now": computed,
                                                    "reused": done_before, "seconds": round(time.time() - start, 1)})
    finally:
        store.close()
    return out
