"""Long contexts: time and peak memory of eager vs blocked attention, forward and capture, against T.

Modes (each in its own process, `_harness.run_mode`; a mode killed for memory or past `--max-gb` is a row
saying "out of memory" with the limit):
  eager_forward    model(tokens)                                   the bridge's eager attention, no hooks
  fused_forward    with blocked_attention(model): model(tokens)    PyTorch's fused SDPA on every layer
  capture_eager    capture(..., attention="eager")                 six default reducers, the [T, T] way
  capture_blocked  capture(..., attention="blocked")               six default reducers, blocks of 256 rows
  run_with_cache   model.run_with_cache(tokens)                    the usual TransformerLens way
on the bundled SmolLM2-135M at T = 1k, 2k, 4k, 8k, and on a tiny random-init Llama (2 layers, 4 heads,
context 32k) at T up to 32k (memory: where T² shows). Peak = growth of peak RSS over the loaded, warmed-up
model (Linux /proc/self/clear_refs); time = one run (`--repeats` for more, best taken).

Usage: python benchmarks/long_context.py [--lengths 1024 2048 4096 8192] [--tiny-lengths 4096 8192 16384 32768]
                                         [--max-gb 16] [--repeats 1] [--modes ...] [--name long_context] [--out docs]
       e.g. the time goal alone, best of 3: --lengths 8192 --tiny-lengths --modes fused_forward capture_blocked
                                             --repeats 3 --name long_context_time
       (--replot: the figure and the markdown tables from <out>/long_context.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run_mode, time_and_peak

MODES = ("eager_forward", "fused_forward", "capture_eager", "capture_blocked", "run_with_cache")
TINY_MODES = ("eager_forward", "fused_forward", "capture_eager", "capture_blocked")
TINY_CTX = 32768


def _load(which: str):
    import headscope
    from headscope.testing import tiny_model

    if which == "smollm2":
        return headscope.load_model(), (1000, 11000)
    return tiny_model(n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, n_ctx=TINY_CTX), (3, 512)


def child(which: str, mode: str, n_tokens: int, repeats: int) -> dict:
    import torch

    from headscope.capture import capture, default_reducers
    from headscope.capture.blocked import blocked_attention

    model, (lo, hi) = _load(which)

    def fused(tokens):
        with blocked_attention(model):
            return model(tokens)

    run = {
        "eager_forward": lambda t: model(t),
        "fused_forward": fused,
        "capture_eager": lambda t: capture(model, t, default_reducers(), attention="eager", progress=False),
        "capture_blocked": lambda t: capture(model, t, default_reducers(), attention="blocked", progress=False),
        "run_with_cache": lambda t: model.run_with_cache(t),
    }[mode]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(lo, hi, (1, n_tokens), generator=g)
    with torch.no_grad():
        run(tokens[:, :64])  # warm-up (allocator, lazy init, the blocked path's one-off support probe)
        seconds, peak_mb = time_and_peak(lambda: run(tokens), repeats)
    return {"model": which, "mode": mode, "tokens": n_tokens, "seconds": seconds, "peak_mb": peak_mb}


def measure(which: str, modes, lengths, max_gb, timeout_s, repeats) -> list[dict]:
    rows = []
    for n in lengths:
        for mode in modes:
            row = run_mode(
                mode,
                [__file__, "--child", mode, "--model", which, "--tokens", str(n), "--repeats", str(repeats)],
                max_gb=max_gb,
                timeout_s=timeout_s,
            )
            row.update(model=which, mode=mode, tokens=n)
            rows.append(row)
            shown = (
                f"{row['seconds']:8.1f} s {row['peak_mb']:8.0f} MB"
                if row["status"] == "ok"
                else f"{row['status']}: {row['detail']}"
            )
            print(f"{which:8s} T={n:6d} {mode:16s} {shown}", flush=True)
    return rows


def _get(rows, which, mode, n):
    return next(
        (r for r in rows if (r["model"], r["mode"], r["tokens"]) == (which, mode, n) and r["status"] == "ok"), None
    )


def goals(rows) -> list[dict]:
    """The issue's goals, each a ratio measured in this run: blocked capture vs the fused forward and vs
    eager capture."""
    out = []
    for which in sorted({r["model"] for r in rows}):
        lengths = sorted({r["tokens"] for r in rows if r["model"] == which})
        for n in lengths:
            blocked, fused = _get(rows, which, "capture_blocked", n), _get(rows, which, "fused_forward", n)
            if blocked and fused:
                out.append(
                    {
                        "goal": "blocked capture peak <= 1.2x fused forward",
                        "model": which,
                        "tokens": n,
                        "ratio": round(blocked["peak_mb"] / max(fused["peak_mb"], 1.0), 2),
                        "limit": 1.2,
                    }
                )
        if which == "smollm2" and lengths:
            n = max(lengths)
            blocked, fused = _get(rows, which, "capture_blocked", n), _get(rows, which, "fused_forward", n)
            eager = _get(rows, which, "capture_eager", n)
            if blocked and fused:
                out.append(
                    {
                        "goal": "blocked capture time <= 2x fused forward",
                        "model": which,
                        "tokens": n,
                        "ratio": round(blocked["seconds"] / fused["seconds"], 2),
                        "limit": 2.0,
                    }
                )
            if blocked and eager:
                out.append(
                    {
                        "goal": "eager capture / blocked capture time >= 3",
                        "model": which,
                        "tokens": n,
                        "ratio": round(eager["seconds"] / blocked["seconds"], 2),
                        "limit": 3.0,
                    }
                )
                out.append(
                    {
                        "goal": "eager capture / blocked capture peak >= 4",
                        "model": which,
                        "tokens": n,
                        "ratio": round(eager["peak_mb"] / max(blocked["peak_mb"], 1.0), 2),
                        "limit": 4.0,
                    }
                )
    for g in out:
        g["met"] = g["ratio"] >= g["limit"] if g["goal"].startswith("eager") else g["ratio"] <= g["limit"]
    return out


def markdown(record: dict) -> str:
    """The tables of docs/benchmarks.md: time and peak per mode and T, then the goals."""
    rows = record["rows"]
    lines = []
    for which, modes in (("smollm2", MODES), ("tiny", TINY_MODES)):
        lengths = sorted({r["tokens"] for r in rows if r["model"] == which})
        if not lengths:
            continue
        lines += [
            "",
            f"**{'SmolLM2-135M-Instruct' if which == 'smollm2' else 'tiny random-init Llama (2 layers, 4 heads, 32k context)'}** — time s / peak MB",
            "",
            "| T | " + " | ".join(modes) + " |",
            "| ---: |" + " ---: |" * len(modes),
        ]
        for n in lengths:
            cells = []
            for mode in modes:
                r = next((r for r in rows if (r["model"], r["mode"], r["tokens"]) == (which, mode, n)), None)
                if r is None:
                    cells.append("—")
                elif r["status"] == "ok":
                    cells.append(f"{r['seconds']:.1f} / {r['peak_mb']:,.0f}")
                else:
                    limit = f" ({record['max_gb']:g} GB cap)" if r["status"] == "out of memory" else ""
                    cells.append(f"{r['status']}{limit}")
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    lines += ["", "| goal | model | T | measured | met |", "| --- | --- | ---: | ---: | --- |"]
    for g in record["goals"]:
        lines.append(
            f"| {g['goal']} | {g['model']} | {g['tokens']:,} | {g['ratio']} | {'yes' if g['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from headscope.viz.figures import FONT

    fig = make_subplots(rows=1, cols=2, subplot_titles=("peak memory over the loaded model (MB)", "time (s)"))
    dash = {"smollm2": "solid", "tiny": "dot"}
    colors = dict(zip(MODES, ("#7f7f7f", "#2ca02c", "#d62728", "#1f77b4", "#9467bd")))
    for which in ("smollm2", "tiny"):
        for mode in MODES:
            ok = sorted(
                (r for r in rows if r["model"] == which and r["mode"] == mode and r["status"] == "ok"),
                key=lambda r: r["tokens"],
            )
            if not ok:
                continue
            label = f"{mode} ({'SmolLM2-135M' if which == 'smollm2' else 'tiny Llama, 32k ctx'})"
            for col, key in ((1, "peak_mb"), (2, "seconds")):
                fig.add_trace(
                    go.Scatter(
                        x=[r["tokens"] for r in ok],
                        y=[max(r[key], 1e-3) for r in ok],
                        mode="lines+markers",
                        name=label,
                        legendgroup=label,
                        showlegend=col == 1,
                        line=dict(dash=dash[which], color=colors[mode]),
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(type="log", title_text="tokens T")
    fig.update_yaxes(type="log")
    fig.update_layout(
        font=FONT,
        template="plotly_white",
        height=520,
        width=1150,
        title=dict(
            text="Long contexts: eager vs blocked attention (log-log)",
            subtitle=dict(text="one prompt, CPU, float32; missing points: out of memory or not run"),
        ),
        legend=dict(orientation="h", y=-0.22),
    )
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--tiny-lengths", type=int, nargs="*", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", nargs="*", default=list(MODES), help="SmolLM2 modes to run (default: all)")
    parser.add_argument("--name", default="long_context", help="record name: <out>/<name>.json, figures/<name>.*")
    parser.add_argument(
        "--max-gb",
        type=float,
        default=16.0,
        help="cap each mode's address space (GB); a mode past it is reported out of memory",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per mode before it is reported timed out"
    )
    parser.add_argument("--out", default=None, help="folder for long_context.json and figures/ (default: print only)")
    parser.add_argument("--replot", action="store_true")
    parser.add_argument("--child", default=None)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.child, args.tokens, args.repeats)))
        return
    from headscope.viz.export import export_figure

    if args.replot:
        record = json.loads((Path(args.out) / f"{args.name}.json").read_text())
        export_figure(figure(record["rows"]), Path(args.out) / "figures", args.name)
        print(markdown(record))
        return
    import torch

    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; modes: {', '.join(MODES)}")
    rows = measure(
        "smollm2", [m for m in MODES if m in args.modes], args.lengths, args.max_gb, args.timeout, args.repeats
    )
    rows += measure("tiny", TINY_MODES, args.tiny_lengths, args.max_gb, args.timeout, args.repeats)
    met = goals(rows)
    for g in met:
        print(
            f"{'met ' if g['met'] else 'MISSED'} {g['goal']:<45} {g['model']:8s} T={g['tokens']:6d} ratio {g['ratio']}"
        )
    if args.out:
        from headscope.fileio import atomic_write

        out = Path(args.out)
        meta = {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "max_gb": args.max_gb,
            "repeats": args.repeats,
            "rows": rows,
            "goals": met,
        }
        atomic_write(out / f"{args.name}.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
        export_figure(figure(rows), out / "figures", args.name)
        print(markdown(meta))
        print(f"wrote {out / (args.name + '.json')} and {out / 'figures'}/{args.name}.*")


if __name__ == "__main__":
    main()
