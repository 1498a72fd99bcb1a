"""Prompts that carry images: token ids with the image placeholder tokens, plus the pixel values.

Anything in headscope that takes prompts (capture, analyzers, head divergence) also takes
`ImagePrompt`s; each of capture's batches carries its rows' images and passes them to the model as
`pixel_values` (`headscope.capture.batch.CaptureBatch.forward_kwargs`). A LLaVA model fills its
image-token embeddings with the vision features in order, so a batch may mix rows with and without
images: the batch's pixel values are the images of its rows, concatenated in row order.

    >>> p = ImagePrompt(ids, pixels)                  # pixels [n_images, 3, H, W]
    >>> capture(model, [p, p2], reducers)             # or HeadDivergence().fit(model, [p, p2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from .spans import image_positions


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """One prompt: token ids (image placeholder tokens included) and its images [n_images, C, H, W]."""

    ids: tuple[int, ...]
    pixel_values: torch.Tensor

    def __post_init__(self):
        ids = self.ids.tolist() if isinstance(self.ids, torch.Tensor) else self.ids
        if isinstance(ids, list) and ids and isinstance(ids[0], list):  # a [1, pos] tensor
            if len(ids) != 1:
                raise InputError("ImagePrompt holds one prompt: pass ids [pos] or [1, pos]")
            ids = ids[0]
        object.__setattr__(self, "ids", tuple(int(t) for t in ids))
        px = self.pixel_values
        if not isinstance(px, torch.Tensor) or not px.is_floating_point():
            raise InputError("ImagePrompt.pixel_values must be a float tensor [n_images, C, H, W] (or [C, H, W])")
        if px.ndim == 3:
            px = px.unsqueeze(0)
        if px.ndim != 4:
            raise InputError(f"ImagePrompt.pixel_values must be [n_images, C, H, W], got {tuple(px.shape)}")
        object.__setattr__(self, "pixel_values", px)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_processor(cls, processor, text: str, image, **kw) -> ImagePrompt:
        """Build one prompt with a Hugging Face processor (real LLaVA-family models), e.g.
        ``ImagePrompt.from_processor(AutoProcessor.from_pretrained(path), "USER: <image>\nWhat is this? ASSISTANT:", img)``."""
        enc = processor(text=text, images=image, return_tensors="pt", **kw)
        if "pixel_values" not in enc:
            raise InputError("the processor returned no pixel_values: pass an image it accepts (e.g. a PIL image)")
        return cls(enc["input_ids"], enc["pixel_values"].float())


def ids_of(item) -> list[int]:
    """Token ids of a prompt given as an ImagePrompt or a list of ids."""
    return list(item.ids) if isinstance(item, ImagePrompt) else list(item)


def images_of(inputs) -> list[torch.Tensor | None] | None:
    """Per prompt its pixel values (None for text prompts); None when no prompt has an image."""
    if not isinstance(inputs, Sequence) or isinstance(inputs, str):
        return None
    images = [item.pixel_values if isinstance(item, ImagePrompt) else None for item in inputs]
    return images if any(px is not None for px in images) else None


def check_image_tokens(model, prompt: ImagePrompt, index: int = 0) -> None:
    """The number of image tokens must equal images x tokens per image (LLaVA raises deep inside otherwise)."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    if (
        config is None or getattr(config, "model_type", None) != "llava"
    ):  # other families tile images into varying counts
        return
    vision = config.vision_config
    n_tokens = len(image_positions(model, prompt.ids))
    per_image = (vision.image_size // vision.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")
    n_images = prompt.pixel_values.shape[0]
    if n_tokens != per_image * n_images:
        raise InputError(
            f"prompt {index} has {n_tokens} image tokens but {n_images} image(s) x {per_image} patches = "
            f"{per_image * n_images} are needed. Fix: put {per_image} image tokens per image in the ids "
            "(e.g. build them with the model's processor or prompt helper)."
        )
