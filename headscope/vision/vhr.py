"""VHR, Vision-aware Head Reinforcement (He et al., ACL 2025; docs/methods.md): at the first generation
step pick, layer by layer, the heads whose output moves most when the image is removed, and scale
their outputs by alpha for the rest of generation.

One batched forward does the selection: row 0 is the prompt with its image, row 1 the same prompt with
the image tokens removed. A hook on each chosen layer's hook_z computes VHD = ||z_with - z_without||
at the last prompt token, zeroes VHR's outliers (VHD and TA = ||z_without||^2 both above mean + std of
the layer), keeps the heads above the layer's median and multiplies their z by alpha in both rows
(`reinforce_reference=True`; the paper does not say, see the docs) before the next layer runs, so
each layer is chosen with the earlier layers already reinforced (Algorithm 1). Generation then runs
with `greedy_generate(interventions=[ScaleOutput(heads, alpha)])` on every position, prompt included, so
the KV cache agrees with t=0.

    >>> sel = vhr_select(model, prompt)                 # prompt: an ImagePrompt
    >>> out = vhr_generate(model, prompt, max_new_tokens=20)
    >>> out.tokens, out.selection.heads, out.selection.vhd.plot()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..divergence import outlier_mask, z_distance
from ..errors import InputError
from ..generation import greedy_generate
from ..inputs.images import ImagePrompt, check_image_tokens
from ..inputs.spans import image_positions, image_token_ids
from ..inputs.tokens import iter_batches
from ..interventions import ScaleOutput
from ..models.info import model_info
from ..results import HeadScores

PAPER_LAST_LAYERS = 14 / 32  # LLaVA-1.5-7B: layer index 1 and the last 14 of 32 layers


def default_layers(n_layers: int) -> list[int]:
    """The paper's L_r scaled to depth: layer 1 plus the last round(14/32 x n_layers) layers."""
    last = max(1, round(PAPER_LAST_LAYERS * n_layers))
    return sorted({min(1, n_layers - 1), *range(n_layers - last, n_layers)})


@dataclass
class VHRSelection:
    """The heads VHR reinforces for one prompt, with the t=0 VHD / TA they were chosen from."""

    heads: list[tuple[int, int]]
    layers: list[int]
    alpha: float
    vhd: HeadScores  # [1, layer, head], NaN outside `layers`; outliers already zeroed
    ta: HeadScores
    outliers: list[tuple[int, int]]
    first_token: int  # argmax at t=0 with the reinforcement applied
    logits: torch.Tensor | None = None  # [vocab] next-token logits at t=0 (e.g. yes vs no for POPE)

    def to_dataframe(self) -> pd.DataFrame:
        df = self.vhd.to_dataframe().rename(columns={"score": "vhd"})
        chosen = set(self.heads)
        df["ta"] = self.ta.to_dataframe()["score"].to_numpy()
        df["reinforced"] = [(l, h) in chosen for l, h in zip(df["layer"], df["head"])]
        df["outlier"] = [(l, h) in set(self.outliers) for l, h in zip(df["layer"], df["head"])]
        return df[df["layer"].isin(self.layers)].reset_index(drop=True)

    def plot(self, **kw):
        return self.vhd.plot(**kw)


@dataclass
class VHRGeneration:
    tokens: list[int]
    text: str
    selection: VHRSelection


def _check(model, prompt, layers, alpha) -> list[int]:
    if not isinstance(prompt, ImagePrompt):
        raise InputError(
            "VHR needs an ImagePrompt (token ids with the image tokens + pixel_values). "
            "Fix: headscope.inputs.images.ImagePrompt(ids, pixel_values)"
        )
    check_image_tokens(model, prompt)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not np.isfinite(alpha):
        raise InputError(f"alpha={alpha!r} must be a finite number (the paper uses 2)")
    n = model_info(model).n_layers
    layers = default_layers(n) if layers is None else sorted({int(l) for l in layers})
    if not layers or layers[0] < 0 or layers[-1] >= n:
        raise InputError(f"layers={layers!r} must be a non-empty list of layers in 0..{n - 1}")
    if prompt.ids[-1] in image_token_ids(model):
        raise InputError("the prompt ends with the image; add the question after it")
    return layers


