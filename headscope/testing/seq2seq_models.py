"""Tiny random-init encoder-decoders (T5, BART) for the tests of `headscope.capture.seq2seq`.

Built from HF configs in code like the decoder matrix (`headscope.testing.architectures`): 2 encoder
and 2 decoder layers, d_model 64, 4 heads of 16, vocab 64, dropout off, weights redrawn N(0, 0.25^2)
so attention is sharp. `tiny_seq2seq(name)` returns (bridge, plain HF copy with the same weights).
"""

from __future__ import annotations

import copy

import torch

from headscope.models.compat import set_attn_implementation
from headscope.models.loading import boot
from headscope.testing.tiny import tiny_tokenizer

VOCAB, D_MODEL, N_HEADS, D_HEAD = 64, 64, 4, 16


def _t5():
    from transformers import T5Config

    return T5Config(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        d_kv=D_HEAD,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=N_HEADS,
        dropout_rate=0.0,
        # an extra keyword transformers' config accepts at run time; its typing declares no such field
        decoder_start_token_id=0,  # type: ignore[call-arg]
        pad_token_id=0,
        eos_token_id=2,
    ), "T5ForConditionalGeneration"


def _bart():
    from transformers import BartConfig

    return BartConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=N_HEADS,
        decoder_attention_heads=N_HEADS,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    ), "BartForConditionalGeneration"


SEQ2SEQ = {"t5": _t5, "bart": _bart}


def tiny_seq2seq(name: str, seed: int = 0):
    """(TransformerBridge, plain HF eager copy) of the tiny encoder-decoder `name` ("t5" or "bart")."""
    import transformers

    cfg, arch = SEQ2SEQ[name]()
    cfg.architectures = [arch]
    set_attn_implementation(cfg, "eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = getattr(transformers, arch)(cfg)
        with torch.no_grad():
            for p in hf.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, 0.25)
    hf = hf.float().eval()
    plain = copy.deepcopy(hf)  # the bridge puts its own components inside the HF model it wraps
    bridge = boot(
        f"headscope/tiny-{name}",
        f"headscope/tiny-{name}",
        "cpu",
        torch.float32,
        None,
        hf_model=hf,
        tokenizer=tiny_tokenizer(VOCAB),
    )
    return bridge, plain
