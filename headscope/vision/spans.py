"""Moved to `headscope.inputs.spans` (image spans are an input fact, below capture and generation);
this name stays one release for existing imports."""

from ..inputs.spans import *  # noqa: F403
from ..inputs.spans import image_positions, image_span, image_spans, image_token_ids  # noqa: F401
