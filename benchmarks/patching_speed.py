"""Activation patching on the bundled SmolLM2: headscope `patch()` vs the plain TransformerLens loop.

One IOI-style pair (clean: "... John and Mary ... John gave a drink to" → " Mary"; corrupt: the
indirect object swapped), denoising every head's z (30 layers x 9 heads), then the residual per
(layer, position). The plain way is one `run_with_hooks` per patched
activation. Both tables are compared (max abs difference) before any time is reported.

Usage: python benchmarks/patching_speed.py [--out docs]   (writes <out>/patching_speed.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

CLEAN = "When John and Mary went to the store, John gave a drink to"
CORRUPT = "When John and Anna went to the store, John gave a drink to"
ANSWERS = [(" Mary", " Anna")]


def plain_loop(model, clean, corrupt, ids, site, hook_name, per_position):
    _, cache = model.run_with_cache(clean)
    L, T = model.cfg.n_layers, clean.shape[1]
    units = 1 if site == "resid_pre" else cache[f"blocks.0.{hook_name}"].shape[2]
    out = np.full((L, units, T if per_position else 1), np.nan)
    with torch.no_grad():
        for layer in range(L):
            act = cache[f"blocks.{layer}.{hook_name}"]
            for u in range(units):
                for p in range(T) if per_position else [None]:
                    at = slice(None) if p is None else p

                    def hook(t, hook, u=u, at=at, act=act):
                        t = t.clone()
                        if site == "resid_pre":
                            t[:, at] = act[:, at]
                        else:
                            t[:, at, u] = act[:, at, u]
                        return t

                    logits = model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.{hook_name}", hook)])
                    out[layer, u, 0 if p is None else p] = float(logits[0, -1, ids[0]] - logits[0, -1, ids[1]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    from headscope import load_model
    from headscope.interventions import patch

    torch.set_grad_enabled(False)
    model = load_model()
    enc = [model.tokenizer(s, add_special_tokens=False)["input_ids"] for s in (CLEAN, CORRUPT)]
    ids = [model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS[0]]
    clean, corrupt = torch.tensor([enc[0]]), torch.tensor([enc[1]])
    rows = []
    # (z per position: 270 x T plain forwards, ~20 min on a shared CPU, left out)
    for site, hook_name, per_position in [("z", "attn.hook_z", False), ("resid_pre", "hook_resid_pre", True)]:
        t0 = time.perf_counter()
        res = patch(
            model,
            [enc[0]],
            [enc[1]],
            "logit_diff",
            site,
            per_position=per_position,
            metric_kwargs={"answers": [tuple(ids)]},
            progress=False,
        )
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = plain_loop(model, clean, corrupt, ids, site, hook_name, per_position)
        slow = time.perf_counter() - t0
        got = res.values[0] if site == "resid_pre" else res.values[0][..., None] if not per_position else res.values[0]
        got = got[:, None] if site == "resid_pre" else got
        rows.append(
            {
                "site": site,
                "per_position": per_position,
                "patched_runs": int(np.isfinite(ref).sum()),
                "headscope_s": round(fast, 2),
                "plain_transformerlens_s": round(slow, 2),
                "speedup": round(slow / fast, 2),
                "max_abs_diff": float(np.nanmax(np.abs(got - ref))),
                "clean_logit_diff": float(res.clean_metric[0]),
                "corrupt_logit_diff": float(res.corrupt_metric[0]),
            }
        )
        print(rows[-1], flush=True)
    doc = {
        "model": "bundled SmolLM2-135M-Instruct (fp32, CPU)",
        "tokens": len(enc[0]),
        "clean": CLEAN,
        "corrupt": CORRUPT,
        "answers": ANSWERS,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "patching_speed.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
