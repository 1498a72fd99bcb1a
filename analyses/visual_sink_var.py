"""Visual attention sinks and VAR on the smollm2-visual-sinks testbed (Kang et al. 2025; docs/methods.md).

1. Attention that the text queries after the image give to each planted sink token, to each ordinary
   visual token and to the first token, per layer, with the sink codes and with ordinary codes at the
   same positions (the control prompts).
2. phi entering each layer for the planted sinks, the ordinary visual tokens, the first token and the
   other text tokens; the tau gap.
3. The image-centric heads (VisualSink defaults: tau 20, rho 0.5, min image attention 0.2).
4. VAR (keep_fraction 0.6 = the code's p; and 0.4 = the paper's p = 0.6 read as the fraction removed):
   attention moved off the planted sinks and the text sinks onto the other visual tokens (all heads of
   the edited layers, and the image-centric heads alone), and the KL of the last-position next-token
   distribution (clean || VAR).

Writes docs/visual_sink_var.json and docs/figures/visual_sink_var.{html,png,svg}.
Usage: OMP_NUM_THREADS=1 python analyses/visual_sink_var.py [--n-prompts 8]   (~1 min on one thread)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import headscope
from headscope.analyzers.visual_sink import FIRST_SINK_LAYER, VisualSink
from headscope.fileio import atomic_write
from headscope.interventions import apply
from headscope.testbeds import visual_sinks
from headscope.viz.export import export_figure

ROOT = Path(__file__).resolve().parent.parent
KEEPS = (0.6, 0.4)


def groups(prompt) -> dict[str, list[int]]:
    (s, e), sinks = prompt.image_span, list(prompt.sink_positions)
    return {"sinks": sinks, "plain": [j for j in range(s, e) if j not in sinks], "first": [0]}


def attention_by_group(model, ids, prompt, specs=(), layers=None) -> dict[str, np.ndarray]:
    """Per layer and head, attention summed over the text queries after the image and over each group's keys."""
    e, g = prompt.image_span[1], groups(prompt)
    layers = range(model.cfg.n_layers) if layers is None else layers
    got = {k: np.zeros((model.cfg.n_layers, model.cfg.n_heads)) for k in g}

    def make(layer):
        def hook(t, hook):
            for k, cols in g.items():
                got[k][layer] = t[0, :, e:, cols].sum((-1, -2)).numpy()

        return hook

    with (
        torch.no_grad(),
        apply(model, specs),
        model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", make(l)) for l in layers]),
    ):
        got["logits"] = model(torch.tensor([ids]))[0, -1].double()
    return got


def per_token_attention(model, prompts, control: bool) -> dict[str, list[float]]:
    """Mean attention one key of each group receives from one text query after the image, per layer."""
    out = {k: [] for k in ("sinks", "plain", "first")}
    for p in prompts:
        a = attention_by_group(model, p.control_ids if control else p.ids, p)
        n_rows = model.cfg.n_heads * (len(p.ids) - p.image_span[1])
        for k, cols in groups(p).items():
            out[k].append(a[k].sum(-1) / (n_rows * len(cols)))
    return {k: np.mean(v, 0).tolist() for k, v in out.items()}


def phi_by_group(vs: VisualSink, prompts) -> dict[str, list[float]]:
    """phi per layer (mean over prompts) of each group; text = the max over the other text tokens."""
    out = {k: [] for k in ("sinks", "plain", "first", "text_max")}
    for i, p in enumerate(prompts):
        phi, (s, e), g = vs.phi_[i], p.image_span, groups(p)
        text = [j for j in range(1, len(p.ids)) if not s <= j < e]
        for k in ("sinks", "plain", "first"):
            out[k].append(phi[:, g[k]].mean(-1))
        out["text_max"].append(phi[:, text].max(-1))
    return {k: np.mean(v, 0).tolist() for k, v in out.items()}


def nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in a]


def kl(clean: torch.Tensor, edited: torch.Tensor) -> float:
    return float((clean.softmax(-1) * (clean.log_softmax(-1) - edited.log_softmax(-1))).sum())


