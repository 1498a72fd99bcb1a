"""An architecture matrix of tiny random-init models, one per family the installed TransformerLens bridges.

Every model is built from a Hugging Face config in code (offline, no weights on disk, ~0.05 s each
after the first import): 2 layers (one local + one global where the family alternates; hybrids 4, of
which layers 1 and 3 attend), d_model 64,
4 query heads of d_head 16, vocab 64, 128 positions, eager attention, float32, eval mode. The MLA
families (DeepSeek-V2/V3) use ``MLA_DIMS`` instead of d_head 16: q/k 12 + 8 RoPE wide, v 10 wide.

Weights are redrawn N(0, std^2) (every matrix and embedding; std = ``Architecture.init_std``, 0.25
unless the family needs otherwise) so attention is sharp and token/position dependent rather than
the near-uniform patterns HF's default 0.02 gives; norms keep an effective gain of 1 and biases
stay as HF initialises them. Families that normalise q and k per head (Qwen 3, Gemma 3, OLMo 2)
fix the score scale whatever the projections are, so their q/k-norm gain is ``QK_NORM_GAIN``.

Decoders use ``headscope.testing.tiny.tiny_tokenizer(64)`` (pad 0, BOS 1, ``t2 .. t63``); the BERT
encoder uses ``bert_tokenizer()``, which wraps text in ``[CLS] .. [SEP]``.

>>> from headscope.testing.architectures import ARCHITECTURES, tiny_arch_model, plain_hf, layer_windows
>>> model = tiny_arch_model("gemma2")                    # TransformerBridge
>>> hf = plain_hf("gemma2")                              # same weights, plain HF eager model
>>> layer_windows("gemma2")                              # local layer 0, global layer 1
[8, None]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from headscope.errors import InputError
from headscope.models.compat import set_experts_implementation
from headscope.models.loading import boot
from headscope.testing.tiny import BOS_ID, PAD_ID, tiny_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

VOCAB = 64
D_MODEL = 64
N_HEADS = 4
D_HEAD = 16
N_LAYERS = 2
N_CTX = 128
D_MLP = 128
SLIDING_WINDOW = 8  # keys a local-layer query sees, itself included: smaller than the test prompts
CHUNK = 8  # keys per chunk of a chunked-attention layer (Llama 4): smaller than the test prompts
SINK_LOGITS = (-1.0, 0.5, 2.0, 4.0)  # learned sink logit per head (GPT-OSS): from a small to a dominant share
INIT_STD = 0.25
QK_NORM_GAIN = 2.0
# Gemma 2 soft-caps, small enough to bind on these weights (the released models use 50 / 30).
ATTN_SOFTCAP = 5.0
FINAL_SOFTCAP = 10.0

# BERT special tokens; content words are "t5" .. "t63" with id = the number.
BERT_PAD, BERT_UNK, BERT_CLS, BERT_SEP, BERT_MASK = 0, 1, 2, 3, 4
BERT_FIRST_CONTENT = 5

FEATURES = (
    "learned_pos",  # learned absolute position embeddings (else rotary unless alibi)
    "partial_rotary",  # RoPE on part of each head
    "alibi",  # ALiBi linear position bias in the scores
    "fused_qkv",  # one projection produces q, k and v
    "parallel_attn",  # attention and MLP read the same residual
    "qkv_bias",  # biased q/k/v projections on a rotary model
    "qk_norm",  # per-head (or per-layer) norm on q and k before RoPE
    "softcap",  # tanh soft-capping of attention scores and final logits
    "sliding_window",  # some layers see only the last SLIDING_WINDOW keys
    "chunked",  # some layers see only the keys of the query's own chunk of CHUNK positions
    "nope_layers",  # some layers have no rotary embedding
    "learned_sinks",  # a learned per-head logit joins each softmax's denominator (GPT-OSS)
    "local_global",  # local (windowed) and global layers alternate
    "per_layer_rope",  # local and global layers use different RoPE bases
    "moe",  # mixture-of-experts MLP
    "nonparametric_ln",
    "encoder",  # bidirectional attention, [CLS] .. [SEP] inputs, masked-LM head
    "mla",  # multi-head latent attention: per-head K/V decompressed from one shared latent
    "new_decoder",  # Falcon's new_decoder_architecture (grouped fused QKV, two layer norms)
    "hybrid",  # some layers have no attention (linear attention / Mamba): 4 layers, 2 with heads
    "gated_attn",  # the attention output is gated per head (Qwen3-Next: sigmoid of half of q_proj)
    "no_pos",  # no position encoding in attention (Jamba: the Mamba layers carry order)
)
# Hybrids alternate a layer without heads and an attention layer, so results have both kinds of rows.
# Their MoE route every token to both of their 2 experts: a top-k switch of experts would make the
# metric only piecewise smooth, and the attribution-patching check takes finite differences with large
# steps (top-k routing is covered by Mixtral).
HYBRID_LAYERS = 4


# Query heads per KV head: all (multi-head), a group (grouped-query), one KV head for all (multi-query).
AttentionKind = Literal["MHA", "GQA", "MQA"]


@dataclass(frozen=True)
class Architecture:
    """One cell of the matrix: a tiny model of ``family`` with an attention variant and features.

    ``build_config()`` returns a fresh HF config (``architectures`` set, eager attention);
    ``init_std`` is the std the weight matrices are redrawn with.
    """

    name: str
    family: str
    attention: AttentionKind
    features: tuple[str, ...]
    build_config: Callable[[], PretrainedConfig] = field(repr=False, compare=False)
    init_std: float = INIT_STD

    @property
    def is_encoder(self) -> bool:
        return "encoder" in self.features


# ---------------------------------------------------------------------------------------------
# configs


def _ids():
    """Token ids every decoder config shares with ``tiny_tokenizer``: pad 0, BOS 1, EOS 0."""
    return dict(bos_token_id=BOS_ID, pad_token_id=PAD_ID, eos_token_id=PAD_ID)


def _finish(cfg, arch: str):
    cfg.architectures = [arch]  # TransformerLens picks its adapter from this; tiny_hf its class
    cfg._attn_implementation = "eager"
    return cfg


def _gpt2():
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_inner=D_MLP,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **_ids(),
    )
    return _finish(cfg, "GPT2LMHeadModel")


def _neox():
    from transformers import GPTNeoXConfig

    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=D_MLP,
        max_position_embeddings=N_CTX,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.25},
        **_ids(),
    )
    return _finish(cfg, "GPTNeoXForCausalLM")


def _llama_like(config_cls: str, arch: str, n_kv: int, **extra):
    def build():
        import transformers

        cfg = getattr(transformers, config_cls)(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=D_MLP,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=n_kv,
            max_position_embeddings=N_CTX,
            tie_word_embeddings=False,
            **_ids(),
            **extra,
        )
        return _finish(cfg, arch)

    return build


def _gemma2():
    from transformers import Gemma2Config

    cfg = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        query_pre_attn_scalar=D_HEAD,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        attn_logit_softcapping=ATTN_SOFTCAP,
        final_logit_softcapping=FINAL_SOFTCAP,
        **_ids(),
    )
    return _finish(cfg, "Gemma2ForCausalLM")


def _gemma3():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        query_pre_attn_scalar=D_HEAD,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
        **_ids(),
    )
    return _finish(cfg, "Gemma3ForCausalLM")


def _gpt_neo():
    from transformers import GPTNeoConfig

    cfg = GPTNeoConfig(
        vocab_size=VOCAB,
        max_position_embeddings=N_CTX,
        hidden_size=D_MODEL,
        num_layers=N_LAYERS,
        attention_types=[[["local", "global"], N_LAYERS // 2]],
        num_heads=N_HEADS,
        intermediate_size=D_MLP,
        window_size=SLIDING_WINDOW,
        **_ids(),
    )
    return _finish(cfg, "GPTNeoForCausalLM")


def _gptj():
    from transformers import GPTJConfig

    # RoPE on the first half of each head's dimensions (GPT-J-6B: 64 of 256).
    cfg = GPTJConfig(
        vocab_size=VOCAB,
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        rotary_dim=D_HEAD // 2,
        n_inner=D_MLP,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        **_ids(),
    )
    return _finish(cfg, "GPTJForCausalLM")


def _opt():
    from transformers import OPTConfig

    # GELU instead of OPT's ReLU: the conformance matrix checks attribution patching against finite
    # differences with large steps, which a ReLU kink breaks; the attention, the subject here, is OPT's.
    cfg = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        ffn_dim=D_MLP,
        activation_function="gelu",
        num_attention_heads=N_HEADS,
        max_position_embeddings=N_CTX,
        word_embed_proj_dim=D_MODEL,
        do_layer_norm_before=True,
        dropout=0.0,
        attention_dropout=0.0,
        # an extra keyword transformers' config accepts at run time; its typing declares no such field
        activation_dropout=0.0,  # type: ignore[call-arg]
        layerdrop=0.0,
        **_ids(),
    )
    return _finish(cfg, "OPTForCausalLM")


def _falcon(**extra):
    def build():
        from transformers import FalconConfig

        cfg = FalconConfig(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            max_position_embeddings=N_CTX,
            **_ids(),
            **extra,
        )
        return _finish(cfg, "FalconForCausalLM")

    return build


def _bloom():
    from transformers import BloomConfig

    cfg = BloomConfig(vocab_size=VOCAB, hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, **_ids())
    return _finish(cfg, "BloomForCausalLM")


def _mpt():
    from transformers import MptConfig

    cfg = MptConfig(
        d_model=D_MODEL,
        n_heads=N_HEADS,
        n_layers=N_LAYERS,
        expansion_ratio=2,
        max_seq_len=N_CTX,
        vocab_size=VOCAB,
        attn_config={"alibi": True, "alibi_bias_max": 8},
        **_ids(),
    )
    return _finish(cfg, "MptForCausalLM")


# MLA widths: all different from each other and from D_HEAD, so a shape assumption shows.
MLA_DIMS = dict(kv_lora_rank=24, q_lora_rank=32, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10)


def _deepseek(config_cls: str, arch: str, **extra):
    """A tiny MLA + MoE DeepSeek: layer 0 dense, layer 1 MoE (4 routed experts, top-2, one shared)."""

    def build():
        import transformers

        cfg = getattr(transformers, config_cls)(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=D_MLP,
            moe_intermediate_size=32,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=N_HEADS,
            n_shared_experts=1,
            n_routed_experts=4,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            max_position_embeddings=N_CTX,
            tie_word_embeddings=False,
            **MLA_DIMS,
            **_ids(),
            **extra,
        )
        return _finish(cfg, arch)

    return build


def _bert():
    from transformers import BertConfig

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=D_MLP,
        max_position_embeddings=N_CTX,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=BERT_PAD,
    )
    return _finish(cfg, "BertForMaskedLM")


def _olmo3():
    from transformers import Olmo3Config

    cfg = Olmo3Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        max_position_embeddings=N_CTX,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        **_ids(),
    )
    return _finish(cfg, "Olmo3ForCausalLM")


def _exaone4():
    from transformers import Exaone4Config

    cfg = Exaone4Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        # an extra keyword transformers' config accepts at run time; its typing declares no such field
        head_dim=D_HEAD,  # type: ignore[call-arg]
        max_position_embeddings=N_CTX,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        **_ids(),
    )
    return _finish(cfg, "Exaone4ForCausalLM")


def _llama4_text():
    from transformers import Llama4TextConfig

    # Layer 0 has RoPE and chunked attention (CHUNK keys per chunk); layer 1 has no RoPE, full attention
    # and temperature tuning (floor_scale small enough that the tiny prompts reach it). No MoE layer:
    # the dense gated MLP (moe_layers=[]). No L2 q/k norm: it bounds the scores by the scaling (0.25),
    # which leaves these tiny heads near uniform.
    cfg = Llama4TextConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        intermediate_size_mlp=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        attention_chunk_size=CHUNK,
        no_rope_layers=[1, 0],
        moe_layers=[],
        floor_scale=4,
        use_qk_norm=False,
        attn_scale=0.1,
        tie_word_embeddings=False,
        **_ids(),
    )
    return _finish(cfg, "Llama4ForCausalLM")


# GPT-OSS clamps its experts' gate and up projections at +-7; on these weights (projections of std ~2)
# some entries reach it, and finite differences across the clamp's kink miss attribution patching's
# first-order estimate (conformance "atp"). 30 keeps the clamp in the forward, out of reach.
SWIGLU_LIMIT = 30.0


def _gpt_oss():
    from transformers import GptOssConfig

    cfg = GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        num_local_experts=4,
        num_experts_per_tok=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        swiglu_limit=SWIGLU_LIMIT,
        **_ids(),
    )
    return _finish(cfg, "GptOssForCausalLM")


def _eager_experts(cfg):
    # HF's default grouped expert matmul has no float64 kernel; the per-expert loop does, so the
    # attribution-patching check runs these in float64 like the dense families.
    set_experts_implementation(cfg, "eager")
    return cfg


def _qwen3_next():
    from transformers import Qwen3NextConfig

    cfg = Qwen3NextConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=HYBRID_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        layer_types=["linear_attention", "full_attention"] * (HYBRID_LAYERS // 2),
        linear_key_head_dim=D_HEAD,
        linear_value_head_dim=D_HEAD,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        num_experts=2,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        tie_word_embeddings=False,
        **_ids(),
    )
    return _eager_experts(_finish(cfg, "Qwen3NextForCausalLM"))


def _granite_moe_hybrid():
    from transformers import GraniteMoeHybridConfig

    cfg = GraniteMoeHybridConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=HYBRID_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=N_CTX,
        layer_types=["mamba", "attention"] * (HYBRID_LAYERS // 2),
        position_embedding_type="rope",
        mamba_n_heads=8,
        mamba_d_state=16,
        mamba_chunk_size=16,
        num_local_experts=2,
        num_experts_per_tok=2,
        shared_intermediate_size=D_MLP // 2,
        **_ids(),
    )
    return _eager_experts(_finish(cfg, "GraniteMoeHybridForCausalLM"))


def _jamba():
    from transformers import JambaConfig

    cfg = JambaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=HYBRID_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=N_CTX,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=2,
        mamba_d_state=8,
        **_ids(),
    )
    return _eager_experts(_finish(cfg, "JambaForCausalLM"))


def _arch(name, family, attention, features, build, **kw):
    return name, Architecture(name, family, attention, tuple(features), build, **kw)


_LLAMA = ("LlamaConfig", "LlamaForCausalLM")

ARCHITECTURES: dict[str, Architecture] = dict(
    [
        _arch("gpt2", "gpt2", "MHA", ["learned_pos", "fused_qkv"], _gpt2),
        _arch("gpt-neox", "gpt_neox", "MHA", ["partial_rotary", "fused_qkv", "parallel_attn"], _neox),
        _arch("llama", "llama", "GQA", [], _llama_like(*_LLAMA, 2, head_dim=D_HEAD)),
        _arch("llama-mha", "llama", "MHA", [], _llama_like(*_LLAMA, 4, head_dim=D_HEAD)),
        _arch("llama-mqa", "llama", "MQA", [], _llama_like(*_LLAMA, 1, head_dim=D_HEAD)),
        _arch(
            "mistral",
            "mistral",
            "GQA",
            ["sliding_window"],
            _llama_like("MistralConfig", "MistralForCausalLM", 2, head_dim=D_HEAD, sliding_window=SLIDING_WINDOW),
        ),
        _arch(
            "mixtral",
            "mixtral",
            "GQA",
            ["moe"],
            _llama_like(
                "MixtralConfig", "MixtralForCausalLM", 2, head_dim=D_HEAD, num_local_experts=4, num_experts_per_tok=2
            ),
        ),
        _arch("qwen2", "qwen2", "GQA", ["qkv_bias"], _llama_like("Qwen2Config", "Qwen2ForCausalLM", 2)),
        _arch("qwen3", "qwen3", "GQA", ["qk_norm"], _llama_like("Qwen3Config", "Qwen3ForCausalLM", 2, head_dim=D_HEAD)),
        _arch("gemma2", "gemma2", "GQA", ["softcap", "sliding_window", "local_global"], _gemma2),
        _arch("gemma3", "gemma3_text", "GQA", ["qk_norm", "sliding_window", "local_global", "per_layer_rope"], _gemma3),
        _arch(
            "phi3",
            "phi3",
            "GQA",
            ["fused_qkv"],
            _llama_like("Phi3Config", "Phi3ForCausalLM", 2, original_max_position_embeddings=N_CTX),
        ),
        _arch("olmo", "olmo", "MHA", ["nonparametric_ln"], _llama_like("OlmoConfig", "OlmoForCausalLM", 4)),
        _arch("olmo2", "olmo2", "MHA", ["qk_norm"], _llama_like("Olmo2Config", "Olmo2ForCausalLM", 4)),
        # GPT-Neo does not scale scores by 1/sqrt(d_head): half the std gives the same score scale.
        _arch(
            "gpt-neo",
            "gpt_neo",
            "MHA",
            ["learned_pos", "sliding_window", "local_global"],
            _gpt_neo,
            init_std=INIT_STD / 2,
        ),
        _arch("gpt-j", "gptj", "MHA", ["partial_rotary", "parallel_attn"], _gptj),
        _arch("opt", "opt", "MHA", ["learned_pos"], _opt),
        _arch("falcon", "falcon", "MQA", ["fused_qkv", "parallel_attn"], _falcon()),
        _arch(
            "falcon-alibi",
            "falcon",
            "MHA",
            ["alibi", "fused_qkv"],
            _falcon(alibi=True, multi_query=False, parallel_attn=False, bias=True),
        ),
        _arch(
            "falcon-new",
            "falcon",
            "GQA",
            ["fused_qkv", "parallel_attn", "new_decoder"],
            _falcon(new_decoder_architecture=True, num_kv_heads=2),
        ),
        _arch(
            "deepseek-v3",
            "deepseek_v3",
            "MLA",
            ["mla", "moe"],
            _deepseek("DeepseekV3Config", "DeepseekV3ForCausalLM", n_group=1, topk_group=1),
        ),
        _arch(
            "deepseek-v2",
            "deepseek_v2",
            "MLA",
            ["mla", "moe"],
            _deepseek("DeepseekV2Config", "DeepseekV2ForCausalLM", n_group=1, topk_group=1),
        ),
        _arch("bloom", "bloom", "MHA", ["alibi", "fused_qkv"], _bloom),
        _arch("mpt", "mpt", "MHA", ["alibi", "fused_qkv"], _mpt),
        # BERT sums word, position and token-type embeddings and mixes every position in layer 0, so
        # layer 1's keys are more alike than a decoder's: a larger std keeps its heads sharp.
        _arch("olmo3", "olmo3", "MHA", ["qk_norm", "sliding_window", "local_global"], _olmo3),
        _arch("exaone4", "exaone4", "GQA", ["qk_norm", "sliding_window", "local_global"], _exaone4),
        _arch("llama4-text", "llama4_text", "GQA", ["chunked", "nope_layers"], _llama4_text),
        _arch(
            "gpt-oss",
            "gpt_oss",
            "GQA",
            ["qkv_bias", "sliding_window", "local_global", "moe", "learned_sinks"],
            _gpt_oss,
        ),
        _arch("bert", "bert", "MHA", ["encoder", "learned_pos"], _bert, init_std=0.3),
        # Hybrids: layers 0 and 2 have no heads (Gated DeltaNet / Mamba-2 / Mamba), layers 1 and 3 attend.
        _arch(
            "qwen3-next", "qwen3_next", "GQA", ["hybrid", "gated_attn", "qk_norm", "partial_rotary", "moe"], _qwen3_next
        ),
        _arch("granite-moe-hybrid", "granitemoehybrid", "GQA", ["hybrid", "moe"], _granite_moe_hybrid),
        _arch("jamba", "jamba", "GQA", ["hybrid", "no_pos", "moe"], _jamba),
    ]
)


def layer_windows(name_or_config) -> list[int | None]:
    """Per layer, how many keys (the query's own included) a query may see: an int for a
    sliding-window (local) layer, None for a global or chunked one (see `layer_chunks`).

    >>> layer_windows("mistral"), layer_windows("llama")
    ([8, 8], [None, None])
    """
    cfg = _config(name_or_config)
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None) or cfg.n_layer
    if getattr(cfg, "model_type", None) in ("qwen3_next", "granitemoehybrid", "jamba"):  # layer_types = mixers
        return [None] * n_layers
    if getattr(cfg, "model_type", None) == "gpt_neo":
        return [cfg.window_size if kind == "local" else None for kind in cfg.attention_layers]
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return [None] * n_layers
    kinds = getattr(cfg, "layer_types", None)
    if kinds is None:  # Mistral: every layer windowed
        return [window] * n_layers
    return [window if kind == "sliding_attention" else None for kind in kinds]


def layer_chunks(name_or_config) -> list[int | None]:
    """Per layer, the chunk size of a chunked-attention layer (Llama 4), else None. A chunk is not a
    sliding window: query q sees the keys k <= q of its own chunk (k // chunk == q // chunk), so the
    first query of a chunk sees only itself.

    >>> layer_chunks("llama4-text"), layer_chunks("gemma2")
    ([8, None], [None, None])
    """
    cfg = _config(name_or_config)
    kinds = getattr(cfg, "layer_types", None) or []
    chunk = getattr(cfg, "attention_chunk_size", None)
    return [chunk if kind == "chunked_attention" else None for kind in kinds] or [None] * len(layer_windows(cfg))


def visible_keys(name_or_config, layer: int, T: int, encoder: bool = False) -> torch.Tensor:
    """[q, k] bool: the keys each query of an unpadded T-token prompt may see in `layer` (causal, then
    the layer's sliding window or chunk; every key on an encoder)."""
    if encoder:
        return torch.ones(T, T, dtype=torch.bool)
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    vis = k <= q
    window, chunk = layer_windows(name_or_config)[layer], layer_chunks(name_or_config)[layer]
    if window:
        vis = vis & (q - k < window)
    if chunk:
        vis = vis & (q // chunk == k // chunk)
    return vis


def _config(name_or_config):
    return _get(name_or_config).build_config() if isinstance(name_or_config, str) else name_or_config


# ---------------------------------------------------------------------------------------------
# tokenizers


def bert_tokenizer(vocab_size: int = VOCAB):
    """Word-level BERT-style tokenizer: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4,
    ``t5 .. t{vocab_size-1}``; encoding wraps the text in ``[CLS] .. [SEP]`` like a real BERT tokenizer.

    >>> bert_tokenizer()("t5 t6")["input_ids"]
    [2, 5, 6, 3]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {"[PAD]": BERT_PAD, "[UNK]": BERT_UNK, "[CLS]": BERT_CLS, "[SEP]": BERT_SEP, "[MASK]": BERT_MASK}
    vocab = {**specials, **{f"t{i}": i for i in range(BERT_FIRST_CONTENT, vocab_size)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", BERT_CLS), ("[SEP]", BERT_SEP)],
    )
    # name_or_path keeps TransformerLens from looking for a tokenizer anywhere else.
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        name_or_path="headscope/tiny-bert",
        model_max_length=N_CTX,
    )


def tokenizer_for(name: str):
    """The tokenizer the tiny model ``name`` uses (``tiny_tokenizer(64)`` for every decoder)."""
    return bert_tokenizer() if _get(name).is_encoder else tiny_tokenizer(VOCAB)


def random_prompt(name: str, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """LongTensor ``[n_tokens]`` of random content ids framed as the tokenizer would frame them:
    ``[BOS, ...]`` for decoders, ``[CLS, ..., SEP]`` for the encoder."""
    g = torch.Generator().manual_seed(seed)
    if _get(name).is_encoder:
        body = torch.randint(BERT_FIRST_CONTENT, VOCAB, (n_tokens - 2,), generator=g)
        return torch.cat([torch.tensor([BERT_CLS]), body, torch.tensor([BERT_SEP])])
    return torch.cat([torch.tensor([BOS_ID]), torch.randint(BOS_ID + 1, VOCAB, (n_tokens - 1,), generator=g)])


# ---------------------------------------------------------------------------------------------
# models


_LOOKUPS: list[Callable[[str], Architecture | None]] = []


def register_lookup(lookup: Callable[[str], Architecture | None]) -> None:
    """Let `get_arch` find families defined elsewhere (the adapter sweep registers its HF classes)."""
    _LOOKUPS.append(lookup)


def get_arch(name: str) -> Architecture:
    """The curated family `name` of ``ARCHITECTURES``, or a family of the adapter sweep named by its HF
    class (``headscope.testing.sweep``, once imported: e.g. "Qwen2MoeForCausalLM")."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    for lookup in _LOOKUPS:
        found = lookup(name)
        if found is not None:
            return found
    raise InputError(
        f"Unknown tiny architecture {name!r}. Supported: {', '.join(supported())}, or a class "
        "headscope.testing.sweep.swept() names."
    )


_get = get_arch


def _set_norm_gain(norm, gain: float) -> None:
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    # Gemma's RMSNorm multiplies by (1 + weight); every other norm by weight.
    offset = 1.0 if "gemma" in type(norm).__name__.lower() else 0.0
    weight.fill_(gain - offset)


@torch.no_grad()
def _sharpen(model, std: float) -> None:
    """Redraw every matrix / embedding N(0, std^2); leave norms and biases as HF set them."""
    norms = [m for m in model.modules() if "norm" in type(m).__name__.lower()]
    norm_params = {id(p) for m in norms for p in m.parameters(recurse=False)}
    for p in model.parameters():  # tied embeddings appear once
        if p.ndim >= 2 and id(p) not in norm_params:
            p.normal_(0.0, std)
    # Learned sinks (GPT-OSS) are 1-D, so left at HF's ~0.02 above: give each head a sink that matters.
    for param_name, p in model.named_parameters():
        if param_name.rsplit(".", 1)[-1] == "sinks":
            p.copy_(torch.tensor(SINK_LOGITS, dtype=p.dtype)[: p.numel()])
    # Per-head q/k norms fix the score scale at ~1 whatever the projections: give them a gain.
    for mod_name, mod in model.named_modules():
        if mod_name.rsplit(".", 1)[-1] in ("q_norm", "k_norm", "q_layernorm", "k_layernorm"):
            _set_norm_gain(mod, QK_NORM_GAIN)


def tiny_hf(name: str, seed: int = 0):
    """``(hf_model, tokenizer)`` for ``name``: eager attention, float32, eval mode, deterministic in ``seed``.

    Built under ``torch.random.fork_rng``, so the global RNG is left as it was.
    """
    import transformers

    arch = _get(name)
    cfg = arch.build_config()
    if not cfg.architectures:
        raise AssertionError(f"{name}: build_config() set no architectures (see _finish)")
    model_cls = getattr(transformers, cfg.architectures[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
        _sharpen(model, arch.init_std)
    model = model.to(torch.float32).eval()
    model.config._attn_implementation = "eager"
    return model, tokenizer_for(name)


def plain_hf(name: str, seed: int = 0):
    """A plain (never bridged) HF eager model with the weights ``tiny_arch_model(name, seed)`` has.

    Equivalent to ``headscope.testing.plain_hf_copy(tiny_arch_model(name, seed))`` on every family
    here, without booting a bridge.
    """
    return tiny_hf(name, seed)[0]


def _boot(name: str, seed: int, dtype=torch.float32):
    hf, tok = tiny_hf(name, seed)
    label = f"headscope/tiny-{name}"
    return boot(label, label, "cpu", dtype, None, hf_model=hf.to(dtype), tokenizer=tok)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ..."


def tiny_arch_model(name: str, seed: int = 0, dtype=torch.float32):
    """A TransformerBridge around ``tiny_hf(name, seed)`` (cast to ``dtype``), booted offline with installs refused.

    Raises ``InputError`` for a name not in ``ARCHITECTURES`` or a family this TransformerLens cannot
    bridge; the message names the family and lists the names that do boot (``supported()``).
    """
    arch = _get(name)
    try:
        return _boot(name, seed, dtype)
    except InputError as exc:  # boot's refusal names the family and the reason; the matrix adds its names
        if name not in ARCHITECTURES:
            raise
        _BOOT_ERRORS[name] = _short(exc, 2000)
        raise InputError(f"{exc} Supported: {', '.join(supported())}.") from exc
    except Exception as exc:  # no adapter for the family, or its adapter fails on this config
        _BOOT_ERRORS[name] = _short(exc, 2000)
        raise InputError(
            f"TransformerLens cannot bridge the {arch.family!r} family (tiny model {name!r}): {_short(exc)}. "
            f"Supported: {', '.join(supported())}."
        ) from exc


_BOOT_ERRORS: dict[str, str] = {}
_SUPPORTED: dict[tuple, list[str]] = {}


def boot_errors() -> dict[str, str]:
    """Why each name that failed to boot (in ``supported()`` or ``tiny_arch_model``) failed."""
    supported()
    return dict(_BOOT_ERRORS)


def supported() -> list[str]:
    """Names in ``ARCHITECTURES`` that boot as a TransformerBridge here (each booted once, then cached)."""
    key = tuple(ARCHITECTURES.items())
    if key not in _SUPPORTED:
        ok = []
        for name in ARCHITECTURES:
            try:
                _boot(name, 0)
            except Exception as exc:
                _BOOT_ERRORS[name] = _short(exc, 2000)
                continue
            ok.append(name)
        _SUPPORTED[key] = ok
    return list(_SUPPORTED[key])
