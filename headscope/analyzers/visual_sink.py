"""Visual attention sinks and image-centric heads (Kang et al., "See What You Are Told", ICLR 2025), plus
the VAR interventions they define. Formulas and defaults: docs/methods.md; usage: docs/visual-sink.md.

    >>> model = headscope.load_model("smollm2-visual-sinks")
    >>> vs = VisualSink().fit(model)                     # the testbed's default image prompts
    >>> vs.visual_sinks_                                 # sink tokens inside the image, per layer
    >>> vs.heads_                                        # image-centric heads
    >>> with apply(model, vs.var_interventions(prompt=0)): ...

Two capture passes: the first finds the sink dims (the first token's massive activations, Sun et al.'s
criterion on `hook_resid_post`) unless `sink_dims` is given; the second computes phi on every layer's
`hook_resid_pre` and, in the same hook, tests each query row after the image against the sinks of that
layer (the image-centric rule), so nothing of size T x T is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from ..capture import capture
from ..errors import InputError
from ..inputs.spans import image_span
from ..inputs.tokens import to_token_lists
from ..interventions.specs import VARRedistribution
from ..models.catalog import default_image_prompts
from ..models.info import model_info
from ..results import HeadScores
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, example_prompts, register, select_heads
from .params import Boolean, Interval, IntList, Options
from .sink_reducers import MassiveActivations, PhiTopK, first_token_dims
from .sinks_figures import phi_heatmap, phi_histogram

RhoConvention = Literal["paper", "code"]
RHO_CONVENTIONS: tuple[RhoConvention, ...] = get_args(RhoConvention)
FIRST_SINK_LAYER = 2  # DimProspector never runs on layers 0 and 1 (docs/methods.md, VAR)
_PER_HEAD = ("fraction", "attending", "image", "visual_sink", "text_sink", "n_rows")


@dataclass
class ImageCentricResult:
    """phi [prompt, layer, pos]; per-head row statistics {key: [prompt, layer, head]}; the sink positions
    found per (prompt, layer)."""

    phi: np.ndarray
    stats: dict
    sinks: list


class ImageCentricRows(PhiTopK):
    """PhiTopK with given sink dims (exact phi) that also, per layer >= 2, marks sink tokens (phi > tau)
    and tests every query row after the image: image-centric iff it gives the image >= min_image_attention
    and its visual sinks hold at most `max_sink_share` of that (docs/methods.md, VAR; `HeadFork`)."""

    name = "image_centric"
    needs = ("resid_pre", "pattern")
    result_type = ImageCentricResult
    description = "Fraction of query rows after the image that are image-centric (Kang et al. 2025)."

    def __init__(self, spans, sink_dims, tau, max_sink_share, min_image_attention):
        super().__init__(sink_dims=sink_dims)
        self.spans, self.tau, self.min_image = list(spans), float(tau), float(min_image_attention)
        self.max_sink_share = float(max_sink_share)

    def start(self, info, n_prompts):
        super().start(info, n_prompts)
        self._stats = {k: np.full((n_prompts, info.n_layers, info.n_heads), np.nan) for k in _PER_HEAD}
        self._sinks: list[tuple[int, int, np.ndarray]] = []  # (prompt, layer, sink positions)

    fed_by_blocks = True

    def update_rows(self, layer, acts, ctx):
        """Sums over this block's text query rows after the image (means taken in `end_layer`)."""
        if ctx.start == 0:
            super().update_rows(layer, {"resid_pre": acts["resid_pre"]}, ctx)  # this layer's phi (exact: dims given)
            phi = self._chunks[-1][2]  # [batch, pos], NaN on pads
            self._sink = phi.nan_to_num(-1.0) > self.tau
            self._sums: dict[int, dict] = {}
            if layer >= FIRST_SINK_LAYER:
                for r, p in enumerate(ctx.index):
                    self._sinks.append((p, layer, self._sink[r, : int(ctx.valid[r].sum())].nonzero()[:, 0].numpy()))
        if layer < FIRST_SINK_LAYER:
            return
        pattern = ctx.whole_keys(acts["pattern"]).float()  # [batch, head, rows, k]
        for r, p in enumerate(ctx.index):
            n, (s, e) = int(ctx.valid[r].sum()), self.spans[p]
            lo, hi = max(e, ctx.start), min(n, ctx.stop)
            if lo >= hi:
                continue
            rows = pattern[r, :, lo - ctx.start : hi - ctx.start, :n]  # [head, q, k]: text queries after the image
            vis_sink = self._sink[r, :n].clone()
            vis_sink[:s], vis_sink[e:] = False, False
            text_sink = self._sink[r, :n] & ~vis_sink
            image = rows[..., s:e].sum(-1)  # [head, q]
            on_sinks = rows[..., vis_sink].sum(-1)
            attending = image >= self.min_image
            centric = attending & (on_sinks <= self.max_sink_share * image)
            sums = self._sums.setdefault(r, dict.fromkeys(_PER_HEAD, 0.0))
            for key, v in (
                ("fraction", centric.float()),
                ("attending", attending.float()),
                ("image", image),
                ("visual_sink", on_sinks),
                ("text_sink", rows[..., text_sink].sum(-1)),
            ):
                sums[key] = sums[key] + v.double().sum(-1).numpy()
            sums["n_rows"] += hi - lo

    def end_layer(self, layer, ctx):
        for r, sums in self._sums.items():
            p = ctx.index[r]
            for key in _PER_HEAD[:-1]:
                self._stats[key][p, layer] = sums[key] / sums["n_rows"]
            self._stats["n_rows"][p, layer] = sums["n_rows"]
        self._sums = {}

    def result(self, info, prompts=None) -> ImageCentricResult:  # type: ignore[override]  # PhiTopK's code, its own result
        phi = super().result(info, prompts).phi
        assert phi is not None  # the sink dims are given: phi is exact
        return ImageCentricResult(phi, self._stats, self._sinks)


