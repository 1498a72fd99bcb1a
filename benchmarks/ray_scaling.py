"""The Ray executor on 1 and 2 workers vs the local executor: SmolLM2's 270-head uniform-attention scan.

One spec (2 prompts of 128 random tokens, `kl_last`, one unit of work per layer: 30 units), run
(each mode in its own process, `_harness.run_mode`, into a fresh folder):
  local   headscope run (the local executor), torch on all the machine's cores (the plain way)
  ray1    --executor ray --workers 1   (a private Ray instance; each actor: 1 CPU, 1 torch thread)
  ray2    --executor ray --workers 2
Reported: wall time; the units' phase (from the first unit sent to the last written); the Ray start-up
(instance, actors, model load and the plan, from executor.json); speed-up ray2 vs ray1 over the units
(the ceiling on a 2-core machine is 2x) and each mode against local. Per-unit cost feeds the 7B
estimate in docs/scale-out.md.

Usage: python benchmarks/ray_scaling.py [--tokens 128] [--out docs]   (--replot: tables only)
Writes <out>/ray_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run_mode

MODES = ("local", "ray1", "ray2")
N_PROMPTS = 2


def spec_text(n_tokens: int) -> str:
    import random

    rng = random.Random(n_tokens)
    prompts = [[rng.randrange(1000, 11000) for _ in range(n_tokens)] for _ in range(N_PROMPTS)]
    return (
        f"name: ray_scaling\nmodel: smollm2\nfigures: []\ndata:\n  random:\n    prompts: {json.dumps(prompts)}\n"
        "units:\n  - name: uniform\n    scan: uniform_attention\n    metric: kl_last\n    data: random\n"
    )


def child(mode: str, n_tokens: int) -> dict:
    from headscope.experiments import run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(spec_text(n_tokens))
        options = {} if mode == "local" else {"executor": "ray", "workers": int(mode[3:])}
        start = time.perf_counter()
        out = run_experiment(spec, Path(tmp) / "out", progress=False, **options)
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
        row = {
            "mode": mode,
            "tokens": n_tokens,
            "seconds": round(wall, 2),
            "units": summary["run"]["items"],
            "units_seconds": summary["run"]["seconds"],
        }
        if mode != "local":
            log = json.loads((out / "executor.json").read_text())
            row["start_up_seconds"] = log["seconds"]["start_up"]
            row["unit_seconds_each"] = sorted(i["seconds"] for i in log["items"].values())
            row["workers"] = [{k: w[k] for k in ("name", "pid", "load_seconds")} for w in log["workers"]]
    return row


def summary(rows) -> dict:
    got = {r["mode"]: r for r in rows if r["status"] == "ok"}
    out = {}
    if "ray1" in got and "ray2" in got:
        out["ray2_vs_ray1_units"] = round(got["ray1"]["units_seconds"] / got["ray2"]["units_seconds"], 2)
        out["ray2_vs_ray1_wall"] = round(got["ray1"]["seconds"] / got["ray2"]["seconds"], 2)
    if "local" in got:
        for m in ("ray1", "ray2"):
            if m in got:
                out[f"{m}_vs_local_units"] = round(got["local"]["units_seconds"] / got[m]["units_seconds"], 2)
                out[f"{m}_vs_local_wall"] = round(got["local"]["seconds"] / got[m]["seconds"], 2)
    if "ray1" in got:
        each = got["ray1"]["unit_seconds_each"]
        out["unit_seconds_median_1_thread"] = each[len(each) // 2]
    return out


def markdown(record) -> str:
    lines = ["| mode | wall | units phase | Ray start-up |", "| --- | ---: | ---: | ---: |"]
    for r in record["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['status']} | | |")
            continue
        start = f"{r['start_up_seconds']:.1f} s" if "start_up_seconds" in r else "—"
        lines.append(f"| {r['mode']} | {r['seconds']:.1f} s | {r['units_seconds']:.1f} s | {start} |")
    s = record["summary"]
    lines += ["", ", ".join(f"{k}: {v}" for k, v in s.items())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--replot", action="store_true")
    parser.add_argument("--child", default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.tokens)))
        return
    out = Path(args.out) if args.out else None
    if args.replot:
        record = json.loads((out / "ray_scaling.json").read_text())
    else:
        rows = []
        for mode in MODES:
            row = run_mode(mode, [__file__, "--child", mode, "--tokens", str(args.tokens)], timeout_s=args.timeout)
            rows.append(row)
            print(f"{mode:6s} " + (f"{row['seconds']:8.1f} s" if row["status"] == "ok" else row["status"]), flush=True)
        record = {
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "tokens": args.tokens,
            "prompts": N_PROMPTS,
            "rows": rows,
            "summary": summary(rows),
        }
        if out:
            from headscope.fileio import atomic_write

            atomic_write(out / "ray_scaling.json", lambda t: t.write_text(json.dumps(record, indent=1) + "\n"))
    print(markdown(record))


if __name__ == "__main__":
    main()
