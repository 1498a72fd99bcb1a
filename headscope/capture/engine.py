"""The one hook engine: run the model over batches and hand each layer's activations to reducers.

Memory: a hook stashes a layer's tensors only until the last one that layer needs has fired,
then dispatches them to the reducers and drops them. Peak memory therefore stays that of a
plain forward pass (which materialises one layer's pattern at a time anyway) plus small
per-head accumulators. Full patterns are kept only with `keep_patterns=True`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from ..errors import InputError
from ..inputs.tokens import to_token_lists
from ..models.info import model_device, model_info
from ..results import HeadScores
from .batch import PromptImages, capture_batches
from .blocked import (
    ATTENTION_MODES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_PATTERN_BUDGET_MB,
    INTERNAL_SITES,
    Attention,
    block_aware,
    blocked_attention,
    pattern_mb,
    resolve_attention,
)
from .context import BatchContext
from .reducers import Reducer, Tower, default_reducers

# Hook sites in the order they fire inside one block; a layer's tensors are dispatched when the
# last site it needs has fired.
SITES = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "rot_q": "blocks.{l}.attn.hook_rot_q",
    "rot_k": "blocks.{l}.attn.hook_rot_k",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "z": "blocks.{l}.attn.hook_z",
    "attn_out": "blocks.{l}.hook_attn_out",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
}
ORDER = list(SITES)
# The vision tower of a LLaVA-class bridge: rows are images, positions are [CLS +] patches.
VISION_SITES = {
    "pattern": "vision_encoder.encoder_layers.{l}.attn.hook_pattern",  # [images, head, q, k]
    "z": "vision_encoder.encoder_layers.{l}.attn.hook_z",  # [images, pos, head, d_head]
}
TOWERS: dict[Tower, dict[str, str]] = {"language": SITES, "vision": VISION_SITES}


def site_name(site: str, layer: int, tower: Tower = "language") -> str:
    """The hook name of `site` at `layer` of a tower ("language": the decoder blocks; "vision": a VLM's
    vision encoder), the one table every hook in headscope is named from."""
    if tower not in TOWERS:
        raise InputError(f"tower={tower!r}: use one of {', '.join(TOWERS)}")
    if site not in TOWERS[tower]:
        raise InputError(f"unknown site {site!r} on the {tower} tower; sites: {', '.join(TOWERS[tower])}")
    return TOWERS[tower][site].format(l=int(layer))


@dataclass
class CaptureResult(Mapping):
    """Reducer name → its result (HeadScores for per-head reducers; residual-stream reducers may
    return their own result objects), plus the tokens and (only if asked) full patterns."""

    scores: dict[str, HeadScores | object]
    token_ids: list[list[int]]
    prompts: list[str] | None
    layers: list[int]
    patterns: list[torch.Tensor] | None = field(default=None, repr=False)  # per prompt [len(layers), head, q, k]

    def __getitem__(self, name: str) -> Any:  # each reducer's own `result_type` (HeadScores for most)
        try:
            return self.scores[name]
        except KeyError:
            raise KeyError(f"no reducer named {name!r}; captured: {', '.join(self.scores)}") from None

    def __iter__(self):
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)


def _check_reducers(reducers) -> list[Reducer]:
    reducers = default_reducers() if reducers is None else list(reducers)
    if not reducers:
        raise InputError("reducers is empty: pass None for the defaults or at least one Reducer")
    names = set()
    for r in reducers:
        if not isinstance(r, Reducer):
            raise InputError(
                f"{r!r} is not a headscope Reducer instance (did you pass the class? use {getattr(r, '__name__', r)}())"
            )
        if r.tower not in TOWERS:
            raise InputError(f"reducer {r.name!r} has tower={r.tower!r}: use one of {', '.join(TOWERS)}")
        known = list(TOWERS[r.tower])
        unknown = set(r.needs) - set(known)
        if unknown:
            raise InputError(
                f"reducer {r.name!r} needs unknown activations {sorted(unknown)}; the {r.tower} tower has {known}"
            )
        if r.name in names:
            raise InputError(f"two reducers are named {r.name!r}; give each a distinct name")
        names.add(r.name)
    return reducers


def for_reducers(tensor: torch.Tensor) -> torch.Tensor:
    """An activation as reducers see it: detached, on the CPU, floating point in at least fp32 (so a
    bf16/fp16 or GPU model gives statistics accumulated in fp32 by the same reducer code)."""
    t = tensor.detach()
    if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.cpu()


# Sites a pattern reader fed by blocks may read besides the pattern: those that fire before attention.
_BEFORE_ATTENTION = ("resid_pre",)


def capture(
    model,
    inputs,
    reducers=None,
    *,
    layers=None,
    batch_size: int = 8,
    keep_patterns: bool = False,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
    attention: Attention = "auto",
    block_size: int | None = DEFAULT_BLOCK_SIZE,
    max_pattern_mb: float = DEFAULT_PATTERN_BUDGET_MB,
) -> CaptureResult:
    """Run `model` over `inputs` and reduce each layer's activations to per-head statistics.

    Args:
        model: a TransformerBridge (e.g. from `headscope.load_model()`).
        inputs: a string, a list of strings (any lengths: batches are right-padded and masked),
            `headscope.inputs.images.ImagePrompt`s (their pixel values go with their batch),
            a LongTensor [batch, pos], or a list of token-id lists.
        reducers: Reducer instances (default: the six of `reducers.default_reducers()`).
        layers: layers to capture (default every layer with attention heads: all but a hybrid's linear-attention
            / Mamba layers, whose rows of the results are NaN); the forward stops after the last one.
        batch_size: prompts per forward pass.
        keep_patterns: also return every prompt's full [layer, head, q, k] pattern, layer i being
            `result.layers[i]` (memory!).
        prepend_bos: override the model's default (False for the bundled SmolLM2).
        progress: show a progress bar over batches (default: when there is more than one batch).
        attention: "eager" (the bridge's attention: every layer's [batch, head, T, T] pattern in memory),
            "blocked" (the fused kernel, statistics recomputed `block_size` query rows at a time: memory
            O(T), for long contexts; see `headscope.capture.blocked`), or "auto" (default): eager while a
            batch's pattern fits `max_pattern_mb`, blocked past it.
        block_size: query rows per block on the blocked path (None: d_mlp / (4 heads), see docs/long-context.md).
        max_pattern_mb: the budget "auto" compares one layer's float32 pattern of a batch with.

    Returns:
        CaptureResult mapping reducer name → HeadScores of shape [prompt, layer, head].

    Example:
        >>> from headscope.testing import tiny_model
        >>> res = capture(tiny_model(), ["t2 t3 t4 t2 t3 t4"])
        >>> res["induction_score"].values.shape
        (1, 2, 4)
    """
    if attention not in ATTENTION_MODES:
        raise InputError(f"attention={attention!r}: use one of {', '.join(ATTENTION_MODES)}")
    info = model_info(model)
    reducers = _check_reducers(reducers)
    layers = info.check_layers(layers)
    token_lists = to_token_lists(model, inputs, info, prepend_bos)
    images = PromptImages.of(inputs)  # ImagePrompt rows: each batch carries its rows' pixel values
    vision = [r for r in reducers if r.tower == "vision"]
    reducers = [r for r in reducers if r.tower != "vision"]
    if vision and images is None:
        raise InputError("a vision-tower reducer needs ImagePrompts (prompts with pixel values)")
    if vision and not reducers:  # only the vision tower is read: one decoder block is enough
        layers = [0]
    prompts = (
        list(inputs)
        if isinstance(inputs, (list, tuple)) and all(isinstance(p, str) for p in inputs)
        else ([inputs] if isinstance(inputs, str) else None)
    )
    for r in reducers:
        r.start(info, len(token_lists))
    for r in vision:
        r.start(info, images.count if images is not None else 0)
    kept: list[list[torch.Tensor]] | None = [[] for _ in token_lists] if keep_patterns else None
    kept_mb = sum(len(layers) * pattern_mb(1, info.n_heads, len(t)) for t in token_lists) if keep_patterns else 0
    why_not = functools.partial(_why_not_blocked, reducers, keep_patterns, kept_mb, images is not None)

    pad_id = info.pad_token_id if info.pad_token_id is not None else 0
    batches = list(capture_batches(token_lists, batch_size, pad_id, images))
    device = model_device(model)  # inputs follow the model; reducers work on CPU float32 copies
    show = progress if progress is not None else len(batches) > 1
    # The forward ends after the last captured block: no final norm and no [T, vocabulary] logits (TL's own
    # stop_at_layer stops only before a block, so the last block's output hook stops it).
    stop = (SITES["resid_post"].format(l=layers[-1]), _stop_forward)
    for batch in tqdm(batches, desc="capture", unit="batch", disable=not show):
        ctx = BatchContext(batch, info)
        blocked = resolve_attention(
            model, attention, *batch.tokens.shape, max_pattern_mb=max_pattern_mb, why_not=why_not
        )
        hooks = _blocked_hooks(layers, reducers, ctx) if blocked else _whole_hooks(layers, reducers, ctx, kept)
        if vision:
            hooks += _whole_hooks(range(_vision_layers(model)), vision, ctx, tower="vision")
        hooks.append(stop)  # last: the layer's own hooks run first
        with torch.no_grad(), _attached(model, hooks, blocked, block_size, layers):
            model(batch.tokens.to(device), **batch.forward_kwargs(device))

    scores = {r.name: _checked_result(r, info, prompts) for r in reducers + vision}
    patterns = [torch.stack(p) for p in kept] if kept is not None else None
    return CaptureResult(scores, token_lists, prompts, layers, patterns)


@contextlib.contextmanager
def _attached(model, hooks: list, blocked: bool, block_size: int | None, layers: list[int]) -> Iterator[None]:
    """`hooks` attached for one forward: on the bridge (eager) or in a blocked-attention context, whose
    kernel must then have run on every captured layer."""
    if not blocked:
        with model.hooks(fwd_hooks=hooks):
            yield
        return
    with blocked_attention(model, hooks, block_size=block_size) as session:
        yield
        _check_calls(session, layers)


def _stop_forward(tensor, hook):
    raise StopAtLayerException(tensor)  # the bridge's forward catches it and returns


def _needs(reducers, keep_patterns: bool = False, tower: Tower = "language") -> list[str]:
    """The sites `reducers` read on `tower`, in the order they fire within a layer."""
    order = list(TOWERS[tower])
    return sorted({n for r in reducers for n in r.needs} | ({"pattern"} if keep_patterns else set()), key=order.index)


def _whole_hooks(layers, reducers, ctx: BatchContext, kept=None, tower: Tower = "language") -> list:
    """Hooks that stash a layer's activations and hand them whole to every reducer (`Reducer.update`: all
    query rows as one block) when the layer's last needed site fires; `kept` collects the patterns."""
    sites = TOWERS[tower]
    needs = _needs(reducers, kept is not None, tower)
    last_site = needs[-1] if needs else None  # no decoder reducer: only the vision tower is hooked
    stash: dict[str, torch.Tensor] = {}

    def make_hook(layer: int, site: str):
        def hook(tensor, hook):
            stash[site] = for_reducers(tensor)
            if site == last_site:
                acts = dict(stash)
                stash.clear()
                for r in reducers:
                    r.update(layer, {n: acts[n] for n in r.needs}, ctx)
                if kept is not None:
                    for row, idx in enumerate(ctx.index):
                        n = int(ctx.batch.lengths[row])
                        kept[idx].append(acts["pattern"][row, :, :n, :n].float().cpu().clone())
            return None  # observe only: never modify the forward pass

        return hook

    return [(sites[s].format(l=layer), make_hook(layer, s)) for layer in layers for s in needs]


