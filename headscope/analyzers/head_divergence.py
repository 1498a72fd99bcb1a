"""Head divergence: how much each head's output changes when a context segment is taken away.

VHD of He et al. (ACL 2025, "vision-aware head divergence", docs/methods.md, "Head divergence"),
generalised from image tokens to any segment (a document, a system prompt, few-shot examples):

    VHD[l, h] = d( z[l, h](prompt with segment), z[l, h](segment removed or replaced) )

z = the head's output before W_O (hook_z), at chosen query positions after the segment (default:
the last token, i.e. the first generation step), averaged over positions and prompts. Two capture
passes (with, without) collect z at those positions only; no attention pattern is kept.

    >>> from headscope.analyzers.head_divergence import HeadDivergence
    >>> hd = HeadDivergence().fit(model, [("Context:", " The door is green.", " Q: door colour? A:")])
    >>> hd.scores_.top(5); hd.token_vhd_; hd.plot()
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ..capture import capture
from ..divergence import DISTANCES, Distance, outlier_mask, z_distance
from ..errors import InputError
from ..generation import greedy_generate
from ..inputs.images import ImagePrompt, ids_of
from ..inputs.segments import NAMED_POSITIONS, VARIANTS, NamedPosition, Variant, build_variants, segment_prompts
from ..models.catalog import default_image_prompts
from ..models.info import model_info
from ..paths import data_dir
from ..results import HeadScores, TokenScores
from ._z_reducers import ZAtPositions
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, example_prompts, register, select_heads
from .params import Anything, Boolean, Interval, IntList, Options

SELECTS = ("top_k", "threshold", "top_fraction")


def default_segment_data() -> list[dict]:
    """The built-in (prefix, segment, suffix) items: a passage from the report prompts and a question
    about it (data/segments/context_questions.json)."""
    doc = json.loads((data_dir() / "segments" / "context_questions.json").read_text(encoding="utf-8"))
    return doc["items"]


def token_vhd(vhd: np.ndarray, k: int) -> np.ndarray:
    """T-VHD (Eq. 5): sum over layers of the top-k heads' VHD in each layer; [..., layer, head] -> [...]."""
    k = min(int(k), vhd.shape[-1])
    return np.sort(vhd, axis=-1)[..., -k:].sum(-1).sum(-1)


