"""The role map figure: the layer x head grid, each head coloured by its role (discrete colours), the
role, its score against the cut and every other role the head has on hover."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..viz.figures import FONT, axis_ticks, title_block
from .roles import NO_HEADS, NO_ROLE, role_colour


def _discrete_scale(colours: list[str]) -> list[list]:
    """A colorscale in which integer z = i is exactly colours[i] (steps, no blending)."""
    n = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def role_map_figure(atlas, *, title: str | None = None, width: int | None = None, height: int | None = None):
    rm = atlas.role_map()
    roles = {r.name: r for r in atlas.roles()}  # one legend entry per role name (first declaration)
    present = [n for n in rm.names if (rm.role == n).any()]
    hybrid = (rm.role == NO_HEADS).any()
    order = [*present, NO_ROLE, *([NO_HEADS] if hybrid else [])]
    colours = [role_colour(n, rm.names) for n in order]
    L, H = rm.role.shape
    z = np.vectorize(order.index)(rm.role).astype(float)
    columns = atlas.columns()
    text = np.empty((L, H), dtype=object)
    kinds = atlas.layer_kinds
    for layer in range(L):
        for head in range(H):
            if rm.role[layer, head] == NO_HEADS:
                text[layer, head] = f"<b>L{layer}</b>: a {kinds[layer]} layer, no attention heads"
                continue
            lines = [f"<b>L{layer}H{head}</b>: {rm.role[layer, head]}"]
            for name in rm.has[layer][head]:
                r = roles[name]
                value = columns[r.column].values[layer, head]
                # the role's rule as the legend states it (a selection's weakest member is not the rule)
                lines.append(f"{name}: {r.column} {value:.3g} ({r.rule})")
            text[layer, head] = "<br>".join(lines)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(H)),
            y=list(range(L)),
            text=text,
            hovertemplate="%{text}<extra></extra>",
            colorscale=_discrete_scale(colours),
            zmin=-0.5,
            zmax=len(order) - 0.5,
            showscale=False,
            xgap=1,
            ygap=1,
        )
    )
    for name, colour in zip(order, colours):  # legend entries (the heatmap itself has none)
        count = int((rm.role == name).sum())
        label = (
            f"{name} ({count})"
            if name != NO_HEADS
            else f"{NO_HEADS}: {len(rm.role) - len(atlas.attention_layers)} layers"
        )
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=label,
                marker=dict(size=12, symbol="square", color=colour, line=dict(width=1, color="#999")),
            )
        )
    fig.update_layout(
        title=title if title is not None else title_block("role map", atlas.model, f"{atlas.preset} atlas"),
        template="plotly_white",
        font=FONT,
        plot_bgcolor="white",
        width=width or int(min(1400, max(620, 26 * H + 330))),
        height=height or int(min(1500, max(380, 20 * L + 170))),
        margin=dict(l=60, r=20, t=80, b=50),
        legend=dict(title="role (heads)", itemclick=False, itemdoubleclick=False),
        xaxis=dict(title="head", showgrid=False, zeroline=False, **axis_ticks(H, "H")),
        yaxis=dict(
            title="layer", autorange="reversed", showgrid=False, zeroline=False, **axis_ticks(L, "L", atlas.layer_kinds)
        ),
    )
    return fig
