"""ViT heads of a VLM's vision tower (after Li et al., "How Does Attention Work in Vision Transformers?
A Visual Analytics Attempt", IEEE VIS 2023): per head, how far it looks and how much it matters.

- **Attention distance** (Dosovitskiy et al. 2021, ViT Fig. 7): for each patch query, the sum over patch
  keys of attention x the Euclidean distance between the two patch centres in pixels, averaged over
  queries; one value per image, layer and head (`attention_distance_`). CLS convention: the CLS query
  is excluded, and so is the CLS key, each query row being renormalised over the patch keys; the mass
  a patch query puts on CLS is reported separately (`cls_attention_`), so the "CLS at distance 0"
  variant is ``attention_distance_ * (1 - cls_attention_)``.
- **Importance by pruning**: the drop of a downstream metric (default: the VLM's answer loss) when that
  head alone is pruned, i.e. its output zeroed at ``vision_encoder.encoder_layers.{l}.attn.hook_z``
  (the input of ``out_proj``, so this equals zeroing the head's columns of ``out_proj.weight``), and the
  cumulative pruning curve (heads pruned in order of increasing importance).

All single-head variants share forwards: the images are stacked along the batch axis once per variant
and one gate hook per layer multiplies each variant block's heads by its gate row (`vision_gate_hooks`).

    >>> vit = ViTHeads().fit(load_model("shapes-vlm"))          # built-in shapes questions
    >>> vit.importance_.top(5); vit.attention_distance_.mean_over_prompts()
    >>> vit.plot(); vit.plot_pruning(); vit.pruning_curve_
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..capture.engine import VISION_SITES, capture
from ..capture.reducers import Reducer
from ..errors import InputError
from ..inputs.images import ImagePrompt
from ..inputs.spans import image_token_ids
from ..interventions.hooks import head_gate_hooks
from ..models.info import model_info
from ..results import HeadScores
from ..vision import shapes
from ..vision.shapes_eval import default_eval_sets
from .atlas_entry import AtlasEntry
from .base import Analyzer, register, select_heads
from .params import Boolean, Interval, IsCallable, Options
from .vit_heads_figures import pruning_curve_figure, vit_distance_figure

Z_HOOK = VISION_SITES["z"]  # [images, pos, head, d_head]
PATTERN_HOOK = VISION_SITES["pattern"]  # [images, head, q, k]
Metric = Literal["loss", "accuracy"]
METRICS: dict[Metric, bool] = {"loss": False, "accuracy": True}  # built-in metric -> greater_is_better


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True, eq=False)
class AnswerItem:
    """One VLM example: ids (image tokens and the answer included), its images, where the answer is.

    The answer tokens ``ids[p]`` for p in `answer_positions` are scored from the logits at ``p - 1``.
    """

    ids: tuple[int, ...]
    pixel_values: torch.Tensor  # [n_images, C, H, W]
    answer_positions: tuple[int, ...]

    def __post_init__(self):
        ids = self.ids.reshape(-1).tolist() if isinstance(self.ids, torch.Tensor) else list(self.ids)
        object.__setattr__(self, "ids", tuple(int(t) for t in ids))
        px = self.pixel_values
        if not isinstance(px, torch.Tensor) or not px.is_floating_point() or px.ndim not in (3, 4):
            raise InputError("AnswerItem.pixel_values must be a float tensor [n_images, C, H, W] (or [C, H, W])")
        object.__setattr__(self, "pixel_values", px if px.ndim == 4 else px.unsqueeze(0))
        pos = tuple(int(p) for p in self.answer_positions)
        if not pos or any(not 1 <= p < len(ids) for p in pos):
            raise InputError(
                f"AnswerItem.answer_positions {pos} must be non-empty positions in 1..{len(ids) - 1} "
                "(the answer tokens inside ids; position 0 has nothing before it to predict it)"
            )
        object.__setattr__(self, "answer_positions", pos)


def as_answer_items(data) -> list[AnswerItem]:
    """AnswerItems from AnswerItems, dicts ({ids|input_ids, pixel_values, answer_positions | n_prompt}) or
    shapes-world QAItems (encoded with the shapes tokenizer)."""
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence) or not data:
        raise InputError(
            "vit-heads data must be a non-empty list of items (AnswerItem, dict with ids, "
            "pixel_values and answer_positions or n_prompt, or shapes QAItems)"
        )
    return [_as_item(x, i) for i, x in enumerate(data)]


def _as_item(x, index: int) -> AnswerItem:
    if isinstance(x, AnswerItem):
        return x
    if isinstance(x, dict):
        ids = x.get("ids", x.get("input_ids"))
        if ids is None or "pixel_values" not in x or not ({"answer_positions", "n_prompt"} & x.keys()):
            raise InputError(
                f"item {index}: a dict item needs 'ids' (or 'input_ids'), 'pixel_values' and "
                f"'answer_positions' (or 'n_prompt'); got keys {sorted(x)}"
            )
        n = len(ids.reshape(-1) if isinstance(ids, torch.Tensor) else ids)
        pos = x["answer_positions"] if "answer_positions" in x else range(int(x["n_prompt"]), n)
        return AnswerItem(ids, x["pixel_values"], tuple(pos))
    if hasattr(x, "question") and hasattr(x, "answer") and hasattr(x, "scene"):  # a shapes QAItem
        if x.scene is None:
            raise InputError(
                f"item {index} is a text-only shapes item: the vision tower never sees it; "
                "use image items (shapes.sample_items(..., text_fraction=0))"
            )
        ids, n_prompt = shapes.encode_item(x)  # ids straight from the world vocabulary
        return AnswerItem(tuple(ids), shapes.render(x.scene), tuple(range(n_prompt, len(ids))))
    raise InputError(f"item {index} is a {type(x).__name__}; pass AnswerItem, a dict or a shapes QAItem")


def default_items(model, n: int) -> list[AnswerItem]:
    """The built-in data: the first `n` one-word image questions of the shapes-vlm held-out set
    (`shapes_eval.default_eval_sets()["image_qa"]`, kinds balanced); for other models an InputError."""
    if model_info(model).testbed != "shapes-vlm":
        raise InputError(
            "vit-heads has built-in data only for shapes-vlm: pass data=[AnswerItem(ids, pixel_values, "
            "answer_positions), ...] (ids containing the image tokens and the answer) for this model"
        )
    return as_answer_items(default_eval_sets(n_image=n, n_pope_scenes=1, n_describe=1)["image_qa"])


# ----------------------------------------------------------------------------- the vision tower


@dataclass(frozen=True)
class VisionTower:
    """Geometry of a CLIP-style vision tower: layers, heads and the square patch grid."""

    n_layers: int
    n_heads: int
    image_size: int
    patch_size: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2

    def centres(self) -> np.ndarray:
        """[n_patches, 2] (x, y) patch centres in pixels, row-major as the patch conv flattens them."""
        row, col = np.divmod(np.arange(self.n_patches), self.grid)
        return (np.stack([col, row], axis=1) + 0.5) * self.patch_size

    def distances(self) -> np.ndarray:
        """[n_patches, n_patches] Euclidean distance between patch centres, in pixels."""
        c = self.centres()
        return np.linalg.norm(c[:, None] - c[None], axis=-1)


def vision_tower(model) -> VisionTower:
    """The vision tower of a LLaVA-class bridge; InputError if the model has none with head hooks."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    vision = getattr(config, "vision_config", None)
    hooks = getattr(model, "hook_dict", {})
    if vision is None or Z_HOOK.format(l=0) not in hooks or PATTERN_HOOK.format(l=0) not in hooks:
        raise InputError(
            "vit-heads needs a vision-language model with a CLIP-style vision tower (hooks "
            f"{Z_HOOK.format(l=0)!r}); load one, e.g. load_model('shapes-vlm') or a LLaVA checkpoint"
        )
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
    return VisionTower(int(vision.num_hidden_layers), int(vision.num_attention_heads), int(size), int(patch))


