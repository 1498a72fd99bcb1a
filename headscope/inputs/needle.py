"""Needle-in-a-haystack prompts (Wu et al.'s retrieval-head probe) and repeated-segment copy prompts,
with the copy target located exactly.

Haystacks are the project's own essays and stories (`data/needle/haystack/*.txt`); needles are short
facts with a question (`data/needle/needles.json`). Every piece (sentence, needle prefix, answer,
prompt scaffold) is tokenized separately and the prompt is the concatenation of those ids, so the
needle's token span is known *by construction*. (The paper's code instead searches the prompt for
the window whose token set overlaps the needle's by > 0.9; docs/methods.md, "Retrieval heads".) The needle is inserted
between two haystack sentences, at the sentence boundary nearest to `depth` % of the haystack.

Prompt forms (the answer is always the needle's answer, e.g. " marmalade"):
- "completion": `{haystack}\\n{needle prefix}`               ("... The secret code word is")
- "question":   `{haystack}\\n\\nBased on the content of the book, Question: {q}\\nAnswer:`
- "paper":      `{haystack}Based on the content of the book, Question: {q}\\nAnswer:`, byte for byte
  the Retrieval_Head code's `context + question` (no separator)
- "chat":       the tokenizer's chat template around `<book>{haystack}</book>\\nBased on the content
  of the book, Question: {q}`, with the assistant turn opened
- "paper-chat": as "chat" with the code's `\\nAnswer:` inside the user turn (its instruct-model form)

BOS: non-chat forms start with the tokenizer's BOS when the tokenizer adds one by default (the code's
`self.enc(text)` puts `<s>` first on Llama / Mistral; SmolLM2's adds none); `prepend_bos=` overrides.
Chat forms carry whatever their template holds.

Which span is the paper's: the code scores copies from the *answer phrase* (`real_needle`, found with
`find_needle_idx`), i.e. `span="answer"` in `RetrievalHeads`; `span="needle"` (the whole needle
sentence) is a headscope variant. The paper's answers are 14-20 words; the bundled needles' are 1-5
tokens, so one copy event is worth 0.2-1.0 here against ~0.05 there (see docs/retrieval-heads.md).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import InputError
from ..experiment_registry import GENERATORS, Generator, params_of
from ..models.info import model_info, tokenizer_adds_bos
from ..paths import data_dir
from .probes import repeated_random_tokens

NeedleForm = Literal["completion", "question", "paper", "chat", "paper-chat"]  # see the module docstring
FORMS: tuple[NeedleForm, ...] = get_args(NeedleForm)
_CHAT_FORMS: tuple[NeedleForm, ...] = ("chat", "paper-chat")
# A sample's form: a needle prompt's, or "repeat" for a repeated-token sample (make_repeat_samples).
SampleForm = NeedleForm | Literal["repeat"]
SampleSource = Literal["needle", "repeats"]
DEFAULT_DEPTHS = tuple(float(d) for d in np.linspace(0, 100, 10))  # the paper's depth grid
QUESTION = "Based on the content of the book, Question: "
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class NeedleSample:
    """One retrieval prompt. Spans are [start, end) token indices into `prompt_ids`.

    `needle_span` covers the whole needle sentence; `answer_span` the tokens the model should copy
    (`answer_ids == prompt_ids[answer_span]`), the span the paper's code scores (`real_needle`). `stop` says whether greedy decoding
    should end at a newline/EOS (needles) or run for len(answer_ids) steps (repeats).
    """

    prompt_ids: tuple[int, ...]
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]
    answer_ids: tuple[int, ...]
    answer_text: str
    context_length: int  # tokens in the prompt
    depth: float  # requested depth, percent of the haystack
    form: SampleForm
    needle_id: str
    source: SampleSource = "needle"
    stop: bool = True


def load_needles(path: str | Path | None = None) -> list[dict]:
    """The needle facts: dicts with id, prefix, answer, suffix, question."""
    path = Path(path) if path is not None else data_dir() / "needle" / "needles.json"
    needles = json.loads(path.read_text(encoding="utf-8"))["needles"]
    for n in needles:
        missing = {"id", "prefix", "answer", "question"} - set(n)
        if missing:
            raise InputError(f"needle {n.get('id', n)!r} in {path} lacks {sorted(missing)}")
    return needles


def load_haystack(folder: str | Path | None = None) -> list[str]:
    """The haystack texts (one string per essay/story), in file-name order."""
    folder = Path(folder) if folder is not None else data_dir() / "needle" / "haystack"
    texts = [p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))]
    if not texts:
        raise InputError(f"no haystack texts (*.txt) in {folder}")
    return texts


def _sentences(texts: list[str]) -> list[tuple[str, str]]:
    """(separator, sentence) pairs in reading order; paragraphs and texts are joined by a blank line."""
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            for j, sent in enumerate(s for s in _SENTENCE_END.split(para.strip()) if s):
                out.append(("\n\n" if j == 0 else " ", " ".join(sent.split())))
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _scaffold(tokenizer, form: NeedleForm, needle: dict) -> tuple[list[int], list[int]]:
    """Token ids before and after the haystack for one prompt form."""
    if form == "completion":
        return [], _ids(tokenizer, "\n" + needle["prefix"])
    if form == "question":
        return [], _ids(tokenizer, "\n\n" + QUESTION + needle["question"] + "\nAnswer:")
    if form == "paper":
        return [], _ids(tokenizer, QUESTION + needle["question"] + "\nAnswer:")
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"form={form!r} needs a tokenizer with a chat template; use 'completion', 'question' or 'paper'"
        )
    marker = "\x00HAYSTACK\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
    )
    before, after = text.split(marker)
    answer = "\nAnswer:" if form == "paper-chat" else ""
    return (
        _ids(tokenizer, before + "<book>"),
        _ids(tokenizer, "</book>\n" + QUESTION + needle["question"] + answer + after),
    )


def _needle_ids(tokenizer, needle: dict, sep: str) -> tuple[list[int], int, int]:
    """Needle sentence ids and the [start, end) of its answer inside them."""
    head = _ids(tokenizer, sep + needle["prefix"])
    answer = _ids(tokenizer, " " + needle["answer"])
    tail = _ids(tokenizer, needle.get("suffix", "."))
    return head + answer + tail, len(head), len(head) + len(answer)


def make_needle_prompts(
    tokenizer_or_model,
    n: int,
    context_lengths,
    depths=None,
    seed: int = 0,
    form: NeedleForm = "completion",
    *,
    needles: list[dict] | None = None,
    haystack: list[str] | None = None,
    prepend_bos: bool | None = None,
) -> list[NeedleSample]:
    """`n` seeded needle prompts per context length (in tokens, the whole prompt). Depths cycle through
    `depths` (default the paper's linspace(0, 100, 10)) from a random offset, needles cycle in a
    seeded order, haystack start points are random. Prompts are filled with whole sentences up to
    `context_length` tokens (a needle at depth 0 can add one token); a haystack too short to fill a
    prompt is an error, never a silently shorter prompt (the bundled texts hold ~9.7k SmolLM2 tokens).

    Pass the model (a bridge) or a plain tokenizer. `prepend_bos`: None = the model's BOS default, or
    what a plain tokenizer does by default (non-chat forms only); True / False force it.

    Example:
        >>> import headscope
        >>> model = headscope.load_model()                                          # doctest: +SKIP
        >>> s = make_needle_prompts(model, 2, [200], seed=0)[0]                     # doctest: +SKIP
        >>> list(s.prompt_ids[slice(*s.answer_span)]) == list(s.answer_ids)         # doctest: +SKIP
        True
    """
    if form not in FORMS:
        raise InputError(f"form={form!r} is not one of {FORMS}")
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer (samples per context length), got {n!r}")
    lengths = [context_lengths] if isinstance(context_lengths, (int, np.integer)) else list(context_lengths)
    if not lengths or any(not isinstance(x, (int, np.integer)) or x < 1 for x in lengths):
        raise InputError(f"context_lengths must be positive integers (tokens), got {context_lengths!r}")
    depths = DEFAULT_DEPTHS if depths is None else tuple(float(d) for d in depths)
    if not depths or any(not 0 <= d <= 100 for d in depths):
        raise InputError(f"depths must be percentages in [0, 100], got {depths}")
    if hasattr(tokenizer_or_model, "cfg") and hasattr(tokenizer_or_model, "tokenizer"):
        # A bridge: TransformerLens makes its tokenizer always add BOS, so the model's own default
        # (set from the original tokenizer when headscope booted it) decides.
        tokenizer = tokenizer_or_model.tokenizer
        default_bos = model_info(tokenizer_or_model).prepend_bos
    else:
        tokenizer = tokenizer_or_model
        default_bos = tokenizer_adds_bos(tokenizer)
    bos = default_bos if prepend_bos is None else bool(prepend_bos)
    if bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise InputError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
    needles = load_needles() if needles is None else needles
    sents = _sentences(load_haystack() if haystack is None else haystack)
    sent_ids = [(_ids(tokenizer, s), _ids(tokenizer, " " + s), _ids(tokenizer, "\n\n" + s)) for _, s in sents]
    rng = random.Random(seed)

    def piece(i: int, first: bool) -> list[int]:  # a sentence's ids: bare first, else with its separator
        return sent_ids[i][0 if first else (1 if sents[i][0] == " " else 2)]

    out = []
    for length in lengths:
        length = int(length)
        # Depths and needles both cycle (seeded offsets / order), so every cell sees them evenly.
        shift = rng.randrange(len(depths))
        order: list[int] = []
        for j in range(n):
            if not order:  # a fresh needle order every round, so needle-depth pairs vary
                order = rng.sample(range(len(needles)), len(needles))
            needle, depth = needles[order.pop()], depths[(j + shift) % len(depths)]
            before, after = _scaffold(tokenizer, form, needle)
            if bos and form not in _CHAT_FORMS:
                before = [tokenizer.bos_token_id] + before
            budget = length - len(before) - len(after) - len(_needle_ids(tokenizer, needle, " ")[0])
            # Consecutive sentences from a random start (wrapping around the corpus) until the budget.
            start, used = rng.randrange(len(sents)), 0
            chosen: list[int] = []
            for k in range(len(sents)):
                i = (start + k) % len(sents)
                size = len(piece(i, not chosen))
                if used + size > budget:
                    break
                chosen.append(i)
                used += size
            else:  # every sentence fitted: the corpus is shorter than the prompt asked for
                raise InputError(
                    f"context_length={length} needs ~{budget} haystack tokens but the haystack has "
                    f"only {used}: pass more text with haystack=[...] (or add *.txt files to the "
                    f"haystack folder), or ask for a shorter context"
                )
            if not chosen:
                raise InputError(
                    f"context_length={length} leaves no room for a haystack sentence in the "
                    f"{form!r} form: use at least ~{length - budget + 40} tokens"
                )
            pieces = [piece(i, k == 0) for k, i in enumerate(chosen)]
            bounds = np.cumsum([0] + [len(p) for p in pieces])  # token offset of each sentence boundary
            at = int(np.argmin(np.abs(bounds - depth / 100 * bounds[-1])))
            needle_ids, a0, a1 = _needle_ids(tokenizer, needle, " " if at > 0 else "")
            if at == 0:  # the needle opens the haystack: the old first sentence needs its separator back
                pieces[0] = piece(chosen[0], False)
            prompt = list(before) + [t for p in pieces[:at] for t in p]
            n0 = len(prompt)
            prompt += needle_ids + [t for p in pieces[at:] for t in p] + list(after)
            out.append(
                NeedleSample(
                    tuple(prompt),
                    (n0, n0 + len(needle_ids)),
                    (n0 + a0, n0 + a1),
                    tuple(needle_ids[a0:a1]),
                    needle["answer"],
                    len(prompt),
                    depth,
                    form,
                    needle["id"],
                )
            )
    return out


def make_repeat_samples(
    vocab_size: int,
    n: int,
    seq_len: int = 40,
    prefix_len: int | None = None,
    answer_len: int = 10,
    seed: int = 0,
    first_token: int | None = None,
    token_range: tuple[int, int] | None = None,
) -> list[NeedleSample]:
    """Copy prompts from repeated random segments: `[first_token] + seg + seg[:prefix_len]`; the model
    should continue with `seg[prefix_len : prefix_len + answer_len]`. The "needle" is the first copy
    of the segment, the answer span its part that the continuation repeats.

    prefix_len defaults to seq_len // 2 (enough of the repeat for induction to lock on).

    >>> s = make_repeat_samples(48, 1, seq_len=10, answer_len=3, first_token=1, token_range=(2, 48))[0]
    >>> s.answer_span, list(s.prompt_ids[6:9]) == list(s.answer_ids)
    ((6, 9), True)
    """
    prefix_len = seq_len // 2 if prefix_len is None else prefix_len
    if not 0 <= prefix_len or prefix_len + answer_len > seq_len or answer_len < 1:
        raise InputError(
            f"need 0 <= prefix_len and prefix_len + answer_len <= seq_len, with answer_len >= 1; "
            f"got prefix_len={prefix_len}, answer_len={answer_len}, seq_len={seq_len}"
        )
    segs = repeated_random_tokens(vocab_size, seq_len, 1, n, seed, token_range=token_range)
    f = 0 if first_token is None else 1
    out = []
    for seg in segs.tolist():
        prompt = ([first_token] if f else []) + seg + seg[:prefix_len]
        answer = tuple(seg[prefix_len : prefix_len + answer_len])
        out.append(
            NeedleSample(
                tuple(prompt),
                (f, f + seq_len),
                (f + prefix_len, f + prefix_len + answer_len),
                answer,
                " ".join(map(str, answer)),
                len(prompt),
                100.0 * prefix_len / seq_len,
                "repeat",
                f"repeat-{seq_len}",
                source="repeats",
                stop=False,
            )
        )
    return out


# ---- `headscope run` data generators: a spec's `generator: needle | repeat_samples` -------------------


def _needle_generator(model, info, **params) -> list[NeedleSample]:
    return make_needle_prompts(model, **params)  # the model, so its BOS default applies, not the bridge tokenizer's


def _repeat_generator(model, info, **params) -> list[NeedleSample]:
    params.setdefault("first_token", info.bos_token_id)  # the model's BOS opens every probe, as in capture
    return make_repeat_samples(int(model.cfg.d_vocab), **params)


def _prompt_ids(samples) -> list:
    return [s.prompt_ids for s in samples]


GENERATORS.register(
    "needle",
    Generator(
        _needle_generator,
        yields="needle",
        token_ids=_prompt_ids,
        # needles / haystack are Python-only arguments (lists of dicts / texts), not spec fields
        params=params_of(make_needle_prompts, skip={"tokenizer_or_model", "needles", "haystack"}),
        doc="needle-in-a-haystack prompts (make_needle_prompts)",
    ),
)
GENERATORS.register(
    "repeat_samples",
    Generator(
        _repeat_generator,
        yields="needle",
        token_ids=_prompt_ids,
        params=params_of(make_repeat_samples, skip={"vocab_size"}),
        doc="copy prompts from repeated random segments (make_repeat_samples); first_token defaults to the model's BOS",
    ),
)
