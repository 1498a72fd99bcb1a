"""One worker of a parallel run: the spec's model loaded once, its units of work run on request.

A `Worker` is what each Ray actor holds (`ray_executor.py` wraps it; this module imports no Ray, so
it runs and is tested without it). It plans the same items as the local runner, from the same spec,
against a scratch copy of the results folder:
- `run(unit, key, files)`: writes `files` (the finished folders of the units the item reads) into the
  scratch folder, runs the item exactly as the local runner does, and returns every file the item
  wrote, by path relative to the results folder. The driver writes them into the real store, the
  item's marker last, so the store's rules (atomic files, marker = done) hold for every executor;
- `finish(files, run)`: the end-of-run step (combined results, figures, summary) from all unit files.
A worker never writes into the results folder itself, so workers on other machines need no shared disk.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time

from . import executors
from .store import Folder
from .summary import write_summary
from .units import FINISHERS, PLANNERS, load_spec_model, prepare

# Test-only: seconds a worker sleeps after computing an item and before returning it, so a test can
# kill the worker mid-unit (the item is computed but not yet written: it must be rerun, not lost).
WORKER_DELAY_ENV = "HEADSCOPE_WORKER_DELAY_S"


def load_options(gpus: float, cuda_devices: int) -> dict:
    """load_model keyword arguments for a worker given `gpus` GPUs (what Ray granted; `cuda_devices`
    = how many CUDA devices the process sees): CPU without GPUs, one device, or the model split
    across all of them (TransformerBridge's n_devices: layers placed in order, one copy)."""
    if gpus <= 0 or cuda_devices == 0:
        return {}
    if gpus <= 1 or cuda_devices == 1:
        return {"device": "cuda"}
    return {"n_devices": min(int(gpus), cuda_devices)}


class Worker:
    """The spec's model and datasets, prepared once; items run on request (see the module docstring)."""

    def __init__(self, spec, *, gpus: float = 0, threads: int | None = None, name: str = "worker"):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.name, self.spec = name, spec
        options = load_options(gpus, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        started = time.time()
        model = load_spec_model(spec, **options)
        self.scratch = Folder(tempfile.mkdtemp(prefix="headscope-worker-"))
        model, info, datasets = prepare(spec, model)
        self.ctx = executors.Context(spec, self.scratch, model, info, datasets)
        self.items = {
            (unit.name, item.key): item for unit in spec.units for item in PLANNERS[unit.type](unit, self.ctx)
        }
        self.load_seconds = round(time.time() - started, 2)
        self.device = str(getattr(model.cfg, "device", "cpu"))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "host": platform.node(),
            "pid": os.getpid(),
            "device": self.device,
            "load_seconds": self.load_seconds,
        }

    def plan(self) -> list[dict]:
        """The items in the local runner's order: unit, key, the marker's path relative to the results
        folder, and what each reads (`Item.needs`)."""
        root = self.scratch.root
        return [
            {"unit": u, "key": k, "marker": item.marker.relative_to(root).as_posix(), "needs": list(item.needs)}
            for (u, k), item in self.items.items()
        ]

    def _receive(self, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            path = self.scratch.path(rel)
            if not (path.is_file() and path.read_bytes() == data):
                self.scratch.write_bytes(rel, data)

    def run(self, unit: str, key: str, files: dict[str, bytes]) -> dict:
        """Run one item; returns {"files": {rel path: bytes}, "seconds": ..., "worker": describe()}."""
        self._receive(files)
        before = self.scratch.files("units")
        item = self.items[(unit, key)]
        item.marker.unlink(missing_ok=True)  # a retried item recomputes; its old scratch output is not an answer
        start = time.time()
        item.run()
        seconds = time.time() - start
        delay = float(os.environ.get(WORKER_DELAY_ENV, "0") or 0)
        if delay:
            time.sleep(delay)
        written = {rel: data for rel, data in self.scratch.files("units").items() if before.get(rel) != data}
        return {"files": written, "seconds": round(seconds, 3), "worker": self.describe()}

    def finish(self, files: dict[str, bytes], run: dict) -> dict[str, bytes]:
        """Combined results, figures and the summary from every unit's files (the local runner's step 5)."""
        self._receive(files)
        for sub in ("results", "figures"):
            shutil.rmtree(self.scratch.path(sub), ignore_errors=True)
        self.ctx._scores.clear()  # combined scores are rebuilt from the files just received
        finished = {unit.name: FINISHERS[unit.type](unit, self.ctx) for unit in self.spec.units}
        write_summary(self.scratch, self.spec, self.ctx.info, finished, run)
        return self.scratch.files("results", "figures", "summary.md", "summary.json")

    def close(self) -> None:
        shutil.rmtree(self.scratch.root, ignore_errors=True)
