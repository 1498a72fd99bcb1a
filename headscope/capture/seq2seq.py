"""Encoder-decoder models (T5, BART, ...): the heads of all three attention stacks, captured and labelled.

TransformerLens bridges an encoder-decoder as `encoder_blocks` (self-attention, bidirectional),
`decoder_blocks[l].self_attn` (causal self-attention over the target) and `decoder_blocks[l].cross_attn`
(each target position over the source). headscope's other engines run on one stack of layers and refuse
these models (`model_info` says so); `capture_seq2seq` reads every stack's pattern, one prompt pair at a
time (no padding to get wrong), teacher-forced on the target.

    >>> res = capture_seq2seq(model, ["the source text"], ["the target text"], keep_patterns=True)
    >>> res.stats["cross"]["attention_entropy"].values.shape      # [prompt, layer, head]
    >>> res.patterns["decoder"][0].shape                           # [layer, head, target, target]
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch

from ..errors import InputError
from ..models.info import is_encoder_decoder, model_device
from ..results import HeadScores

Stack = Literal["encoder", "decoder", "cross"]  # self-attention of each stack, and decoder-to-encoder
STACKS: tuple[Stack, ...] = get_args(Stack)
_HOOK = {
    "encoder": "encoder_blocks.{l}.attn.hook_pattern",
    "decoder": "decoder_blocks.{l}.self_attn.hook_pattern",
    "cross": "decoder_blocks.{l}.cross_attn.hook_pattern",
}


@dataclasses.dataclass
class Seq2SeqCapture:
    """`stats[stack][statistic]`: HeadScores [prompt, layer, head]; `patterns[stack]`: per prompt a
    [layer, head, query, key] tensor (with `keep_patterns=True`). Keys of "cross" are source tokens."""

    stats: dict[str, dict[str, HeadScores]]
    patterns: dict[str, list[torch.Tensor]]
    sources: list[list[int]]
    targets: list[list[int]]

    def to_dataframe(self):
        """Long table: stack, statistic, prompt, layer, head, value."""
        import pandas as pd

        frames = []
        for stack, by_stat in self.stats.items():
            for stat, scores in by_stat.items():
                df = scores.to_dataframe()
                df.insert(0, "statistic", stat)
                df.insert(0, "stack", stack)
                frames.append(df)
        return pd.concat(frames, ignore_index=True)


def _ids(tokenizer, item, what: str, i: int) -> list[int]:
    if isinstance(item, str):
        if not item.strip():
            raise InputError(f"{what} {i} is empty: give it text")
        return list(tokenizer(item)["input_ids"])
    ids = [int(t) for t in item]
    if not ids:
        raise InputError(f"{what} {i} has no tokens")
    return ids


def _statistics(p: torch.Tensor, stack: Stack) -> dict[str, torch.Tensor]:
    """Per-head statistics of one prompt's [layer, head, q, k] pattern, each [layer, head]."""
    p = p.double()
    out = {
        "attention_entropy": (-torch.special.xlogy(p, p).sum(-1)).mean(-1),
        "first_token_mass": p[..., 0].mean(-1),
        "max_mass": p.max(-1).values.mean(-1),
    }
    if stack == "decoder":  # causal over the target: the previous token is defined from query 1 on
        T = p.shape[-1]
        q = torch.arange(1, T)
        out["previous_token_score"] = p[..., q, q - 1].mean(-1) if T > 1 else torch.full(p.shape[:2], float("nan"))
    return out