def _blocked_hooks(layers, reducers, ctx: BatchContext) -> list:
    """Hooks for blocked attention: pattern readers get each block of rows through `update_rows` (with the
    earlier sites they read whole) and `end_layer` after the layer's last block; the other reducers are
    served as in eager (`update`: their whole layer as one block)."""
    readers = [r for r in reducers if "pattern" in r.needs]
    others = [r for r in reducers if "pattern" not in r.needs]
    other_needs = _needs(others)
    last_other = other_needs[-1] if other_needs else None
    stashed = sorted(set(other_needs) | {n for r in readers for n in r.needs if n != "pattern"}, key=ORDER.index)
    stash: dict[tuple[int, str], torch.Tensor] = {}

    def make_stash(layer: int, site: str):
        def hook(tensor, hook):
            for done in [k for k in stash if k[0] < layer]:  # an earlier layer's activations are all used
                del stash[done]
            stash[layer, site] = for_reducers(tensor)
            if site == last_other:
                for r in others:
                    r.update(layer, {n: stash[layer, n] for n in r.needs}, ctx)
            return None

        return hook

    scores: dict[int, torch.Tensor] = {}

    def make_scores(layer: int):
        def hook(block, hook):  # the block's masked scores, for readers that use them when given
            if block.dtype in (torch.float32, torch.float64):  # a half-precision pattern is read as is
                scores[layer] = for_reducers(block)
            return None

        return block_aware(hook)

    def make_rows(layer: int):
        def hook(pattern, hook):
            block = for_reducers(pattern)  # [batch, head, rows, n_keys]: a causal block ends at its last query
            rows = ctx.rows(hook.start, hook.stop, block.shape[-1])
            given = scores.pop(layer, None)
            for r in readers:
                acts = {n: block if n == "pattern" else stash[layer, n] for n in r.needs}
                if given is not None and "attn_scores" in r.optional_needs:
                    acts["attn_scores"] = given
                r.update_rows(layer, acts, rows)
            return None

        return block_aware(hook)

    def make_end(layer: int):
        def hook(z, hook):
            for r in readers:
                r.end_layer(layer, ctx)
            return None

        return hook

    hooks = []
    for layer in layers:
        hooks += [(SITES[s].format(l=layer), make_stash(layer, s)) for s in stashed]
        if any("attn_scores" in r.optional_needs for r in readers):
            hooks.append((SITES["attn_scores"].format(l=layer), make_scores(layer)))
        if readers:
            hooks += [
                (SITES["pattern"].format(l=layer), make_rows(layer)),
                (SITES["z"].format(l=layer), make_end(layer)),
            ]
    return hooks


