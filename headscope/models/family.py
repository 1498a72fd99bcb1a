"""The contract of a model family: what headscope must know about it beyond what the bridge gives.

Each family that needs anything special has one module in `headscope/families/` that registers a
`Family` in `FAMILIES` (keyed by the family's name, matched to a model by its HF `config.model_type`).
The engines never test a family's name: they ask `family_of(model)` for the one fact they need.

* `readout(model, x)` — the model's own path from the last block's output to the unembedding's
  input, when it is not `model.ln_final` (BERT's masked-LM transform).
* `logits(model, logits)` — what the model's forward does to the unembedding's output (Gemma 2's
  final soft-cap).
* `blocked_forwards` — HF attention class name → a forward that computes attention through
  `headscope.capture.blocked.attention_forward` (for HF classes that compute attention inline
  instead of calling transformers' `AttentionInterface`).
* `attention_route(model)` — for a family whose TransformerLens bridge lets HF compute attention and
  fires `hook_attn_scores` / `hook_pattern` afterwards (`compat.reports_patterns_after`): boot calls it
  on the fresh bridge to route attention through headscope's own forward, so both hooks are live
  (`headscope.capture.routed.route_attention`; it checks itself and records the outcome, which
  `compat.pattern_edit_route` reports). Without it, attention-level edits are refused on the family.
* `refuse(config)` — a reason the family (or this config of it) cannot be analysed, or None; boot
  raises `InputError` with it, so a user never meets a raw exception or a wrong number.
* `layer_kinds(config)` — per decoder layer, "attention" or the kind of mixer that layer has instead
  (hybrids: "linear_attention", "mamba", ...); None = read generically (`layer_kinds` below). Every
  engine learns which layers have heads from `headscope.models.info.ModelInfo.layer_kinds`.
* `learned_sinks(model, layer)` — the [head] learned sink logits of a bridge's layer, for a family whose
  heads each have one that joins the softmax's denominator (GPT-OSS): the pattern over real keys sums
  to 1 - the sink's share (`ModelInfo.learned_sinks`, `sink_logits`; the `sink_logit_mass` statistic;
  docs/attention-sinks.md).
* `prepare(bridge)` — corrects, once per bridge (`prepare_bridge`: at boot and when `model_info` first
  reads a bridge booted elsewhere), hook layouts the bridge gets wrong for this family, so every
  engine sees hook_q/k/v/z as [batch, pos, head, d] (MLA: DeepSeek). Must be idempotent.
* `bridge_overrides(config)` — HF config fields to boot the bridge with instead of the model's own
  (TransformerLens's `hf_config_overrides`: the HF model and its config are untouched), where the
  bridge misreads a field HF ignores (Falcon's `multi_query` under the new decoder architecture).
* `d_head(config)` — the width of one head's output z (hook_z) where the bridge's `cfg.d_head` is not
  it (MLA: `v_head_dim`); `ModelInfo.d_head` reads it.

Every function that mirrors upstream code is marked with `mirrors(...)` (the upstream qualified name,
the transformers version it was copied from and a hash of that source); `tests/test_families.py`
fails, naming the headscope function to review, when the installed upstream source differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ..registry import Registry

FAMILIES: Registry[Family] = Registry("model family", fix="see docs/contributing.md, 'A new architecture family'")


@dataclasses.dataclass(frozen=True)
class Family:
    """What headscope knows about one model family (see the module docstring for each field)."""

    name: str
    model_types: tuple[str, ...]
    readout: Callable[[Any, Any], Any] | None = None
    logits: Callable[[Any, Any], Any] | None = None
    blocked_forwards: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    attention_route: Callable[[Any], Any] | None = None
    refuse: Callable[[Any], str | None] | None = None
    layer_kinds: Callable[[Any], list[str]] | None = None
    learned_sinks: Callable[[Any, int], Any] | None = None
    prepare: Callable[[Any], None] | None = None
    bridge_overrides: Callable[[Any], dict | None] | None = None
    d_head: Callable[[Any], int] | None = None
    notes: str = ""


def register_family(family: Family) -> Family:
    FAMILIES.register(family.name, family)
    return family


def _config(model_or_config):
    original = getattr(model_or_config, "original_model", None)
    cfg = getattr(original, "config", None) or getattr(model_or_config, "config", None) or model_or_config
    return cfg


def family_of(model_or_config) -> Family | None:
    """The registered family of a bridge, an HF model or an HF config (by `model_type`), or None."""
    cfg = _config(model_or_config)
    types = {getattr(cfg, "model_type", None)}
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else None
    types.add(getattr(text, "model_type", None))
    types.discard(None)
    for name in FAMILIES:
        fam = FAMILIES[name]
        if types & set(fam.model_types):
            return fam
    return None


def attention_route_for(model):
    """The family's `attention_route` for a bridge that reports patterns after HF computed them, or None.
    Only families whose route the conformance checks cover name one: a route that reproduces the
    logits can still differ from what a check's reference assumes (an output gate applied after the
    pattern, AFMoE), so it is never tried blindly."""
    fam = family_of(model)
    return fam.attention_route if fam is not None else None


def sink_logits(model, layer: int):
    """[head] learned sink logits of `layer` of a bridge whose family has them (GPT-OSS), else None."""
    fam = family_of(model)
    return None if fam is None or fam.learned_sinks is None else fam.learned_sinks(model, layer)


_PREPARED: weakref.WeakSet = weakref.WeakSet()


def prepare_bridge(bridge) -> None:
    """Run the family's `prepare` on a TransformerBridge, once per bridge (no-op without one)."""
    if bridge in _PREPARED or not hasattr(bridge, "original_model"):
        return
    fam = family_of(bridge)
    if fam is not None and fam.prepare is not None:
        fam.prepare(bridge)
    _PREPARED.add(bridge)


