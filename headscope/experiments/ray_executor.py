"""`headscope run --executor ray`: the spec's units of work on a pool of Ray actors.

The driver (this process) keeps the results folder: it plans nothing itself (a worker plans, from
the same spec, exactly the local runner's items), hands each unfinished item to an idle actor as soon
as what it reads is finished (`Item.needs`), and writes the files the actor returns into the store,
the item's marker last. So the folder is the local executor's, byte for byte apart from timings, and
either executor resumes the other's run. Actors (`worker.Worker`) hold one loaded model each; Ray
restarts an actor whose process dies and reruns its item (`max_restarts`, `max_task_retries`), and an
item is written once, when its first successful result arrives. The end-of-run step (results,
figures, summary) runs on one actor, from the unit files the driver sends it. `executor.json` records
which worker ran which item. See docs/scale-out.md.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tqdm.auto import tqdm

from ..errors import HeadscopeError, InputError
from .worker import Worker

INSTALL = "pip install 'headscope[ray]'  (in a clone: make setup installs it from requirements/lock.txt)"
# An actor whose process dies is restarted this many times, and its item retried as often, before the
# run stops (a unit that kills its worker every time, e.g. out of memory, must not loop forever).
RESTARTS = 3
# Passed to every worker process: no downloads or installs while headscope runs, on any node.
WORKER_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "PIP_NO_INDEX",
    "UV_OFFLINE",
    "HEADSCOPE_CACHE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HEADSCOPE_WORKER_DELAY_S",
    "BROWSER_PATH",
)


def import_ray():
    """Ray, or a one-line InputError with the install command."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--executor ray needs Ray, which is not installed. Fix: {INSTALL}") from None
    return ray


def _worker_env() -> dict:
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PIP_NO_INDEX", "1")
    return env


def connect(ray, address: str | None, workers: int | None = None) -> bool:
    """Join `address`, or start a private Ray instance with room for `workers` one-CPU actors (returns
    whether this call started it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent from an offline machine
    if ray.is_initialized():
        return False
    options = dict(log_to_driver=False, configure_logging=False)
    if address is None:
        ray.init(include_dashboard=False, num_cpus=max(os.cpu_count() or 1, int(workers or 1)), **options)
    else:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError) as e:
            raise InputError(
                f"cannot reach the Ray cluster at {address!r}: {e}. Fix: start it (ray start --head "
                "on the head node) and pass its address (host:6379, ray://host:10001 or auto)"
            ) from None
    return True


def pool_size(ray, workers: int | None, gpus: float) -> int:
    """`workers`, or as many actors as the cluster's GPUs (gpus > 0) or CPUs can hold at once."""
    if workers is not None:
        if int(workers) < 1:
            raise InputError(f"workers={workers}: needs at least 1")
        return int(workers)
    res = ray.cluster_resources()
    n = res.get("GPU", 0) // gpus if gpus else res.get("CPU", 1)
    return max(1, int(n))


def check_fits(ray, n: int, gpus: float) -> None:
    """Actors the cluster cannot place would wait forever: refuse at once, saying what is there."""
    res = ray.cluster_resources()
    need = {"CPU": n, "GPU": n * gpus}
    short = [f"{need[k]:g} {k}s (the cluster has {res.get(k, 0):g})" for k in need if need[k] > res.get(k, 0)]
    if short:
        raise InputError(
            f"{n} workers need {' and '.join(short)}. Fix: fewer --workers, fewer --gpus-per-worker, "
            "or a bigger cluster"
        )


def _error(e, item) -> Exception:
    """The exception a unit raised inside a worker, named like the local runner names it."""
    cause = getattr(e, "cause", None) or e
    where = f"{item['path']} ({item['unit']}), {item['key']}"
    if isinstance(cause, HeadscopeError):
        return type(cause)(f"{where}: {cause}")
    return RuntimeError(f"{where} failed in a Ray worker: {type(cause).__name__}: {cause}")


def run(ray, spec, store, *, address=None, workers=None, gpus_per_worker: float = 0, progress=None) -> None:
    """Execute `spec`'s unfinished items on Ray actors into `store`, then finish the run (see module doc)."""
    t0 = time.time()
    started_ray = connect(ray, address, workers)
    actors = []
    try:
        n = pool_size(ray, workers, gpus_per_worker)
        check_fits(ray, n, gpus_per_worker)
        threads = None if gpus_per_worker else 1
        # The environment goes with each actor (not ray.init), so it holds on a cluster joined earlier too.
        remote = ray.remote(
            num_cpus=1,
            num_gpus=gpus_per_worker or 0,
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
            runtime_env={"env_vars": _worker_env()},
        )(Worker)
        actors = [remote.remote(spec, gpus=gpus_per_worker, threads=threads, name=f"w{i}") for i in range(n)]
        _drive(ray, spec, store, actors, progress, t0)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()


