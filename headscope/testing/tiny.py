"""Tiny random-weight Llama models and token batches for tests (built in code, offline, ~0.1 s).

Example::

    >>> from headscope.testing import tiny_model, induction_tokens
    >>> model = tiny_model(seed=0)                        # TransformerBridge, 2 layers, 4 heads, GQA 2
    >>> tokens = induction_tokens(model, seq_len=10, batch=3)   # [3, 21], BOS first
    >>> logits = model(tokens)                            # [3, 21, 48]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headscope.inputs.probes import repeated_random_tokens as _probe
from headscope.models.compat import no_runtime_installs
from headscope.models.loading import hf_offline

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PAD_ID, BOS_ID = 0, 1
TINY_NAME = "headscope/tiny"
# Random weights this large give visibly non-uniform, token- and position-dependent patterns
# (score std ~1); HF's default 0.02 would make every head almost exactly uniform.
_TINY_INIT_STD = 0.15


def tiny_tokenizer(vocab_size: int = 48):
    """Word-level tokenizer over ``<pad>`` (0), ``<s>`` (1, BOS) and ``t2 .. t{vocab_size-1}``.

    Text is whitespace-split words; unknown words map to ``<pad>``. BOS is prepended on encode.

    >>> tok = tiny_tokenizer()
    >>> tok("t2 t3 t4")["input_ids"]
    [1, 2, 3, 4]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (pad, BOS, one content token), got {vocab_size}")
    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, **{f"t{i}": i for i in range(2, vocab_size)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # name_or_path + add_bos_token stop TransformerLens from trying to re-download a tokenizer.
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="<pad>",
        unk_token="<pad>",
        add_bos_token=True,
        name_or_path=TINY_NAME,
    )


def _llama_config(*, n_layers, n_heads, n_kv_heads, d_model, d_head, d_mlp, vocab_size, n_ctx, init_std):
    from transformers import LlamaConfig

    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_head,
        max_position_embeddings=n_ctx,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
        eos_token_id=PAD_ID,
        initializer_range=init_std,
        # transformers' config dataclasses take attn_implementation as an extra keyword, which their
        # dataclass_transform typing does not declare
        attn_implementation="eager",  # type: ignore[call-arg]
    )


def _new_hf_model(cfg, seed: int):
    """Build LlamaForCausalLM with HF's init drawn from ``seed`` without disturbing the global RNG."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()


def _boot(hf_model, vocab_size: int):
    """Wrap an in-memory HF model in a TransformerBridge (no download: the tokenizer is local)."""
    from transformer_lens.model_bridge import TransformerBridge

    tok = tiny_tokenizer(vocab_size)
    # Offline for this boot only (every tiny model is built in code; TL must not ask the hub).
    with hf_offline(), no_runtime_installs():
        return TransformerBridge.boot_transformers(TINY_NAME, hf_model=hf_model, tokenizer=tok)


def tiny_model(
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 64,
    d_head: int = 16,
    vocab_size: int = 48,
    n_ctx: int = 128,
    seed: int = 0,
):
    """A Llama-architecture ``TransformerBridge`` with random weights (deterministic given ``seed``).

    Standard RoPE, gated SiLU MLP (d_mlp = 2 * d_model), RMSNorm, untied unembedding, float32, CPU,
    eval mode. Weights are N(0, 0.15^2) (norm weights 1) so attention patterns are random but not
    uniform. Uses ``tiny_tokenizer(vocab_size)``; ``model.to_tokens("t2 t3")`` -> ``[[1, 2, 3]]``.

    >>> m = tiny_model(n_layers=1, seed=1)
    >>> m.cfg.n_layers, m.cfg.n_heads, m.cfg.n_key_value_heads, m.cfg.d_head
    (1, 4, 2, 16)
    """
    cfg = _llama_config(
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=2 * d_model,
        vocab_size=vocab_size,
        n_ctx=n_ctx,
        init_std=_TINY_INIT_STD,
    )
    return _boot(_new_hf_model(cfg, seed), vocab_size)


def induction_tokens(
    bridge_or_vocab: int | TransformerBridge,
    seq_len: int,
    n_repeats: int = 2,
    batch: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Random segments repeated ``n_repeats`` times after a BOS: LongTensor ``[batch, 1 + seq_len * n_repeats]``.

    A tiny-model convenience over ``headscope.inputs.repeated_random_tokens``: the vocabulary and BOS
    are read from the model (or a tiny vocab size: BOS 1, content tokens 2 .. V-1), and segments are
    drawn without replacement, so every induction target is unambiguous. Deterministic given ``seed``.

    >>> induction_tokens(48, seq_len=3, seed=0).shape
    torch.Size([1, 7])
    """
    bos: int | None
    if isinstance(bridge_or_vocab, int):
        vocab, bos = bridge_or_vocab, BOS_ID
    else:
        vocab = bridge_or_vocab.cfg.d_vocab
        bos = getattr(getattr(bridge_or_vocab, "tokenizer", None), "bos_token_id", None)
        if bos is None:
            raise ValueError("model has no BOS token id; pass a vocab size or a model with a BOS token")
    # Tiny vocabularies: every id above BOS is a content token; large ones use the probe's default range.
    token_range = (max(PAD_ID, BOS_ID) + 1, vocab) if vocab <= 2000 else None
    return _probe(vocab, seq_len, n_repeats, batch, seed, token_range=token_range, first_token=bos)
