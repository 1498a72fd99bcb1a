"""ModernBERT decoder: a BERT-style prediction head (dense, activation, norm) between the final norm
and the unembedding."""

from __future__ import annotations

from ..models.family import Family, register_family


def prediction_head_readout(model, x):
    """The final norm (the bridge's ln_final, `model.final_norm`), then `lm_head` (dense + act + norm),
    as `ModernBertDecoderForCausalLM.forward` does before `decoder`."""
    return model.original_model.lm_head(model.ln_final(x))


FAMILY = register_family(
    Family(
        "modernbert_decoder",
        ("modernbert-decoder",),
        readout=prediction_head_readout,
        notes="lm_head is a prediction head; the vocabulary projection is `decoder`.",
    )
)
