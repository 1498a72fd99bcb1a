"""State-space and recurrent language models with no attention layer at all: refused.

Every layer mixes tokens through a recurrence (Mamba's selective scan, RWKV's time mixing, Hyena's
long convolutions), so there is no attention pattern and no head for any engine to find, measure
or edit. TransformerLens bridges them, but its attention hooks do not exist on these models.
"""

from __future__ import annotations

from ..models.family import Family, register_family


def no_attention_heads(config) -> str:
    return (
        f"no attention heads: every layer of a {config.model_type} model is a state-space / recurrent "
        "mixer, so there are no attention patterns or heads to analyse. Fix: use an attention model "
        "(docs/architectures.md lists the families headscope is checked on)"
    )


FAMILY = register_family(
    Family(
        "recurrent",
        ("mamba", "mamba2", "falcon_mamba", "rwkv", "rwkv7", "hyenadna", "xlstm"),
        refuse=no_attention_heads,
        notes="Pure state-space / recurrent models: no attention layer, refused at boot.",
    )
)
