"""Built-in prompt sets: the text prompts analyzers fall back on and the report reads (an input
fact, so analyzers need not import the report command)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..paths import data_dir


def load_prompts(path: str | Path | None = None) -> list[str]:
    """The built-in report prompts (data/prompts/report.json) or a user JSON/text file."""
    path = Path(path) if path else data_dir() / "prompts" / "report.json"
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist")
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        prompts = doc["prompts"] if isinstance(doc, dict) else doc
    else:  # plain text: one prompt per blank-line-separated block
        prompts = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"{path} holds no prompts: expected a JSON list of strings or {{'prompts': [...]}}")
    return prompts
