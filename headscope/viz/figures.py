"""Plotly figure builders for headscope results (the `.plot()` of each result type lands here).

Figures are sized explicitly so a static export (png/svg for a paper) looks like the notebook view.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

if TYPE_CHECKING:
    from headscope.results import HeadScores, TokenScores

FONT = dict(family="Arial, Helvetica, sans-serif", size=13)


def axis_ticks(n: int, prefix: str, kinds=None, max_ticks: int = 40) -> dict:
    """Tick labels L0, L1, ...; with a hybrid's layer `kinds`, a layer without attention reads "L0 mamba"."""
    # Every index while it fits; beyond ~40 labels collide, so thin them evenly.
    step = max(1, math.ceil(n / max_ticks))
    vals = list(range(0, n, step))
    text = [f"{prefix}{i}" + ("" if kinds is None or kinds[i] == "attention" else f" {kinds[i]}") for i in vals]
    return dict(tickmode="array", tickvals=vals, ticktext=text)


_NAN_COLOR = "#9e9e9e"  # mid grey: not in Viridis or RdBu, so a NaN head never reads as "score 0"


def title_block(name: str, model: str, extra: str = "") -> dict:
    # Details go in a subtitle so long model names don't push the title off a narrow figure.
    title = dict(text=" — ".join(s for s in (name, model) if s), x=0.02, xanchor="left")
    if extra:  # an empty subtitle still reserves vertical space
        title["subtitle"] = dict(text=extra, font=dict(size=12, color="#555"))
    return title


def head_heatmap(
    scores: HeadScores,
    *,
    colorscale: str | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    zmid: float | None = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    kv_separators: bool = True,
    template: str = "plotly_white",
) -> go.Figure:
    """Layer x head heatmap: L0 at the top, heads left to right, hover = label, KV group, score.

    3-D scores are shown as their prompt mean. Signed data gets a diverging scale centred on 0
    (so the sign is readable at a glance); one-signed data a sequential one.
    """
    z = scores.mean_over_prompts().values
    L, H = z.shape
    finite = z[np.isfinite(z)]
    signed = finite.size > 0 and finite.min() < 0 < finite.max()
    if colorscale is None:
        colorscale = "RdBu_r" if signed else "Viridis"
    if zmid is None and signed and zmin is None and zmax is None:
        zmid = 0.0
    group = H // scores.n_kv_heads
    custom = np.empty((L, H, 2), dtype=object)
    custom[..., 0] = scores.labels
    custom[..., 1] = np.broadcast_to(scores.kv_group, (L, H))
    text = np.where(np.isnan(z), "NaN (no valid data)", np.char.mod("%.4g", np.nan_to_num(z)))
    kinds = scores.layer_kinds
    if kinds is not None:  # a hybrid's layer without heads says so (without kinds, every layer attends)
        for layer in set(range(L)) - set(scores.attention_layers):
            text[layer, :] = f"none: a {kinds[layer]} layer has no attention heads"
    heat = go.Heatmap(
        z=z,
        x=list(range(H)),
        y=list(range(L)),
        customdata=custom,
        text=text,
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        zmid=zmid,
        xgap=0,
        ygap=0,
        hovertemplate="<b>%{customdata[0]}</b><br>KV group %{customdata[1]}<br>"
        f"{scores.name}: %{{text}}<extra></extra>",
        colorbar=dict(title=dict(text=scores.name, side="right"), thickness=14),
    )
    fig = go.Figure(heat)
    if kv_separators and scores.n_kv_heads < H:
        for g in range(1, scores.n_kv_heads):  # thin lines between KV groups (GQA sharing)
            fig.add_shape(
                type="line",
                x0=g * group - 0.5,
                x1=g * group - 0.5,
                y0=-0.5,
                y1=L - 0.5,
                xref="x",
                yref="y",
                line=dict(color="rgba(20,20,20,0.85)", width=2),
            )
    n_prompts = scores.values.shape[0] if scores.values.ndim == 3 else None
    extra = f"mean over {n_prompts} prompts" if n_prompts else ""
    if scores.n_kv_heads < H:
        extra += ("; " if extra else "") + f"{scores.n_kv_heads} KV groups (lines)"
    if np.isnan(z).any():
        extra += ("; " if extra else "") + "grey = NaN"
    if kinds is not None:
        extra += ("; " if extra else "") + "grey rows: layers without attention"
    fig.update_layout(
        title=title if title is not None else title_block(scores.name, scores.model, extra),
        template=template,
        font=FONT,
        plot_bgcolor=_NAN_COLOR,
        width=width or int(min(1400, max(520, 26 * H + 190))),
        height=height or int(min(1400, max(340, 20 * L + 170))),
        margin=dict(l=60, r=20, t=80, b=50),
        xaxis=dict(title="head", side="bottom", showgrid=False, zeroline=False, **axis_ticks(H, "H")),
        yaxis=dict(title="layer", autorange="reversed", showgrid=False, zeroline=False, **axis_ticks(L, "L", kinds)),
    )
    return fig


def top_heads_bar(scores: HeadScores, k: int = 15, *, title: str | None = None) -> go.Figure:
    """Horizontal bar chart of the top-k heads (best at the top) for a compact paper panel."""
    df = scores.top(k)
    fig = go.Figure(
        go.Bar(
            x=df["score"],
            y=df["label"],
            orientation="h",
            customdata=df["kv_group"],
            hovertemplate="%{y}<br>KV group %{customdata}<br>score %{x:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title if title is not None else title_block(scores.name, scores.model, f"top {len(df)}"),
        template="plotly_white",
        font=FONT,
        width=520,
        height=max(280, 22 * len(df) + 120),
        yaxis=dict(autorange="reversed", title=None),
        xaxis=dict(title=scores.name),
        margin=dict(l=80, r=20, t=60, b=50),
    )
    return fig


def show_token(t: str) -> str:
    # Make whitespace visible: tokens like " the" / "\n" are otherwise indistinguishable on an axis.
    return t.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·") or "∅"


def token_plot(
    scores: TokenScores, *, title: str | None = None, width: int | None = None, height: int | None = None
) -> go.Figure:
    """Bar over token positions (1 sequence) or one line per prompt; hover/ticks show the token."""
    rows = scores.values.reshape(-1, scores.values.shape[-1])
    fig = go.Figure()
    for p, toks in enumerate(scores.tokens):
        shown = [show_token(t) for t in toks]
        y = rows[p, : len(toks)]
        kind = go.Bar if len(scores.tokens) == 1 else go.Scatter
        label = scores.prompts[p][:40] if scores.prompts else f"prompt {p}"
        fig.add_trace(
            kind(
                x=list(range(len(toks))),
                y=y,
                customdata=shown,
                name=label,
                hovertemplate="pos %{x}: <b>%{customdata}</b><br>score %{y:.4g}<extra>%{fullData.name}</extra>",
            )
        )
    n = max(len(t) for t in scores.tokens)
    xaxis: dict[str, Any] = dict(title="token position")
    if len(scores.tokens) == 1 and n <= 60:  # token strings as ticks only when they are unambiguous
        xaxis.update(
            tickmode="array", tickvals=list(range(n)), ticktext=[show_token(t) for t in scores.tokens[0]], tickangle=-60
        )
    fig.update_layout(
        title=title if title is not None else title_block(scores.name, scores.model),
        template="plotly_white",
        font=FONT,
        xaxis=xaxis,
        yaxis=dict(title=scores.name),
        width=width or min(1400, max(500, 18 * n + 160)),
        height=height or 380,
        showlegend=len(scores.tokens) > 1,
    )
    return fig
