"""The adapter sweep: every architecture TransformerLens 4.3 bridges, built tiny from its HF config.

`transformer_lens.factories.architecture_adapter_factory.SUPPORTED_ARCHITECTURES` names ~160 HF
classes. For each, `entries()` says what the sweep does with it:

* ``not a text model`` — vision, audio, multimodal (a config with a vision/audio/... sub-config, or a
  class whose main input is not ``input_ids``) or diffusion LMs: not swept;
* ``not buildable here`` — transformers 5.24 has no class of that name (remote-code models) or cannot
  build its config;
* swept — a tiny random-init model is built generically from its config (`tiny_config`) and registered
  as an `Architecture` named by its HF class, so `headscope.testing.conformance.CHECKS` run on it like
  on the curated matrix (`headscope.testing.architectures.get_arch`).

`python -m headscope.testing.sweep_table` runs every check on every swept family and prints the table of
docs/architectures.md, "The adapter sweep".
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from headscope.testing import architectures as A

# Classes TransformerLens lists that are not text language models (kept explicit where the class is
# not in transformers, so its config cannot say so).
DIFFUSION = ("BD3LM", "DreamModel", "GiddForDiffusionLM", "LLaDAModelLM", "LLaDA2MoeModelLM")
_MODALITIES = ("vision", "audio", "vq", "speech", "image", "video", "perceiver", "projector")
_INPUTS = {"input_values": "audio", "input_features": "audio", "pixel_values": "vision"}

_LAYERS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
)
# Generic tiny shape: each value goes to whichever of these names the family's config has.
_SIZES = {
    ("vocab_size",): A.VOCAB,
    ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"): A.D_MODEL,
    _LAYERS: A.N_LAYERS,
    (
        "num_attention_heads",
        "n_head",
        "num_heads",
        "n_heads",
        "encoder_attention_heads",
        "decoder_attention_heads",
    ): A.N_HEADS,
    ("head_dim", "d_kv", "kv_channels", "attention_head_dim"): A.D_HEAD,
    (
        "intermediate_size",
        "n_inner",
        "ffn_dim",
        "d_ff",
        "ffn_hidden_size",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "expert_intermediate_size",
    ): A.D_MLP,
    ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"): A.N_CTX,
    ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"): 4,
    ("num_experts_per_tok", "moe_k", "top_k", "moe_topk", "num_experts_per_token"): 2,
    ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"): 1,
    ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"): 2,
    # multi-head latent attention and its indexer (DeepSeek V2-V4, GLM MoE)
    ("kv_lora_rank", "q_lora_rank"): 32,
    ("qk_rope_head_dim", "qk_nope_head_dim"): 8,
    ("v_head_dim", "index_head_dim"): A.D_HEAD,
    ("index_n_heads",): 2,
    ("rotary_dim",): A.D_HEAD // 2,  # GPT-J / CodeGen: partial rotary within the 16-wide head
    # state-space layers of the hybrids (Mamba 2 mixers): 8 heads of 16 = 2 x 64, a small state and chunk
    ("mamba_n_heads", "mamba_num_heads", "n_mamba_heads"): 8,
    ("mamba_d_head", "mamba_head_dim"): A.D_HEAD,
    ("mamba_d_ssm",): 2 * A.D_MODEL,
    ("mamba_d_state", "ssm_state_size"): 16,
    ("mamba_chunk_size", "chunk_size"): 16,
    # Gemma 3n / 4 per-layer input embeddings
    ("vocab_size_per_layer_input",): A.VOCAB,
    ("hidden_size_per_layer_input",): A.D_HEAD,
}

# Per-family fixes where the generic shape does not build or misleads (HF class -> config kwargs).
OVERRIDES: dict[str, dict] = {
    # RoBERTa counts positions from pad_token_id + 1.
    "RobertaForMaskedLM": {"max_position_embeddings": A.N_CTX + 2, "pad_token_id": A.BERT_PAD},
    # BERT's LM head is the causal (decoder) use of BERT.
    "BertLMHeadModel": {"is_decoder": True},
    # GPT-Neo lists its layers' kinds itself: one local, one global.
    "GPTNeoForCausalLM": {"attention_types": [[["local", "global"], 1]], "window_size": A.SLIDING_WINDOW},
    # Mamba 2 needs hidden_size * expand == num_heads * head_dim.
    "Mamba2ForCausalLM": {"num_heads": 8, "head_dim": A.D_HEAD, "n_groups": 1},
    # ReLU^2 / xIELU MLPs have kinks in their derivatives: the atp check's finite-difference reference
    # (Richardson extrapolation) needs a smooth forward, so these tiny models use SiLU.
    **{
        name: {"hidden_act": "silu"}
        for name in (
            "ApertusForCausalLM",
            "ArceeForCausalLM",
            "Jais2ForCausalLM",
            "BitNetForCausalLM",
            "NemotronForCausalLM",
        )
    },
    "OPTForCausalLM": {"activation_function": "gelu"},  # ReLU: the same kink
    # Granite scales scores by attention_multiplier (default 1: unscaled, saturated at this init); the
    # released models use ~1/head_dim, so the tiny ones take the usual 1/sqrt(head_dim).
    **{name: {"attention_multiplier": A.D_HEAD**-0.5} for name in ("GraniteForCausalLM", "GraniteMoeForCausalLM")},
    # Top-k routing is a discrete choice that a finite step can flip (the atp check's reference): these
    # tiny MoEs route every token to all 4 experts, so the forward is smooth and the router still weighs.
    **{
        name: {"num_experts_per_tok": 4}
        for name in (
            "Llama4ForCausalLM",
            "GraniteMoeForCausalLM",
            "DeepseekV2ForCausalLM",
            "Qwen3NextForCausalLM",
            "Qwen3_5MoeForCausalLM",
        )
    },
    # Hybrids whose default config names no layer kinds (or a long fixed pattern): one of each.
    "Lfm2ForCausalLM": {"layer_types": ["conv", "full_attention"]},
    "Lfm2MoeForCausalLM": {"layer_types": ["conv", "full_attention"]},
    "Zamba2ForCausalLM": {
        "layers_block_type": ["linear_attention", "hybrid"],
        "n_mamba_heads": 8,
        "mamba_d_state": 16,
        "adapter_rank": 8,
    },
    # Hybrids whose attention layers come from a period / an index list: attention on layer 1 of 2.
    "JambaForCausalLM": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts_per_tok": 2,
        "num_experts": 2,
    },
    "GraniteMoeHybridForCausalLM": {
        "layer_types": ["mamba", "attention"],
        "position_embedding_type": "rope",
        "mamba_n_heads": 8,
        "mamba_d_state": 16,
        "mamba_chunk_size": 16,
        "num_local_experts": 2,
        "num_experts_per_tok": 2,
    },
    "BambaForCausalLM": {"attn_layer_indices": [1], "mamba_n_heads": 8, "mamba_d_state": 16, "mamba_chunk_size": 16},
    "RecurrentGemmaForCausalLM": {"block_types": ["recurrent", "attention"]},
}
# Per-family init std where the matrix default (A.INIT_STD) gives near-uniform or saturated attention.
INIT_STDS: dict[str, float] = {
    # GPT-Neo does not scale scores by 1/sqrt(d_head): half the std gives the same score scale (as the matrix).
    "GPTNeoForCausalLM": A.INIT_STD / 2,
    # Its grouped expert matmul has no float64 kernel, so the atp check runs in float32 (to 1e-3, as
    # Mixtral); at std 0.25 the float32 finite differences miss that by ~1.5x, at 0.2 they meet it.
    "GraniteMoeForCausalLM": 0.2,
}
# MoEs whose grouped expert matmul has no float64 kernel and whose float32 finite differences are too
# coarse for the atp check: the per-expert loop (float64), as the matrix's hybrids.
EAGER_EXPERTS = ("GraniteMoeHybridForCausalLM", "Qwen3NextForCausalLM", "Qwen3_5MoeForCausalLM")


@dataclass(frozen=True)
class Entry:
    """What the sweep does with one HF class: ``outcome`` is "swept", "not a text model: ..." or
    "not buildable here: ..."; ``model_type`` is None where transformers has no such class."""

    hf_class: str
    model_type: str | None
    outcome: str


def supported_classes() -> list[str]:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return list(SUPPORTED_ARCHITECTURES)


def _not_text(cls_name: str, cls) -> str | None:
    if cls_name in DIFFUSION:
        return "diffusion LM"
    if cls is None:
        return None
    kind = _INPUTS.get(getattr(cls, "main_input_name", "input_ids"))
    if kind:
        return kind
    subs = list(getattr(cls.config_class, "sub_configs", {}) or {})
    other = sorted({m for s in subs for m in _MODALITIES if m in s})
    return f"multimodal ({', '.join(other)})" if other else None


@functools.cache
def entry(cls_name: str) -> Entry:
    """What the sweep does with the HF class `cls_name` (see `Entry`)."""
    import transformers

    try:
        cls = getattr(transformers, cls_name, None)
    except Exception as exc:  # a lazy import that fails here
        return Entry(cls_name, None, f"not buildable here: importing it fails ({type(exc).__name__})")
    reason = _not_text(cls_name, cls)
    model_type = getattr(getattr(cls, "config_class", None), "model_type", None)
    if reason:
        return Entry(cls_name, model_type, f"not a text model: {reason}")
    if cls is None:
        return Entry(cls_name, None, "not buildable here: no such class in transformers 5.24 (remote code)")
    try:
        tiny_config(cls_name)
    except Exception as exc:
        return Entry(cls_name, model_type, f"not buildable here: {A._short(exc, 160)}")
    return Entry(cls_name, model_type, "swept")


@functools.cache
def entries() -> tuple[Entry, ...]:
    """One Entry per class TransformerLens supports, in its order."""
    return tuple(entry(name) for name in supported_classes())


def swept() -> list[str]:
    """The HF class names the sweep builds (text models transformers can build)."""
    return [e.hf_class for e in entries() if e.outcome == "swept"]


def _has(defaults, name: str) -> bool:
    return name in getattr(type(defaults), "__dataclass_fields__", {}) or hasattr(defaults, name)


def _tiny_kwargs(cc) -> dict:
    """Constructor kwargs that shrink a config of class `cc` (and its sub-configs) to the tiny shape."""
    defaults = cc()
    kwargs: dict[str, Any] = {}  # sizes (ints), layer_types (a list), sub-configs
    for names, value in _SIZES.items():
        kwargs.update({n: value for n in names if _has(defaults, n)})
    kwargs.update(bos_token_id=A.BOS_ID, pad_token_id=A.PAD_ID, eos_token_id=A.PAD_ID)
    if getattr(defaults, "sliding_window", None):
        kwargs["sliding_window"] = A.SLIDING_WINDOW
    if getattr(defaults, "kv_lora_rank", None) and "num_key_value_heads" in kwargs:
        # multi-head latent attention: every query head decompresses its own K and V (HF's eager
        # attention repeats K/V num_heads / num_key_value_heads times, so they must be equal)
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", A.N_HEADS)
    kinds = list(dict.fromkeys(getattr(defaults, "layer_types", None) or []))
    if len(kinds) > 1:  # one layer of each kind the family mixes
        kwargs["layer_types"] = kinds
        kwargs.update({n: len(kinds) for n in _LAYERS if _has(defaults, n)})
    for key, sub in (getattr(cc, "sub_configs", {}) or {}).items():  # encoder / decoder / text configs
        if isinstance(sub, type) and sub.__name__ != "AutoConfig":
            kwargs[key] = sub(**_accepted(sub, _tiny_kwargs(sub)))
    return kwargs


def _accepted(cc, kwargs: dict) -> dict:
    params = inspect.signature(cc).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def tiny_config(cls_name: str):
    """A tiny config of `cls_name` built generically from its config class (see `_SIZES`), with
    `OVERRIDES[cls_name]` on top; one local and one global layer where the family alternates them
    (or one layer of each kind of a hybrid), eager attention, ``architectures`` set. Raises
    ValueError when the model would still be large (a shape the generic names missed)."""
    import torch
    import transformers

    cls = getattr(transformers, cls_name)
    cc = cls.config_class
    cfg = cc(**_accepted(cc, {**_tiny_kwargs(cc), **OVERRIDES.get(cls_name, {})}))
    if hasattr(cfg, "use_cache"):
        cfg.use_cache = True
    cfg = A._finish(cfg, cls_name)
    if cls_name in EAGER_EXPERTS:
        A._eager_experts(cfg)
    with torch.device("meta"):  # count parameters without allocating them
        n = sum(p.numel() for p in cls(cfg).parameters())
    if n > MAX_PARAMS:
        raise ValueError(f"the generic tiny config still has {n / 1e6:.1f}M parameters")
    return cfg


MAX_PARAMS = 5_000_000  # the curated matrix's models have ~0.1M; above this a shape was missed


def _attention_kind(cfg) -> A.AttentionKind:
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(text, "num_attention_heads", None) or A.N_HEADS
    kv = getattr(text, "num_key_value_heads", None) or heads
    return "MHA" if kv == heads else ("MQA" if kv == 1 else "GQA")


@functools.cache
def architecture(cls_name: str) -> A.Architecture:
    """The swept family `cls_name` as an `Architecture` (for `architectures.get_arch`)."""
    cfg = tiny_config(cls_name)
    encoder = cls_name.endswith("ForMaskedLM") or (cfg.model_type in ("bert", "roberta") and not cfg.is_decoder)
    features = ("encoder",) if encoder else (("encoder_decoder",) if getattr(cfg, "is_encoder_decoder", False) else ())
    return A.Architecture(
        cls_name,
        cfg.model_type,
        _attention_kind(cfg),
        features,
        functools.partial(tiny_config, cls_name),
        init_std=INIT_STDS.get(cls_name, A.INIT_STD),
    )


A.register_lookup(
    lambda name: architecture(name) if name in supported_classes() and entry(name).outcome == "swept" else None
)
