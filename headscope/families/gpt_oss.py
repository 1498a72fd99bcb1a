"""GPT-OSS: a learned sink logit per attention head joins every softmax's denominator.

HF's attention passes the logits to the attention interface as `s_aux`, so the blocked kernel
(`headscope.capture.blocked.attention_forward`) needs no copy of the forward: it adds the column
itself. What the family changes for analysis: a pattern row over the real keys sums to 1 - the
sink's share, which `capture.reducers.SinkLogitMass` reports and the attention-sinks analyzer keeps
apart from token sinks (docs/attention-sinks.md, "Learned sinks").
"""

from __future__ import annotations

from ..models.compat import hf_attention
from ..models.family import Family, register_family


def sink_logits(model, layer: int):
    """[head] the learned sink logits of the bridge's `layer` (GptOssAttention.sinks)."""
    return hf_attention(model, layer).sinks


FAMILY = register_family(
    Family(
        "gpt_oss",
        ("gpt_oss",),
        learned_sinks=sink_logits,
        notes="Learned per-head sink logits join each softmax (HF passes them as s_aux); patterns over real keys "
        "sum to 1 - sink_logit_mass.",
    )
)
