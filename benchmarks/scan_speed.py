"""All-heads ablation scan: headscope `scan()` vs the plain TransformerLens loop, same run, same machine.

The plain way is one `model.run_with_hooks` per head (L x H forwards over the whole batch) with a
hook_q hook scaling that head's queries by ε (Ships' Undifferentiated Attention), then the KL of
the last-position distribution. `scan()` computes the same [prompt, layer, head] table by reusing
the clean activations below each layer and stacking a layer's head variants in one forward. Both
tables are compared (max abs difference) before any time is reported.

Usage: python benchmarks/scan_speed.py [--prompts 4] [--lengths 16 64 128] [--out docs]
Writes <out>/scan_speed.json and the figure <out>/figures/scan_speed.{html,png,svg}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

EPS = 1e-5


def plain_tl_loop(model, tokens):
    """The plain TransformerLens way: one run_with_hooks per head."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(len(tokens), L, H)
    with torch.no_grad():
        base = F.log_softmax(model(tokens)[:, -1].double(), -1)
        for layer in range(L):
            for head in range(H):

                def scale_q(q, hook, head=head):  # [batch, pos, head, d_head]
                    q = q.clone()
                    q[:, :, head] *= EPS
                    return q

                logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_q", scale_q)])
                q = F.log_softmax(logits[:, -1].double(), -1)
                out[:, layer, head] = (base.exp() * (base - q)).sum(-1).float()
    return out


def measure(model, n_prompts: int, n_tokens: int) -> dict:
    from headscope.interventions import scan

    g = torch.Generator().manual_seed(n_tokens)
    tokens = torch.randint(1000, 11000, (n_prompts, n_tokens), generator=g)
    t0 = time.perf_counter()
    plain = plain_tl_loop(model, tokens)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = scan(model, tokens, "uniform_attention", "kl_last", epsilon=EPS, batch_size=n_prompts, progress=False)
    t_scan = time.perf_counter() - t0
    diff = float((torch.as_tensor(fast.values).float() - plain).abs().max())
    row = {
        "prompts": n_prompts,
        "tokens": n_tokens,
        "plain_tl_s": round(t_plain, 2),
        "scan_s": round(t_scan, 2),
        "speedup": round(t_plain / t_scan, 2),
        "max_abs_diff": diff,
    }
    print(
        f"{n_prompts} x {n_tokens:4d} tokens: plain TL loop {t_plain:7.1f} s | headscope scan {t_scan:6.1f} s | "
        f"{t_plain / t_scan:4.1f}x faster | max |diff| {diff:.1e}",
        flush=True,
    )
    return row


def figure(rows):
    import plotly.graph_objects as go

    from headscope.viz.figures import FONT

    x = [f"{r['prompts']} x {r['tokens']} tokens" for r in rows]
    fig = go.Figure(
        [
            go.Bar(name="plain TransformerLens loop (270 run_with_hooks)", x=x, y=[r["plain_tl_s"] for r in rows]),
            go.Bar(
                name="headscope scan()",
                x=x,
                y=[r["scan_s"] for r in rows],
                text=[f"{r['speedup']:.1f}x" for r in rows],
                textposition="outside",
            ),
        ]
    )
    fig.update_layout(
        barmode="group",
        font=FONT,
        template="plotly_white",
        yaxis_title="seconds (all 270 heads)",
        title=dict(
            text="All-heads ablation scan: headscope scan() vs the plain TransformerLens loop",
            subtitle=dict(
                text="uniform attention on each of 270 heads, KL at the last position; "
                "SmolLM2-135M, CPU; same run, results equal"
            ),
        ),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--out", default=None, help="folder for scan_speed.json and figures/ (default: print only)")
    parser.add_argument("--replot", action="store_true", help="only re-render the figure from <out>/scan_speed.json")
    args = parser.parse_args(argv)
    if args.replot:
        from headscope.viz.export import export_figure

        rows = json.loads((Path(args.out) / "scan_speed.json").read_text())["rows"]
        return export_figure(figure(rows), Path(args.out) / "figures", "scan_speed")
    import headscope
    from headscope.fileio import atomic_write

    model = headscope.load_model()
    rows = [measure(model, args.prompts, n) for n in args.lengths]
    if args.out:
        from headscope.viz.export import export_figure

        out = Path(args.out)
        meta = {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "rows": rows,
        }
        atomic_write(out / "scan_speed.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
        export_figure(figure(rows), out / "figures", "scan_speed")
        print(f"wrote {out / 'scan_speed.json'} and {out / 'figures'}/scan_speed.*")


if __name__ == "__main__":
    main()
