"""Vision-aware heads on the shapes-vlm testbed (He et al. 2025, docs/methods.md): VHD finds them,
ablating them breaks image QA but not text QA, and VHR reinforces them.

1. VHD (HeadDivergence on ImagePrompts, last prompt token = the first generation step) on a
   detection set of image questions (its own seed): the per-head mean VHD ranks the 32 text heads.
2. Ablation (hook_z = 0 at every position) on the held-out sets: the top-K VHD heads, the bottom-K
   (least image-dependent) heads and K random heads (5 seeds), K = 2, 4, 8: image-QA and text-QA
   accuracy.
3. VHR (heads chosen per prompt at t=0, outputs x alpha for the rest): image-QA accuracy, POPE
   (yes/no logits at t=0) and CHAIR on greedy descriptions, against plain greedy decoding; the
   paper's layers (1 + the last 14/32 of the depth) and all layers; alpha 2 (and 1.5, 3).

Every finished piece is cached under --work (atomic JSON), so an interrupted run resumes.
Writes docs/vision_heads.json and docs/figures/vision_heads.{html,png}.
Usage: python analyses/vision_heads.py [--replot] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import headscope
from headscope.analyzers.head_divergence import HeadDivergence
from headscope.fileio import atomic_write
from headscope.fileio import cached_json as cached
from headscope.interventions import ZeroAblation
from headscope.paths import data_dir
from headscope.vision import shapes as W
from headscope.vision import shapes_eval as E
from headscope.vision import shapes_vhr as V
from headscope.vision.vhr import default_layers
from headscope.viz.export import export_figure

ROOT = Path(__file__).resolve().parent.parent
DETECT_SEED = 7_000
KS = (2, 4, 8)
SEEDS = range(5)


def label(h) -> str:
    return f"L{h[0]}H{h[1]}"


def detect(model) -> dict:
    items = E.default_eval_sets(seed=DETECT_SEED, n_image=120, n_pope_scenes=1, n_describe=1)["image_qa"]
    prompts = [W.item_prompt(it) for it in items]
    hd = HeadDivergence(batch_size=32).fit(model, prompts)
    mean = hd.scores_.mean_over_prompts().values  # [layer, head]
    hd_out = HeadDivergence(batch_size=32, outlier_rule=True).fit(model, prompts)
    order = np.argsort(-mean.ravel(), kind="stable")
    ranked = [tuple(int(x) for x in np.unravel_index(i, mean.shape)) for i in order]
    return {
        "vhd": mean.tolist(),
        "ranked": ranked,
        "n_prompts": len(prompts),
        "vhd_outlier_rule": hd_out.scores_.mean_over_prompts().values.tolist(),
        "n_outliers": len(hd_out.outliers_),
        "token_vhd_mean": float(np.mean(hd.token_vhd_)),
    }


def accuracies(model, sets, heads) -> dict:
    specs = [ZeroAblation(heads=heads)] if heads else []
    img = E.image_qa_accuracy(model, sets["image_qa"], interventions=specs)
    txt = E.text_qa_accuracy(model, sets["text_qa"], interventions=specs)
    return {
        "heads": [label(h) for h in heads],
        "image_qa": img.accuracy,
        "text_qa": txt.accuracy,
        "image_qa_per_kind": img.per_kind,
    }


def layer_matched_low(ranked, k) -> list:
    """For each of the top-k heads, the lowest-VHD head of the same layer not already taken: a control
    for layer (layer-0 heads have the lowest VHD and are needed by every task, image or not)."""
    taken, out = set(map(tuple, ranked[:k])), []
    for layer, _ in ranked[:k]:
        low = next(h for h in reversed(ranked) if h[0] == layer and tuple(h) not in taken)
        taken.add(tuple(low))
        out.append(tuple(low))
    return sorted(out)


def ablation(model, sets, ranked, work) -> dict:
    out = {"none": cached(work / "abl_none.json", lambda: accuracies(model, sets, []))}
    everyone = [tuple(h) for h in ranked]
    for k in KS:
        out[f"top{k}"] = cached(work / f"abl_top{k}.json", lambda k=k: accuracies(model, sets, everyone[:k]))
        out[f"bottom{k}"] = cached(work / f"abl_bottom{k}.json", lambda k=k: accuracies(model, sets, everyone[-k:]))
        out[f"matched{k}"] = cached(
            work / f"abl_matched{k}.json", lambda k=k: accuracies(model, sets, layer_matched_low(everyone, k))
        )
        for s in SEEDS:
            pick = np.random.default_rng(s).choice(len(everyone), size=k, replace=False)
            heads = sorted(everyone[i] for i in pick)
            out[f"random{k}_seed{s}"] = cached(
                work / f"abl_random{k}_{s}.json", lambda heads=heads: accuracies(model, sets, heads)
            )
    return out


def vhr_condition(model, sets, layers, alpha, noise) -> dict:
    """Image QA and POPE at t=0 and CHAIR on descriptions, with VHR (alpha) or plain greedy (None)."""
    start = time.time()
    kw = {"layers": layers, "alpha": alpha, "noise": noise}
    qa = V.vhr_image_qa(model, sets["image_qa"], **kw)
    pope = V.vhr_pope(model, sets["pope"], **kw)
    desc = V.vhr_describe(model, sets["describe"], **kw)
    return {
        "layers": layers,
        "alpha": alpha,
        "noise": noise,
        "image_qa": qa["accuracy"],
        "correct": qa["correct"],
        "mean_reinforced_heads": qa["mean_reinforced_heads"],
        "pope": {k: v for k, v in pope.items() if k != "said_yes"},
        "chair": {k: v for k, v in desc.items() if k != "texts"},
        "texts": desc["texts"],
        "seconds": round(time.time() - start, 1),
    }


NOISES = (0.0, 0.3)  # clean images (no hallucination to fix) and the hallucination regime


def vhr_study(model, sets, work) -> dict:
    n = model.cfg.n_layers
    paper = default_layers(n)
    runs = {}
    for noise in NOISES:
        tag = f"noise{noise:g}"
        base = runs[f"{tag}/greedy"] = cached(
            work / f"vhr_{tag}_greedy.json", lambda noise=noise: vhr_condition(model, sets, paper, None, noise)
        )
        for name, layers, alpha in (
            ("vhr_paper_a2", paper, 2.0),
            ("vhr_all_a2", list(range(n)), 2.0),
            ("vhr_paper_a1.5", paper, 1.5),
            ("vhr_paper_a3", paper, 3.0),
        ):
            runs[f"{tag}/{name}"] = cached(
                work / f"vhr_{tag}_{name}.json",
                lambda layers=layers, alpha=alpha, noise=noise: vhr_condition(model, sets, layers, alpha, noise),
            )
        for key in [k for k in runs if k.startswith(tag)]:  # which way do changed answers go?
            r = runs[key]
            r["fixed"] = int(sum(1 for a, b in zip(base["correct"], r["correct"]) if not a and b))
            r["broken"] = int(sum(1 for a, b in zip(base["correct"], r["correct"]) if a and not b))
    return runs


NAMES = {"top": "top-K VHD", "bottom": "bottom-K VHD", "matched": "lowest VHD of the same layers", "random": "K random"}


def plot(rec: dict, out_dir: Path):
    vhd = np.array(rec["detect"]["vhd"])
    fig = make_subplots(
        rows=1,
        cols=3,
        column_widths=[0.3, 0.35, 0.35],
        horizontal_spacing=0.09,
        subplot_titles=(
            "VHD per head (mean over 120 image questions)",
            "Zero-ablating K heads",
            "VHR vs greedy, clean (σ=0) and noisy (σ=0.3) images",
        ),
    )
    fig.add_trace(
        go.Heatmap(
            z=vhd,
            x=[f"H{h}" for h in range(vhd.shape[1])],
            y=[f"L{l}" for l in range(vhd.shape[0])],
            colorscale="Viridis",
            colorbar=dict(x=0.285, len=0.9, thickness=10, title="VHD"),
            showscale=True,
        ),
        1,
        1,
    )
    a = rec["ablation"]
    for metric, dash in (("image_qa", "solid"), ("text_qa", "dot")):
        for cond, color in (("top", "#E45756"), ("bottom", "#4C78A8"), ("matched", "#B279A2"), ("random", "#72B7B2")):
            ys = [a["none"][metric]]
            for k in KS:
                ys.append(
                    float(np.mean([a[f"random{k}_seed{s}"][metric] for s in SEEDS]))
                    if cond == "random"
                    else a[f"{cond}{k}"][metric]
                )
            fig.add_trace(
                go.Scatter(
                    x=[0, *KS],
                    y=ys,
                    mode="lines+markers",
                    line=dict(color=color, dash=dash),
                    name=f"{NAMES[cond]}, {metric.replace('_', ' ')}",
                ),
                1,
                2,
            )
    v = rec["vhr"]
    names = list(v)
    for metric, getter, color in (
        ("image-QA acc", lambda r: r["image_qa"], "#4C78A8"),
        ("POPE F1", lambda r: r["pope"]["f1"], "#F58518"),
        ("CHAIR_i", lambda r: r["chair"]["chair_i"], "#E45756"),
        ("description recall", lambda r: r["chair"]["recall"], "#54A24B"),
    ):
        fig.add_trace(
            go.Bar(
                x=[n.replace("noise", "σ=").replace("/", " ") for n in names],
                y=[getter(v[n]) for n in names],
                name=metric,
                marker_color=color,
            ),
            1,
            3,
        )
    fig.update_xaxes(title_text="K heads ablated", row=1, col=2)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=2)
    fig.update_layout(
        title="shapes-vlm: vision-aware heads (VHD) and their reinforcement (VHR)",
        width=1600,
        height=560,
        barmode="group",
        legend=dict(orientation="h", y=-0.25),
    )
    return export_figure(fig, out_dir, "vision_heads", formats=("html", "png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / ".cache" / "vision_heads"))
    ap.add_argument("--replot", action="store_true", help="only re-render the figure from docs/vision_heads.json")
    ap.add_argument("--fresh", action="store_true", help="drop the cached pieces first (after retraining)")
    args = ap.parse_args()
    record_path = ROOT / "docs" / "vision_heads.json"
    if args.replot:
        print(plot(json.loads(record_path.read_text()), ROOT / "docs" / "figures"))
        return
    work = Path(args.work)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    model = headscope.load_model("shapes-vlm")
    sets = E.default_eval_sets()
    start = time.time()
    det = cached(work / "detect.json", lambda: detect(model))
    print("top VHD heads:", [label(h) for h in det["ranked"][:8]], "bottom:", [label(h) for h in det["ranked"][-4:]])
    abl = ablation(model, sets, det["ranked"], work)
    for key in ("none", *(f"{c}{k}" for k in KS for c in ("top", "bottom", "matched"))):
        print(f"{key:>9}: image QA {abl[key]['image_qa']:.3f}  text QA {abl[key]['text_qa']:.3f}")
    vhr = vhr_study(model, sets, work)
    for name, r in vhr.items():
        print(
            f"{name:>22}: image QA {r['image_qa']:.3f} (fixed {r['fixed']}, broken {r['broken']})  POPE acc "
            f"{r['pope']['accuracy']:.3f} F1 {r['pope']['f1']:.3f} yes {r['pope']['yes_ratio']:.2f}  CHAIR_i "
            f"{r['chair']['chair_i']:.3f} CHAIR_s {r['chair']['chair_s']:.3f} recall {r['chair']['recall']:.3f}"
        )
    train_log = json.loads((data_dir() / "models" / "shapes-vlm" / "train_log.json").read_text())
    record = {
        "model": "shapes-vlm",
        "checkpoint_heldout": train_log.get("heldout"),
        "detect": det,
        "ablation": abl,
        "vhr": vhr,
        "n": {k: len(v) for k, v in sets.items()},
        "seconds": round(time.time() - start, 1),
    }
    atomic_write(record_path, lambda t: t.write_text(json.dumps(record, indent=1)))
    print(plot(record, ROOT / "docs" / "figures"))


if __name__ == "__main__":
    main()
