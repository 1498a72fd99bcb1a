"""Greedy decoding with hooks attached to the decode steps: the loop that retrieval-head scoring,
head-masking studies and any other decode-time measurement or intervention share.

The schedule is the one of Wu et al.'s retrieval-head code (docs/methods.md, "Retrieval heads"): the prompt without its
last token is *prefilled* (one forward, no decode hooks), then every decode step feeds one token
(first the last prompt token, then each generated one) through the model with the bridge's HF KV
cache, takes the argmax of the last logits, and stops at a stop token or after `max_new_tokens`.
Hooks passed as `hooks=` run on the decode forwards only, so an intervention there hits exactly the
queries the paper masks (the prefill KV cache comes from the unmodified model). To modify the
prefill as well, wrap the call in `with model.hooks(fwd_hooks=...)` instead.

`use_cache=False` recomputes the whole sequence at every step instead (slow, quadratic); it exists to
check the cached path and gives the same tokens (tested). In a hook, position `i` of the sequence
axis is absolute position `step.offset + i`; the current query is always the last position.

Example:
    >>> from headscope.testing import planted_model
    >>> model, truth = planted_model()
    >>> greedy_generate(model, [1, 5, 6, 7, 5], max_new_tokens=2)   # the induction head copies 6, 7
    [6, 7]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import InputError
from .models.compat import KVCacheMismatch, cached_forward, kv_cache_verified, mark_cache_broken
from .models.info import model_device, model_info, stop_token_ids  # noqa: F401  (stop_token_ids: public here too)
from .inputs.images import ImagePrompt, check_image_tokens
from .inputs.spans import image_token_ids
from .capture.engine import SITES

# Sites whose query axis is dim 2 ([batch, head, q, k]); every other site has it at dim 1.
_QK_SITES = ("attn_scores", "pattern")


@dataclass(frozen=True)
class DecodeStep:
    """Where one decode forward stands. `step` 0 is the forward whose query is the last prompt token."""

    step: int
    prompt_len: int
    offset: int  # absolute position of index 0 on this forward's sequence axis (0 without cache)

    @property
    def query_pos(self) -> int:
        """Absolute position of the current query (the token fed last)."""
        return self.prompt_len - 1 + self.step

    @property
    def decode_start(self) -> int:
        """Index, on this forward's sequence axis, of the first decode query (0 with the KV cache):
        pass it as `decode_start` to `headscope.interventions` hooks for decode-only edits."""
        return max(0, self.prompt_len - 1 - self.offset)


Hook = tuple[str, Callable]
HooksArg = Sequence[Hook] | Callable[[DecodeStep], Sequence[Hook]] | None
StepCallback = Callable[[DecodeStep, int, dict], bool | None]


def _check_prompt(model, prompt_ids, max_new_tokens: int) -> list[int]:
    info = model_info(model)
    ids = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    if ids and isinstance(ids[0], list):
        if len(ids) != 1:
            raise InputError("greedy_generate takes one prompt; loop over prompts for several")
        ids = ids[0]
    if not ids:
        raise InputError("prompt_ids is empty: give at least one token id")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    vocab = int(model.cfg.d_vocab)
    if min(ids) < 0 or max(ids) >= vocab:
        raise InputError(f"prompt_ids hold ids outside the vocabulary 0..{vocab - 1}")
    if len(ids) + max_new_tokens > info.n_ctx:
        raise InputError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"context of {info.n_ctx}: shorten the prompt or ask for fewer tokens")
    return [int(t) for t in ids]


def _image_kwargs(model, ids: list[int], pixel_values, device) -> dict:
    if pixel_values is None:
        return {}

    prompt = ImagePrompt(tuple(ids), pixel_values)
    check_image_tokens(model, prompt)
    if ids[-1] in image_token_ids(model):
        raise InputError("the prompt ends with an image token; add the text that follows the image")
    return {"pixel_values": prompt.pixel_values.to(device)}


def _observers(sites, n_layers: int, stash: dict) -> list[Hook]:
    unknown = set(sites) - set(SITES)
    if unknown:
        raise InputError(f"observe: unknown site(s) {sorted(unknown)}; known: {list(SITES)}")

    def make(layer: int, site: str):
        axis = 2 if site in _QK_SITES else 1

        def hook(tensor, hook):
            # Keep only the current (last) query of batch row 0: [head, k], [head, d] or [d].
            stash[site][layer] = tensor.detach().select(axis, -1)[0].clone()
        return hook

    return [(SITES[s].format(l=layer), make(layer, s)) for s in sites for layer in range(n_layers)]


def greedy_generate(model, prompt_ids, max_new_tokens: int, stop_ids=None, *, hooks: HooksArg = None,
                    observe: Sequence[str] | None = None, on_step: StepCallback | None = None,
                    use_cache: bool = True, pixel_values: torch.Tensor | None = None) -> list[int]:
    """Greedy (argmax) continuation of one prompt; returns the new token ids.

    Args:
        model: a TransformerBridge.
        prompt_ids: token ids (list, 1-D tensor, or [1, pos] tensor); BOS is not added.
        max_new_tokens: decode steps at most.
        stop_ids: ids that end generation; the stop token is *included* in the output (its step
            ran, as in the paper's code). None = never stop early; `stop_token_ids(tok)` = newline/EOS.
        hooks: TransformerLens forward hooks for the decode forwards only: a list of (name, fn), or
            a callable `DecodeStep -> list` called before each step (for position-aware edits).
        observe: capture sites (e.g. ("pattern",)) to hand to `on_step` for the current query.
        on_step: `fn(step: DecodeStep, token: int, acts)` after each decode forward; `acts[site]`
            stacks the current query's activations over layers: pattern/attn_scores [layer, head,
            key], q/z [layer, head, d_head], k/v [layer, kv_head, d_head], resid [layer, d_model].
            Observers run after `hooks`, so they see intervened values. Returning True stops
            generation after this token (e.g. once an answer is complete).
        use_cache: KV-cached decoding (default) or full recomputation at every step (reference).
        pixel_values: the prompt's images for a vision-language model ([n_images, C, H, W]); they go
            into the forward that sees the image tokens (the prefill, or every step without cache).
    """
    ids = _check_prompt(model, prompt_ids, max_new_tokens)
    stops = frozenset(int(s) for s in (stop_ids or ()))
    n_layers = model_info(model).n_layers
    stash: dict[str, dict[int, torch.Tensor]] = {s: {} for s in (observe or ())}
    observers = _observers(observe, n_layers, stash) if observe else []
    device = model_device(model)
    images = _image_kwargs(model, ids, pixel_values, device)
    # The KV cache is a shortcut: verified once per model against a full forward; without it, recompute.
    use_cache = use_cache and kv_cache_verified(model, ids, images)
    P, out, cache = len(ids), [], None
    with torch.no_grad():
        if use_cache and P > 1:
            try:
                _, cache = cached_forward(model, torch.tensor([ids[:-1]], device=device), **images)
            except KVCacheMismatch:
                mark_cache_broken(model)
                use_cache = False
        for step_i in range(max_new_tokens):
            seq = ids + out
            step = DecodeStep(step_i, P, P - 1 + step_i if use_cache else 0)
            user = hooks(step) if callable(hooks) else (hooks or [])
            x = torch.tensor([seq[step.offset:]], device=device)
            with model.hooks(fwd_hooks=list(user) + observers):
                if use_cache:
                    logits, cache = cached_forward(model, x, cache)
                else:
                    logits = model(x, **images)
            token = int(logits[0, -1].argmax())
            out.append(token)
            acts = {s: torch.stack([stash[s][layer] for layer in range(n_layers)]) for s in stash}
            if (on_step is not None and on_step(step, token, acts)) or token in stops:
                break
    return out
