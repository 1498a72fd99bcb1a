"""headscope: find, measure and edit the attention heads of transformer models.

Public surface (lazily imported so `import headscope` stays fast):
    load_model, model_info, capture, reducers, HeadScores, apply, forward_with, scan, patch,
    ScanRequest, estimate, verify (the two steps of a screened scan),
    direct_logit_attribution, get_analyzer, token_view
"""

from importlib import import_module

from ._version import __version__ as __version__

_LAZY = {
    "load_model": "headscope.models",
    "model_info": "headscope.models",
    "ModelInfo": "headscope.models",
    "capture": "headscope.capture",
    "CaptureResult": "headscope.capture",
    "reducers": "headscope.capture.reducers",
    "HeadScores": "headscope.results",
    "TokenScores": "headscope.results",
    "apply": "headscope.interventions",
    "forward_with": "headscope.interventions",
    "scan": "headscope.interventions",
    "ScanRequest": "headscope.interventions",
    "estimate": "headscope.interventions",
    "verify": "headscope.interventions",
    "patch": "headscope.interventions",
    "direct_logit_attribution": "headscope.interventions",
    "get_analyzer": "headscope.analyzers",
    "token_view": "headscope.capture.token_view",
    "HeadscopeError": "headscope.errors",
    "InputError": "headscope.errors",
    "ModelNotFoundError": "headscope.errors",
}


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        return module if name == "reducers" else getattr(module, name)
    raise AttributeError(f"module 'headscope' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
