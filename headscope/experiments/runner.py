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

from ..errors import HeadscopeError, InputError
from ..options import EXECUTORS, Executor
from . import executors, ray_executor
from .spec import Spec, load_spec
from .store import Store
from .summary import write_summary
from .units import FINISHERS, PLANNERS, prepare

# Test-only: seconds to sleep after each finished item, so a test can kill a run between items.
DELAY_ENV = "HEADSCOPE_UNIT_DELAY_S"


def default_out(spec: Spec) -> Path:
    return Path(f"headscope-run-{spec.name}")


def run_experiment(
    spec,
    out=None,
    *,
    fresh: bool = False,
    model=None,
    progress: bool | None = None,
    executor: Executor = "local",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
) -> Path:
    """Run (or resume) an experiment; returns the results folder.

    Args:
        spec: a path to a YAML spec, or a `Spec` from `load_spec`/`parse_spec`.
        out: results folder (default ./headscope-run-<name>). Re-running into the same folder
            skips every finished unit of work; a different spec there is refused.
        fresh: discard the folder's earlier results first.
        model: an already-loaded model to use instead of loading `spec.model` (same model!);
            local executor only (Ray workers load their own).
        progress: progress bar over units of work (default: on).
        executor: "local" (this process, units in order) or "ray" (a pool of Ray actors, each holding
            the model; needs `pip install 'headscope[ray]'`; see docs/scale-out.md). Both write the same
            results folder, and either resumes the other's.
        address: Ray only: the cluster to join ("auto", "ray://host:port", "host:port"); default: start
            a Ray instance on this machine for the run.
        workers: Ray only: number of actors (default: one per GPU group, or one per CPU).
        gpus_per_worker: Ray only: GPUs per actor (0 = CPU; > 1 splits the model over them).

    Example:
        >>> from headscope.experiments import run_experiment
        >>> run_experiment("analyses/ablation_scan.yaml", "runs/ablation")     # doctest: +SKIP
        >>> run_experiment("analyses/ablation_scan.yaml", "runs/ablation", executor="ray", workers=2)  # doctest: +SKIP
    """
    if executor not in EXECUTORS:
        raise InputError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    if executor == "ray":
        if model is not None:
            raise InputError(
                "model= is for the local executor: Ray workers load spec.model themselves. Fix: drop "
                "model=, or run with executor='local'"
            )
        ray = ray_executor.import_ray()  # before anything else: a missing install fails at once
        store = Store(out, spec, fresh=fresh)
        try:
            ray_executor.run(
                ray, spec, store, address=address, workers=workers, gpus_per_worker=gpus_per_worker, progress=progress
            )
        finally:
            store.close()
        return out
    if address is not None or workers is not None or gpus_per_worker:
        raise InputError("address, workers and gpus_per_worker are options of executor='ray'")
    store = Store(out, spec, fresh=fresh)
    try:
        _run_local(spec, store, model, progress)
    finally:
        store.close()
    return out


def _run_local(spec: Spec, store: Store, model, progress) -> None:
    model, info, datasets = prepare(spec, model)
    ctx = executors.Context(spec, store, model, info, datasets)
    plans = [(unit, PLANNERS[unit.type](unit, ctx)) for unit in spec.units]
    total = sum(len(items) for _, items in plans)
    done_before = sum(item.done for _, items in plans for item in items)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    start, computed = time.time(), 0
    with tqdm(total=total, initial=done_before, desc=spec.name, unit="unit", disable=progress is False) as bar:
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
    write_summary(
        store,
        spec,
        info,
        finished,
        {"items": total, "computed_now": computed, "reused": done_before, "seconds": round(time.time() - start, 1)},
    )
