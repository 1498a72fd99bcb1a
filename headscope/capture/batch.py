"""The batch capture runs: right-padded tokens plus whatever else the model's forward takes for those rows
(today the images of `ImagePrompt` rows), so a capture has one forward call, `model(batch.tokens,
**batch.forward_kwargs(device))`, and no image bookkeeping of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..inputs.images import images_of
from ..inputs.tokens import TokenBatch, iter_batches


@dataclass
class CaptureBatch(TokenBatch):
    """A TokenBatch with its rows' images: `pixel_values` [images, C, H, W] in row order (a LLaVA model fills
    its image tokens with them in that order; rows without images add none), `image_index` [images] the
    global number of each image (images numbered in prompt order), None when no row has an image."""

    pixel_values: torch.Tensor | None = None
    image_index: torch.Tensor | None = None

    def forward_kwargs(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for this batch besides the tokens: the attention mask, and the
        pixel values when a row has images."""
        kwargs = {"attention_mask": self.attention_mask.to(device)}
        if self.pixel_values is not None:
            kwargs["pixel_values"] = self.pixel_values.to(device)
        return kwargs


@dataclass(frozen=True)
class PromptImages:
    """Per prompt its pixel values (None for a text prompt), and where each prompt's images are numbered."""

    pixels: list[torch.Tensor | None]

    @classmethod
    def of(cls, inputs) -> PromptImages | None:
        """The images of `inputs` (capture's inputs), None when no prompt has an image."""
        pixels = images_of(inputs)
        return None if pixels is None else cls(pixels)

    @property
    def offsets(self) -> torch.Tensor:
        """[n_prompts + 1] cumulative image counts: prompt p's images are numbered offsets[p]..offsets[p+1]-1."""
        counts = torch.tensor([0 if px is None else int(px.shape[0]) for px in self.pixels])
        return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    @property
    def count(self) -> int:
        return int(self.offsets[-1])


def capture_batches(
    token_lists: list[list[int]], batch_size: int, pad_id: int, images: PromptImages | None = None
) -> Iterator[CaptureBatch]:
    """`iter_batches`' right-padded batches in the user's order, each carrying its rows' images."""
    offsets = images.offsets if images is not None else None
    for batch in iter_batches(token_lists, batch_size, pad_id):
        pixel_values = image_index = None
        if images is not None and offsets is not None:
            rows = [px for px in (images.pixels[i] for i in batch.index) if px is not None]
            if rows:
                pixel_values = torch.cat(rows)
                image_index = torch.cat([torch.arange(int(offsets[p]), int(offsets[p + 1])) for p in batch.index])
        yield CaptureBatch(batch.tokens, batch.attention_mask, batch.lengths, batch.index, pixel_values, image_index)
