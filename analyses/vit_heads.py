"""ViT heads of the shapes-vlm vision tower (Li et al., IEEE VIS 2023): how far each head looks, how much
each matters for the VLM's answers, and how gracefully the tower degrades when heads are pruned.

Measures (seeded, CPU, ~2-4 min on one thread):
1. mean attention distance (pixels) of every vision head over the held-out image questions;
2. single-head pruning importance for the answer loss and the answer accuracy;
3. cumulative pruning curves, least important first, against random pruning orders (mean and range);
4. per question kind: accuracy with no head, the top-2 heads, the least important half, all heads pruned.
Writes docs/vit_heads.json and docs/figures/vit_heads{,_pruning}.{html,png,svg}; docs/vit-heads.md quotes them.

    OMP_NUM_THREADS=1 python analyses/vit_heads.py
    OMP_NUM_THREADS=1 python analyses/vit_heads.py --n 60 --random-orders 3 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch

import headscope
from headscope.analyzers.vit_heads import (
    ViTHeads,
    cumulative_gates,
    default_items,
    metric_under_gates,
    vision_tower,
)
from headscope.fileio import atomic_write, jsonable

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("loss", "accuracy")


def random_curves(model, items, tower, metric: str, n_orders: int, seed: int, batch_size: int) -> np.ndarray:
    """[orders, heads + 1]: the metric after pruning the first k heads of random orders."""
    rng = np.random.default_rng(seed)
    heads = [(l, h) for l in range(tower.n_layers) for h in range(tower.n_heads)]
    gates = torch.cat(
        [cumulative_gates(tower, [heads[i] for i in rng.permutation(len(heads))]) for _ in range(n_orders)]
    )
    return metric_under_gates(model, items, gates, metric, batch_size).reshape(n_orders, len(heads) + 1)


def per_kind_accuracy(model, items, kinds, fits, tower, batch_size: int) -> dict:
    """Accuracy per question kind with: nothing, the top-2 heads (by loss importance), the least
    important half, and every vision head pruned."""
    order = fits["loss"].heads_  # most important first
    half = len(order) // 2
    conditions = {"none": [], "top2": order[:2], "least_important_half": order[-half:], "all": order}
    gates = torch.ones(len(conditions), tower.n_layers, tower.n_heads)
    for row, pruned in enumerate(conditions.values()):
        for l, h in pruned:
            gates[row, l, h] = 0.0
    out = {}
    for kind in sorted(set(kinds)):
        part = [it for it, k in zip(items, kinds) if k == kind]
        acc = metric_under_gates(model, part, gates, "accuracy", batch_size)
        out[kind] = {"n": len(part), **{c: float(a) for c, a in zip(conditions, acc)}}
    return out


def within_cell_distance(tower) -> float:
    """Attention distance of a head attending uniformly inside its query's 16x16 shapes cell (2x2 patches):
    what the vision pretraining asks each patch to know (its cell's shape and colour)."""
    from headscope.vision.shapes import CELL

    cell = (tower.centres() // CELL) @ np.array([1, tower.image_size // CELL])  # cell index of each patch
    same = cell[:, None] == cell[None]
    return float((tower.distances() * same).sum(1).mean() / same.sum(1).mean())


def checkpoint_fingerprint(log: dict) -> dict:
    """Which shapes-vlm these numbers belong to (the testbed may be retrained)."""
    import hashlib

    from headscope.testbeds.shapes_vlm import WEIGHTS, model_dir

    sha = hashlib.sha256((model_dir() / WEIGHTS).read_bytes()).hexdigest()[:16]
    args = log.get("args", {})
    return {
        "sha256_16": sha,
        "steps": args.get("steps"),
        "vision_steps": args.get("vision_steps"),
        "quick": args.get("quick"),
        "heldout_image_qa": log.get("heldout", {}).get("image_qa"),
    }


def pruning_figure(fits, rand) -> go.Figure:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"answer {m}" for m in METRICS], horizontal_spacing=0.12)
    for col, m in enumerate(METRICS, start=1):
        df, r = fits[m].pruning_curve_, rand[m]
        x = df["n_pruned"]
        fig.add_trace(
            go.Scatter(
                x=np.r_[x, x[::-1]],
                y=np.r_[r.max(0), r.min(0)[::-1]],
                fill="toself",
                mode="lines",
                fillcolor="rgba(150,150,150,0.25)",
                line={"width": 0},
                hoverinfo="skip",
                name="random orders (range)",
                showlegend=col == 1,
            ),
            1,
            col,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=r.mean(0),
                mode="lines",
                line={"color": "gray", "dash": "dash"},
                name="random orders (mean)",
                showlegend=col == 1,
            ),
            1,
            col,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=df["metric"],
                mode="lines+markers",
                text=df["last_pruned"],
                line={"color": "#1f77b4"},
                name="least important first",
                showlegend=col == 1,
                hovertemplate="%{x} pruned (last %{text}): %{y:.4g}<extra></extra>",
            ),
            1,
            col,
        )
        fig.update_xaxes(title_text="vision heads pruned", row=1, col=col)
    fig.update_layout(
        title="shapes-vlm vision tower: cumulative head pruning (held-out image questions)",
        template="plotly_white",
        width=980,
        height=420,
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="held-out image questions (shapes_eval image_qa set)")
    ap.add_argument("--random-orders", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random pruning orders")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()

    t0 = time.time()
    model = headscope.load_model("shapes-vlm")
    tower = vision_tower(model)
    items = default_items(model, args.n)
    from headscope.vision.shapes_eval import default_eval_sets

    kinds = [q.kind for q in default_eval_sets(n_image=args.n, n_pope_scenes=1, n_describe=1)["image_qa"]]

    fits = {m: ViTHeads(metric=m, batch_size=args.batch_size).fit(model, items) for m in METRICS}
    rand = {m: random_curves(model, items, tower, m, args.random_orders, args.seed, args.batch_size) for m in METRICS}
    kinds_acc = per_kind_accuracy(model, items, kinds, fits, tower, args.batch_size)

    dist = fits["loss"].attention_distance_.values  # [images, layer, head]
    cls = fits["loss"].cls_attention_.values
    from headscope.testbeds.shapes_vlm import train_log

    log = train_log()
    result = {
        "model": "shapes-vlm",
        "checkpoint": checkpoint_fingerprint(log),
        "tower": {
            "layers": tower.n_layers,
            "heads": tower.n_heads,
            "grid": tower.grid,
            "patch_px": tower.patch_size,
            "uniform_attention_distance_px": float(tower.distances().mean()),
            "within_cell_uniform_distance_px": within_cell_distance(tower),
        },
        "n_items": len(items),
        "n_images": int(dist.shape[0]),
        "attention_distance_px": {
            "per_head_mean": dist.mean(0),
            "per_head_std_over_images": dist.std(0),
            "per_layer_mean": dist.mean((0, 2)),
        },
        "cls_attention": {"per_head_mean": cls.mean(0)},
        "clean": {m: fits[m].metric_clean_ for m in METRICS},
        "importance": {m: fits[m].importance_.values[0] for m in METRICS},
        "heads_by_loss_importance": [f"L{l}H{h}" for l, h in fits["loss"].heads_],
        "pruning_curve": {m: fits[m].pruning_curve_.to_dict(orient="list") for m in METRICS},
        "random_orders": {
            m: {
                "mean": rand[m].mean(0),
                "min": rand[m].min(0),
                "max": rand[m].max(0),
                "n_orders": args.random_orders,
                "seed": args.seed,
            }
            for m in METRICS
        },
        "accuracy_per_kind": kinds_acc,
        "wall_s": round(time.time() - t0, 1),
    }
    text = json.dumps(jsonable(result), indent=1)
    print(text)
    if args.no_write:
        return
    atomic_write(ROOT / "docs" / "vit_heads.json", lambda p: p.write_text(text + "\n", encoding="utf-8"))
    from headscope.viz.export import export_figures

    files = export_figures(
        [(fits["loss"].plot(), "vit_heads"), (pruning_figure(fits, rand), "vit_heads_pruning")],
        ROOT / "docs" / "figures",
    )
    print("wrote docs/vit_heads.json and", ", ".join(str(p) for f in files.values() for p in f.values()))


if __name__ == "__main__":
    main()
