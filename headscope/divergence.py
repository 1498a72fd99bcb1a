"""Distances between a head's outputs under two variants of a prompt, and VHR's outlier rule.

Pure tensor/array math shared by the HeadDivergence analyzer (headscope/analyzers/head_divergence.py)
and VHR's head selection (headscope/vision/vhr.py): it sits in the core layer so both can use it
without the vision package reaching up into the analyzers.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from .errors import InputError

Distance = Literal["euclidean", "sq_l2", "cosine"]
DISTANCES: tuple[Distance, ...] = get_args(Distance)


def z_distance(a: torch.Tensor, b: torch.Tensor, distance: Distance) -> torch.Tensor:
    """Distance over the last dim (d_head): [..., d_head] x2 -> [...] (float64)."""
    a, b = a.double(), b.double()
    if distance == "euclidean":
        return (a - b).norm(dim=-1)
    if distance == "sq_l2":
        return ((a - b) ** 2).sum(-1)
    if distance == "cosine":  # 1 - cos; a zero vector counts as orthogonal to everything
        denom = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
        return 1.0 - (a * b).sum(-1) / denom
    raise InputError(f"distance={distance!r}: use one of {DISTANCES}")


def outlier_mask(vhd: np.ndarray, ta: np.ndarray) -> np.ndarray:
    """VHR's outlier rule, per prompt and layer (arrays [..., head]): VHD > mu + sigma AND TA > mu + sigma
    (population std over the layer's heads); TA = ||z without the segment||^2."""

    def above(x):
        return x > x.mean(-1, keepdims=True) + x.std(-1, keepdims=True)

    return above(vhd) & above(ta)
