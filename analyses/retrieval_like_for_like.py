"""Retrieval heads like for like with the paper: the share of heads whose retrieval score exceeds 0.1
with answers of the paper's length (18-20 words, data/needle/needles_long.json) against the bundled
1-5-token answers, on the bundled SmolLM2, same prompts form, lengths and detection.

The score is a fraction of the answer's tokens, but with a 1-token answer one copy event is worth
1.0 and a head passes 0.1 by copying in 10% of the samples; with a 20-word answer a head needs about
two copy events in every sample (docs/retrieval-heads.md). This measures what that does to the share.

Writes docs/retrieval_like_for_like.json. Usage: python analyses/retrieval_like_for_like.py (~3 min)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import headscope
from headscope.analyzers.retrieval import RetrievalHeads
from headscope.fileio import atomic_write
from headscope.inputs.needle import load_needles, make_needle_prompts
from headscope.paths import data_dir


def measure(model, needles, max_new_tokens: int, n: int, lengths) -> dict:
    samples = make_needle_prompts(model, n, lengths, seed=0, form="completion", needles=needles)
    fit = RetrievalHeads(max_new_tokens=max_new_tokens).fit(model, samples)
    scores = np.asarray(fit.scores_.mean_over_prompts().values)  # [layer, head] (scores_ is [1, layer, head])
    answer_tokens = [len(s.answer_ids) for s in samples]
    return {
        "samples": len(samples),
        "retrieved": float(fit.accuracy_),
        "answer_tokens_mean": float(np.mean(answer_tokens)),
        "share_above_0_1": float(np.nanmean(scores > 0.1)),
        "heads_above_0_1": int(np.nansum(scores > 0.1)),
        "top_heads": [
            f"L{l}H{h} {scores[l, h]:.2f}"
            for l, h in zip(*np.unravel_index(np.argsort(-np.nan_to_num(scores, nan=-1), axis=None)[:8], scores.shape))
        ],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="samples per context length")
    p.add_argument("--lengths", type=int, nargs="+", default=[200, 300])
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    model = headscope.load_model()
    rows = {
        "short (bundled, 1-5 tokens)": measure(model, load_needles(), 10, args.n, args.lengths),
        "long (18-20 words, as the paper)": measure(
            model, load_needles(data_dir() / "needle" / "needles_long.json"), 48, args.n, args.lengths
        ),
    }
    for k, v in rows.items():
        print(k, json.dumps(v), flush=True)
    out = Path(args.out) / "retrieval_like_for_like.json"
    atomic_write(out, lambda q: q.write_text(json.dumps({"params": vars(args), "rows": rows}, indent=1) + "\n"))


if __name__ == "__main__":
    main()
