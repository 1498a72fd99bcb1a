"""The vit-heads analyzer's figures (headscope/analyzers/vit_heads.py), built from the generic helpers
of headscope/viz/figures.py. Builders take plain arrays and labels, so they can draw a saved result."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

if TYPE_CHECKING:
    pass


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