def refusal(config) -> str | None:
    """The family's reason this HF config cannot be analysed (`Family.refuse`), or None."""
    fam = family_of(config)
    return fam.refuse(config) if fam is not None and fam.refuse is not None else None


def bridge_overrides(config) -> dict:
    """The HF config fields the family boots the bridge with (`Family.bridge_overrides`); {} for none."""
    fam = family_of(config)
    return dict((fam.bridge_overrides(config) or {}) if fam is not None and fam.bridge_overrides is not None else {})


def blocked_forward_for(hf_class_name: str) -> Callable | None:
    """The headscope forward registered for an HF attention class that computes attention inline."""
    for name in FAMILIES:
        fn = FAMILIES[name].blocked_forwards.get(hf_class_name)
        if fn is not None:
            return fn
    return None


# ---------------------------------------------------------------------------------------------
# the kinds of a hybrid's layers

ATTENTION = "attention"
# Names HF configs give layers with attention heads ("hybrid": Falcon-H1's attention and Mamba side by
# side, Zamba2's shared transformer block before a Mamba layer).
_ATTENTION_NAMES = {
    "attention",
    "full_attention",
    "sliding_attention",
    "chunked_attention",
    "global",
    "local",
    "hybrid_attention",
    "hybrid",
}
# Per-layer kind lists HF configs carry, in the order they are trusted.
_KIND_KEYS = ("layers_block_type", "layer_types")


def layer_kinds(model_or_config) -> tuple[str, ...] | None:
    """Per decoder layer, "attention" or the kind of mixer that layer has instead; None when every
    layer is attention (every non-hybrid model). The family's own `layer_kinds` if it has one, else the
    config's per-layer list (`layers_block_type`, `layer_types`, ...) with HF's attention names
    ("full_attention", "sliding_attention", ...) read as "attention"."""
    cfg = _config(model_or_config)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    fam = family_of(cfg)
    kinds = fam.layer_kinds(cfg) if fam is not None and fam.layer_kinds is not None else None
    if kinds is None:
        for key in _KIND_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
                kinds = [ATTENTION if v in _ATTENTION_NAMES else v for v in value]
                break
    if kinds is None or all(k == ATTENTION for k in kinds):
        return None
    return tuple(str(k) for k in kinds)


# ---------------------------------------------------------------------------------------------
# mirrored upstream code


@dataclasses.dataclass(frozen=True)
class Mirror:
    """A headscope function that copies upstream code: `upstream` is "module:Qualified.name"."""

    headscope: str
    upstream: str
    version: str
    sha256: str


MIRRORS: list[Mirror] = []


def upstream_source(upstream: str) -> str:
    """The installed source of "package.module:Qual.name" (dedented)."""
    module, _, qual = upstream.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return inspect.cleandoc(inspect.getsource(obj))


def source_hash(upstream: str) -> str:
    return hashlib.sha256(upstream_source(upstream).encode()).hexdigest()[:16]


def mirrors(upstream: str, version: str, sha256: str):
    """Decorator: the function mirrors `upstream` ("module:Qual.name") as of `version`, whose source
    hashed to `sha256` (first 16 hex digits of `source_hash`)."""

    def mark(fn):
        MIRRORS.append(Mirror(f"{fn.__module__}.{fn.__qualname__}", upstream, version, sha256))
        return fn

    return mark


__all__ = [
    "ATTENTION",
    "FAMILIES",
    "MIRRORS",
    "Family",
    "Mirror",
    "attention_route_for",
    "blocked_forward_for",
    "bridge_overrides",
    "family_of",
    "layer_kinds",
    "mirrors",
    "prepare_bridge",
    "refusal",
    "register_family",
    "sink_logits",
    "source_hash",
    "upstream_source",
]
