"""DeepSeek-V4 and GLM-5 (GLM MoE DSA): attention whose keys are compressed or selected per query.

DeepSeek-V4's layers attend over compressed key blocks ("heavily compressed attention") and GLM's DSA
layers let an indexer pick the top keys of each query ("indexed attention"); HF computes that selection
inside the layer and TransformerLens 4.3 bridges the layer as ordinary attention. A head's pattern is
then over a different key set per query, which headscope's engines (patterns indexed by absolute key,
blocked attention, the kinds' masks) cannot represent: both families are refused at boot."""

from __future__ import annotations

from ..models.family import Family, register_family

_WHY = (
    "its attention layers attend over keys {how} inside the layer, so a head's pattern is not a row over the "
    "prompt's positions that headscope's engines (pattern statistics, blocked attention, attention-level "
    "interventions) can index; TransformerLens 4.3 bridges the layer as ordinary attention. Fix: a model "
    "with dense attention (docs/architectures.md lists the families checked)"
)


def _refuse(how: str):
    return lambda config: _WHY.format(how=how)


register_family(
    Family(
        "deepseek_v4",
        ("deepseek_v4",),
        refuse=_refuse("compressed into blocks"),
        notes="Compressed-block attention: refused.",
    )
)
register_family(
    Family(
        "glm_moe_dsa",
        ("glm_moe_dsa",),
        refuse=_refuse("that an indexer selects per query (DSA)"),
        notes="DeepSeek sparse attention (indexer top-k keys): refused.",
    )
)