@register
class HeadDivergence(Analyzer):
    """Per-head output divergence between prompts with and without a context segment (VHD)."""

    name = "head-divergence"
    input_kind = (
        "(prefix, segment, suffix) triples of text or token ids, or ImagePrompts (the segment is the "
        "image); None: built-in passages (image prompts on a VLM testbed)"
    )
    parameter_constraints = {
        "positions": [Options(*NAMED_POSITIONS), Interval(int, None, None), IntList()],
        "distance": [Options(*DISTANCES)],
        "variant": [Options(*VARIANTS)],
        "filler": [None, Anything()],
        "outlier_rule": [Boolean()],
        "top_k_per_layer": [Interval(int, 1, None)],
        "select": [Anything()],  # 'above_median' or (rule, value): _select_spec() checks it
        "batch_size": [Interval(int, 1, None)],
    }
    description = (
        "Distance between each head's output z with and without a context segment "
        "(VHD, He et al. 2025), at query positions after the segment."
    )
    atlas = AtlasEntry(
        what=(
            "How much each head's output at the last position changes when a context segment is removed "
            "(VHD, He et al.): built-in passages on a text model, the image on a VLM (where high-VHD heads "
            "are the vision-aware ones)."
        ),
        docs="head-divergence.md",
        columns=lambda a: {"divergence": a.scores_},
        roles=lambda a: (
            (
                Role(
                    "vision-aware",
                    "divergence",
                    selected=lambda f: f.heads_,
                    rule="VHD above its layer's median on image prompts (He et al.'s H_l)",
                ),
            )
            if any(s.pixel_values is not None for s in a.segments_)
            else ()
        ),
    )

    def __init__(
        self,
        positions: NamedPosition | int | list[int] = "last",
        distance: Distance = "euclidean",
        variant: Variant = "removed",
        filler=None,
        outlier_rule: bool = False,
        top_k_per_layer: int = 4,
        select="above_median",
        batch_size: int = 8,
    ):
        self.positions = positions
        self.distance = distance
        self.variant = variant
        self.filler = filler
        self.outlier_rule = outlier_rule
        self.top_k_per_layer = top_k_per_layer
        self.select = select
        self.batch_size = batch_size

    def _select_spec(self):
        s = self.select
        if isinstance(s, str) and s == "above_median":
            return ("above_median", None)
        if isinstance(s, dict) and len(s) == 1:
            s = next(iter(s.items()))
        if isinstance(s, (tuple, list)) and len(s) == 2 and s[0] in SELECTS:
            return (s[0], s[1])
        raise InputError(
            f"select={self.select!r}: use 'above_median' (VHR's per-layer H_l), or "
            f"('top_k', 10) / ('threshold', 0.5) / ('top_fraction', 0.1)"
        )

    def _check_params(self, info) -> None:
        if self.top_k_per_layer > info.n_heads:
            raise InputError(
                f"top_k_per_layer={self.top_k_per_layer!r}: must be an integer in 1..{info.n_heads} (heads per layer)"
            )
        if self.filler is not None and self.variant != "replaced":
            raise InputError("filler is only used with variant='replaced'; set variant='replaced' or drop filler")
        self._select_spec()

    def prepare_data(self, model, data=None) -> list:
        """SegmentPrompts; None = the built-in passages (a VLM testbed: its built-in image prompts)."""
        return segment_prompts(model, self._default_data(model) if data is None else data)

    @classmethod
    def example_data(cls, model):
        return [(ids[:5], ids[5:9], ids[9:]) for ids in example_prompts(model, seq_len=8)]

    def _fit(self, model, items) -> None:
        """items: SegmentPrompts (see `headscope.inputs.segments.segment_prompts`): from (prefix, segment,
        suffix) triples of text or token ids, or `ImagePrompt`s (the segment is the image block: VHD)."""
        info = model_info(model)
        how, arg = self._select_spec()
        pair = build_variants(model, items, variant=self.variant, positions=self.positions, filler=self.filler)
        with_seg = ZAtPositions(pair.present_positions, name="z_sq_norm_with_segment")
        without = ZAtPositions(pair.other_positions, name="z_sq_norm_without_segment")
        # A ZAtPositions result (z per prompt and its squared norm), not a HeadScores.
        present: Any = capture(model, pair.present, [with_seg], batch_size=self.batch_size, progress=False)[
            with_seg.name
        ]
        absent: Any = capture(model, pair.other, [without], batch_size=self.batch_size, progress=False)[without.name]

        per_pos = [z_distance(a, b, self.distance).numpy() for a, b in zip(present.z, absent.z)]  # [layer, pos, head]
        raw = np.stack([d.mean(1) for d in per_pos])  # [prompt, layer, head]
        ta = absent.sq_norm.values  # [prompt, layer, head] ||z without||^2
        flagged = outlier_mask(raw, ta)
        vhd = raw
        if self.outlier_rule:  # VHR: heads whose output surges without the segment are not "reading" it
            vhd = np.where(flagged, 0.0, raw)
            per_pos = [np.where(f[:, None, :], 0.0, d) for f, d in zip(flagged, per_pos)]

        prompts = [it.text if it.text is not None else model.tokenizer.decode(it.present) for it in items]
        params = self.get_params()
        meta: dict[str, Any] = {
            "n_kv_heads": info.n_kv_heads,
            "layer_kinds": info.layer_kinds,
            "model": info.name,
            "analyzer": self.name,
            "params": params,
            "prompts": prompts,
        }
        self.segments_, self.variants_, self.vhd_per_position_ = items, pair, per_pos
        self.scores_ = HeadScores(
            vhd,
            name="head_divergence",
            higher_is_more=True,
            description=(
                f"{self.distance} distance of hook_z with vs {self.variant} segment, mean over positions "
                f"({self.positions!r})" + ("; VHR outliers zeroed" if self.outlier_rule else "")
            ),
            **meta,
        )
        self.ta_ = HeadScores(
            ta,
            name="ta_without_segment",
            higher_is_more=True,
            description="||z||^2 without the segment (VHR's TA), mean over positions",
            **meta,
        )
        p, l, h = np.nonzero(flagged)  # reported whether or not they were zeroed
        self.outliers_ = pd.DataFrame(
            {
                "prompt": p,
                "layer": l,
                "head": h,
                "label": [f"L{a}H{b}" for a, b in zip(l, h)],
                "vhd": raw[p, l, h],
                "ta": ta[p, l, h],
                "zeroed": bool(self.outlier_rule),
            }
        )
        self.token_vhd_ = token_vhd(vhd, self.top_k_per_layer)  # [prompt]
        self.token_vhd_positions_ = self._position_tvhd(model, items, pair, per_pos, prompts, params)
        self.heads_ = self._heads(how, arg)

    @staticmethod
    def _default_data(model):
        """Text passages, or for a vision-language testbed its built-in image prompts (VHD proper)."""
        if model_info(model).image_token_ids:
            return default_image_prompts(model)
        return default_segment_data()

    def _position_tvhd(self, model, items, pair, per_pos, prompts, params) -> TokenScores:
        width = max(len(ids) for ids in pair.present)  # len() of an ImagePrompt is its token count
        values = np.full((len(items), width), np.nan)  # NaN = position not measured
        for i, (pos, d) in enumerate(zip(pair.present_positions, per_pos)):
            values[i, pos] = token_vhd(d.transpose(1, 0, 2), self.top_k_per_layer)  # d: [layer, pos, head]
        tokens = [[model.tokenizer.decode([t]) for t in ids_of(ids)] for ids in pair.present]
        return TokenScores(
            values,
            tokens=tokens,
            name="token_vhd",
            model=model_info(model).name,
            analyzer=self.name,
            params=params,
            prompts=prompts,
            description=f"T-VHD: sum over layers of the top-{self.top_k_per_layer} head VHDs",
        )

    def _heads(self, how, arg) -> list[tuple[int, int]]:
        if how != "above_median":
            return select_heads(self.scores_, **{how: arg})
        mean = self.scores_.mean_over_prompts().values  # [layer, head]
        keep = mean > np.median(mean, axis=1, keepdims=True)  # VHR's H_l, per layer
        order = np.argsort(-np.where(keep, mean, -np.inf).ravel(), kind="stable")[: int(keep.sum())]
        return [(int(a), int(b)) for a, b in (np.unravel_index(i, mean.shape) for i in order)]

    def plot(self, **kw):
        """Layer x head heatmap of the prompt-mean VHD."""
        self._check_fitted()
        return self.scores_.plot(**kw)

    def plot_tokens(self, **kw):
        """T-VHD at each measured position (useful with positions='after_segment')."""
        self._check_fitted()
        return self.token_vhd_positions_.plot(**kw)


