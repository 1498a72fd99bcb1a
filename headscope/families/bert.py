"""BERT: a bidirectional encoder whose logits come through the masked-LM head's transform."""

from __future__ import annotations

from ..capture.routed import route_attention
from ..models.family import Family, register_family


def mlm_readout(model, x):
    """BERT's path from the last layer to the unembedding: dense, activation, then the norm the
    bridge calls ln_final (`cls.predictions.transform`)."""
    return model.original_model.cls.predictions.transform(x)


FAMILY = register_family(Family("bert", ("bert",), readout=mlm_readout, attention_route=route_attention,
                                notes="Encoder; the bridge would report patterns after HF computes attention, so "
                                      "headscope routes attention through its own forward."))
