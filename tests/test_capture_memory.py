"""Reducer-only capture keeps nothing of size layers x heads x T x T (inspect what it stores)."""

import dataclasses
import gc
import warnings

import numpy as np
import pytest
import torch

from headscope.capture import capture, default_reducers

T = 1024


def _arrays_reachable(root, seen=None):
    """Every tensor / ndarray reachable from `root` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(root) in seen:
        return
    seen.add(id(root))
    if isinstance(root, (torch.Tensor, np.ndarray)):
        yield root
    elif isinstance(root, dict):
        for v in root.values():
            yield from _arrays_reachable(v, seen)
    elif isinstance(root, (list, tuple, set)):
        for v in root:
            yield from _arrays_reachable(v, seen)
    elif dataclasses.is_dataclass(root) or hasattr(root, "__dict__"):
        for v in vars(root).values():
            yield from _arrays_reachable(v, seen)


@pytest.mark.real_model
def test_reducer_capture_at_1024_tokens_stores_no_patterns(smol):
    tokens = torch.randint(1000, 11000, (1, T), generator=torch.Generator().manual_seed(0))
    reducers = default_reducers()
    res = capture(smol, tokens, reducers)
    stored = list(_arrays_reachable(res)) + [a for r in reducers for a in _arrays_reachable(r)]
    assert stored, "the walk found nothing: it is not inspecting the result"
    biggest = max(a.size if isinstance(a, np.ndarray) else a.numel() for a in stored)
    assert biggest < T * T, f"capture stores an array of {biggest} elements (a T x T pattern is {T * T})"
    assert res.patterns is None
    # Nothing pattern-sized is left alive anywhere in the process either (hooks dropped the stash).
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns about deprecations
        warnings.simplefilter("ignore")
        leftovers = [
            o.shape
            for o in gc.get_objects()
            if isinstance(o, torch.Tensor) and o.dim() >= 2 and tuple(o.shape[-2:]) == (T, T)
        ]
    assert not leftovers, leftovers
    # The statistics themselves are complete: one value per (prompt, layer, head).
    assert res["first_token_mass"].values.shape == (1, 30, 9)
    assert np.isfinite(res["first_token_mass"].values).all()


@pytest.mark.real_model
def test_keep_patterns_is_explicit_and_complete(smol):
    res = capture(smol, ["a b c d e", "one two"], default_reducers(), keep_patterns=True, layers=[0, 29])
    assert [p.shape[:2] for p in res.patterns] == [(2, 9), (2, 9)]
    assert np.isnan(res["first_token_mass"].values[:, 1:29]).all()  # layers not captured stay NaN