def generation_vhd(model, prompt: ImagePrompt, max_new_tokens: int = 32, stop_ids=None, **params):
    """VHD at every generation step (He et al.'s token-level VHD): generate with the image, then
    measure each head's divergence at the query position of each step, teacher-forced on the
    generated text. Returns (fitted HeadDivergence, generated token ids); `params` go to
    HeadDivergence (not `positions`).

    Step t's token is predicted at position P - 1 + t (P = prompt length), so those are the measured
    positions; `token_vhd_positions_` of the returned analyzer then holds T-VHD per generated token.

        >>> hd, tokens = generation_vhd(model, prompt, max_new_tokens=16)
        >>> hd.plot_tokens(); hd.token_vhd_positions_.to_dataframe()
    """
    if not isinstance(prompt, ImagePrompt):
        raise InputError("generation_vhd needs an ImagePrompt (ids with the image tokens + pixel_values)")
    if "positions" in params:
        raise InputError("generation_vhd measures every generation step; drop positions= (or use HeadDivergence)")
    tokens = greedy_generate(model, list(prompt.ids), max_new_tokens, stop_ids, pixel_values=prompt.pixel_values)
    n = len(prompt.ids)
    # The last generated token is never fed back (nothing is predicted from it), so it is not appended.
    full = ImagePrompt((*prompt.ids, *tokens[:-1]), prompt.pixel_values)
    positions = list(range(n - 1, n - 1 + len(tokens)))
    hd = HeadDivergence(positions=positions, **params).fit(model, [full])
    return hd, tokens
