"""Analyzers: one module per method, all with the fit/scores_/heads_ contract of `base.Analyzer`.

`get_analyzer(name, **params)` and `REGISTRY` give access by name (CLI: `headscope analyze NAME`).
"""

from .base import REGISTRY, Analyzer, get_analyzer, register, select_heads

__all__ = ["REGISTRY", "Analyzer", "get_analyzer", "register", "select_heads"]
