"""Cost of the scan's run-time replay self-check, as a fraction of the scan it protects.

`scan()` replays the blocks above each layer from the stored clean residual. Before trusting that
replay it checks, on the first batch, that the replayed clean run (two stacked copies, from the first
and the last scanned layer) reproduces the model's own logits. This benchmark times, each in its own
process on the bundled SmolLM2: (a) `scan(..., replay="force")` (no check), (b) `scan(..., replay="auto")`
(the default: check, then the same scan), and (c) the check alone; it reports (c) / (a) and
(b) / (a) - 1, and that (a) and (b) give identical tables.

Usage: python benchmarks/scan_selfcheck.py [--prompts 2] [--tokens 16 64] [--out docs]
Writes <out>/scan_selfcheck.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def one_mode(mode: str, n_prompts: int, n_tokens: int, out: Path) -> None:
    import importlib

    import torch

    import headscope
    from headscope.inputs.tokens import iter_batches

    scan_mod = importlib.import_module("headscope.interventions.scan")
    replay_mod = importlib.import_module("headscope.interventions.replay")
    model = headscope.load_model()
    g = torch.Generator().manual_seed(n_tokens)
    tokens = torch.randint(1000, 11000, (n_prompts, n_tokens), generator=g)
    t0 = time.perf_counter()
    if mode == "check":
        batch = next(iter(iter_batches([row.tolist() for row in tokens], n_prompts, 0)))
        clean = replay_mod.CleanRun(model, batch, 0)
        t0 = time.perf_counter()  # the clean run is part of every scan; time only the check
        err = replay_mod.replay_error(model, clean, batch, [0, model.cfg.n_layers - 1], True, "logits")
        result = {"seconds": time.perf_counter() - t0, "replay_error": err}
    else:
        scores = scan_mod.scan(model, tokens, "zero", "kl_last", batch_size=n_prompts, progress=False, replay=mode)
        result = {"seconds": time.perf_counter() - t0, "values": np.asarray(scores.values).tolist()}
    out.write_text(json.dumps(result))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    p.add_argument("--out", default="docs")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:
        one_mode(args.mode, args.prompts, args.tokens[0], Path(args.result))
        return
    rows = []
    for n_tokens in args.tokens:
        got = {}
        for mode in ("force", "auto", "check"):
            res = (
                Path(f"/dev/shm/headscope_selfcheck_{mode}.json")
                if Path("/dev/shm").is_dir()
                else Path(f".selfcheck_{mode}.json")
            )
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--mode",
                    mode,
                    "--prompts",
                    str(args.prompts),
                    "--tokens",
                    str(n_tokens),
                    "--result",
                    str(res),
                ]
            )
            if proc.returncode != 0:  # e.g. killed for memory: report it, do not crash
                got[mode] = {"seconds": None, "error": f"exit code {proc.returncode}"}
                continue
            got[mode] = json.loads(res.read_text())
            res.unlink()
        same = (
            "values" in got["force"]
            and "values" in got["auto"]
            and np.array_equal(np.array(got["force"]["values"]), np.array(got["auto"]["values"]), equal_nan=True)
        )
        f, a, c = (got[m].get("seconds") for m in ("force", "auto", "check"))
        row = {
            "prompts": args.prompts,
            "tokens": n_tokens,
            "scan_no_check_s": f,
            "scan_default_s": a,
            "check_s": c,
            "check_fraction": c / f if c and f else None,
            "default_overhead": a / f - 1 if a and f else None,
            "replay_error": got["check"].get("replay_error"),
            "identical_tables": same,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scan_selfcheck.json").write_text(
        json.dumps({"machine": platform.platform(), "processor": platform.processor(), "rows": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
