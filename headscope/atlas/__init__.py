"""The head atlas (`headscope report`): every analyzer that applies to a model, a role for each head,
one offline page. Analyzers join it by declaring an `atlas` entry (headscope.analyzers.atlas_entry).

    >>> from headscope.atlas import build_atlas, Atlas
    >>> page = build_atlas(None, "headscope-report", preset="quick")      # doctest: +SKIP
    >>> Atlas.load("headscope-report").to_dataframe()                     # doctest: +SKIP
"""

from ..options import PRESETS
from .atlas import Atlas
from .build import build_atlas, rebuild
from .roles import NO_ROLE
from .steps import plan

__all__ = ["NO_ROLE", "PRESETS", "Atlas", "build_atlas", "plan", "rebuild"]
