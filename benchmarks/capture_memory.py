"""Peak memory and time: headscope reducer capture vs a plain forward vs TransformerLens caches.

Each mode runs in a fresh subprocess (so allocator state cannot leak between modes). After the
model is loaded and warmed up, the process's peak-RSS mark is reset (Linux /proc/self/clear_refs),
so the reported peak is what the forward pass itself added.

A mode that runs out of memory is reported as such (with the limit), never a crash; `--max-gb` caps
each child's address space to check a smaller machine.

Usage: python benchmarks/capture_memory.py [--tokens 1024] [--repeats 3] [--max-gb 24]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run_mode, time_and_peak

MODES = {
    "plain_forward": "model(tokens)  # TransformerLens bridge, no hooks",
    "headscope_capture": "headscope.capture(model, tokens, default_reducers())  # six per-head statistics",
    "run_with_cache_patterns": "model.run_with_cache(tokens, names_filter=lambda n: n.endswith('hook_pattern'))",
    "run_with_cache_all": "model.run_with_cache(tokens)  # the usual TL way",
}


def child(mode: str, n_tokens: int, repeats: int) -> dict:
    import torch

    import headscope
    from headscope.capture import capture, default_reducers

    model = headscope.load_model()
    tokens = torch.randint(1000, 11000, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    run = {
        "plain_forward": lambda: model(tokens),
        "headscope_capture": lambda: capture(model, tokens, default_reducers(), progress=False),
        "run_with_cache_patterns": lambda: model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_pattern")
        ),
        "run_with_cache_all": lambda: model.run_with_cache(tokens),
    }[mode]
    with torch.no_grad():
        run()  # warm-up (allocator, lazy init)
        seconds, peak_mb = time_and_peak(run, repeats)
    return {"mode": mode, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None)
    parser.add_argument(
        "--max-gb",
        type=float,
        default=None,
        help="cap each mode's address space (GB; virtual memory: torch alone maps about 3 GB)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.repeats)))
        return
    rows = [
        run_mode(
            mode,
            [__file__, "--child", mode, "--tokens", str(args.tokens), "--repeats", str(args.repeats)],
            max_gb=args.max_gb,
        )
        for mode in MODES
    ]
    base = {r["mode"]: r for r in rows if r["status"] == "ok"}
    plain, cached = base.get("plain_forward"), base.get("run_with_cache_all")
    ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"
    print(f"SmolLM2-135M-Instruct, {args.tokens} tokens, batch 1, CPU; best of {args.repeats}")
    print(f"{'mode':<26}{'time s':>9}{'peak MB':>10}{'time/plain':>12}{'mem/plain':>11}{'mem/run_with_cache':>20}")
    for r in rows:
        if r["status"] != "ok":  # out of memory / failed: a row saying so, never a crash
            print(f"{r['mode']:<26}  {r['status']}: {r['detail']}")
            continue
        print(
            f"{r['mode']:<26}{r['seconds']:>9.2f}{r['peak_mb']:>10.0f}"
            f"{ratio(r['seconds'], plain and plain['seconds']):>12}{ratio(r['peak_mb'], plain and plain['peak_mb']):>11}"
            f"{ratio(r['peak_mb'], cached and cached['peak_mb']):>20}"
        )
    for mode, code in MODES.items():
        print(f"  {mode}: {code}")


if __name__ == "__main__":
    main()
