"""headscope's own attention forward for bridges that would report patterns after the fact.

TransformerLens's base `AttentionBridge` (BERT, GPT-Neo, GPT-J, OPT) lets the Hugging Face module
compute attention and fires `hook_attn_scores` / `hook_pattern` afterwards on the weights HF
returned: `hook_attn_scores` is then not pre-softmax, and an edit at either hook is discarded.
`route_attention(model)` (called at boot for those families, `Family.attention_route`) routes each
such layer through the same kernel as blocked attention (`headscope.capture.blocked`), whole rows at
once: the HF module still computes q, k, v (its projections are the bridge's, so `hook_q/k/v` and
`hook_z` fire as before), hands them to `attention_forward`, which here computes scores -> mask
(causal, padding, GPT-Neo's local window) -> the bridge's own `hook_attn_scores` -> softmax -> the
bridge's own `hook_pattern` -> output. Every consumer of those hooks (TransformerLens's
`run_with_hooks`, capture, apply, scan's block replay, attribution patching, generation) sees
pre-softmax scores and edits that take effect, with no change of its own.

The config's attention implementation becomes `LIVE_IMPLEMENTATION` (HF's eager mask: a 4-D tensor,
so a scan replay can stack it like any other); an HF class that computes attention inline gets the
forward its family registers (`Family.blocked_forwards`, as on the blocked path). The route is
checked once, at install, against the bridge's own forward on a short padded batch (every layer must
come through, logits equal to rounding); a failure undoes it and is recorded, and the attention-level
intervention kinds are then refused on that model (`headscope.models.compat.pattern_edit_route`).
Inside `blocked_attention(...)` the blocked session takes over as on every other family.
"""

from __future__ import annotations

import types
import weakref

import torch
import torch.nn.functional as F

from ..models.compat import (
    attn_implementation,
    component_reports_after,
    hf_module_of,
    hooks_paused,
    record_pattern_route,
    set_attn_implementation,
)
from ..models.info import model_device
from . import blocked as _blocked_mod
from .blocked import LIVE_ROUTES, _attention_components, _blocked, _configs, _probe_batch

LIVE_IMPLEMENTATION = "headscope_live"
# Relative to the logits' scale; halves: 2e-2. float64: the kernel's softmax is float32, and HF itself rounds
# to float32 inside some of these families' attention even in a float64 model (GPT-J's scores, OPT's
# softmax, GPT-Neo's whole attention), so a float64 route agrees to float32 rounding, not to float64's.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}


class _LayerRoute:
    """One layer's attention as `attention_forward` computes it outside a blocked context: one block
    of every query row, with the bridge component's `hook_attn_scores` and `hook_pattern`."""

    def __init__(self, component, layer: int, calls: dict):
        self._component = weakref.ref(component)  # no reference cycle through LIVE_ROUTES
        self.layer = layer
        self.calls = calls

    def __call__(self, module, query, key, value, mask, scaling, dropout, softcap, extra):
        component = self._component()
        if component is None:  # held weakly; alive whenever its bridge runs a forward
            raise RuntimeError(f"layer {self.layer}'s routed attention outlived its bridge component")
        self.calls[self.layer] = self.calls.get(self.layer, 0) + 1
        _b, h, T, d = query.shape
        scaling = d**-0.5 if scaling is None else scaling
        score_fns = [lambda scores, hook: component.hook_attn_scores(scores)]
        pattern_fns = [lambda pattern, hook: component.hook_pattern(pattern)]
        if dropout and module.training:  # HF applies attention dropout to the (hooked) pattern
            pattern_fns.append(lambda pattern, hook: F.dropout(pattern, p=dropout, training=True))
        out = _blocked(
            query,
            key,
            value,
            mask,
            scaling,
            softcap,
            bool(getattr(module, "is_causal", True)),
            h // key.shape[1],
            max(T, 1),
            score_fns,
            pattern_fns,
            f"blocks.{self.layer}.attn.hook_{{}}",
            self.layer,
            extra,
        )
        return out.transpose(1, 2).contiguous(), None


