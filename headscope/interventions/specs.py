"""Declarative, serialisable head interventions (frozen dataclasses, round-trip via to_dict/from_dict).

Each spec names the heads it edits together (any set of (layer, head)), the query positions it
touches ("all", "decode" = positions >= the decode start given at run time, or a [start, end) span)
and its kind's parameters. The contract a kind fulfils is `kind.Intervention`; the built-in kinds
live one per module in `kinds/` and are re-exported here under their public names.
"""

from .kind import KINDS, EditContext, Intervention, Positions
from .kinds.act import ACTCalibration
from .kinds.mean import MeanAblation
from .kinds.resample import ResampleAblation
from .kinds.scale import ScaleOutput
from .kinds.streaming_window import StreamingWindow
from .kinds.uniform_attention import UniformAttention
from .kinds.var import VARRedistribution
from .kinds.zero import ZeroAblation

__all__ = [
    "KINDS",
    "ACTCalibration",
    "EditContext",
    "Intervention",
    "MeanAblation",
    "Positions",
    "ResampleAblation",
    "ScaleOutput",
    "StreamingWindow",
    "UniformAttention",
    "VARRedistribution",
    "ZeroAblation",
]
