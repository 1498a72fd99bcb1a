"""Attribution patching vs the exact scan vs the plain TransformerLens loop: all 270 heads of SmolLM2.

Modes (each in its own process, `_harness.run_mode`; one batch of 2 prompts of random tokens, the IOI-style
logit difference of two fixed tokens at the last position as the metric):
  forward        one plain forward of the batch: the unit of "forward-equivalents"
  atp            scan(kind="zero", method="atp")                  one forward + one backward
  atp_star       scan(kind="uniform_attention", method="atp*")    one forward + one backward, QK fix
  exact_zero     scan(kind="zero")                                every head's variant, layers above it
  exact_uniform  scan(kind="uniform_attention")
  tl_loop        one run_with_hooks per head zeroing its hook_z (270 forwards)
at T = 16, 128 and 512 tokens. Time = one run after a warm-up; forward-equivalents = time / forward.

Usage: python benchmarks/atp_speed.py [--lengths 16 128 512] [--out docs]   (--replot: figure + tables)
Writes <out>/atp_speed.json and <out>/figures/atp_speed.{html,png,svg}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run_mode

MODES = ("forward", "atp", "atp_star", "exact_zero", "exact_uniform", "tl_loop")
PAIRS = {"atp": "exact_zero", "atp_star": "exact_uniform"}  # estimate -> the exact scan it replaces
N_PROMPTS = 2
ANSWERS = [(" Mary", " John")] * N_PROMPTS


def child(mode: str, n_tokens: int) -> dict:
    import torch

    import headscope
    from headscope.interventions import scan

    model = headscope.load_model()
    g = torch.Generator().manual_seed(n_tokens)
    tokens = torch.randint(1000, 11000, (N_PROMPTS, n_tokens), generator=g)
    kw = {"answers": ANSWERS}

    def tl_loop():
        ids = [model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS[0]]
        with torch.no_grad():
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):

                    def zero(z, hook, head=head):
                        z = z.clone()
                        z[:, :, head] = 0
                        return z

                    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
                    _ = logits[:, -1, ids[0]] - logits[:, -1, ids[1]]

    def forward():
        with torch.no_grad():
            model(tokens)

    run = {
        "forward": forward,
        "atp": lambda: scan(model, tokens, "zero", "logit_diff", method="atp", metric_kwargs=kw, progress=False),
        "atp_star": lambda: scan(
            model, tokens, "uniform_attention", "logit_diff", method="atp*", metric_kwargs=kw, progress=False
        ),
        "exact_zero": lambda: scan(model, tokens, "zero", "logit_diff", metric_kwargs=kw, progress=False),
        "exact_uniform": lambda: scan(
            model, tokens, "uniform_attention", "logit_diff", metric_kwargs=kw, progress=False
        ),
        "tl_loop": tl_loop,
    }[mode]
    small = tokens[:, :8]
    with torch.no_grad():
        model(small)  # warm-up: allocator, lazy init
    if mode != "tl_loop":  # warm the mode's own path once on a short batch (the TL loop is 270 of the forward)
        {
            "atp": lambda: scan(model, small, "zero", "logit_diff", method="atp", metric_kwargs=kw, progress=False),
            "atp_star": lambda: scan(
                model, small, "uniform_attention", "logit_diff", method="atp*", metric_kwargs=kw, progress=False
            ),
        }.get(mode, lambda: None)()
    start = time.perf_counter()
    run()
    return {"mode": mode, "tokens": n_tokens, "seconds": round(time.perf_counter() - start, 3)}


def measure(lengths, timeout_s) -> list[dict]:
    rows = []
    for n in lengths:
        for mode in MODES:
            row = run_mode(mode, [__file__, "--child", mode, "--tokens", str(n)], timeout_s=timeout_s)
            row.setdefault("tokens", n)
            rows.append(row)
            what = f"{row['seconds']:8.2f} s" if row["status"] == "ok" else row["status"]
            print(f"T={n:4d} {mode:14s} {what}", flush=True)
    return rows


def summary(rows) -> dict:
    """Per T: seconds and forward-equivalents per mode; speed-ups of the estimates over their exact scans."""
    out = {}
    for n in sorted({r["tokens"] for r in rows}):
        got = {r["mode"]: r["seconds"] for r in rows if r["tokens"] == n and r["status"] == "ok"}
        fwd = got.get("forward")
        out[n] = {
            "seconds": got,
            "forward_equivalents": {m: round(s / fwd, 1) for m, s in got.items()} if fwd else {},
            "speedup": {
                f"{est} vs {ex}": round(got[ex] / got[est], 1) for est, ex in PAIRS.items() if est in got and ex in got
            },
        }
    return out


def markdown(record) -> str:
    lines = [
        "| T | " + " | ".join(MODES) + " | AtP vs exact | AtP* vs exact |",
        "| ---: | " + " | ".join("---:" for _ in MODES) + " | ---: | ---: |",
    ]
    for n, s in record["summary"].items():
        cells = [
            f"{s['seconds'][m]:.2f} s ({s['forward_equivalents'].get(m, float('nan')):g})" if m in s["seconds"] else "—"
            for m in MODES
        ]
        sp = s["speedup"]
        lines.append(
            f"| {int(n):,} | " + " | ".join(cells) + f" | {sp.get('atp vs exact_zero', float('nan')):g}x | "
            f"{sp.get('atp_star vs exact_uniform', float('nan')):g}x |"
        )
    return "\n".join(lines)


def figure(record):
    import plotly.graph_objects as go

    from headscope.viz.figures import FONT

    summ = record["summary"]
    x = [f"{int(n)} tokens" for n in summ]
    fig = go.Figure([go.Bar(name=m, x=x, y=[summ[n]["seconds"].get(m) for n in summ]) for m in MODES[1:]])
    fig.update_layout(
        barmode="group",
        font=FONT,
        template="plotly_white",
        yaxis_type="log",
        yaxis_title="seconds, all 270 heads (log)",
        title=dict(
            text="Attribution patching vs the exact scan vs the plain TransformerLens loop",
            subtitle=dict(text="SmolLM2-135M, 2 prompts, logit difference; CPU, same run"),
        ),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--replot", action="store_true")
    parser.add_argument("--child", default=None)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.tokens)))
        return
    from headscope.fileio import atomic_write
    from headscope.viz.export import export_figure

    out = Path(args.out) if args.out else None
    if args.replot:
        record = json.loads((out / "atp_speed.json").read_text())
    else:
        import torch

        rows = measure(args.lengths, args.timeout)
        record = {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "prompts": N_PROMPTS,
            "rows": rows,
            "summary": summary(rows),
        }
        if out:
            atomic_write(out / "atp_speed.json", lambda t: t.write_text(json.dumps(record, indent=1) + "\n"))
    print(markdown(record))
    if out:
        export_figure(figure(record), out / "figures", "atp_speed")


if __name__ == "__main__":
    main()
