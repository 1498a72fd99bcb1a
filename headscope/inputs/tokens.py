"""Prompts → lists of token ids → right-padded batches.

Right padding keeps every real token at its natural position (RoPE positions 0..n-1, as in an
unpadded run), and causal attention means real queries never see the pad keys after them; the
attention mask is still passed so models and reducers can tell pads apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..models.info import ModelInfo
from .images import ImagePrompt, check_image_tokens


@dataclass
class TokenBatch:
    tokens: torch.Tensor  # [batch, pos] long, right-padded
    attention_mask: torch.Tensor  # [batch, pos] long, 1 = real token
    lengths: torch.Tensor  # [batch] long
    index: list[int]  # position of each row in the user's prompt list

    @property
    def valid(self) -> torch.Tensor:
        """[batch, pos] bool: True for real (non-pad) tokens."""
        return self.attention_mask.bool()


def to_token_lists(model, inputs, info: ModelInfo, prepend_bos: bool | None = None) -> list[list[int]]:
    """Normalise prompts (str, list of str, LongTensor [batch, pos], list of id lists, ImagePrompts) to id lists.

    Raises InputError for an empty prompt list, an empty prompt, or a prompt longer than the
    model's context, naming the prompt and the fix.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        if inputs.dtype not in (torch.int64, torch.int32) or inputs.ndim not in (1, 2):
            raise InputError(
                f"token tensors must be integer [batch, pos] or [pos], got {inputs.dtype} {tuple(inputs.shape)}"
            )
        inputs = [row.tolist() for row in inputs.reshape(-1, inputs.shape[-1])]
    if not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise InputError("no prompts given: pass a non-empty string, list of strings, or token tensor")
    bos = info.prepend_bos if prepend_bos is None else prepend_bos
    if bos and info.bos_token_id is None:
        raise InputError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item.strip():
                raise InputError(f"prompt {i} is empty (or only whitespace): remove it or give it text")
            ids = encode(model.tokenizer, item, bos, info.bos_token_id)
        elif isinstance(item, ImagePrompt):
            check_image_tokens(model, item, i)
            ids = list(item.ids)
        else:
            ids = [int(t) for t in (item.tolist() if isinstance(item, torch.Tensor) else item)]
        if not ids:
            raise InputError(f"prompt {i} has no tokens: remove it or give it text")
        if len(ids) > info.n_ctx:
            raise InputError(
                f"prompt {i} has {len(ids)} tokens but {info.name} has a context of {info.n_ctx}: "
                f"shorten it (or split it) to at most {info.n_ctx} tokens"
            )
        vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
        if vocab and (min(ids) < 0 or max(ids) >= vocab):
            raise InputError(f"prompt {i} has token ids outside the vocabulary 0..{vocab - 1}")
        out.append(ids)
    return out


def encode_to_fit(model, text: str, info: ModelInfo) -> list[int]:
    """`text` encoded as the model reads it (`encode` with its BOS convention), cut to its context:
    for a display or a summary that must run on any model, even a testbed with 64 positions."""
    return encode(model.tokenizer, text, info.prepend_bos, info.bos_token_id)[: info.n_ctx]


def encode(tokenizer, text: str, bos: bool, bos_id: int | None) -> list[int]:
    """`text` as the tokenizer encodes it by default (its own special tokens: BOS, [CLS] .. [SEP]),
    with BOS then forced present (`bos`) or absent, so the override means the same on every tokenizer."""
    ids = list(tokenizer(text)["input_ids"])
    bare = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    firsts = {bos_id, getattr(tokenizer, "cls_token_id", None)} - {None}  # an encoder's [CLS] opens it
    # Only a BOS the tokenizer *added* counts: a chat string may itself begin with the BOS text.
    added = len(ids) > len(bare) and ids[0] in firsts and ids[1 : 1 + len(bare)] == bare
    if bos and not added and bos_id is not None:
        ids = [bos_id] + ids
    elif not bos and added:
        ids = ids[1:]
    return ids


def iter_batches(token_lists: list[list[int]], batch_size: int, pad_id: int) -> Iterator[TokenBatch]:
    """Yield right-padded batches in the user's order."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(token_lists), batch_size):
        chunk = token_lists[start : start + batch_size]
        lengths = torch.tensor([len(ids) for ids in chunk])
        width = int(lengths.max())
        tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, ids in enumerate(chunk):
            tokens[row, : len(ids)] = torch.tensor(ids)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        yield TokenBatch(tokens, mask, lengths, list(range(start, start + len(chunk))))