def var_effect(model, vs: VisualSink, prompts, keep: float) -> dict:
    heads = np.zeros((model.cfg.n_layers, model.cfg.n_heads), dtype=bool)
    for layer, head in vs.heads_:
        heads[layer, head] = True
    moved = {k: [] for k in ("sinks", "plain", "first")}
    before = {k: [] for k in moved}
    moved_centric = {k: [] for k in moved}
    per_layer = {k: np.zeros(model.cfg.n_layers) for k in moved}
    kls, same_top1, code_mass = [], [], []
    for i, p in enumerate(prompts):
        specs = vs.var_interventions(i, keep_fraction=keep)
        layers = sorted({spec.heads[0][0] for spec in specs})
        clean = attention_by_group(model, p.ids, p, layers=layers)
        edited = attention_by_group(model, p.ids, p, specs, layers=layers)
        for k, moves in moved.items():
            diff = edited[k] - clean[k]  # [layer, head], summed over rows and keys
            moves.append(float(diff.sum()))
            before[k].append(float(clean[k].sum()))
            moved_centric[k].append(float(diff[heads].sum()))
            per_layer[k] += diff.sum(-1) / len(prompts)
        kls.append(kl(clean["logits"], edited["logits"]))
        same_top1.append(bool(clean["logits"].argmax() == edited["logits"].argmax()))
        code_mass.append(float(edited["logits"].softmax(-1)[list(visual_sinks.visual_codes(model).ids)].sum()))
    return {
        "keep_fraction": keep,
        "attention_clean_per_prompt": {k: float(np.mean(v)) for k, v in before.items()},
        "attention_moved_per_prompt": {k: float(np.mean(v)) for k, v in moved.items()},
        "attention_moved_per_prompt_image_centric_heads": {k: float(np.mean(v)) for k, v in moved_centric.items()},
        "attention_moved_per_layer": {k: v.tolist() for k, v in per_layer.items()},
        "kl_last_position": kls,
        "kl_mean": float(np.mean(kls)),
        "same_top1": float(np.mean(same_top1)),
        "prob_on_visual_codes_max": float(np.max(code_mass)),
    }


