"""Retrieval heads at long context on the bundled model (its context is 8192 tokens): needle accuracy,
copy-paste detection and the masking check at 1k, 2k, 4k and 8k tokens, and whether the same heads are
found at every length.

Per length L (completion-form needle prompts, docs/retrieval-accuracy.md):
1. Detect: `RetrievalHeads(context_lengths=[L], n_samples=N, seed=0)`: greedy answers (KV-cached; the
   prefill runs on blocked attention past the capture budget), then the copy-paste score teacher-forced
   over prompt + answer (`capture`, blocked at long context). `accuracy_` = ROUGE-1 recall > 0.5 (Wu et al.).
2. Mask: on N held-out prompts (seed 1) at the same length, needle accuracy (the greedy answer reproduced
   exactly, measured teacher-forced) clean, with the top-K heads of this length masked (uniform attention on
   the decode queries, as the paper) and with K random heads from outside the top 50 (several seeds).
3. Compare lengths: Spearman correlation of the per-head score maps and the overlap of the top-10 heads.

Every forward past the capture budget (512 MB of float32 pattern per layer: about 3.8k tokens on SmolLM2)
runs on blocked attention; nothing of size T x T is built (docs/long-context.md).

Writes docs/long_context_retrieval.json and docs/figures/long_context_retrieval.{html,png,svg}.
Usage: python analyses/long_context_retrieval.py [--lengths 1024 2048 4096 8180] [--n-samples 6] [--k 10]
       (--replot: the figure and the markdown tables, from the saved JSON)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from plotly.subplots import make_subplots

import headscope
from headscope.analyzers.retrieval import RetrievalHeads, needle_accuracy
from headscope.fileio import atomic_write
from headscope.inputs.needle import make_needle_prompts
from headscope.interventions import UniformAttention
from headscope.viz.export import export_figure

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _masked(model, samples, heads) -> float:
    return needle_accuracy(model, samples, [UniformAttention(heads=heads, positions="decode")] if heads else [])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = (np.argsort(np.argsort(x[ok])).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def one_length(model, length: int, n: int, k: int, seeds: int, exclude_top: int) -> dict:
    start = time.time()
    det = RetrievalHeads(n_samples=n, context_lengths=[length], seed=0, prompt_form="completion").fit(model)
    scores = det.scores_.values[0]  # [layer, head], mean over retrieved samples (NaN if none)
    _L, H = scores.shape
    order = np.argsort(-np.nan_to_num(scores, nan=-1.0), axis=None, kind="stable")
    ranking = [(int(i // H), int(i % H)) for i in order]
    detect_s = time.time() - start
    held_out = make_needle_prompts(model, n, [length], seed=1, form="completion")
    clean = _masked(model, held_out, [])
    top = _masked(model, held_out, ranking[:k])
    rng = np.random.default_rng(0)
    pool = ranking[exclude_top:]
    random = [
        _masked(model, held_out, [pool[i] for i in rng.choice(len(pool), k, replace=False)]) for _ in range(seeds)
    ]
    row = {
        "length": length,
        "prompt_tokens": [len(s.prompt_ids) for s in det.prepare_data(model)],
        "detect_accuracy": det.accuracy_,
        "n_retrieved": round(det.accuracy_ * n),
        "n_heads_above_threshold": int(np.nansum(scores > det.threshold)),
        "top_heads": [f"L{l}H{h}" for l, h in ranking[:10]],
        "top_scores": [round(float(scores[l, h]), 3) for l, h in ranking[:10]],
        "clean_accuracy": clean,
        "top_k_accuracy": top,
        "random_k_accuracy": random,
        "scores": np.round(np.nan_to_num(scores, nan=-1.0), 4).tolist(),
        "detect_seconds": round(detect_s, 1),
        "seconds": round(time.time() - start, 1),
    }
    print(
        f"T={length:5d}  detect acc {det.accuracy_:.2f} ({detect_s:.0f} s)  held-out acc clean {clean:.2f} | "
        f"top-{k} masked {top:.2f} | random-{k} {np.round(random, 2).tolist()}  top {row['top_heads'][:5]}  "
        f"{row['seconds']:.0f} s",
        flush=True,
    )
    return row


def compare(rows: list[dict], top_n: int = 10) -> list[dict]:
    """Every pair of lengths: Spearman of the score maps, and how many of the top-n heads they share."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            sa, sb = (np.where(np.array(r["scores"]) < 0, np.nan, np.array(r["scores"])).ravel() for r in (a, b))
            shared = len(set(a["top_heads"][:top_n]) & set(b["top_heads"][:top_n]))
            out.append(
                {
                    "lengths": [a["length"], b["length"]],
                    "spearman": round(_spearman(sa, sb), 3),
                    f"top{top_n}_shared": shared,
                }
            )
    return out


