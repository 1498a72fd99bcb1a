"""Greedy decoding under interventions: the one generation driver (retrieval, safety, VHR, VAR and the
shapes-world descriptions generate through it), and the one place that says what an intervention's
`positions` mean while generating.

The schedule is the one of Wu et al.'s retrieval-head code (docs/methods.md, "Retrieval heads"): the
prompt without its last token is *prefilled* (one forward), then every decode step feeds one token
(first the last prompt token, then each generated one) through the model with the bridge's HF KV
cache, takes the argmax of the last logits, and stops at a stop token or after `max_new_tokens`.

`interventions=[spec, ...]` (`headscope.interventions` kinds) are applied by the driver, forward by
forward. A spec's positions are absolute positions in prompt + generated tokens, whichever forward
computes the query:
- "all": every query: the prefill and every decode step;
- "decode": the decode queries only: the last prompt token and every generated token (what the
  retrieval paper masks); the prefill runs clean, so the prompt's cached keys and values are the
  unmodified model's;
- a [start, end) span: the queries at those positions, in the prefill or in a decode step.
A kind whose edit reads the whole query axis (its class sets `whole_query`, e.g. ACTCalibration's
column means) cannot be reproduced by a KV-cached step, which computes one query: with such a spec
the driver recomputes the full sequence at every step (quadratic, exact). Kinds with reference
activations (mean, resample) get them computed once per call; `plan_interventions()` computes them
once for many calls (a loop over prompts).

Raw hooks stay available for observers and custom edits: `hooks=` run on the decode forwards only
(a list, or a callable of the `DecodeStep`); to hook the prefill as well, wrap the call in
`with model.hooks(fwd_hooks=...)`. In a hook, position `i` of the sequence axis is absolute position
`step.offset + i`; the current query is always the last position.

`use_cache=False` recomputes the whole sequence at every step (slow, quadratic); it exists to check
the cached path and gives the same tokens (tested).

Example:
    >>> from headscope.testing import planted_model
    >>> from headscope.interventions import ZeroAblation
    >>> model, truth = planted_model()
    >>> greedy_generate(model, [1, 5, 6, 7, 5], max_new_tokens=2)   # the induction head copies 6, 7
    [6, 7]
    >>> greedy_generate(model, [1, 5, 6, 7, 5], 2, interventions=[ZeroAblation(heads=[truth.induction])])
    [0, 0]
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .capture.blocked import blocked_attention, resolve_attention
from .capture.engine import SITES
from .errors import InputError
from .inputs.images import ImagePrompt, check_image_tokens
from .inputs.spans import image_token_ids
from .interventions.apply import eager_only
from .interventions.hooks import build_hooks, check_editable, check_specs, query_slice
from .interventions.kind import Intervention
from .interventions.prepare import Prepared, prepare_references
from .models.compat import KVCacheMismatch, cached_forward, kv_cache_verified, mark_cache_broken
from .models.info import model_device, model_info, stop_token_ids  # noqa: F401  (stop_token_ids: public here too)
from .options import AttentionMode

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
        """Index, on this forward's sequence axis, of the first decode query (0 with the KV cache),
        for raw hooks that edit decode queries only (`interventions=` specs need no such index)."""
        return query_slice("decode", self.prompt_len - 1, self.offset).start


Hook = tuple[str, Callable]
HooksArg = Sequence[Hook] | Callable[[DecodeStep], Sequence[Hook]] | None
StepCallback = Callable[[DecodeStep, int, dict], bool | None]


@dataclass(frozen=True, eq=False)
class InterventionPlan:
    """Intervention specs checked against one model, with the reference activations their kinds
    need (mean, resample) computed once: pass it as `interventions=` to many `greedy_generate` calls."""

    specs: tuple[Intervention, ...]
    prepared: Prepared
    _model: weakref.ref

    @property
    def whole_query(self) -> bool:
        """Whether a spec's kind reads the whole query axis (generation then recomputes every step)."""
        return any(s.whole_query for s in self.specs)

    def hooks(self, info, prompt_len: int, offset: int, n_queries: int) -> list[Hook]:
        """The specs' hooks for one forward whose `n_queries` queries start at absolute position
        `offset` of a sequence whose first decode query is the last prompt token."""
        if not self.specs:
            return []
        return build_hooks(self.specs, info, prompt_len - 1, self.prepared, offset=offset, n_queries=n_queries)


