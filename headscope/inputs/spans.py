"""Where the image is in a prompt: image-placeholder token ids and the spans they occupy.

A LLaVA-family model marks each image patch with its image token (`config.image_token_index` /
`image_token_id`); the vision features replace those embeddings. headscope's own testbeds record their
image token ids with the model's facts (`model_info(model).image_token_ids`), so the same code finds the image in
a shapes-vlm prompt, a visual-sink SmolLM2 prompt and a real LLaVA prompt.

    >>> from headscope.inputs.spans import image_spans
    >>> image_spans(model, ids)        # [(start, end), ...] half-open, one per contiguous image block
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from ..models.info import image_token_ids


def _as_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1:
            raise InputError(f"one prompt at a time: expected token ids [pos] or [1, pos], got {tuple(ids.shape)}")
        return [int(t) for t in ids.tolist()]
    return [int(t) for t in ids]


def image_positions(model, ids: Sequence[int] | torch.Tensor) -> list[int]:
    """Positions of image tokens in one prompt."""
    marks = image_token_ids(model)
    return [i for i, t in enumerate(_as_list(ids)) if t in marks]


def image_spans(model, ids: Sequence[int] | torch.Tensor, *, required: bool = True) -> list[tuple[int, int]]:
    """Half-open [start, end) spans of contiguous image tokens in one prompt.

    Raises InputError (naming the fix) when `required` and the model has no image token or the
    prompt contains none.
    """
    marks = image_token_ids(model)
    if not marks and required:
        raise InputError(
            "this model has no image token (no config.image_token_index and no headscope testbed marker). "
            "Fix: use a vision-language model (e.g. load_model('shapes-vlm')), or give the image span "
            "explicitly as (start, end)."
        )
    spans: list[tuple[int, int]] = []
    for i, t in enumerate(_as_list(ids)):
        if t in marks:
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
    if not spans and required:
        raise InputError(
            f"the prompt contains no image token (ids {sorted(marks)}). "
            "Fix: build the prompt with the model's image placeholder tokens in it."
        )
    return spans


def image_span(model, ids: Sequence[int] | torch.Tensor) -> tuple[int, int]:
    """The single image span of a one-image prompt (InputError if there are several)."""
    spans = image_spans(model, ids)
    if len(spans) != 1:
        raise InputError(
            f"expected one image block, found {len(spans)} at {spans}. "
            "Fix: pass one image per prompt, or use image_spans() and pick one."
        )
    return spans[0]
