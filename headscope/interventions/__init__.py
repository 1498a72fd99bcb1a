"""One intervention engine: declarative specs, realised as hooks only for the duration of a call."""

from .apply import apply, run
from .metrics import METRICS
from .scan import scan
from .specs import (KINDS, ACTCalibration, Intervention, MeanAblation, ResampleAblation, ScaleOutput, StreamingWindow,
                    UniformAttention, VARRedistribution, ZeroAblation)

__all__ = ["KINDS", "ACTCalibration", "Intervention", "MeanAblation", "ResampleAblation", "ScaleOutput",
           "StreamingWindow", "UniformAttention", "VARRedistribution", "ZeroAblation", "METRICS", "apply", "run", "scan"]
