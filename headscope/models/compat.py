"""Shims between headscope and the installed transformers / TransformerLens, kept in one place.

Two upstream behaviours headscope must not inherit:

* **The KV-cache argument.** transformers 5.24 renamed the cache argument of every model, layer and
  attention forward from `past_key_values` to `cache`. TransformerLens 4.3's attention bridges still
  read `past_key_values` from their kwargs, so under 5.24 they silently skip the cache update: every
  decode step then attends to itself alone and KV-cached generation returns garbage. `cached_forward`
  passes the cache under the name the installed transformers takes and, while it runs, lets the
  bridge's attention components see it under the old name too. It checks the cache grew by exactly
  the tokens fed; `kv_cache_verified` compares one cached decode step with a full recomputation once
  per model. `headscope.generation` falls back to full recomputation (with a warning) when either
  check fails, so a future rename cannot produce wrong tokens silently.
* **Installs at run time.** When TransformerLens boots a multimodal model whose processor cannot be
  built (offline, or without torchvision) it runs `pip install torchvision`, which on a CPU-only
  machine replaces torch with a CUDA build. `no_runtime_installs()` wraps every boot: the processor is
  simply skipped (headscope's testbeds bring their own preprocessing) and any subprocess that would
  install a package raises `RuntimeInstallRefused` instead.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import subprocess
import warnings
import weakref
from types import ModuleType

import torch

from ..errors import HeadscopeError
from .info import model_device


class RuntimeInstallRefused(HeadscopeError):
    """Something tried to install a package while headscope was running."""


class KVCacheMismatch(RuntimeError):
    """The cached forward did not extend the KV cache as expected (an upstream API change)."""


# ---------------------------------------------------------------------------------------------
# KV cache


def cache_kwarg(model) -> str:
    """The name under which the installed transformers takes the KV cache: 'cache' (5.24+) or
    'past_key_values' (earlier)."""
    hf_class = type(getattr(model, "original_model", model))
    return _cache_kwarg_of(hf_class)  # type: ignore[arg-type]  # mypy does not see a class object as Hashable


@functools.cache
def _cache_kwarg_of(hf_class) -> str:
    # Read once per model class: generation asks at every decode step.
    try:
        params = inspect.signature(hf_class.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: assume the older name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


_ATTENTION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hf_attention(model, layer: int):
    """The HF attention module the bridge's `blocks[layer].attn` wraps (its own parameters, e.g. GPT-OSS's
    learned `sinks`)."""
    return hf_module_of(model.blocks[layer].attn)


def _attention_modules(model):
    """The bridge's attention components (found once per model: generation needs them every step)."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    if model not in _ATTENTION:
        _ATTENTION[model] = [m for m in model.modules() if isinstance(m, AttentionBridge)]
    return _ATTENTION[model]


def _alias_cache(module, args, kwargs):
    # The HF layer hands the attention `cache=`; TL's attention bridge reads `past_key_values`.
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs
    return None


_RECURRENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _recurrent_modules(model):
    """A hybrid's bridge components for linear attention / Mamba, which pick HF's cached path only when
    they see `cache_params` (TL 4.3); transformers 5.24's decoder layers hand them `cache=`."""
    from transformer_lens.model_bridge.generalized_components.gated_delta_net import GatedDeltaNetBridge
    from transformer_lens.model_bridge.generalized_components.ssm2_mixer import SSM2MixerBridge
    from transformer_lens.model_bridge.generalized_components.ssm_mixer import SSMMixerBridge

    if model not in _RECURRENT:
        kinds = (GatedDeltaNetBridge, SSMMixerBridge, SSM2MixerBridge)
        _RECURRENT[model] = [m for m in model.modules() if isinstance(m, kinds)]
    return _RECURRENT[model]


def _alias_cache_params(module, args, kwargs):
    # Without it, TL's GatedDeltaNetBridge runs its own prefill forward on a decode step, ignoring the
    # recurrent state in the cache (Qwen3-Next's cached logits were wrong by O(1)).
    if kwargs.get("cache_params") is None and kwargs.get("cache") is not None:
        kwargs = dict(kwargs)
        kwargs["cache_params"] = kwargs.pop("cache")
        return args, kwargs
    return None