def markdown(record: dict) -> str:
    """The tables of docs/long-context-retrieval.md, from the saved record."""
    k = record["k"]
    lines = [
        "| prompt tokens | detection accuracy (ROUGE-1 > 0.5) | heads > 0.1 | held-out accuracy | "
        f"top-{k} masked | {k} random masked (per seed) | top 5 heads | minutes |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['length']:,} | {r['detect_accuracy']:.2f} | {r['n_heads_above_threshold']} | "
            f"{r['clean_accuracy']:.2f} | {r['top_k_accuracy']:.2f} | "
            f"{', '.join(f'{a:.2f}' for a in r['random_k_accuracy'])} | {', '.join(r['top_heads'][:5])} | "
            f"{r['seconds'] / 60:.1f} |"
        )
    lines += [
        "",
        f"| lengths | Spearman of the score maps | top-{record['top_n']} heads shared |",
        "| --- | ---: | ---: |",
    ]
    shared = f"top{record['top_n']}_shared"
    for c in record["comparison"]:
        lines.append(
            f"| {c['lengths'][0]:,} vs {c['lengths'][1]:,} | {c['spearman']:.2f} | {c[shared]} / {record['top_n']} |"
        )
    return "\n".join(lines) + "\n"


def plot(record: dict, out: Path) -> None:
    rows = record["rows"]
    x = [r["length"] for r in rows]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.45, 0.55],
        subplot_titles=("needle accuracy (held-out prompts)", "retrieval score of the top heads"),
    )
    fig.add_scatter(x=x, y=[r["clean_accuracy"] for r in rows], mode="lines+markers", name="clean", row=1, col=1)
    fig.add_scatter(
        x=x,
        y=[r["top_k_accuracy"] for r in rows],
        mode="lines+markers",
        name=f"top-{record['k']} retrieval heads masked",
        row=1,
        col=1,
    )
    mean = np.array([np.mean(r["random_k_accuracy"]) for r in rows])
    lo = np.array([np.min(r["random_k_accuracy"]) for r in rows])
    hi = np.array([np.max(r["random_k_accuracy"]) for r in rows])
    fig.add_scatter(
        x=x,
        y=mean,
        mode="lines+markers",
        name=f"{record['k']} random heads (mean, min-max)",
        error_y=dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo),
        row=1,
        col=1,
    )
    heads = []
    for r in rows:
        heads += [h for h in r["top_heads"][: record["top_n"]] if h not in heads]
    z = []
    for h in heads:
        l, hh = (int(v) for v in h[1:].split("H"))
        z.append([r["scores"][l][hh] if r["scores"][l][hh] >= 0 else None for r in rows])
    fig.add_heatmap(
        z=z, x=[f"{v}" for v in x], y=heads, colorscale="Viridis", colorbar=dict(title="score", x=1.02), row=1, col=2
    )
    fig.update_xaxes(
        type="log", title_text="prompt tokens (requested)", tickvals=x, ticktext=[f"{v:,}" for v in x], row=1, col=1
    )
    fig.update_xaxes(title_text="prompt tokens", row=1, col=2)
    fig.update_yaxes(range=[-0.05, 1.05], row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_layout(
        title=dict(
            text="Retrieval heads at long context — SmolLM2-135M-Instruct",
            subtitle=dict(
                text=f"completion-form needles, {record['n_samples']} detection + "
                f"{record['n_samples']} held-out prompts per length; blocked attention "
                "past the capture budget"
            ),
        ),
        template="plotly_white",
        width=1150,
        height=560,
        legend=dict(orientation="h", y=-0.18),
    )
    export_figure(fig, out / "figures", "long_context_retrieval")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[1024, 2048, 4096, 8180],
        help="prompt tokens; 8180 keeps prompt + 10 answer tokens inside SmolLM2's 8192 positions",
    )
    p.add_argument("--n-samples", type=int, default=6)
    p.add_argument("--k", type=int, default=10, help="heads masked in the masking check")
    p.add_argument("--seeds", type=int, default=2, help="random head sets per length")
    p.add_argument("--exclude-top", type=int, default=50, help="random heads are drawn outside this many top heads")
    p.add_argument("--out", default=str(DOCS))
    p.add_argument("--replot", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        record = json.loads((out / "long_context_retrieval.json").read_text())
        plot(record, out)
        print(markdown(record))
        return
    start = time.time()
    model = headscope.load_model()
    rows = []
    record = {
        "model": "smollm2-135m-instruct",
        "n_samples": args.n_samples,
        "k": args.k,
        "top_n": 10,
        "random_seeds": args.seeds,
        "exclude_top": args.exclude_top,
        "rows": rows,
    }
    for length in args.lengths:
        rows.append(one_length(model, length, args.n_samples, args.k, args.seeds, args.exclude_top))
        record["comparison"] = compare(rows)
        record["seconds"] = round(time.time() - start, 1)
        atomic_write(out / "long_context_retrieval.json", lambda t: t.write_text(json.dumps(record, indent=1)))
    plot(record, out)
    print(markdown(record))


if __name__ == "__main__":
    main()