def plan_interventions(model, interventions=()) -> InterventionPlan:
    """Check `interventions` (specs, or one spec) against `model` and prepare their reference
    activations once. `greedy_generate(interventions=[...])` does this itself; call it to share the
    work over many prompts:

        >>> plan = plan_interventions(model, [MeanAblation(heads=[(3, 1)], reference=texts)])
        >>> outs = [greedy_generate(model, ids, 20, interventions=plan) for ids in prompts]
    """
    if isinstance(interventions, InterventionPlan):
        if interventions._model() is not model:
            raise InputError("this InterventionPlan was made for another model: plan_interventions(model, specs) again")
        return interventions
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    specs = tuple(check_specs(interventions or (), model_info(model)))  # validates heads before any compute
    check_editable(model, specs)
    prepared = prepare_references(model, specs) if any(s.needs_reference for s in specs) else Prepared()
    return InterventionPlan(specs, prepared, weakref.ref(model))


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
        raise InputError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"context of {info.n_ctx}: shorten the prompt or ask for fewer tokens"
        )
    return [int(t) for t in ids]


def _image_kwargs(model, ids: list[int], pixel_values, device) -> dict:
    if pixel_values is None:
        return {}

    prompt = ImagePrompt(tuple(ids), pixel_values)
    check_image_tokens(model, prompt)
    if ids[-1] in image_token_ids(model):
        raise InputError("the prompt ends with an image token; add the text that follows the image")
    return {"pixel_values": prompt.pixel_values.to(device)}


_RESIDUAL_SITES = ("resid_pre", "resid_mid", "resid_post")


def _observed_layers(site: str, info) -> tuple[int, ...]:
    """Residual sites exist on every layer; the attention sites only on a hybrid's attention layers."""
    return tuple(range(info.n_layers)) if site in _RESIDUAL_SITES else info.attention_layers


def _stacked(stash: dict, n_layers: int) -> dict:
    """Each site's activations over the model's own layer indices; NaN rows where a hybrid's layer has
    none (a layer without attention has no pattern or head output)."""
    acts = {}
    for site, by_layer in stash.items():
        like = next(iter(by_layer.values()))
        nan = torch.full_like(like, float("nan")) if like.is_floating_point() else like
        acts[site] = torch.stack([by_layer.get(layer, nan) for layer in range(n_layers)])
    return acts


def _observers(sites, info, stash: dict) -> list[Hook]:
    unknown = set(sites) - set(SITES)
    if unknown:
        raise InputError(f"observe: unknown site(s) {sorted(unknown)}; known: {list(SITES)}")

    def make(layer: int, site: str):
        axis = 2 if site in _QK_SITES else 1

        def hook(tensor, hook):
            # Keep only the current (last) query of batch row 0: [head, k], [head, d] or [d].
            stash[site][layer] = tensor.detach().select(axis, -1)[0].clone()

        return hook

    return [(SITES[s].format(l=layer), make(layer, s)) for s in sites for layer in _observed_layers(s, info)]


