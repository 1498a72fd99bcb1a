"""JetMoE: refused — its attention is a mixture of attention experts with no per-head output hook."""

from __future__ import annotations

from ..models.family import Family, register_family


def no_head_outputs(config) -> str:
    return (
        "its attention is a mixture of attention experts (each token routed to some of them), and "
        "TransformerLens 4.3's JetMoE bridge exposes patterns but no per-head outputs (hook_z), so head "
        "ablations, scans and attribution cannot run. Fix: none in headscope yet"
    )


FAMILY = register_family(
    Family("jetmoe", ("jetmoe",), refuse=no_head_outputs, notes="Mixture-of-attention-heads; the bridge has no hook_z.")
)
