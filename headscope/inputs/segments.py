"""Prompts with one named segment (a document, a system prompt, few-shot examples, an image span)
and the variants "present", "removed" and "replaced", with the chosen query positions tracked in each.

    >>> from headscope.testing import tiny_model
    >>> from headscope.inputs.segments import segment_prompts, build_variants
    >>> model = tiny_model()
    >>> items = segment_prompts(model, [("t5", "t9 t10 t11", "t12 t5")])
    >>> items[0].present, items[0].span          # BOS + prefix, segment, suffix
    ([1, 5, 9, 10, 11, 12, 5], (2, 5))
    >>> pair = build_variants(model, items, variant="removed", positions="after_segment")
    >>> pair.other[0], pair.present_positions[0], pair.other_positions[0]
    ([1, 5, 12, 5], [5, 6], [2, 3])

Positions are only allowed *after* the segment: before it, causal attention makes every variant
identical (nothing to measure); inside it, "removed" has no counterpart. After it, the same query
token sits at the same distance from the end in every variant, which is how positions are aligned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..errors import InputError
from ..models.info import model_info
from .images import ImagePrompt, check_image_tokens
from .spans import image_span

Variant = Literal["removed", "replaced"]  # the segment deleted, or replaced by a same-length filler
VARIANTS: tuple[Variant, ...] = get_args(Variant)
NamedPosition = Literal["last", "after_segment"]  # the last token, or every token after the segment
NAMED_POSITIONS: tuple[NamedPosition, ...] = get_args(NamedPosition)


@dataclass(frozen=True)
class SegmentPrompt:
    """One prompt as token ids split into prefix | segment | suffix (BOS, if any, is in the prefix)."""

    prefix: tuple[int, ...]
    segment: tuple[int, ...]
    suffix: tuple[int, ...]
    text: str | None = None  # prefix + segment + suffix when all three were given as text
    pixel_values: torch.Tensor | None = None  # the images when the segment is an image span

    @property
    def present(self) -> list[int]:
        return [*self.prefix, *self.segment, *self.suffix]

    @property
    def present_input(self):
        """What the model is run on: the ids, or an ImagePrompt when the prompt carries images."""
        if self.pixel_values is None:
            return self.present
        return ImagePrompt(tuple(self.present), self.pixel_values)

    @property
    def span(self) -> tuple[int, int]:
        """[start, end) of the segment in the present prompt."""
        return len(self.prefix), len(self.prefix) + len(self.segment)

    def variant(self, kind: Variant, filler: Sequence[int] | None = None) -> list[int]:
        """The prompt with the segment removed, or replaced by `filler` (same length as the segment)."""
        if kind == "removed":
            return [*self.prefix, *self.suffix]
        if kind == "replaced":
            if filler is None or len(filler) != len(self.segment):
                raise InputError(f"replaced: the filler must have the segment's length {len(self.segment)}")
            return [*self.prefix, *filler, *self.suffix]
        raise InputError(f"unknown variant {kind!r}; use one of {VARIANTS}")

    def resolve_positions(self, positions) -> list[int]:  # validated here: a NamedPosition, int or ints
        """Absolute positions in the present prompt for "last", "after_segment", an int or a list of ints
        (negative = from the end); each must lie after the segment."""
        n, end = len(self.present), self.span[1]
        if isinstance(positions, str):
            if positions == "last":
                return [n - 1]
            if positions == "after_segment":
                return list(range(end, n))
            raise InputError(f"positions={positions!r}: use one of {NAMED_POSITIONS}, an int or a list of ints")
        if isinstance(positions, int) and not isinstance(positions, bool):
            positions = [positions]
        try:
            wanted = [int(p) for p in positions]
        except (TypeError, ValueError):
            raise InputError(
                f"positions={positions!r}: use 'last', 'after_segment', an int or a list of ints"
            ) from None
        if not wanted:
            raise InputError("positions is an empty list: give at least one position (e.g. -1 = the last token)")
        out = []
        for p in wanted:
            q = p + n if p < 0 else p
            if not end <= q < n:
                raise InputError(
                    f"position {p} is not after the segment: this prompt has {n} tokens and its segment ends "
                    f"at {end}, so use {end}..{n - 1} or -{n - end}..-1 (before the segment nothing differs; "
                    f"inside it 'removed' has no counterpart)"
                )
            out.append(q)
        return out


def _is_ids(part) -> bool:
    return isinstance(part, torch.Tensor) or (isinstance(part, Sequence) and not isinstance(part, str))


def _tokens(model, part, what: str, index: int) -> list[int]:
    if part is None:
        return []
    if isinstance(part, str):
        return list(model.tokenizer(part, add_special_tokens=False)["input_ids"]) if part else []
    if _is_ids(part):
        ids = part.tolist() if isinstance(part, torch.Tensor) else list(part)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise InputError(f"item {index}: the {what} must be text or a list of integer token ids")
        return ids
    raise InputError(f"item {index}: the {what} must be text or a list of token ids, got {type(part).__name__}")


def _image_item(model, item: ImagePrompt, index: int) -> SegmentPrompt:
    """An ImagePrompt's segment is its image block, found from the model's image token."""
    check_image_tokens(model, item, index)
    start, end = image_span(model, item.ids)
    ids = list(item.ids)
    if end == len(ids):
        raise InputError(
            f"item {index}: nothing follows the image; add the question (the measured positions "
            "must come after the image)"
        )
    return SegmentPrompt(tuple(ids[:start]), tuple(ids[start:end]), tuple(ids[end:]), None, item.pixel_values)


def _as_triples(data) -> list:
    if isinstance(data, (SegmentPrompt, ImagePrompt)):
        return [data]
    if isinstance(data, Mapping) or (
        isinstance(data, tuple) and len(data) == 3 and all(p is None or isinstance(p, str) for p in data)
    ):
        return [data]  # a single (prefix, segment, suffix) item
    if isinstance(data, str) or not isinstance(data, Sequence) or len(data) == 0:
        raise InputError(
            "data must be a non-empty list of (prefix, segment, suffix) items "
            "(strings or token-id lists), e.g. [('Context:', ' The sky is green.', ' Q: colour? A:')]"
        )
    return list(data)


def segment_prompts(model, data, *, prepend_bos: bool | None = None) -> list[SegmentPrompt]:
    """Tokenise (prefix, segment, suffix) items; each part is text or a list of token ids.

    Text parts are tokenised separately without special tokens (so the segment's boundaries are exact;
    start the segment and suffix with a space where the text would have one). If the model prepends a
    BOS (or `prepend_bos=True`) it is put in front of a *text* prefix; token-id parts are used as given.
    Items may also be dicts with keys prefix / segment / suffix, ready SegmentPrompt objects, or
    `ImagePrompt`s, whose segment is their image block (found from the model's image token; the
    "removed" variant deletes the image tokens and passes no pixel values).
    """
    info = model_info(model)
    bos = info.prepend_bos if prepend_bos is None else prepend_bos
    out = []
    for i, item in enumerate(_as_triples(data)):
        if isinstance(item, SegmentPrompt):
            out.append(item)
            continue
        if isinstance(item, ImagePrompt):
            out.append(_image_item(model, item, i))
            continue
        if isinstance(item, Mapping):
            unknown = set(item) - {"prefix", "segment", "suffix"}
            if unknown or "segment" not in item or "suffix" not in item:
                raise InputError(
                    f"item {i}: a dict item needs keys 'segment' and 'suffix' (and optionally "
                    f"'prefix'); got {sorted(item)}"
                )
            item = (item.get("prefix"), item["segment"], item["suffix"])
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 3:
            raise InputError(f"item {i} is not a (prefix, segment, suffix) triple: {item!r:.80}")
        prefix, segment, suffix = (_tokens(model, p, w, i) for p, w in zip(item, ("prefix", "segment", "suffix")))
        if bos and (item[0] is None or isinstance(item[0], str)):
            if info.bos_token_id is None:
                raise InputError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
            prefix = [info.bos_token_id, *prefix]
        if not segment:
            raise InputError(f"item {i}: the segment is empty; give it text or token ids")
        if not suffix:
            raise InputError(
                f"item {i}: the suffix is empty; the measured positions must come after the segment "
                f"(e.g. a question about it), so give the suffix at least one token"
            )
        n = len(prefix) + len(segment) + len(suffix)
        if n > info.n_ctx:
            raise InputError(f"item {i} has {n} tokens but {info.name} has a context of {info.n_ctx}: shorten it")
        text = "".join(p or "" for p in item) if all(p is None or isinstance(p, str) for p in item) else None
        out.append(SegmentPrompt(tuple(prefix), tuple(segment), tuple(suffix), text))
    return out


def default_filler_id(model) -> int:
    """A neutral token: a single space when the tokenizer has one (SmolLM2: id 216), else the pad token."""
    info = model_info(model)
    tok = getattr(model, "tokenizer", None)
    space = tok(" ", add_special_tokens=False)["input_ids"] if tok is not None else []
    if len(space) == 1:
        return int(space[0])
    if info.pad_token_id is not None:
        return int(info.pad_token_id)
    raise InputError("this tokenizer has no single-token space and no pad token: pass filler= (text or token ids)")


def filler_ids(model, filler, length: int) -> list[int]:
    """`length` filler tokens: None = the neutral token repeated; an int = that id repeated; text or a
    list of ids = tiled (repeated and cut) to exactly `length` tokens."""
    if filler is None:
        return [default_filler_id(model)] * length
    if isinstance(filler, int) and not isinstance(filler, bool):
        ids = [filler]
    else:
        ids = _tokens(model, filler, "filler", 0)
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if not ids or (vocab and not all(0 <= t < vocab for t in ids)):
        raise InputError(
            f"filler={filler!r:.60} gives no valid token ids: pass non-empty text, a token id or ids "
            f"inside the vocabulary"
        )
    return (ids * (length // len(ids) + 1))[:length]


@dataclass
class VariantPair:
    """Present prompts and their counterparts, with the chosen positions in each (aligned pairwise)."""

    variant: Variant
    present: list  # token-id lists, or ImagePrompts for prompts with images
    other: list[list[int]]
    present_positions: list[list[int]]
    other_positions: list[list[int]]


def build_variants(
    model, items: list[SegmentPrompt], *, variant: Variant = "removed", positions="last", filler=None
) -> VariantPair:
    """The "present" prompts and their "removed" / "replaced" variants; positions are matched by their
    distance from the end, which is the same query token in both (the suffix is untouched)."""
    if variant not in VARIANTS:
        raise InputError(f"variant={variant!r}: use 'removed' (segment deleted) or 'replaced' (same-length filler)")
    present, other, pos_p, pos_o = [], [], [], []
    for item in items:
        fill = filler_ids(model, filler, len(item.segment)) if variant == "replaced" else None
        alt = item.variant(variant, fill)
        pos = item.resolve_positions(positions)
        shift = len(item.present) - len(alt)  # positions after the segment move left by this much
        present.append(item.present_input)
        other.append(alt)
        pos_p.append(pos)
        pos_o.append([p - shift for p in pos])
    return VariantPair(variant, present, other, pos_p, pos_o)