@contextlib.contextmanager
def _attention_sees_cache(model):
    if cache_kwarg(model) != "cache":
        yield
        return
    handles = [m.register_forward_pre_hook(_alias_cache, with_kwargs=True) for m in _attention_modules(model)]
    handles += [m.register_forward_pre_hook(_alias_cache_params, with_kwargs=True) for m in _recurrent_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


_ATTENTION_CACHE_TYPES = ("full_attention", "sliding_attention", "chunked_attention")


def new_cache(model):
    """An empty HF cache for `model`, of full layers (no eviction), also on sliding-window models: HF's
    sliding layers evict old keys, which would shift the key axis of every decode pattern away from
    absolute positions (the window is still applied, by the attention mask). Costs memory for windowed
    layers only. A hybrid (layers without attention) gets the cache its config describes, whose
    linear-attention / Mamba layers keep their conv and recurrent states, with every attention layer full."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    config = model.original_model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None) or ()
    if all(t in _ATTENTION_CACHE_TYPES for t in types):  # attention only: lazily made full layers
        return DynamicCache()
    cache = DynamicCache(config=config)  # Falcon-H1's "hybrid" layers hold KV and Mamba states
    cache.layers = [DynamicLayer() if type(layer) is DynamicSlidingWindowLayer else layer for layer in cache.layers]
    return cache


def cached_forward(model, tokens: torch.Tensor, cache=None, **kwargs):
    """Run `tokens` ([1, pos]) through the bridge, extending the HF KV `cache` (None = start one).

    Keys in the cache are always at their absolute positions (full layers, no eviction), so a
    decode step's pattern row is indexed by absolute key position on every family. Returns `(logits, cache)`. Raises `KVCacheMismatch` when the cache did not grow by exactly
    `pos` tokens (the symptom of a cache-API change the bridge does not follow).
    """
    seen = 0 if cache is None else int(cache.get_seq_length())
    if cache is None:
        cache = new_cache(model)
    kwargs[cache_kwarg(model)] = cache
    with _attention_sees_cache(model), warnings.catch_warnings():
        # 5.24 warns about `past_key_values` wherever a layer still forwards the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*cache_params.*deprecated.*", category=FutureWarning)
        logits, _ = model(tokens, return_type="logits_and_cache", use_cache=True, **kwargs)
    grown = int(cache.get_seq_length())
    if grown != seen + tokens.shape[1]:
        raise KVCacheMismatch(f"KV cache holds {grown} tokens after feeding {seen} + {tokens.shape[1]}")
    return logits, cache


@contextlib.contextmanager
def hooks_paused(model):
    """Detach the TransformerLens hooks of the model for a moment (restored exactly afterwards), so a
    check compares the model itself, not the user's edits. Only HookPoints: transformers keeps
    hooks of its own on other modules (e.g. to collect hidden states)."""
    from transformer_lens.hook_points import HookPoint

    stash = []
    for m in model.modules():
        if not isinstance(m, HookPoint):
            continue
        stash.append((m, dict(m._forward_hooks), dict(m._forward_pre_hooks)))
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    try:
        yield
    finally:
        for m, fwd, pre in stash:
            m._forward_hooks.clear()
            m._forward_hooks.update(fwd)
            m._forward_pre_hooks.clear()
            m._forward_pre_hooks.update(pre)


_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the logits' scale; halves: 2e-2


def kv_cache_verified(model, ids: list[int], images: dict | None = None) -> bool:
    """Whether KV-cached decoding reproduces a full forward on this model (checked once per model,
    on `ids` = a prompt of at least 2 tokens, with the model's hooks paused)."""
    if model in _VERIFIED:
        return _VERIFIED[model]
    if len(ids) < 2:
        return True  # nothing to compare yet; the per-step length check still runs
    x = torch.tensor([ids], device=model_device(model))
    ok = True
    with torch.no_grad(), hooks_paused(model):
        full = model(x, **(images or {}))[0, -1].float()
        try:
            _, cache = cached_forward(model, x[:, :-1], **(images or {}))
            step, _ = cached_forward(model, x[:, -1:], cache)
            step = step[0, -1].float()
        except KVCacheMismatch:
            ok = False
        else:
            tol = _TOLERANCE.get(next(model.parameters()).dtype, 2e-2)
            ok = bool((step - full).abs().max() <= tol * max(1.0, float(full.abs().max())))
    _VERIFIED[model] = ok
    if not ok:
        _warn_fallback(model)
    return ok


def _warn_fallback(model) -> None:
    import transformers

    warnings.warn(
        f"headscope: KV-cached decoding does not reproduce a full forward on this model with "
        f"transformers {transformers.__version__}; generating by full recomputation instead (same "
        f"tokens, slower). Fix: install the versions of requirements/lock.txt.",
        RuntimeWarning,
        stacklevel=3,
    )


def mark_cache_broken(model) -> None:
    """Record that the cached path failed on `model` (warns once)."""
    if _VERIFIED.get(model, True):
        _VERIFIED[model] = False
        _warn_fallback(model)


# ---------------------------------------------------------------------------------------------
# What the bridge lets an edit reach


def reports_patterns_after(model) -> bool:
    """Whether TransformerLens's bridge lets Hugging Face compute some layer's attention and fires
    `hook_attn_scores` / `hook_pattern` afterwards, on what HF returned (its base `AttentionBridge`:
    BERT, GPT-Neo, GPT-J, OPT): an edit there would be discarded unless headscope routes that
    attention through its own forward (`headscope.capture.routed`). Families whose bridge computes
    attention itself (a subclass overriding `forward`) fire both hooks live."""
    blocks = getattr(model, "blocks", None) or []
    # A hybrid's layers without attention (linear attention, Mamba) have no `attn`.
    return any(component_reports_after(block.attn) for block in blocks if hasattr(block, "attn"))


def component_reports_after(component) -> bool:
    """Whether this bridge attention component is TransformerLens's base `AttentionBridge` (HF computes
    attention, the pattern hooks fire afterwards), not a subclass computing attention itself."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return type(component).forward is AttentionBridge.forward


# bridge -> "" once headscope computes its attention (the hooks live), else why it does not.
_PATTERN_ROUTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def record_pattern_route(model, why_not: str) -> None:
    """Record the outcome of routing `model`'s attention through headscope's forward: "" = routed
    (and checked against the bridge's own forward), else the reason it is not."""
    _PATTERN_ROUTES[model] = why_not


def pattern_edit_route(model) -> str | None:
    """Where edits at `hook_attn_scores` / `hook_pattern` take effect: "bridge" (TransformerLens
    computes attention itself and fires both hooks live), "headscope" (the bridge would report
    patterns after the fact, so headscope computes that attention in its own forward,
    `headscope.capture.routed`), or None (neither: such an edit would be discarded)."""
    if not reports_patterns_after(model):
        return "bridge"
    return "headscope" if _PATTERN_ROUTES.get(model) == "" else None


def pattern_route_failure(model) -> str:
    """Why `pattern_edit_route(model)` is None, in words ("" when it is not)."""
    if pattern_edit_route(model) is not None:
        return ""
    return _PATTERN_ROUTES.get(model) or "no headscope attention forward is registered for this family"


def pattern_edits_take_effect(model) -> bool:
    """Whether edits at `hook_attn_scores` / `hook_pattern` reach the model's output (through the
    bridge or through headscope's forward: `pattern_edit_route`)."""
    return pattern_edit_route(model) is not None


# ---------------------------------------------------------------------------------------------
# Private upstream internals headscope relies on (every such touch goes through here)


def attn_implementation(config) -> str | None:
    """The attention implementation an HF config selects (transformers keeps it in a private field)."""
    return getattr(config, "_attn_implementation", None)


def set_attn_implementation(config, implementation: str | None) -> None:
    """Select an HF attention implementation on a config ("eager", or one registered with
    `AttentionInterface`; None, what `attn_implementation` reads on a config that never chose one). transformers reads the private `_attn_implementation` at every forward;
    its public setter validates against installed kernels, which a registered name is not."""
    config._attn_implementation = implementation


def set_experts_implementation(config, implementation: str) -> None:
    """Select how an HF MoE runs its experts ("eager": a per-expert loop, which has float64 kernels; the
    default grouped matmul has none). transformers keeps it in the private `_experts_implementation`."""
    config._experts_implementation = implementation


def hf_module_of(component):
    """The HF module a TransformerLens bridge component wraps (None if the bridge keeps none). Read from
    `_modules` because the bridge's `__getattr__` forwards attribute lookups to that module."""
    return component._modules.get("_original_component")


def override_forward(component, forward) -> None:
    """Make `component(...)` call `forward` (an instance attribute); `restore_forward` undoes it.
    `object.__setattr__`: the bridge's own `__setattr__` would pass `forward` on to the wrapped HF module."""
    object.__setattr__(component, "forward", forward)


def restore_forward(component) -> None:
    component.__dict__.pop("forward", None)


# ---------------------------------------------------------------------------------------------
# No installs at run time


def _is_install(cmd) -> bool:
    words = [str(w) for w in cmd] if isinstance(cmd, (list, tuple)) else str(cmd).split()
    names = {w.rsplit("/", 1)[-1] for w in words}
    return "install" in names and bool(names & {"pip", "pip3", "uv", "conda", "mamba"})


def _refusing(original):
    @functools.wraps(original)
    def call(cmd, *args, **kwargs):
        if _is_install(cmd):
            raise RuntimeInstallRefused(
                f"headscope refused a package install at run time: {cmd!r}. Fix: install what you "
                f"need beforehand (the project's environment is requirements/lock.txt)."
            )
        return original(cmd, *args, **kwargs)

    return call


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


@contextlib.contextmanager
def no_runtime_installs():
    """While booting a model: TransformerLens may not install torchvision (or anything else).

    Its `_ensure_torchvision` becomes "is torchvision importable?" (so a processor that needs it is
    skipped), and `subprocess` refuses package-install commands.
    """
    patches = []
    helpers: ModuleType | None
    try:
        helpers = importlib.import_module("transformer_lens.model_bridge.sources.transformers.helpers")
    except ImportError:
        helpers = None
    if helpers is not None and hasattr(helpers, "_ensure_torchvision"):
        patches.append((helpers, "_ensure_torchvision", _torchvision_importable))
    for name in ("check_call", "check_output", "call", "run"):
        patches.append((subprocess, name, _refusing(getattr(subprocess, name))))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, new in patches:
        setattr(obj, name, new)
    try:
        yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)