def vision_gate_hooks(gates: torch.Tensor) -> list[tuple[str, Any]]:
    """Hooks multiplying each vision head's output by a gate per stacked variant ([variants, L, H]; the
    vision batch holds the variants' images in variant-major blocks): the engine's head gates on the
    vision tower."""
    return head_gate_hooks(gates, tower="vision")


def single_head_gates(tower: VisionTower) -> torch.Tensor:
    """[L*H, L, H]: variant k prunes head k (row-major (layer, head)) and nothing else."""
    n = tower.n_layers * tower.n_heads
    return (1.0 - torch.eye(n)).reshape(n, tower.n_layers, tower.n_heads)


def cumulative_gates(tower: VisionTower, order: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[len(order)+1, L, H]: variant k prunes the first k heads of `order`."""
    n = tower.n_layers * tower.n_heads
    rank = torch.full((n,), n + 1)  # heads not in `order` are never pruned
    rank[torch.tensor([layer * tower.n_heads + head for layer, head in order], dtype=torch.long)] = torch.arange(
        len(order)
    )
    pruned = rank[None, :] < torch.arange(len(order) + 1)[:, None]  # [variants, L*H]
    return (~pruned).float().reshape(-1, tower.n_layers, tower.n_heads)


# ----------------------------------------------------------------------------- forwards


def _pad_id(model) -> int:
    tok = getattr(model, "tokenizer", None)
    image = image_token_ids(model)
    candidates = (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None), 0, 1, 3)
    return next(int(t) for t in candidates if t is not None and int(t) not in image)


def _batch(model, items: list[AnswerItem], copies: int) -> tuple[torch.Tensor, dict]:
    """Right-padded ids [copies * items, T] and pixel values, variant-major. Right padding needs no mask:
    a causal model's real positions never see the pads after them."""
    width = max(len(it.ids) for it in items)
    pad = _pad_id(model)
    ids = torch.tensor([list(it.ids) + [pad] * (width - len(it.ids)) for it in items]).repeat(copies, 1)
    px = [it.pixel_values for it in items if it.pixel_values.shape[0]]
    device = next(model.parameters()).device
    kwargs = {"pixel_values": torch.cat(px).repeat(copies, 1, 1, 1).to(device)} if px else {}
    return ids.to(device), kwargs


def _answer_stats(logits: torch.Tensor, ids: torch.Tensor, items: list[AnswerItem]) -> torch.Tensor:
    """[rows, 3] float64: summed answer cross-entropy, correct argmax answers, answer tokens, per row
    (row r holds items[r % len(items)])."""
    rows = torch.arange(len(ids)).repeat_interleave(
        torch.tensor([len(items[r % len(items)].answer_positions) for r in range(len(ids))])
    )
    pos = torch.tensor([p for r in range(len(ids)) for p in items[r % len(items)].answer_positions])
    logp = logits[rows, pos - 1].double().log_softmax(-1)  # [answer tokens, vocab]
    target = ids[rows, pos].to(logp.device)
    ce = -logp.gather(-1, target[:, None])[:, 0]
    correct = (logp.argmax(-1) == target).double()
    out = torch.zeros(len(ids), 3, dtype=torch.float64)
    for col, value in enumerate((ce, correct, torch.ones_like(ce))):
        out[:, col].index_add_(0, rows, value.cpu())
    return out


@torch.no_grad()
def _stats(model, items: list[AnswerItem], gates: torch.Tensor, batch_size: int, extra_hooks=()) -> np.ndarray:
    """[variants, 3] answer statistics summed over items, for every gate variant, `batch_size` rows a forward."""
    n_variants = gates.shape[0]
    chunk = min(len(items), batch_size)
    per_forward = max(1, batch_size // chunk)
    total = torch.zeros(n_variants, 3, dtype=torch.float64)
    for i in range(0, len(items), chunk):
        part = items[i : i + chunk]
        for v in range(0, n_variants, per_forward):
            g = gates[v : v + per_forward]
            ids, kwargs = _batch(model, part, len(g))
            with model.hooks(fwd_hooks=[*vision_gate_hooks(g), *extra_hooks]):
                logits = model(ids, **kwargs)
            total[v : v + len(g)] += _answer_stats(logits, ids, part).reshape(len(g), len(part), 3).sum(1)
    return total.numpy()


def metric_under_gates(
    model,
    items: list[AnswerItem],
    gates: torch.Tensor,
    metric: Metric | Callable = "loss",
    batch_size: int = 16,
    extra_hooks=(),
) -> np.ndarray:
    """The metric under each gate variant, [variants]: a built-in ("loss", "accuracy"; variants stacked
    along the batch axis) or a callable fn(model, items) (one call per variant, under that variant's hooks).

        >>> metric_under_gates(model, items, cumulative_gates(tower, order))   # a pruning curve
    """
    if callable(metric):
        out = []
        for g in gates:  # an opaque metric cannot share forwards
            with model.hooks(fwd_hooks=[*vision_gate_hooks(g[None]), *extra_hooks]):
                out.append(float(metric(model, items)))
        return np.array(out)
    if metric not in METRICS:
        raise InputError(f"metric={metric!r}: use one of {sorted(METRICS)} or a callable fn(model, items)")
    stats = _stats(model, items, gates, batch_size, extra_hooks)
    return stats[:, 0 if metric == "loss" else 1] / stats[:, 2]


def attention_distance(pattern: torch.Tensor, tower: VisionTower) -> tuple[torch.Tensor, torch.Tensor]:
    """([images, head] mean attention distance in pixels, [images, head] patch-query mass on CLS) from a
    pattern [images, head, q, k]. Patch queries only; CLS key dropped and each row renormalised."""
    prefix = pattern.shape[-1] - tower.n_patches
    if prefix not in (0, 1) or pattern.shape[-2] != pattern.shape[-1]:
        raise InputError(
            f"vision pattern {tuple(pattern.shape)} does not fit a {tower.grid}x{tower.grid} patch grid "
            "(+ optional CLS): check image_size / patch_size of the vision config"
        )
    p = pattern[..., prefix:, :].double()  # [images, head, patch q, k]
    patches = p[..., prefix:]
    dist = torch.from_numpy(tower.distances())
    d = ((patches / patches.sum(-1, keepdim=True).clamp_min(1e-30)) * dist).sum(-1).mean(-1)
    cls = p[..., 0].mean(-1) if prefix else torch.zeros_like(d)
    return d, cls


@dataclass
class VisionDistances:
    """Per image, layer and head: mean attention distance (pixels) and patch-query mass on CLS."""

    distance: np.ndarray  # [images, layer, head]
    cls: np.ndarray


class VisionAttentionDistance(Reducer):
    """A vision-tower reducer: `attention_distance` of every image's pattern at every vision layer."""

    name = "vision_attention_distance"
    needs = ("pattern",)
    tower = "vision"
    result_type = VisionDistances
    description = "Mean attention distance (pixels) of each vision head's patch queries."

    def __init__(self, geometry: VisionTower):
        self.geometry = geometry

    def start(self, info, n_images: int) -> None:
        shape = (n_images, self.geometry.n_layers, self.geometry.n_heads)
        self._distance, self._cls = np.full(shape, np.nan), np.full(shape, np.nan)

    def update_rows(self, layer, acts, ctx) -> None:  # rows are images: ctx.image_index numbers them
        distance, cls = attention_distance(acts["pattern"], self.geometry)  # [images, head]
        self._distance[ctx.image_index, layer] = distance.numpy()
        self._cls[ctx.image_index, layer] = cls.numpy()

    def result(self, info, prompts=None) -> VisionDistances:
        if np.isnan(self._distance).any():
            raise InputError(
                "no vision attention pattern was captured: load the model with "
                "attn_implementation='eager' (SDPA/flash attention return no weights)"
            )
        return VisionDistances(self._distance, self._cls)


# ----------------------------------------------------------------------------- the analyzer


@register
class ViTHeads(Analyzer):
    """Vision-tower heads of a VLM: attention distance (pixels) and importance by pruning.

    Parameters:
        metric: "loss" (answer-token cross-entropy, the default), "accuracy" (argmax answer tokens), or a
            callable ``fn(model, items) -> float`` run under the pruning hooks (one call per variant).
        greater_is_better: direction of the metric (needed for a callable; built-ins know theirs).
            Importance = how much worse the metric gets, so it is > 0 for heads that help.
        prune_curve: also prune cumulatively in order of increasing importance (`pruning_curve_`).
        batch_size: rows (item x variant) per forward.
        n_items: size of the built-in shapes-vlm data (used when data=None).
    """

    name = "vit-heads"
    description = (
        "Vision-tower heads of a VLM: mean attention distance in pixels (ViT) and the metric drop "
        "when each head alone is pruned, plus the cumulative pruning curve (Li et al. VIS 2023)."
    )
    atlas = AtlasEntry(
        what=(
            "The VLM's vision-tower heads (their own layer x head grid, not the language model's): mean "
            "attention distance in pixels and how much the answer metric drops when each head is pruned."
        ),
        docs="vit-heads.md",
        quick={"prune_curve": False},
        full={},
        grid="vision tower",
    )

    input_kind = (
        "AnswerItems (ids with the image tokens, pixel values, answer positions), dicts or shapes "
        "QAItems (None: shapes-vlm's held-out image questions)"
    )
    requires = frozenset({"vision_tower"})
    ci_refusal = (
        "the pruning importance is one metric over all items together (no per-item value to "
        "resample), and a resample would need the model again. Fix: attention_distance_.ci() and "
        "cls_attention_.ci() resample the images"
    )
    parameter_constraints = {
        "metric": [Options(*sorted(METRICS)), IsCallable()],
        "greater_is_better": [None, Boolean()],
        "prune_curve": [Boolean()],
        "batch_size": [Interval(int, 1, None)],
        "n_items": [Interval(int, 1, None)],
        "top_k": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        metric: Metric | Callable = "loss",
        greater_is_better: bool | None = None,
        prune_curve: bool = True,
        batch_size: int = 16,
        n_items: int = 48,
        top_k: int = 10,
    ):
        self.top_k = top_k
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.prune_curve = prune_curve
        self.batch_size = batch_size
        self.n_items = n_items

    def _check_params(self, info) -> None:
        if callable(self.metric) and self.greater_is_better is None:
            raise InputError("a callable metric needs greater_is_better=True (accuracy-like) or False (loss-like)")

    def _direction(self) -> float:
        """+1 if lower metric is better (a loss), -1 if higher is."""
        if callable(self.metric):
            return -1.0 if self.greater_is_better else 1.0
        return -1.0 if METRICS[self.metric] else 1.0

    def prepare_data(self, model, data=None) -> list[AnswerItem]:
        """AnswerItems with at least one image; None = shapes-vlm's built-in image questions."""
        items = default_items(model, int(self.n_items)) if data is None else as_answer_items(data)
        if not any(it.pixel_values.shape[0] for it in items):
            raise InputError("no item has an image: the vision tower never runs; pass items with pixel_values")
        return items

    @classmethod
    def example_data(cls, model):
        """Two random questions about a random image, a 3-token answer each."""
        tower, image = vision_tower(model), min(model_info(model).image_token_ids)
        g = torch.Generator().manual_seed(0)
        low, high = (2, image) if image > 4 else (image + 1, int(model.cfg.d_vocab))
        bos = [model_info(model).bos_token_id] if model_info(model).bos_token_id is not None else []
        block = [image] * (tower.image_size // tower.patch_size) ** 2
        items = []
        for _ in range(2):
            text = [torch.randint(low, high, (n,), generator=g).tolist() for n in (2, 4)]
            ids = bos + text[0] + block + text[1]
            pixels = torch.rand(1, 3, tower.image_size, tower.image_size, generator=g)
            items.append(AnswerItem(tuple(ids), pixels, tuple(range(len(ids) - 3, len(ids)))))
        return items

    def _metric(self, model, items, gates: torch.Tensor) -> np.ndarray:
        return metric_under_gates(model, items, gates, self.metric, self.batch_size)

    def _fit(self, model, items: list[AnswerItem]) -> None:
        sign = self._direction()
        tower = vision_tower(model)
        name = model_info(model).name
        meta: dict[str, Any] = {"model": name, "analyzer": self.name, "params": self.get_params(), "n_kv_heads": None}

        distances, cls_mass = self._clean_pass(model, items, tower)
        labels = [f"item {i} image {j}" for i, it in enumerate(items) for j in range(it.pixel_values.shape[0])]
        self.attention_distance_ = HeadScores(
            distances,
            name="attention_distance",
            prompts=labels,
            **meta,
            description="mean attention distance in pixels (patch queries, patch keys renormalised without CLS)",
        )
        self.cls_attention_ = HeadScores(
            cls_mass,
            name="cls_attention",
            prompts=labels,
            **meta,
            description="mean attention of patch queries to the CLS key",
        )

        pruned = self._metric(model, items, single_head_gates(tower))
        drop = sign * (pruned - self.metric_clean_) + 0.0  # + 0.0: no -0.0 in tables
        self.importance_ = HeadScores(
            drop.reshape(1, tower.n_layers, tower.n_heads),
            name="pruning_importance",
            **meta,
            description=f"{self._metric_name()} drop when the head alone is pruned",
        )
        self.scores_ = self.importance_
        self.heads_ = select_heads(self.importance_, top_k=self.top_k)
        self.tower_ = tower
        self.n_items_ = len(items)
        if self.prune_curve:
            self.pruning_curve_ = self._curve(model, items, tower, sign)

    def _metric_name(self) -> str:
        return getattr(self.metric, "__name__", "metric") if callable(self.metric) else f"answer {self.metric}"

    def _clean_pass(self, model, items, tower):
        """The clean metric, and every image's attention distances from the capture engine's vision tower."""
        one = torch.ones(1, tower.n_layers, tower.n_heads)
        self.metric_clean_ = float(self._metric(model, items, one)[0])
        reducer = VisionAttentionDistance(tower)
        prompts = [ImagePrompt(tuple(int(t) for t in it.ids), it.pixel_values) for it in items]
        got: Any = capture(model, prompts, [reducer], batch_size=self.batch_size, progress=False)[reducer.name]
        return got.distance, got.cls  # [images, layer, head]

    def _curve(self, model, items, tower, sign) -> pd.DataFrame:
        order = select_heads(self.importance_, top_fraction=1.0, better="lower")  # least important first
        values = self._metric(model, items, cumulative_gates(tower, order))
        n = len(order)
        return pd.DataFrame(
            {
                "n_pruned": np.arange(n + 1),
                "fraction_pruned": np.arange(n + 1) / n,
                "last_pruned": [""] + [f"L{l}H{h}" for l, h in order],
                "metric": values,
                "drop": sign * (values - self.metric_clean_) + 0.0,
            }
        )

    # ------------------------------------------------------------------------- figures

    def plot(self, **kw):
        """Attention distance vs layer, one point per head (mean over images, bar = std), coloured by importance."""
        t = self.tower_
        title = kw.pop(
            "title",
            f"Vision-tower heads of {self.importance_.model or 'model'}: attention distance "
            f"({t.grid}x{t.grid} patches of {t.patch_size} px)",
        )
        return vit_distance_figure(
            self.attention_distance_.values,
            self.importance_.values[0],
            float(t.distances().mean()),
            metric=self._metric_name(),
            title=title,
            **kw,
        )

    def plot_pruning(self, **kw):
        """The metric after pruning the k least important heads, k = 0..all."""
        self._check_fitted()
        if "pruning_curve_" not in vars(self):
            raise InputError("no pruning curve: fit with prune_curve=True")
        title = kw.pop(
            "title", f"Cumulative pruning of vision heads (least important first), {self.importance_.model or 'model'}"
        )
        return pruning_curve_figure(
            self.pruning_curve_, self.metric_clean_, metric=self._metric_name(), title=title, **kw
        )
