"""Where headscope finds its shipped data (the repository's top-level `data/`)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HeadscopeError


def data_dir() -> Path:
    """HEADSCOPE_DATA if set, else the `data/` folder next to the package (editable install)."""
    env = os.environ.get("HEADSCOPE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "data")
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise HeadscopeError(
        "headscope's data/ folder was not found (looked in: "
        + ", ".join(map(str, candidates))
        + "). Fix: install from the repository with `pip install -e .`, or set HEADSCOPE_DATA to its data/ folder."
    )
