"""The attention-sink figures (phi per token, massive activations), shared by the attention-sinks and
visual-sink analyzers (headscope/analyzers/sinks.py, visual_sink.py), built from the generic helpers of
headscope/viz/figures.py. Builders take plain arrays and labels, so they can draw a saved result."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..viz.figures import FONT, axis_ticks, show_token, title_block

if TYPE_CHECKING:
    from ..results import TokenScores


def phi_lines(scores: TokenScores, tau: float):
    """TokenScores line/bar plot of phi with the tau threshold drawn in."""
    fig = scores.plot()
    fig.add_hline(y=tau, line=dict(color="firebrick", dash="dash"), annotation_text=f"tau = {tau:g}")
    return fig


def phi_heatmap(z: np.ndarray, tokens: list[str], tau: float, dims: list[int], model: str):
    """Layer x position heatmap of phi for one prompt; cells above tau are marked with a cross."""
    L, T = z.shape
    shown = [show_token(t) for t in tokens]
    custom = np.broadcast_to(np.asarray(shown, dtype=object), (L, T))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(T)),
            y=list(range(L)),
            customdata=custom,
            colorscale="Viridis",
            hovertemplate="L%{y} pos %{x} <b>%{customdata}</b><br>phi %{z:.3g}<extra></extra>",
            colorbar=dict(title=dict(text="phi", side="right"), thickness=14),
        )
    )
    li, ti = np.nonzero(np.nan_to_num(z, nan=-np.inf) > tau)
    fig.add_trace(
        go.Scatter(
            x=ti,
            y=li,
            mode="markers",
            name=f"phi > {tau:g}",
            hoverinfo="skip",
            marker=dict(symbol="x-thin", size=7, line=dict(width=2, color="white")),
        )
    )
    xaxis = dict(title="token position", showgrid=False)
    if T <= 60:
        xaxis.update(tickmode="array", tickvals=list(range(T)), ticktext=shown, tickangle=-60)
    extra = f"sink dims {dims}; x = phi > tau = {tau:g}"
    if np.isnan(z).any():  # auto sink dims: tokens whose top-k holds no sink dim (phi provably <= tau)
        extra += "; blank = not among the token's top-k (pass sink_dims for exact values)"
    fig.update_layout(
        title=title_block("phi entering each layer", model, extra),
        template="plotly_white",
        font=FONT,
        width=min(1400, max(520, 16 * T + 200)),
        height=min(1400, max(340, 18 * L + 200)),
        xaxis=xaxis,
        showlegend=False,
        yaxis=dict(title="layer", autorange="reversed", showgrid=False, **axis_ticks(L, "L")),
    )
    return fig


def massive_curve(df: pd.DataFrame, dims: list[int], min_ratio: float, model: str):
    """Top-1/2/3 and median |x| per layer (mean over prompts), log scale, as in Sun et al.'s Fig. 2."""
    g = df.groupby("layer")
    mean = g[["top1", "top2", "top3", "median"]].mean()
    where = g.apply(lambda d: f"pos {d['top1_position'].mode()[0]} dim {d['top1_dim'].mode()[0]}", include_groups=False)
    fig = go.Figure()
    for col, dash in (("top1", "solid"), ("top2", "solid"), ("top3", "solid"), ("median", "dot")):
        fig.add_trace(
            go.Scatter(
                x=mean.index,
                y=mean[col],
                name=col,
                mode="lines+markers",
                line=dict(dash=dash),
                customdata=where.reindex(mean.index),
                hovertemplate="L%{x}: %{y:.4g}"
                + (" (%{customdata})" if col == "top1" else "")
                + f"<extra>{col}</extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=mean.index,
            y=min_ratio * mean["median"],
            name=f"{min_ratio:g} x median",
            mode="lines",
            line=dict(dash="dash", color="grey"),
        )
    )
    fig.update_layout(
        title=title_block("massive activations (layer outputs)", model, f"massive dims {dims}"),
        template="plotly_white",
        font=FONT,
        width=720,
        height=420,
        xaxis=dict(title="layer"),
        yaxis=dict(title="|x|", type="log"),
    )
    return fig


# ---- visual sink --------------------------------------------------------------------------------------


def phi_histogram(df: pd.DataFrame, tau: float, dims: list[int], model: str):
    """Histogram of phi for image and text tokens (rows of a phi table with `phi` and `in_image`)."""
    fig = go.Figure()
    for label, part in (("image tokens", df[df["in_image"]]), ("text tokens", df[~df["in_image"]])):
        fig.add_trace(go.Histogram(x=part["phi"], name=label, nbinsx=120, opacity=0.7))
    fig.add_vline(x=tau, line={"color": "firebrick", "dash": "dash"}, annotation_text=f"tau = {tau:g}")
    fig.update_layout(
        barmode="overlay",
        template="plotly_white",
        font=FONT,
        width=760,
        height=420,
        title=title_block("phi histogram (calibrate tau in the gap)", model, f"sink dims {dims}"),
        xaxis={"title": "phi = max |x_d| / RMS(x)"},
        yaxis={"title": "tokens x layers", "type": "log"},
    )
    return fig
