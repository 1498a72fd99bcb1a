"""The atlas's attention viewer: every head's pattern on one prompt, bounded in size.

A prompt of T <= max_tokens tokens is shown whole. A longer one is windowed, the way a streaming
cache sees it: the queries are the last W = max_tokens - sink_keys positions; the keys are the first
`sink_keys` positions (where sinks live), the same last W positions, and one "…" column holding the
attention on every key in between, so each row still sums to one. The pattern is read through
`capture` (blocked attention on long prompts: no [T, T] pattern is ever held), one layer at a time, and
stored as uint8 (1/255 steps): 30 layers x 9 heads x 48 x 53 cells is ~0.7 MB.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import torch

from ..capture import capture
from ..capture.reducers import Reducer
from ..errors import InputError
from ..inputs.tokens import encode_to_fit, to_token_lists
from ..models import model_info

MAX_TOKENS = 48
SINK_KEYS = 4
# The report's default viewer prompt: short enough to be shown whole (no "…" column) on the bundled
# SmolLM2 with the default window, and it repeats a phrase, so an induction head's copy is visible
# (' spiral' of the second copy attending to ' stairs' of the first).
VIEWER_PROMPT = (
    "The lighthouse keeper climbed the spiral stairs every evening. When the fog rolled in, "
    "he climbed the spiral stairs again and rang the bell."
)


@dataclass
class Window:
    """Which positions the viewer shows: query rows, key columns (None = the "…" column)."""

    n_tokens: int
    queries: list[int]
    keys: list[int | None]

    @classmethod
    def of(cls, n_tokens: int, max_tokens: int = MAX_TOKENS, sink_keys: int = SINK_KEYS) -> Window:
        if max_tokens <= sink_keys + 1:
            raise InputError(f"max_tokens={max_tokens} must exceed sink_keys + 1 = {sink_keys + 1}")
        if n_tokens <= max_tokens:
            return cls(n_tokens, list(range(n_tokens)), list(range(n_tokens)))
        w = max_tokens - sink_keys
        tail = list(range(n_tokens - w, n_tokens))
        return cls(n_tokens, tail, [*range(sink_keys), None, *tail])


@dataclass
class WindowResult:
    values: np.ndarray  # [layer, head, query, key column] float32


class WindowedPattern(Reducer):
    """Folds one prompt's pattern into the viewer's window (see the module docstring)."""

    name = "viewer_window"
    needs = ("pattern",)
    description = "one prompt's attention pattern on the viewer's window"
    result_type = WindowResult
    fed_by_blocks = True

    def __init__(self, window: Window):
        self.window = window
        shown = [k for k in window.keys if k is not None]
        self._shown = torch.tensor(shown, dtype=torch.long)
        self._other = window.keys.index(None) if None in window.keys else None
        self._cols = torch.tensor([i for i, k in enumerate(window.keys) if k is not None], dtype=torch.long)

    def start(self, info, n_prompts: int) -> None:
        if n_prompts != 1:
            raise InputError("the attention viewer reads one prompt")
        self._out = np.zeros(
            (info.n_layers, info.n_heads, len(self.window.queries), len(self.window.keys)), dtype=np.float32
        )

    def _fold(self, layer: int, pattern: torch.Tensor, rows: list[int], n_keys: int) -> None:
        # pattern [head, rows, n_keys] for query positions `rows`
        q0 = self.window.queries[0]
        keep = [i for i, q in enumerate(rows) if q >= q0]
        if not keep:
            return
        p = pattern[:, keep].float()
        shown = self._shown[self._shown < n_keys]
        block = torch.zeros(p.shape[0], len(keep), len(self.window.keys))
        block[:, :, self._cols[: len(shown)]] = p[:, :, shown]
        if self._other is not None:
            block[:, :, self._other] = (p.sum(-1) - p[:, :, shown].sum(-1)).clamp_min(0)
        idx = [rows[i] - q0 for i in keep]
        self._out[layer, :, idx[0] : idx[-1] + 1] = block.numpy()

    def update_rows(self, layer, acts, rows) -> None:
        pattern = acts["pattern"][0]  # [head, rows, keys]
        self._fold(layer, pattern, list(range(rows.start, rows.stop)), rows.n_keys)

    def result(self, info, prompts=None) -> WindowResult:
        return WindowResult(self._out)


def default_viewer_ids(model, texts: list[str], max_tokens: int = MAX_TOKENS) -> tuple[list[int], bool]:
    """(ids, cut) of the viewer's default prompt on `model`: the first of `texts` that fits the window
    (`max_tokens`) whole, else the first one cut to its first `max_tokens` tokens, so the default never
    shows the "…" column. A prompt the user chose is windowed instead (viewer_data)."""
    info = model_info(model)
    encoded = [encode_to_fit(model, t, info) for t in texts]
    for ids in encoded:
        if len(ids) <= max_tokens:
            return ids, False
    return encoded[0][:max_tokens], True


def viewer_data(model, prompt, *, max_tokens: int = MAX_TOKENS, sink_keys: int = SINK_KEYS) -> dict:
    """Everything the page's viewer needs (JSON-safe): tokens, window, uint8 patterns in base64."""
    info = model_info(model)
    if isinstance(prompt, str):  # text longer than the model's context (a tiny testbed's) is cut to fit
        ids = encode_to_fit(model, prompt, info)
    else:
        ids = to_token_lists(model, [prompt], info)[0]
    window = Window.of(len(ids), max_tokens, sink_keys)
    reducer = WindowedPattern(window)
    res = capture(model, [ids], [reducer], batch_size=1, progress=False)[reducer.name]
    quantised = np.clip(np.rint(np.nan_to_num(res.values) * 255), 0, 255).astype(np.uint8)
    tokens = [model.tokenizer.decode([t]) for t in ids]
    return {
        "n_layers": info.n_layers,
        "n_heads": info.n_heads,
        "n_tokens": len(ids),
        "attention_layers": list(info.attention_layers),  # a hybrid's other layers have no pattern
        "queries": window.queries,
        "keys": window.keys,
        "tokens": tokens,
        "windowed": len(ids) > max_tokens,
        "max_tokens": max_tokens,
        "sink_keys": sink_keys,
        "shape": list(quantised.shape),
        "scale": 255,
        "data": base64.b64encode(quantised.tobytes()).decode(),
    }


def decode(doc: dict) -> np.ndarray:
    """The viewer's patterns back as float [layer, head, query, key column] (what the page shows)."""
    raw = np.frombuffer(base64.b64decode(doc["data"]), dtype=np.uint8).reshape(doc["shape"])
    return raw.astype(np.float32) / doc["scale"]
