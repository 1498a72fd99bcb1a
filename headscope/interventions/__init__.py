"""One intervention engine: declarative specs, realised as hooks only for the duration of a call."""

from .apply import apply, run
from .specs import KINDS, Intervention, ScaleOutput, StreamingWindow, UniformAttention, ZeroAblation

__all__ = ["KINDS", "Intervention", "ScaleOutput", "StreamingWindow", "UniformAttention", "ZeroAblation", "apply", "run"]
