"""Hook-based capture: one engine, many reducers."""

from . import blocked_families  # noqa: F401  (registers blocked attention for GPT-Neo, Falcon, BLOOM, MPT)
from .engine import SITES, CaptureResult, capture
from .reducers import (
    AttentionEntropy, DuplicateTokenScore, FirstTokenMass, InductionScore, MeanAttentionDistance,
    PreviousTokenScore, QueryMeanReducer, Reducer, default_reducers,
)

__all__ = [
    "SITES", "AttentionEntropy", "CaptureResult", "DuplicateTokenScore", "FirstTokenMass", "InductionScore",
    "MeanAttentionDistance", "PreviousTokenScore", "QueryMeanReducer", "Reducer", "capture", "default_reducers",
]
