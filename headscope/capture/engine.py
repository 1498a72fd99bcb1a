"""The one hook engine: run the model over batches and hand each layer's activations to reducers.

Memory: a hook stashes a layer's tensors only until the last one that layer needs has fired,
then dispatches them to the reducers and drops them. Peak memory therefore stays that of a
plain forward pass (which materialises one layer's pattern at a time anyway) plus small
per-head accumulators. Full patterns are kept only with `keep_patterns=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..inputs.images import batch_forward_kwargs, images_of
from ..inputs.tokens import iter_batches, to_token_lists
from ..models.info import model_device, model_info
from ..results import HeadScores
from .context import BatchContext
from .reducers import Reducer, default_reducers

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
TOWERS = {"language": SITES, "vision": VISION_SITES}


def site_name(site: str, layer: int, tower: str = "language") -> str:
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
    patterns: list[torch.Tensor] | None = field(default=None, repr=False)  # per prompt [layer, head, q, k]

    def __getitem__(self, name: str) -> HeadScores:
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
            raise InputError(f"{r!r} is not a headscope Reducer instance (did you pass the class? use {getattr(r, '__name__', r)}())")
        unknown = set(r.needs) - set(SITES)
        if unknown:
            raise InputError(f"reducer {r.name!r} needs unknown activations {sorted(unknown)}; known: {ORDER}")
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


def capture(model, inputs, reducers=None, *, layers=None, batch_size: int = 8, keep_patterns: bool = False,
            prepend_bos: bool | None = None, progress: bool | None = None) -> CaptureResult:
    """Run `model` over `inputs` and reduce each layer's activations to per-head statistics.

    Args:
        model: a TransformerBridge (e.g. from `headscope.load_model()`).
        inputs: a string, a list of strings (any lengths: batches are right-padded and masked),
            `headscope.inputs.images.ImagePrompt`s (their pixel values go with their batch),
            a LongTensor [batch, pos], or a list of token-id lists.
        reducers: Reducer instances (default: the six of `reducers.default_reducers()`).
        layers: layers to capture (default all); the forward stops after the last one.
        batch_size: prompts per forward pass.
        keep_patterns: also return every prompt's full [layer, head, q, k] pattern (memory!).
        prepend_bos: override the model's default (False for the bundled SmolLM2).
        progress: show a progress bar over batches (default: when there is more than one batch).

    Returns:
        CaptureResult mapping reducer name → HeadScores of shape [prompt, layer, head].

    Example:
        >>> from headscope.testing import tiny_model
        >>> res = capture(tiny_model(), ["t2 t3 t4 t2 t3 t4"])
        >>> res["induction_score"].values.shape
        (1, 2, 4)
    """
    info = model_info(model)
    reducers = _check_reducers(reducers)
    layers = info.check_layers(layers)
    token_lists = to_token_lists(model, inputs, info, prepend_bos)
    images = images_of(inputs)  # ImagePrompt rows pass their pixel values with their batch
    vision = [r for r in reducers if r.tower == "vision"]
    reducers = [r for r in reducers if r.tower != "vision"]
    if vision and images is None:
        raise InputError("a vision-tower reducer needs ImagePrompts (prompts with pixel values)")
    if vision and not reducers:  # only the vision tower is read: one decoder block is enough
        layers = [0]
    prompts = list(inputs) if isinstance(inputs, (list, tuple)) and all(isinstance(p, str) for p in inputs) else (
        [inputs] if isinstance(inputs, str) else None)
    needs = sorted({n for r in reducers for n in r.needs} | ({"pattern"} if keep_patterns else set()), key=ORDER.index)
    last_site = needs[-1] if needs else None  # no decoder reducer: only the vision tower is hooked
    for r in reducers:
        r.start(info, len(token_lists))
    image_offsets = _image_offsets(images) if vision else None
    for r in vision:
        r.start(info, int(image_offsets[-1]))
    kept: list[list[torch.Tensor]] | None = [[] for _ in token_lists] if keep_patterns else None

    pad_id = info.pad_token_id if info.pad_token_id is not None else 0
    batches = list(iter_batches(token_lists, batch_size, pad_id))
    device = model_device(model)  # inputs follow the model; reducers work on CPU float32 copies
    show = progress if progress is not None else len(batches) > 1
    stop = layers[-1] + 1 if layers[-1] + 1 < info.n_layers else None
    for batch in tqdm(batches, desc="capture", unit="batch", disable=not show):
        ctx = BatchContext(batch, info)
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
                        for row, idx in enumerate(batch.index):
                            n = int(batch.lengths[row])
                            kept[idx].append(acts["pattern"][row, :, :n, :n].float().cpu().clone())
                return None  # observe only: never modify the forward pass
            return hook

        hooks = [(SITES[s].format(l=layer), make_hook(layer, s)) for layer in layers for s in needs]
        if vision:
            hooks += _vision_hooks(model, vision, ctx, image_offsets)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(batch.tokens.to(device), attention_mask=batch.attention_mask.to(device), stop_at_layer=stop,
                  **batch_forward_kwargs(images, batch.index))
        stash.clear()

    scores = {r.name: _checked_result(r, info, prompts) for r in reducers + vision}
    patterns = [torch.stack(p) for p in kept] if kept is not None else None
    return CaptureResult(scores, token_lists, prompts, layers, patterns)


def _checked_result(reducer: Reducer, info, prompts):
    out = reducer.result(info, prompts)
    if not isinstance(out, reducer.result_type):
        raise TypeError(f"{type(reducer).__name__}.result() returned a {type(out).__name__}, not its declared "
                        f"result_type {reducer.result_type.__name__} (a bug in the reducer)")
    return out


def _image_offsets(images) -> torch.Tensor:
    """[n_prompts + 1] cumulative image counts: prompt p's images are numbered offsets[p]..offsets[p+1]-1."""
    counts = torch.tensor([0 if px is None else int(px.shape[0]) for px in images])
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def _vision_hooks(model, reducers, ctx: BatchContext, offsets: torch.Tensor) -> list:
    """Observe-only hooks on the vision encoder for vision-tower reducers. The model encodes the batch's
    images in row order, so the context numbers them with `image_index` (global, in prompt order)."""
    ctx.image_index = torch.cat([torch.arange(int(offsets[p]), int(offsets[p + 1])) for p in ctx.index])
    n_layers = int(model.original_model.config.vision_config.num_hidden_layers)
    needs = sorted({n for r in reducers for n in r.needs})
    unknown = set(needs) - set(VISION_SITES)
    if unknown:
        raise InputError(f"vision-tower reducers read {sorted(unknown)}; the vision tower has {sorted(VISION_SITES)}")

    def make(layer: int, site: str):
        def hook(tensor, hook):
            acts = {site: for_reducers(tensor)}
            for r in reducers:
                if site in r.needs:
                    r.update(layer, acts, ctx)
            return None  # observe only
        return hook

    return [(site_name(s, layer, "vision"), make(layer, s)) for layer in range(n_layers) for s in needs]
