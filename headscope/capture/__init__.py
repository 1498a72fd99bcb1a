"""Hook-based capture: one engine, many reducers."""

from .engine import SITES, CaptureResult, capture
from .reducers import (
    AttentionEntropy,
    DuplicateTokenScore,
    FirstTokenMass,
    InductionScore,
    MeanAttentionDistance,
    PreviousTokenScore,
    QueryMeanReducer,
    Reducer,
    SinkLogitMass,
    default_reducers,
)

__all__ = [
    "SITES",
    "AttentionEntropy",
    "CaptureResult",
    "DuplicateTokenScore",
    "FirstTokenMass",
    "InductionScore",
    "MeanAttentionDistance",
    "PreviousTokenScore",
    "QueryMeanReducer",
    "Reducer",
    "SinkLogitMass",
    "capture",
    "default_reducers",
]