def plot(record: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    L = len(record["attention_with_sinks"]["sinks"])
    x = list(range(L))
    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.15,
        vertical_spacing=0.16,
        subplot_titles=(
            "attention per key from text queries after the image",
            "phi entering each layer",
            "image-centric fraction per head (prompt mean)",
            "VAR: attention moved per layer (keep 0.6)",
        ),
    )
    w, c = record["attention_with_sinks"], record["attention_control"]
    for name, y, color, dash in (
        ("planted sink", w["sinks"], "#E45756", "solid"),
        ("same positions, ordinary codes", c["sinks"], "#E45756", "dot"),
        ("other visual tokens", w["plain"], "#4C78A8", "solid"),
        ("first token", w["first"], "#9E9E9E", "solid"),
    ):
        fig.add_trace(go.Scatter(x=x, y=y, name=name, line={"color": color, "dash": dash}, legendgroup="a"), 1, 1)
    ph = record["phi"]
    for name, y, color in (
        ("phi planted sinks", ph["sinks"], "#E45756"),
        ("phi other visual", ph["plain"], "#4C78A8"),
        ("phi first token", ph["first"], "#9E9E9E"),
        ("phi max other text", ph["text_max"], "#54A24B"),
    ):
        fig.add_trace(go.Scatter(x=x, y=y, name=name, line={"color": color}, legendgroup="b"), 1, 2)
    fig.add_hline(y=record["params"]["tau"], line={"color": "firebrick", "dash": "dash"}, row=1, col=2)
    z = np.array(record["image_centric_fraction"], dtype=float)
    fig.add_trace(
        go.Heatmap(
            z=z,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"x": 0.44, "y": 0.22, "len": 0.42, "thickness": 12, "title": "fraction"},
            hovertemplate="L%{y}H%{x}: %{z:.2f}<extra></extra>",
        ),
        2,
        1,
    )
    mv = record["var"][0]["attention_moved_per_layer"]
    for name, key, color in (
        ("to other visual", "plain", "#4C78A8"),
        ("from planted sinks", "sinks", "#E45756"),
        ("from first token", "first", "#9E9E9E"),
    ):
        fig.add_trace(go.Bar(x=x, y=mv[key], name=name, marker_color=color, legendgroup="d"), 2, 2)
    fig.update_yaxes(type="log", title="attention", row=1, col=1)
    fig.update_yaxes(title="phi", row=1, col=2)
    fig.update_yaxes(title="layer", autorange="reversed", row=2, col=1)
    fig.update_xaxes(title="head", row=2, col=1)
    fig.update_yaxes(title="change in summed attention", row=2, col=2)
    for col in (1, 2):
        fig.update_xaxes(title="layer", row=1, col=col)
    fig.update_xaxes(title="layer", row=2, col=2)
    fig.update_layout(
        template="plotly_white",
        width=1200,
        height=860,
        barmode="relative",
        title=f"Visual attention sinks and VAR on {record['model']} ({record['n_prompts']} prompts)",
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    t0 = time.time()
    model = headscope.load_model(visual_sinks.VISUAL_SINKS_NAME)
    prompts = visual_sinks.default_prompts(model, args.n_prompts)
    vs = VisualSink().fit(model, prompts)
    control = VisualSink(sink_dims=vs.sink_dims_).fit(model, [list(p.control_ids) for p in prompts])
    L = model.cfg.n_layers

    def visual(i, layer):
        start, end = prompts[i].image_span
        return {t for t in vs.sinks_at(i, layer) if start <= t < end}

    planted_found = [
        all(visual(i, layer) == set(p.sink_positions) for i, p in enumerate(prompts))
        for layer in range(FIRST_SINK_LAYER, L)
    ]
    with_sinks, ctl = per_token_attention(model, prompts, False), per_token_attention(model, prompts, True)
    middle = slice(12, 29)

    def ratio(a, b):
        return float(np.mean(a[middle]) / np.mean(b[middle]))

    w, c = np.array(with_sinks["sinks"]), np.array(ctl["sinks"])
    text_sinks = vs.sink_tokens_[~vs.sink_tokens_["in_image"]]
    record = {
        "model": visual_sinks.VISUAL_SINKS_NAME,
        "n_prompts": len(prompts),
        "params": vs.get_params(),
        "sink_dims": vs.sink_dims_,
        "manifest": visual_sinks.read_manifest(),
        "planted_sink_positions": [list(p.sink_positions) for p in prompts],
        "image_spans": vs.image_spans_,
        "planted_equal_visual_sinks_per_layer": dict(zip(range(FIRST_SINK_LAYER, L), planted_found)),
        "control_visual_sinks": len(control.visual_sinks_),
        "text_sink_positions_per_layer": {
            int(k): sorted(set(map(int, v))) for k, v in text_sinks.groupby("layer")["position"]
        },
        "attention_with_sinks": with_sinks,
        "attention_control": ctl,
        "sink_over_control_all_layers": float(w.mean() / c.mean()),
        "sink_over_control_layers_12_28": ratio(w, c),
        "sink_over_other_visual_layers_12_28": ratio(w, np.array(with_sinks["plain"])),
        "phi": phi_by_group(vs, prompts),
        "phi_control": phi_by_group(control, prompts),
        "tau_gap_layers_2_to_L-1": vs.tau_gap(),
        "tau_gap_layers_12_28": vs.tau_gap(range(12, 29)),
        "image_centric_fraction": nan_to_none(vs.scores_.mean_over_prompts().values),
        "image_attending_fraction": nan_to_none(vs.attending_fraction_.mean_over_prompts().values),
        "image_centric_rows_share_layers_2_28": float(np.nanmean(vs.scores_.values[:, 2 : L - 1])),
        "image_attending_rows_share_layers_2_28": float(np.nanmean(vs.attending_fraction_.values[:, 2 : L - 1])),
        "image_centric_heads": [f"L{l}H{h}" for l, h in vs.heads_],
        "image_centric_heads_control": [f"L{l}H{h}" for l, h in control.heads_],
        "var": [var_effect(model, vs, prompts, keep) for keep in KEEPS],
    }
    record["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    atomic_write(out / "visual_sink_var.json", lambda t: t.write_text(json.dumps(record, indent=1)))
    export_figure(plot(record), out / "figures", "visual_sink_var")
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "sink_over_control_all_layers",
                    "sink_over_control_layers_12_28",
                    "sink_over_other_visual_layers_12_28",
                    "tau_gap_layers_12_28",
                    "seconds",
                )
            },
            indent=1,
        )
    )
    for v in record["var"]:
        print(
            v["keep_fraction"],
            v["attention_clean_per_prompt"],
            v["attention_moved_per_prompt"],
            v["attention_moved_per_prompt_image_centric_heads"],
            "KL",
            round(v["kl_mean"], 4),
            "same top1",
            v["same_top1"],
        )
    print(len(vs.heads_), "image-centric heads:", record["image_centric_heads"][:20])


if __name__ == "__main__":
    main()