def _drive(ray, spec, store, actors, progress, t0) -> None:
    # The plan comes from a worker (it knows the model's layer count); waiting for it also surfaces a
    # model or dataset error (raised in every worker's constructor) before any item is sent.
    try:
        plan = ray.get(actors[0].plan.remote())
    except Exception as e:
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, HeadscopeError) else e) from None
    paths = {u.name: u.path for u in spec.units}
    for item in plan:
        item["path"] = paths[item["unit"]]
    done = {(i["unit"], i["key"]) for i in plan if store.path(i["marker"]).is_file()}
    pending = [i for i in plan if (i["unit"], i["key"]) not in done]
    total, reused = len(plan), len(done)
    by_unit: dict[str, set] = {}
    for i in plan:
        by_unit.setdefault(i["unit"], set()).add(i["key"])

    def ready(item) -> bool:
        return all(
            (u, k) in done if k is not None else by_unit[u] <= {kk for uu, kk in done if uu == u}
            for u, k in item["needs"]
        )

    def files_for(item) -> dict:
        return {
            rel: data for u in sorted({u for u, _ in item["needs"]}) for rel, data in store.files(f"units/{u}").items()
        }

    log = _load_log(store)
    idle = list(actors)
    running: dict[Any, tuple[Any, dict]] = {}  # a Ray object ref -> (its actor, its item)
    failure: Exception | None = None
    start, computed = time.time(), 0
    with tqdm(
        total=total,
        initial=reused,
        desc=f"{spec.name} (ray, {len(actors)} workers)",
        unit="unit",
        disable=progress is False,
    ) as bar:
        while pending or running:
            if failure is None:
                for item in [i for i in pending if ready(i)]:
                    if not idle:
                        break
                    actor = idle.pop(0)
                    pending.remove(item)
                    running[actor.run.remote(item["unit"], item["key"], files_for(item))] = (actor, item)
            if not running:
                if failure is None and pending:  # cannot happen with a valid plan; never spin
                    raise RuntimeError(f"items wait on units that never finish: {[i['key'] for i in pending]}")
                break
            ready_refs, _ = ray.wait(list(running), num_returns=1)
            ref = ready_refs[0]
            actor, item = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                failure = failure or RuntimeError(
                    f"{item['path']} ({item['unit']}), {item['key']}: its Ray worker died {RESTARTS + 1} times "
                    f"({e.__class__.__name__}); finished units are saved. Fix: check the worker's memory, then run "
                    "the same command again to resume"
                )
                continue
            except Exception as e:  # the unit itself raised: stop, keep what is finished
                failure = failure or _error(e, item)
                continue
            _write(store, item, result["files"])
            done.add((item["unit"], item["key"]))
            computed += 1
            w = result["worker"]
            log["items"][f"{item['unit']}/{item['key']}"] = {
                "worker": w["name"],
                "host": w["host"],
                "pid": w["pid"],
                "device": w["device"],
                "seconds": result["seconds"],
            }
            store.write_json("executor.json", log)
            idle.append(actor)
            bar.set_postfix_str(f"{item['unit']}: {item['key']} on {w['name']}@{w['host']}")
            bar.update()
    if failure is not None:
        raise failure
    run_stats = {"items": total, "computed_now": computed, "reused": reused, "seconds": round(time.time() - start, 1)}
    out = ray.get(actors[0].finish.remote(store.files("units"), run_stats))
    for rel, data in sorted(out.items()):
        store.write_bytes(rel, data)
    log["workers"] = ray.get([a.describe.remote() for a in actors])
    log["seconds"] = {
        "start_up": round(start - t0, 2),
        "items": run_stats["seconds"],
        "total": round(time.time() - t0, 2),
    }
    store.write_json("executor.json", log)


def _load_log(store) -> dict:
    try:
        log = store.read_json("executor.json")
    except (OSError, ValueError):
        log = {}
    return {"executor": "ray", "items": log.get("items", {})}


def _write(store, item, files: dict[str, bytes]) -> None:
    """An item's files into the store, its marker last (the marker's presence = the item is done)."""
    marker = item["marker"]
    if marker not in files:
        raise RuntimeError(f"{item['unit']}, {item['key']}: the worker returned no {marker}")
    for rel in sorted(files):
        if rel != marker:
            store.write_bytes(rel, files[rel])
    store.write_bytes(marker, files[marker])
