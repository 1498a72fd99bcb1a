"""The preplan-anchor analyzer's figures (headscope/analyzers/preplan_anchor.py), built from the
generic helpers of headscope/viz/figures.py. Builders take plain arrays and labels, so they can draw a
saved result as well as a fitted analyzer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..viz.figures import FONT, show_token

if TYPE_CHECKING:
    from ..results import HeadScores


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