def capture_seq2seq(
    model, sources, targets, *, keep_patterns: bool = False, add_decoder_start: bool = True
) -> Seq2SeqCapture:
    """Every head's pattern in the encoder, the decoder and the cross-attention of an encoder-decoder.

    Args:
        model: a bridged encoder-decoder (T5, BART, ...).
        sources: strings (tokenized by the model's tokenizer, specials included) or id lists.
        targets: one per source; strings or id lists, fed teacher-forced as the decoder input.
        keep_patterns: also return each prompt's full patterns per stack.
        add_decoder_start: prepend the config's `decoder_start_token_id` to string targets (what
            generation feeds first); id-list targets are used as given.
    Returns a `Seq2SeqCapture` with entropy, first-token mass, max mass per stack, and the
    previous-token score on the decoder's self-attention.
    """
    if not is_encoder_decoder(model):
        raise InputError(
            "capture_seq2seq needs an encoder-decoder model (T5, BART, ...); for a decoder-only or "
            "encoder-only model use headscope.capture.capture"
        )
    sources = [sources] if isinstance(sources, str) else list(sources)
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not sources or len(sources) != len(targets):
        raise InputError(f"give one target per source (got {len(sources)} sources, {len(targets)} targets)")
    config = model.original_model.config
    start = getattr(config, "decoder_start_token_id", None)
    src_ids = [_ids(model.tokenizer, s, "source", i) for i, s in enumerate(sources)]
    tgt_ids = []
    for i, t in enumerate(targets):
        ids = _ids(model.tokenizer, t, "target", i)
        tgt_ids.append(([start] if add_decoder_start and isinstance(t, str) and start is not None else []) + ids)
    n_layers = {
        "encoder": len(model.encoder_blocks),
        "decoder": len(model.decoder_blocks),
        "cross": len(model.decoder_blocks),
    }
    per_prompt: dict[str, list[dict[str, torch.Tensor]]] = {s: [] for s in STACKS}
    patterns: dict[str, list[torch.Tensor]] = {s: [] for s in STACKS}
    device = model_device(model)
    for src, tgt in zip(src_ids, tgt_ids):
        got: dict[tuple[str, int], torch.Tensor] = {}
        hooks = [
            (
                _HOOK[s].format(l=l),
                lambda t, hook, key=(s, l), got=got: got.__setitem__(key, t[0].detach().float().cpu()),
            )
            for s in STACKS
            for l in range(n_layers[s])
        ]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(torch.tensor([src], device=device), decoder_input_ids=torch.tensor([tgt], device=device))
        missing = [f"{s} layer {l}" for s in STACKS for l in range(n_layers[s]) if (s, l) not in got]
        if missing:  # e.g. LED's encoder: the bridge's hook_pattern never fires on its local attention
            raise InputError(
                f"the TransformerLens bridge of {type(model.original_model).__name__} reports no attention "
                f"pattern for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: headscope "
                "cannot read those heads on this model. Fix: none in headscope yet (docs/architectures.md, "
                "'Encoder-decoders')"
            )
        for s in STACKS:
            p = torch.stack([got[(s, l)] for l in range(n_layers[s])])  # [layer, head, q, k]
            # A bridge may fire hook_pattern on something that is not the softmax (Switch Transformers):
            # refuse rather than report it.
            if float(p.min()) < -1e-6 or float((p.sum(-1) - 1).abs().max()) > 1e-3:
                raise InputError(
                    f"the TransformerLens bridge of {type(model.original_model).__name__} reports a {s} "
                    "attention 'pattern' whose rows are not probabilities (they do not sum to one): "
                    "headscope refuses to report it. Fix: none in headscope yet"
                )
            per_prompt[s].append(_statistics(p, s))
            if keep_patterns:
                patterns[s].append(p)
    name = getattr(config, "name_or_path", "") or type(model.original_model).__name__
    stats: dict[str, dict[str, HeadScores]] = {}
    for s in STACKS:
        stats[s] = {
            stat: HeadScores(
                torch.stack([d[stat] for d in per_prompt[s]]).numpy(),
                name=f"{s}:{stat}",
                model=name,
                analyzer="capture_seq2seq",
                params={"stack": s},
                description=f"{stat.replace('_', ' ')} of the {s} attention heads",
            )
            for stat in per_prompt[s][0]
        }
    return Seq2SeqCapture(stats, patterns, src_ids, tgt_ids)


__all__ = ["STACKS", "Seq2SeqCapture", "capture_seq2seq"]