def greedy_generate(
    model,
    prompt_ids,
    max_new_tokens: int,
    stop_ids=None,
    *,
    interventions=(),
    hooks: HooksArg = None,
    observe: Sequence[str] | None = None,
    on_step: StepCallback | None = None,
    use_cache: bool | None = None,
    pixel_values: torch.Tensor | None = None,
    attention: AttentionMode = "auto",
) -> list[int]:
    """Greedy (argmax) continuation of one prompt; returns the new token ids.

    Args:
        model: a TransformerBridge.
        prompt_ids: token ids (list, 1-D tensor, or [1, pos] tensor); BOS is not added.
        max_new_tokens: decode steps at most.
        stop_ids: ids that end generation; the stop token is *included* in the output (its step
            ran, as in the paper's code). None = never stop early; `stop_token_ids(tok)` = newline/EOS.
        interventions: `headscope.interventions` specs (or a `plan_interventions` plan) applied with
            the position rules of the module doc: "all" = prefill and every step, "decode" = the last
            prompt token and every generated token, a span = those absolute positions; a
            `whole_query` kind makes every step recompute the full sequence.
        hooks: raw TransformerLens forward hooks for the decode forwards only: a list of (name, fn),
            or a callable `DecodeStep -> list` called before each step (for position-aware edits).
            They run after the interventions' hooks.
        observe: capture sites (e.g. ("pattern",)) to hand to `on_step` for the current query.
        on_step: `fn(step: DecodeStep, token: int, acts)` after each decode forward; `acts[site]`
            stacks the current query's activations over layers: pattern/attn_scores [layer, head,
            key], q/z [layer, head, d_head], k/v [layer, kv_head, d_head], resid [layer, d_model]
            (a hybrid's layers without attention: NaN rows at the attention sites).
            Observers run after `interventions` and `hooks`, so they see intervened values. Returning
            True stops generation after this token (e.g. once an answer is complete).
        use_cache: KV-cached decoding or full recomputation at every step (the reference); None
            (default) = the cache unless an intervention's kind reads the whole query axis. True
            with such a kind is an error (a cached step could not reproduce it).
        pixel_values: the prompt's images for a vision-language model ([n_images, C, H, W]); they go
            into the forward that sees the image tokens (the prefill, or every step without cache).
        attention: how the KV-cached prefill computes attention: "auto" (default) blocked attention when
            its pattern would exceed the capture budget (long prompts, docs/long-context.md), "eager",
            or "blocked". Decode steps (one query) are always eager.
    """
    ids = _check_prompt(model, prompt_ids, max_new_tokens)
    plan = plan_interventions(model, interventions)
    if use_cache is None:
        use_cache = not plan.whole_query
    elif use_cache and plan.whole_query:
        kinds = sorted({s.kind for s in plan.specs if s.whole_query})
        raise InputError(
            f"intervention kind(s) {kinds} read the whole query axis, which a KV-cached decode step "
            "(one query) cannot reproduce. Fix: use_cache=None or False (full recomputation each step)"
        )
    stops = frozenset(int(s) for s in (stop_ids or ()))
    info = model_info(model)
    n_layers = info.n_layers
    stash: dict[str, dict[int, torch.Tensor]] = {s: {} for s in (observe or ())}
    observers = _observers(observe, info, stash) if observe else []
    device = model_device(model)
    images = _image_kwargs(model, ids, pixel_values, device)
    # The KV cache is a shortcut: verified once per model against a full forward; without it, recompute.
    use_cache = use_cache and kv_cache_verified(model, ids, images)
    P, cache = len(ids), None
    out: list[int] = []
    with torch.no_grad():
        if use_cache and P > 1:
            try:
                with _attention(model, plan, attention, plan.hooks(info, P, 0, P - 1), P - 1, not images):
                    _, cache = cached_forward(model, torch.tensor([ids[:-1]], device=device), **images)
            except KVCacheMismatch:
                mark_cache_broken(model)
                use_cache = False
        for step_i in range(max_new_tokens):
            seq = ids + out
            step = DecodeStep(step_i, P, P - 1 + step_i if use_cache else 0)
            x = torch.tensor([seq[step.offset :]], device=device)
            edits = plan.hooks(info, P, step.offset, x.shape[1])
            user = hooks(step) if callable(hooks) else (hooks or [])
            with model.hooks(fwd_hooks=edits + list(user) + observers):
                if use_cache:
                    logits, cache = cached_forward(model, x, cache)
                else:
                    logits = model(x, **images)
            token = int(logits[0, -1].argmax())
            out.append(token)
            acts = _stacked(stash, n_layers)
            if (on_step is not None and on_step(step, token, acts)) or token in stops:
                break
    return out


def _attention(model, plan: InterventionPlan, attention: AttentionMode, hooks, n_tokens: int, text_only: bool = True):
    """The context one forward of `n_tokens` runs in: the plan's hooks on eager or blocked attention."""
    why = lambda: eager_only(plan.specs) + ([] if text_only else ["the forward carries images"])
    if resolve_attention(model, attention, 1, n_tokens, why_not=why):
        return blocked_attention(model, hooks)
    return model.hooks(fwd_hooks=hooks)


def greedy_reproduces(
    model, prompt_ids, answer_ids, *, interventions=(), pixel_values=None, attention: AttentionMode = "auto"
) -> bool:
    """Whether greedy decoding of `prompt_ids` under `interventions` reproduces `answer_ids` exactly
    (a needle answer, a copied segment).

    Measured teacher-forced when that is exact: one forward over prompt + answer with the specs on
    the queries `greedy_generate` would edit ("decode" = the last prompt token onwards), correct iff
    the argmax at every answer position is the answer token, i.e. iff greedy decoding reproduces it.
    A whole-query kind's edit of a row depends on the rows after it, so then the answer is generated
    (full recomputation, stopped at the first wrong token) instead. `attention` as in `greedy_generate`
    (the teacher-forced forward runs blocked past the budget).
    """
    answer = [int(t) for t in (answer_ids.tolist() if isinstance(answer_ids, torch.Tensor) else answer_ids)]
    if not answer:
        raise InputError("answer_ids is empty: give at least one token id")
    plan = plan_interventions(model, interventions)
    if plan.whole_query:
        got = greedy_generate(
            model,
            prompt_ids,
            len(answer),
            interventions=plan,
            pixel_values=pixel_values,
            on_step=lambda step, token, acts: token != answer[step.step],
        )
        return got == answer
    ids = _check_prompt(model, prompt_ids, len(answer))
    device = model_device(model)
    images = _image_kwargs(model, ids, pixel_values, device)
    P, n = len(ids), len(ids) + len(answer)
    with torch.no_grad(), _attention(model, plan, attention, plan.hooks(model_info(model), P, 0, n), n, not images):
        logits = model(torch.tensor([ids + answer], device=device), **images)
    pred = logits[0, P - 1 : n - 1].argmax(-1).cpu()
    return bool(torch.equal(pred, torch.tensor(answer)))
