"""Cohere / Cohere 2: the model's forward multiplies the logits by `config.logit_scale`."""

from __future__ import annotations

from ..models.family import Family, register_family


def logit_scaled(model, logits):
    config = model.original_model.config
    return logits * config.logit_scale


FAMILY = register_family(
    Family(
        "cohere",
        ("cohere", "cohere2"),
        logits=logit_scaled,
        notes="Logits scaled by config.logit_scale after the unembedding.",
    )
)