@dataclass
class VisualInputs:
    """What VisualSink runs on: model inputs (ImagePrompts keep pixel values), token ids, image spans."""

    inputs: list
    tokens: list[list[int]]
    spans: list[tuple[int, int]]


VISUAL_SINKS_TESTBED = "smollm2-visual-sinks"  # the testbed with built-in prompts (headscope/testbeds/visual_sinks.py)


def _is_id_prompt(obj) -> bool:
    """A prompt object carrying token ids in `.ids` but no pixel values (the visual-sink testbed's
    VisualPrompt); ImagePrompts keep their pixel values and are passed on whole."""
    return hasattr(obj, "ids") and not hasattr(obj, "pixel_values")


@register
class VisualSink(Analyzer):
    """Visual sink tokens (phi > tau inside the image), image-centric heads, and VAR interventions.

    Args:
        tau: sink threshold on phi (20, the paper's). phi <= sqrt(d_model) (24 for SmolLM2): calibrate it
            from the phi histogram (`phi_table()`, `plot_phi_histogram()`, `tau_gap()`).
        rho: the image-centric threshold, read by `rho_convention` (0.5, where both agree).
        rho_convention: "paper" (default): a row is image-centric when its non-sink image tokens hold
            >= rho of its image attention (the paper's r >= rho; 0.8 general, 0.5 hallucination, 0.9
            vision-centric tasks). "code": when its visual sinks hold <= rho of it (`HeadFork`'s test), so
            code rho = 1 - paper rho; they agree only at 0.5.
        require_visual_sink: VAR edits a layer only when it has a visual sink (True, as the official code:
            a layer whose sinks are all text tokens is left untouched); False edits every layer with a sink.
        min_image_attention: ... and >= this much attention to the image overall (0.2, the code's `summ`).
        keep_fraction: fraction of sink attention VAR KEEPS (0.6, the official code's p; the paper's p is
            the fraction removed).
        min_head_fraction: a head is in `heads_` when more than this fraction of its eligible query rows
            are image-centric (prompt mean).
        sink_dims: residual dims for phi; None finds them from the first token's massive activations.
        massive_min_abs, massive_min_ratio: Sun et al.'s |x| > 100 and >= 1000 x median for that search.
        n_default_prompts: size of the testbed's default prompt set (data=None).
        batch_size: prompts per forward pass.

    Learned: `sink_dims_`, `phi_` [prompt, layer, pos] (NaN on pads), `sink_tokens_` (DataFrame: prompt,
    layer, position, token, phi, in_image; layers 2..L-1), `visual_sinks_` (its in_image rows),
    `image_spans_`, `tokens_`, `scores_` (HeadScores [prompt, layer, head]: fraction of eligible rows that
    are image-centric; NaN in layers 0-1), `heads_`, `attending_fraction_` (rows with enough image
    attention, image-centric or not: the difference are sink-dominated rows), `image_attention_`, `visual_sink_attention_`,
    `text_sink_attention_` (HeadScores: mean attention of the query rows after the image to the image,
    to its sinks, to the sinks outside it).
    """

    name = "visual-sink"
    input_kind = (
        "token id lists or VisualPrompts with image tokens, or ImagePrompts (None: the visual-sink "
        "testbed's built-in prompts)"
    )
    requires = frozenset({"image_tokens"})
    parameter_constraints = {
        "tau": [Interval(float, 0, None)],
        "rho": [Interval(float, 0, 1)],
        "rho_convention": [Options(*RHO_CONVENTIONS)],
        "require_visual_sink": [Boolean()],
        "min_image_attention": [Interval(float, 0, 1)],
        "keep_fraction": [Interval(float, 0, 1)],
        "min_head_fraction": [Interval(float, 0, 1)],
        "sink_dims": [None, IntList(low=0)],
        "massive_min_abs": [Interval(float, 0, None)],
        "massive_min_ratio": [Interval(float, 0, None)],
        "n_default_prompts": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    example_params = {"n_default_prompts": 2, "sink_dims": [0, 1], "require_visual_sink": False}
    description = (
        "Visual attention sinks (phi > tau on the massive dims, inside the image), image-centric "
        "heads and VAR redistribution specs (Kang et al. 2025)."
    )
    atlas = AtlasEntry(
        what=(
            "Image tokens that act as sinks (VAR's phi > 20 on the massive dims) and the heads whose text "
            "queries after the image attend to the image rather than to those sinks (image-centric heads)."
        ),
        docs="visual-sink.md",
        quick={"n_default_prompts": 4},
        full={},
        columns=lambda a: {"image_centric": a.scores_, "image_attention": a.image_attention_},
        roles=(
            Role(
                "vision-aware",
                "image_centric",
                selected=lambda a: a.heads_,
                rule="image-centric in at least half of the rows (Kang et al.'s image-centric heads)",
            ),
        ),
        figures=lambda a: [a.plot(), a.plot_phi_histogram()],
    )

    def __init__(
        self,
        tau: float = 20.0,
        rho: float = 0.5,
        rho_convention: RhoConvention = "paper",
        require_visual_sink: bool = True,
        min_image_attention: float = 0.2,
        keep_fraction: float = 0.6,
        min_head_fraction: float = 0.5,
        sink_dims: list[int] | None = None,
        massive_min_abs: float = 100.0,
        massive_min_ratio: float = 1000.0,
        n_default_prompts: int = 8,
        batch_size: int = 8,
    ):
        self.tau = tau
        self.rho = rho
        self.rho_convention = rho_convention
        self.require_visual_sink = require_visual_sink
        self.min_image_attention = min_image_attention
        self.keep_fraction = keep_fraction
        self.min_head_fraction = min_head_fraction
        self.sink_dims = sink_dims
        self.massive_min_abs = massive_min_abs
        self.massive_min_ratio = massive_min_ratio
        self.n_default_prompts = n_default_prompts
        self.batch_size = batch_size

    def _check_params(self, info) -> None:
        if self.sink_dims is not None and not all(d < info.d_model for d in self.sink_dims):
            raise InputError(
                f"sink_dims={self.sink_dims!r} must be a non-empty list of residual dims in "
                f"0..{info.d_model - 1} (or None to find them from the first token's massive activations)"
            )

    def prepare_data(self, model, data=None) -> VisualInputs:
        """What the model runs on (ImagePrompts keep their pixel values), token id lists and image spans;
        None = the visual-sink testbed's built-in prompts."""
        if isinstance(data, VisualInputs):
            return data
        if data is None:
            if model_info(model).testbed != VISUAL_SINKS_TESTBED:
                raise InputError(
                    "visual-sink needs prompts that contain an image and has built-in ones only for the "
                    "visual-sink testbed. Fix: fit(model, data=[token id lists with image tokens]) or "
                    f"use model = headscope.load_model({VISUAL_SINKS_TESTBED!r})."
                )
            data = [pre + image + post for pre, image, post in default_image_prompts(model, self.n_default_prompts)]
        if _is_id_prompt(data):  # one prompt object with .ids (the testbed's VisualPrompt)
            data = [data]
        if isinstance(data, (list, tuple)):
            data = [list(d.ids) if _is_id_prompt(d) else d for d in data]
        tokens = to_token_lists(model, data, model_info(model))
        return VisualInputs(data, tokens, [image_span(model, ids) for ids in tokens])

    @classmethod
    def example_data(cls, model):
        """Two prompts with an image block of the model's image token (a test model records one)."""
        image = sorted(model_info(model).image_token_ids)[:1] * 4
        return [ids[:6] + image + ids[6:] for ids in example_prompts(model, seq_len=5)]

    def _fit(self, model, data: VisualInputs) -> None:
        """Find the sink dims (unless given), then phi, sink tokens and image-centric rows in one pass."""
        info = model_info(model)
        inputs, tokens = data.inputs, data.tokens
        self.image_spans_ = data.spans
        # The sink share a row may give at most: one number for both conventions.
        self.max_sink_share_ = 1.0 - self.rho if self.rho_convention == "paper" else float(self.rho)
        self.sink_dims_ = (
            sorted({int(d) for d in self.sink_dims})
            if self.sink_dims is not None
            else self._find_sink_dims(model, inputs)
        )
        rows = ImageCentricRows(
            self.image_spans_, self.sink_dims_, self.tau, self.max_sink_share_, self.min_image_attention
        )
        res: Any = capture(model, inputs, [rows], batch_size=self.batch_size)["image_centric"]  # ImageCentricResult
        self.n_layers_, self.n_heads_ = info.n_layers, info.n_heads
        self.token_ids_ = tokens
        tok = getattr(model, "tokenizer", None)
        self.tokens_ = [[tok.decode([t]) if tok is not None else str(t) for t in ids] for ids in tokens]
        self.phi_ = res.phi
        self.sink_sets_ = {(p, layer): {int(x) for x in pos} for p, layer, pos in res.sinks}
        self.sink_tokens_ = self._sink_table(res.sinks)
        self.visual_sinks_ = self.sink_tokens_[self.sink_tokens_["in_image"]].reset_index(drop=True)
        stats = res.stats

        def scores(key, name, description):
            return HeadScores(
                stats[key],
                name=name,
                n_kv_heads=info.n_kv_heads,
                model=info.name,
                analyzer=self.name,
                params=self.get_params(),
                description=description,
            )

        self.scores_ = scores(
            "fraction",
            "image_centric_fraction",
            f"fraction of query rows after the image with image attention >= "
            f"{self.min_image_attention} and visual-sink share <= {self.max_sink_share_:g} "
            f"(rho = {self.rho}, {self.rho_convention} convention)",
        )
        self.attending_fraction_ = scores(
            "attending",
            "image_attending_fraction",
            f"fraction of query rows after the image with image attention >= "
            f"{self.min_image_attention} (image-centric or sink-dominated)",
        )
        self.image_attention_ = scores(
            "image", "image_attention", "mean attention of text queries after the image to it"
        )
        self.visual_sink_attention_ = scores(
            "visual_sink", "visual_sink_attention", "mean attention of text queries after the image to its sink tokens"
        )
        self.text_sink_attention_ = scores(
            "text_sink", "text_sink_attention", "mean attention of text queries after the image to sinks outside it"
        )
        self.heads_ = select_heads(self.scores_, threshold=self.min_head_fraction)

    def _find_sink_dims(self, model, tokens) -> list[int]:
        massive: Any = capture(  # a MassiveActivations result, not a HeadScores
            model,
            tokens,
            [MassiveActivations(self.massive_min_abs, self.massive_min_ratio)],
            batch_size=self.batch_size,
        )["massive_activations"]
        m = massive.entries
        dims = first_token_dims(m)
        if not dims:
            raise InputError(
                "the first token has no massive activation in these prompts (|x| > "
                f"{self.massive_min_abs} and >= {self.massive_min_ratio} x median), so the sink dims "
                "cannot be found. Fix: pass sink_dims=[...] explicitly (e.g. from AttentionSinks."
                "massive_dims_ on longer prompts) or lower massive_min_ratio."
            )
        return dims

    def _sink_table(self, sinks) -> pd.DataFrame:
        rows = []
        for p, layer, positions in sinks:
            s, e = self.image_spans_[p]
            for t in positions:
                rows.append((p, layer, int(t), self.tokens_[p][t], float(self.phi_[p, layer, t]), bool(s <= t < e)))
        df = pd.DataFrame(rows, columns=["prompt", "layer", "position", "token", "phi", "in_image"])
        return (
            df.astype({"prompt": int, "layer": int, "position": int, "in_image": bool})
            .sort_values(["prompt", "layer", "position"], kind="stable")
            .reset_index(drop=True)
        )

    def sinks_at(self, prompt: int, layer: int) -> list[int]:
        """Sink positions (visual and text) entering `layer` in prompt `prompt` (empty for layers 0-1)."""
        self._check_fitted()
        return sorted(self.sink_sets_.get((int(prompt), int(layer)), ()))

    def var_interventions(self, prompt: int = 0, keep_fraction: float | None = None) -> list[VARRedistribution]:
        """VAR for one fitted prompt: per layer 2..L-2 with a visual sink (any sink if `require_visual_sink`
        is False), one spec over all heads whose sinks are that layer's sink tokens (visual and text, as in
        the code), targets the image span, rows = text queries after the image (prefill), edited only where
        the row is image-centric (min_target_mass = min_image_attention, max_sink_share from rho and its
        convention). The last layer and layers 0-1 are never edited.

        Run it on that prompt's ids (`token_ids_[prompt]`): the positions are that prompt's.
        """
        self._check_fitted()
        if not (isinstance(prompt, (int, np.integer)) and 0 <= prompt < len(self.token_ids_)):
            raise InputError(f"prompt={prompt!r} out of range: fitted on {len(self.token_ids_)} prompts")
        keep = self.keep_fraction if keep_fraction is None else keep_fraction
        s, e = self.image_spans_[prompt]
        specs = []
        for layer in range(FIRST_SINK_LAYER, self.n_layers_ - 1):
            sinks = self.sinks_at(prompt, layer)
            visual = [t for t in sinks if s <= t < e]
            if not sinks or e >= len(self.token_ids_[prompt]) or (self.require_visual_sink and not visual):
                continue  # the official code leaves a layer without a visual sink untouched
            specs.append(
                VARRedistribution(
                    heads=tuple((layer, h) for h in range(self.n_heads_)),
                    positions=(e, None),
                    sinks=tuple(sinks),
                    targets=(s, e),
                    keep_fraction=keep,
                    min_target_mass=self.min_image_attention,
                    max_sink_share=self.max_sink_share_,
                )
            )
        return specs

    # --- calibrating tau ---------------------------------------------------------------------------------

    def phi_table(self) -> pd.DataFrame:
        """Every real token's phi entering every layer (prompt, layer, position, phi, in_image, is_sink)."""
        self._check_fitted()
        P, L, _ = self.phi_.shape
        rows = []
        for p in range(P):
            s, e = self.image_spans_[p]
            n = len(self.token_ids_[p])
            for layer in range(L):
                for t in range(n):
                    rows.append((p, layer, t, float(self.phi_[p, layer, t]), s <= t < e))
        df = pd.DataFrame(rows, columns=["prompt", "layer", "position", "phi", "in_image"])
        df["is_sink"] = (df["layer"] >= FIRST_SINK_LAYER) & (df["phi"] > self.tau)
        return df

    def tau_gap(self, layers=None) -> tuple[float, float]:
        """(low, high): the widest gap between consecutive sorted phi values of the given layers (default
        2..L-1) in the upper half of the range; a tau inside it separates sinks from the rest."""
        df = self.phi_table()
        layers = range(FIRST_SINK_LAYER, self.n_layers_) if layers is None else layers
        v = np.sort(df.loc[df["layer"].isin(list(layers)), "phi"].to_numpy())
        v = v[v >= v.max() / 2]
        if len(v) < 2:
            return float(v[0]), float(v[0])
        i = int(np.argmax(np.diff(v)))
        return float(v[i]), float(v[i + 1])

    # --- figures ---------------------------------------------------------------------------------------

    def plot(self, **kw):
        """Heatmap of the image-centric fraction per head (prompt mean)."""
        self._check_fitted()
        return self.scores_.plot(**kw)

    def plot_phi(self, prompt: int = 0):
        """phi per layer x position for one prompt (crosses: phi > tau), as in AttentionSinks.plot_phi."""
        self._check_fitted()
        n = len(self.token_ids_[prompt])
        fig = phi_heatmap(self.phi_[prompt, :, :n], self.tokens_[prompt], self.tau, self.sink_dims_, self.scores_.model)
        s, e = self.image_spans_[prompt]
        fig.add_vrect(x0=s - 0.5, x1=e - 0.5, line_width=1, line_color="orange", annotation_text="image")
        return fig

    def plot_phi_histogram(self, layers=None):
        """Histogram of phi (layers 2..L-1 by default) for image and text tokens, with the tau line."""
        df = self.phi_table()
        layers = range(FIRST_SINK_LAYER, self.n_layers_) if layers is None else layers
        return phi_histogram(df[df["layer"].isin(list(layers))], self.tau, self.sink_dims_, self.scores_.model)
