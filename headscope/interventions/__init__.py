"""One intervention engine: declarative specs, realised as hooks only for the duration of a call.

Each kind is one `Intervention` subclass (built-ins in `kinds/`, one module each); defining it registers
it in `KINDS`. See docs/interventions.md, "Adding an intervention kind".
"""

from .apply import apply, forward_with
from .atp import estimate
from .dla import direct_logit_attribution
from .kind import EditContext
from .metrics import METRICS
from .patch_results import LogitAttribution, PatchScores
from .patching import PATCH_SITES, patch
from .prepare import prepare_references
from .request import Method, Replay, ScanRequest
from .scan import clean_readout, exact, scan, variant_outputs, verify
from .screen import ScreenedScan
from .specs import (
    KINDS,
    ACTCalibration,
    Intervention,
    MeanAblation,
    ResampleAblation,
    ScaleOutput,
    StreamingWindow,
    UniformAttention,
    VARRedistribution,
    ZeroAblation,
)

__all__ = [
    "KINDS",
    "METRICS",
    "PATCH_SITES",
    "ACTCalibration",
    "EditContext",
    "Intervention",
    "LogitAttribution",
    "MeanAblation",
    "Method",
    "PatchScores",
    "Replay",
    "ResampleAblation",
    "ScaleOutput",
    "ScanRequest",
    "ScreenedScan",
    "StreamingWindow",
    "UniformAttention",
    "VARRedistribution",
    "ZeroAblation",
    "apply",
    "clean_readout",
    "direct_logit_attribution",
    "estimate",
    "exact",
    "forward_with",
    "patch",
    "prepare_references",
    "scan",
    "variant_outputs",
    "verify",
]