def _check_calls(session, layers) -> None:
    missing = [l for l in layers if session.calls.get(l, 0) < 1]
    if missing:  # the probe passed, so this would be an upstream change mid-run: never return partial stats
        raise RuntimeError(f"blocked attention was not called on layers {missing}; rerun with attention='eager'")


def _why_not_blocked(reducers, keep_patterns: bool, kept_mb: float, with_images: bool) -> list[str]:
    why = [f"keep_patterns=True keeps every full pattern ({kept_mb:,.0f} MB for these inputs)"] if keep_patterns else []
    if with_images:  # the support probe is text-only: an image forward's masks are not checked
        why.append("the inputs carry images")
    for r in reducers:
        inside = sorted(set(r.needs) & (set(INTERNAL_SITES) - {"pattern", "z"}))  # what the kernel does not hand out
        if inside:
            why.append(f"reducer {r.name!r} reads {inside}, which blocked attention does not offer")
        elif "pattern" in r.needs and not r.fed_by_blocks:
            why.append(f"reducer {r.name!r} ({type(r).__name__}) needs the whole pattern (fed_by_blocks = False)")
        elif "pattern" in r.needs and set(r.needs) - {"pattern", *_BEFORE_ATTENTION}:
            why.append(f"reducer {r.name!r} reads the pattern together with activations after attention")
    return why


def _checked_result(reducer: Reducer, info, prompts):
    out = reducer.result(info, prompts)
    if not isinstance(out, reducer.result_type):
        raise TypeError(
            f"{type(reducer).__name__}.result() returned a {type(out).__name__}, not its declared "
            f"result_type {reducer.result_type.__name__} (a bug in the reducer)"
        )
    return out


def _vision_layers(model) -> int:
    """The number of encoder layers of a VLM's vision tower."""
    return int(model.original_model.config.vision_config.num_hidden_layers)