def _family_forward(self, *args, **kwargs):
    """Bound as the instance `forward` of an HF attention module whose family registers a forward of its
    own (`Family.blocked_forwards`: inline attention, GPT-J's float32 scores): that forward, looked up at
    each call as the blocked path does, else HF's own. Bound (not a closure), so a deep copy of the
    model calls its own module."""
    adapter = _blocked_mod.blocked_forward_for(type(self).__name__)
    return (type(self).forward if adapter is None else adapter)(self, *args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LIVE_IMPLEMENTATION, _blocked_mod.attention_forward)
    AttentionMaskInterface.register(LIVE_IMPLEMENTATION, eager_mask)


class _Installed:
    """The route on the given layers of one model ({layer: (bridge component, HF module)}), and how to undo it."""

    def __init__(self, model, layers: dict):
        self.calls: dict[int, int] = {}
        self.hf_modules = [m for _, m in layers.values()]
        self.patched = []
        for layer, (c, m) in layers.items():
            route = _LayerRoute(c, layer, self.calls)
            for sub in m.modules():  # the module HF hands the interface may be a child (BertSelfAttention)
                LIVE_ROUTES[sub] = route
            if _blocked_mod.blocked_forward_for(type(m).__name__) is not None:
                m.forward = types.MethodType(_family_forward, m)
                self.patched.append(m)
        self.configs = _configs(model, [(l, c) for l, (c, _) in layers.items()])
        self.before = [attn_implementation(cfg) for cfg in self.configs]
        for cfg in self.configs:
            set_attn_implementation(cfg, LIVE_IMPLEMENTATION)

    def undo(self) -> None:
        for cfg, impl in zip(self.configs, self.before):
            set_attn_implementation(cfg, impl)
        for m in self.patched:
            m.__dict__.pop("forward", None)
        for m in self.hf_modules:
            for sub in m.modules():
                LIVE_ROUTES.pop(sub, None)


def route_attention(model) -> str:
    """Route the attention layers of a bridge that reports patterns after HF through headscope's forward
    (see the module doc), check it against the bridge's own forward and record the outcome
    (`headscope.models.compat.pattern_edit_route`). Returns "" when routed, else why not (the model
    is then left exactly as it was). Layers whose bridge computes attention itself are left alone."""
    components = _attention_components(model)
    layers = {l: (c, hf_module_of(c)) for l, c in components if component_reports_after(c)}
    if not layers:
        return ""
    if any(m is None for _, m in layers.values()):
        why = f"the bridge of {type(model.original_model).__name__} keeps no HF attention module to route"
        record_pattern_route(model, why)
        return why
    _register()
    tokens, mask = (t.to(model_device(model)) for t in _probe_batch(model))
    with torch.no_grad(), hooks_paused(model):
        before = model(tokens, attention_mask=mask).float()
        installed = _Installed(model, layers)
        try:
            after = model(tokens, attention_mask=mask).float()
        except Exception as exc:
            why = f"headscope's attention forward fails on it: {type(exc).__name__}: {str(exc)[:200]}"
        else:
            why = _verdict(model, before, after, mask, installed.calls, layers)
    if why:
        installed.undo()
    record_pattern_route(model, why)
    return why


def _verdict(model, before, after, mask, calls, layers) -> str:
    """Why the routed forward is not the bridge's own ("" when it is): a routed layer whose attention
    never reached the kernel (or did more than once), or logits that differ beyond rounding."""
    wrong = [l for l in layers if calls.get(l, 0) != 1]
    if wrong:
        hf_class = type(layers[wrong[0]][1]).__name__
        if all(calls.get(l, 0) == 0 for l in wrong):
            return (
                f"its HF attention ({hf_class}) computes attention inline, not through transformers' "
                f"AttentionInterface, and no family module gives headscope a forward for it (layers {wrong})"
            )
        return f"the kernel was called {[calls.get(l, 0) for l in wrong]} times for layers {wrong}, not once each"
    real = mask.bool()
    scale = max(1.0, float(before[real].abs().max()))
    tol = _TOLERANCE.get(next(model.parameters()).dtype, 2e-2) * scale
    diff = float((after - before)[real].abs().max())
    return (
        ""
        if diff <= tol
        else f"headscope's attention forward differs from the bridge's by {diff:.3g} (tolerance {tol:.3g})"
    )


__all__ = ["LIVE_IMPLEMENTATION", "route_attention"]
