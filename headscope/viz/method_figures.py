"""Figures of individual analyzers (the shared heatmaps and token plots live in figures.py).

Each builder takes plain arrays, tables and labels, so it can draw a saved result as well as a fitted
analyzer; the analyzers' `.plot*()` methods call these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import FONT, axis_ticks, show_token, title_block

if TYPE_CHECKING:
    from ..results import HeadScores, TokenScores

# ---- preplan-anchor ----------------------------------------------------------------------------------


def group_heatmap(scores: HeadScores, local, global_, **kw):
    """`scores.plot()` with the local heads circled and the global heads crossed."""
    fig = scores.plot(**kw)
    for heads, label, symbol, color in (
        (local, "H_loc (lowest distance)", "circle-open", "white"),
        (global_, "H_glob (highest distance)", "x-thin-open", "black"),
    ):
        fig.add_trace(
            go.Scatter(
                x=[h for _, h in heads],
                y=[l for l, _ in heads],
                mode="markers",
                name=label,
                marker=dict(symbol=symbol, size=9, color=color, line=dict(width=2, color=color)),
                hovertemplate="L%{y}H%{x}<extra>" + label + "</extra>",
            )
        )
    fig.update_layout(
        showlegend=True,
        legend=dict(orientation="h", x=0, y=-0.08, yanchor="top", bgcolor="#ddd"),
        height=(fig.layout.height or 500) + 40,
        margin=dict(b=90),
    )
    return fig


def preplan_token_figure(
    toks: list[str],
    w: np.ndarray,
    d: np.ndarray,
    f: np.ndarray,
    pre: set,
    anc: set,
    *,
    quantile: float,
    peak_rule: str,
    title: str,
    subtitle: str,
    width: int | None = None,
    height: int | None = None,
):
    """Two stacked panels over one response: WAAD `w` with the preplan tokens `pre` marked (Δ = `d`), FAI
    `f` bars with the anchors `anc` highlighted (indices into the response)."""
    n, x = len(toks), list(range(len(toks)))
    shown = [show_token(t) for t in toks]
    custom = np.stack([shown, np.char.mod("%.3f", d), np.char.mod("%.4f", f)], axis=-1)
    hover = (
        "%{x}: <b>%{customdata[0]}</b><br>WAAD %{y:.3f}<br>Δ %{customdata[1]}<br>FAI %{customdata[2]}<extra></extra>"
    )
    q = f"top {quantile:.0%}" + (", local maxima" if peak_rule == "local_max" else "")
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.05,
        subplot_titles=(
            "WAAD of the local heads; ▲ = preplan token (" + q + " of Δ_t = |WAAD_t − WAAD_t+1|)",
            "FAI of the global heads; orange = anchor token (" + q + " of FAI)",
        ),
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=w,
            mode="lines+markers",
            name="WAAD",
            line=dict(color="#4c72b0", width=1.5),
            marker=dict(size=4),
            customdata=custom,
            hovertemplate=hover,
        ),
        row=1,
        col=1,
    )
    idx = sorted(pre)
    fig.add_trace(
        go.Scatter(
            x=idx,
            y=w[idx],
            mode="markers",
            name="preplan token (t of Δ_t)",
            marker=dict(symbol="triangle-up", size=9, color="#c44e52"),
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    colors = ["#dd8452" if i in anc else "#c9c9c9" for i in x]
    fig.add_trace(
        go.Bar(
            x=x,
            y=f,
            name="FAI (orange = anchor)",
            marker_color=colors,
            customdata=custom,
            hovertemplate=hover.replace("WAAD %{y:.3f}", "FAI %{y:.4f}"),
        ),
        row=2,
        col=1,
    )
    ticks = dict(tickmode="array", tickvals=x, ticktext=shown, tickangle=-70, tickfont=dict(size=9))
    fig.update_xaxes(**ticks, row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(title_text="WAAD", row=1, col=1)
    fig.update_yaxes(title_text="FAI", row=2, col=1)
    fig.update_layout(
        title=dict(text=title, x=0.02, xanchor="left", subtitle=dict(text=subtitle, font=dict(size=11, color="#555"))),
        template="plotly_white",
        font=FONT,
        bargap=0.15,
        width=width or max(700, min(2400, 13 * n + 160)),
        height=height or 560,
        margin=dict(l=60, r=20, t=110, b=110),
        showlegend=False,
    )
    for ann in fig.layout.annotations:  # subplot titles: left-aligned like the main title
        ann.update(x=0, xanchor="left", font=dict(size=12))
    return fig


# ---- attention sinks -----------------------------------------------------------------------------------


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


# ---- vision-tower heads -------------------------------------------------------------------------------


def vit_distance_figure(
    distances: np.ndarray,
    importance: np.ndarray,
    uniform_distance: float,
    *,
    metric: str,
    title: str,
    width: int = 760,
    height: int = 460,
):
    """Attention distance [images, layer, head] vs layer, one point per head (mean over images, bar = std),
    coloured by `importance` [layer, head]; the dotted line is uniform attention's distance."""
    L, H = importance.shape
    layer = np.repeat(np.arange(L), H) + np.tile(np.linspace(-0.2, 0.2, H) if H > 1 else [0.0], L)
    fig = go.Figure(
        go.Scatter(
            x=layer,
            y=distances.mean(0).ravel(),
            mode="markers",
            error_y={
                "type": "data",
                "array": distances.std(0).ravel(),
                "thickness": 1,
                "width": 0,
                "color": "lightgray",
            },
            marker={
                "size": 9,
                "color": importance.ravel(),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": f"importance<br>({metric} drop)"},
            },
            text=[f"L{l}H{h}" for l in range(L) for h in range(H)],
            hovertemplate="%{text}<br>distance %{y:.2f} px<br>importance %{marker.color:.4g}<extra></extra>",
        )
    )
    fig.add_hline(
        y=uniform_distance,
        line_dash="dot",
        line_color="gray",
        annotation_text="uniform attention",
        annotation_position="top left",
    )
    fig.update_layout(
        title=title,
        xaxis={"title": "layer", "tickmode": "array", "tickvals": list(range(L))},
        yaxis={"title": "mean attention distance (px)", "rangemode": "tozero"},
        template="plotly_white",
        width=width,
        height=height,
    )
    return fig


def pruning_curve_figure(
    df: pd.DataFrame, clean: float, *, metric: str, title: str, width: int = 760, height: int = 420
):
    """The metric after pruning the k least important heads (`n_pruned`, `metric`, `last_pruned` columns)."""
    fig = go.Figure(
        go.Scatter(
            x=df["n_pruned"],
            y=df["metric"],
            mode="lines+markers",
            text=df["last_pruned"],
            hovertemplate="%{x} heads pruned (last %{text})<br>metric %{y:.4g}<extra></extra>",
        )
    )
    fig.add_hline(y=clean, line_dash="dot", line_color="gray", annotation_text="no pruning")
    fig.update_layout(
        title=title, xaxis_title="heads pruned", yaxis_title=metric, template="plotly_white", width=width, height=height
    )
    return fig
