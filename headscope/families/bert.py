"""BERT: a bidirectional encoder whose logits come through the masked-LM head's transform."""

from __future__ import annotations

from ..capture.routed import route_attention
from ..models.family import Family, mirrors, register_family


def mlm_readout(model, x):
    """BERT's path from the last layer to the unembedding: dense, activation, then the norm the
    bridge calls ln_final (`cls.predictions.transform`)."""
    return model.original_model.cls.predictions.transform(x)


@mirrors("transformers.models.roberta.modeling_roberta:RobertaLMHead.forward", "5.24.0", "e765d21853d30a87")
def roberta_readout(model, x):
    """RoBERTa's path from the last layer to the unembedding: `lm_head`'s dense, GELU, then the norm the
    bridge calls ln_final (`lm_head.layer_norm`)."""
    from transformers.activations import gelu

    head = model.original_model.lm_head
    return head.layer_norm(gelu(head.dense(x)))


ROBERTA = register_family(
    Family(
        "roberta",
        ("roberta",),
        readout=roberta_readout,
        attention_route=route_attention,
        notes="Encoder; the masked-LM head's dense + GELU precede ln_final; attention "
        "routed through headscope's forward like BERT's.",
    )
)

FAMILY = register_family(
    Family(
        "bert",
        ("bert",),
        readout=mlm_readout,
        attention_route=route_attention,
        notes="Encoder; the bridge would report patterns after HF computes attention, so "
        "headscope routes attention through its own forward.",
    )
)
