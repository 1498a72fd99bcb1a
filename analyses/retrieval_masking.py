"""The causal claim of Wu et al. (2024) on the bundled model: masking the top-K retrieval heads
breaks needle retrieval, masking K random non-retrieval heads barely matters.

1. Detect retrieval heads (copy-paste score, `RetrievalHeads`) on detection samples (seed 0).
2. On held-out samples (seed 1), mask heads with uniform attention on the decode queries only
   (queries of the last prompt token and of the answer; the prefill is untouched), as the paper's
   masking experiment does, for the top-K heads and for K random heads outside the top
   `--exclude-top`, several seeds.
3. Needle accuracy = the greedy answer is reproduced exactly. Measured teacher-forced: one forward
   over prompt + answer, correct iff every answer token is the argmax given the gold prefix, which
   is exactly when greedy decoding reproduces it (one forward instead of one per generated token).

Writes docs/retrieval-masking.md, docs/figures/retrieval_masking.{png,svg,html} and
docs/retrieval_masking.json. Usage: python analyses/retrieval_masking.py [--n-samples 20] ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

import headscope
from headscope.analyzers.retrieval import RetrievalHeads, needle_accuracy
from headscope.fileio import atomic_write
from headscope.inputs.needle import make_needle_prompts
from headscope.interventions import UniformAttention
from headscope.viz.export import export_figure

DOCS = Path(__file__).resolve().parent.parent / "docs"


def masked_accuracy(model, samples, heads) -> float:
    return needle_accuracy(model, samples, [UniformAttention(heads=heads, positions="decode")] if heads else [])


def plot(record: dict, out: Path) -> None:
    """The figure of the sweep, from the saved record (re-render with --replot)."""
    ks, rand = record["ks"], record["random_accuracy"]
    fig = go.Figure()
    fig.add_scatter(x=ks, y=record["top_k_accuracy"], mode="lines+markers", name="top-K retrieval heads masked")
    mean, lo, hi = (np.array([f(r) for r in rand]) for f in (np.mean, np.min, np.max))
    fig.add_scatter(
        x=ks,
        y=mean,
        mode="lines+markers",
        name=f"K random heads (mean, min-max of {len(rand[0])} seeds)",
        error_y=dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo),
    )
    det = record["detection"]
    fig.update_layout(
        title=f"Needle accuracy vs masked heads — SmolLM2-135M-Instruct<br><sub>{det['prompt_form']} prompt, "
        f"{det['context_lengths']} tokens, {record['n_eval_samples']} held-out samples</sub>",
        xaxis_title="K heads masked (uniform attention on decode queries)",
        yaxis_title="needle accuracy",
        yaxis_range=[-0.05, 1.05],
        template="plotly_white",
        width=900,
        height=500,
        legend=dict(x=0.55, y=0.95),
    )
    export_figure(fig, out / "figures", "retrieval_masking")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context-length", type=int, default=None, help="default: the RetrievalHeads default setting")
    p.add_argument("--form", default=None, help="prompt form (default: the RetrievalHeads default)")
    p.add_argument("--n-detect", type=int, default=20)
    p.add_argument("--n-samples", type=int, default=30)
    p.add_argument("--ks", default="0,1,2,5,10,15,20,30,50")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--exclude-top", type=int, default=50, help="random heads are drawn outside this many top-ranked heads"
    )
    p.add_argument("--out", default=str(DOCS))
    p.add_argument("--replot", action="store_true", help="only re-render the figure from the saved JSON")
    args = p.parse_args()
    if args.replot:
        record = json.loads((Path(args.out) / "retrieval_masking.json").read_text())
        return plot(record, Path(args.out))
    start = time.time()

    model = headscope.load_model()
    detector = RetrievalHeads(n_samples=args.n_detect, seed=0)
    if args.context_length:
        detector.set_params(context_lengths=[args.context_length])
    if args.form:
        detector.set_params(prompt_form=args.form)
    detector.fit(model)
    params = detector.get_params()
    ranking = [
        tuple(map(int, r))
        for r in detector.scores_.top(model.cfg.n_layers * model.cfg.n_heads)[["layer", "head"]].values
    ]
    samples = make_needle_prompts(model, args.n_samples, params["context_lengths"], seed=1, form=params["prompt_form"])
    ks = [int(k) for k in args.ks.split(",")]
    pool = ranking[args.exclude_top :]
    rng = np.random.default_rng(0)
    top_acc, rand_acc = [], []
    for k in ks:
        top_acc.append(masked_accuracy(model, samples, ranking[:k]))
        rand_acc.append(
            [
                masked_accuracy(model, samples, [pool[i] for i in rng.choice(len(pool), k, replace=False)])
                for _ in range(args.seeds)
            ]
            if k
            else [top_acc[-1]] * args.seeds
        )
        print(
            f"K={k:3d}  top-K retrieval heads: {top_acc[-1]:.2f}   random: {np.round(rand_acc[-1], 2).tolist()}",
            flush=True,
        )

    out = Path(args.out)
    mean = detector.scores_.mean_over_prompts().values  # [layer, head] (scores_ is [1, layer, head])
    n_above = int((mean > detector.threshold).sum())
    record = {
        "model": "smollm2-135m-instruct",
        "detection": dict(params.items()),
        "detect_accuracy": detector.accuracy_,
        "n_heads_above_threshold": n_above,
        "top_heads": [f"L{l}H{h}" for l, h in ranking[:10]],
        "top_scores": [round(float(mean[l, h]), 3) for l, h in ranking[:10]],
        "ks": ks,
        "top_k_accuracy": top_acc,
        "random_accuracy": rand_acc,
        "n_eval_samples": len(samples),
        "n_detect_samples": args.n_detect * len(params["context_lengths"]),
        "random_seeds": args.seeds,
        "seconds": round(time.time() - start, 1),
    }
    atomic_write(out / "retrieval_masking.json", lambda t: t.write_text(json.dumps(record, indent=1)))
    plot(record, out)
    print(json.dumps({k: record[k] for k in ("detect_accuracy", "n_heads_above_threshold", "top_heads", "seconds")}))


if __name__ == "__main__":
    main()