def vhr_select(
    model,
    prompt: ImagePrompt,
    *,
    layers=None,
    alpha: float = 2.0,
    outlier_rule: bool = True,
    reinforce_reference: bool = True,
) -> VHRSelection:
    """Choose the reinforced heads for `prompt` at t=0 (one batched forward, see the module doc)."""
    layers = _check(model, prompt, layers, alpha)
    info = model_info(model)
    with_img = list(prompt.ids)
    drop = set(image_positions(model, with_img))
    without = [t for i, t in enumerate(with_img) if i not in drop]
    pad = info.pad_token_id if info.pad_token_id is not None else 0
    batch = next(iter_batches([with_img, without], 2, pad))  # right-padded, as every capture
    tokens, mask, last = batch.tokens, batch.attention_mask, batch.lengths - 1
    vhd = np.full((1, info.n_layers, info.n_heads), np.nan)
    ta = np.full_like(vhd, np.nan)
    heads: list[tuple[int, int]] = []
    outliers: list[tuple[int, int]] = []

    def hook(z, hook):  # z [2, pos, head, d_head]
        layer = int(hook.name.split(".")[1])
        zi, zo = z[0, last[0]], z[1, last[1]]
        d = z_distance(zi, zo, "euclidean").numpy()
        t = (zo.double() ** 2).sum(-1).numpy()
        flagged = outlier_mask(d[None], t[None])[0] if outlier_rule else np.zeros_like(d, bool)
        d = np.where(flagged, 0.0, d)
        chosen = np.flatnonzero(d > np.median(d))
        vhd[0, layer], ta[0, layer] = d, t
        heads.extend((layer, int(h)) for h in chosen)
        outliers.extend((layer, int(h)) for h in np.flatnonzero(flagged))
        z = z.clone()
        rows = slice(None) if reinforce_reference else slice(0, 1)
        z[rows, :, chosen] *= alpha
        return z

    fwd = [(f"blocks.{l}.attn.hook_z", hook) for l in layers]
    device = getattr(model.cfg, "device", None) or "cpu"
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(tokens.to(device), attention_mask=mask.to(device), pixel_values=prompt.pixel_values.to(device))
    meta: dict[str, Any] = dict(  # HeadScores keywords shared by both tables
        n_kv_heads=info.n_kv_heads,
        model=info.name,
        analyzer="vhr",
        params={
            "layers": layers,
            "alpha": alpha,
            "outlier_rule": outlier_rule,
            "reinforce_reference": reinforce_reference,
        },
    )
    return VHRSelection(
        heads=heads,
        layers=layers,
        alpha=float(alpha),
        vhd=HeadScores(
            vhd,
            name="vhd_t0",
            higher_is_more=True,
            description="VHD at t=0 with earlier layers reinforced (outliers zeroed)",
            **meta,
        ),
        ta=HeadScores(ta, name="ta_t0", higher_is_more=True, description="||z without the image||^2 at t=0", **meta),
        outliers=outliers,
        first_token=int(logits[0, last[0]].argmax()),
        logits=logits[0, last[0]].detach().cpu(),
    )


def vhr_generate(
    model,
    prompt: ImagePrompt,
    max_new_tokens: int = 64,
    stop_ids=None,
    *,
    layers=None,
    alpha: float = 2.0,
    outlier_rule: bool = True,
    reinforce_reference: bool = True,
) -> VHRGeneration:
    """Greedy generation with VHR: heads chosen at t=0, their outputs x alpha at every position and step."""
    sel = vhr_select(
        model, prompt, layers=layers, alpha=alpha, outlier_rule=outlier_rule, reinforce_reference=reinforce_reference
    )
    specs = [ScaleOutput(heads=tuple(sel.heads), alpha=alpha)] if sel.heads else []  # positions "all": prefill too
    tokens = greedy_generate(
        model, list(prompt.ids), max_new_tokens, stop_ids, interventions=specs, pixel_values=prompt.pixel_values
    )
    text = model.tokenizer.decode(tokens) if getattr(model, "tokenizer", None) is not None else ""
    return VHRGeneration(tokens, text, sel)
