"""KV-cached greedy generation equals full recomputation and HF `generate` on the tiny, planted and
bundled models, whichever transformers is installed (5.24 renamed the cache argument and TL 4.3's
attention missed it, which turned every generation into garbage). The cached path is a shortcut, so
it is checked at run time: a cache that does not grow makes generation fall back, with a warning."""

import contextlib
import warnings

import numpy as np
import pytest
import torch

from headscope.generation import greedy_generate
from headscope.models import compat
from headscope.testing import planted_model, plain_hf_copy, tiny_model


def _prompts(vocab: int, n: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        half = rng.integers(3, vocab, size=length // 2).tolist()
        out.append([1] + half + half[: length // 4])  # repeated text gives induction something to copy
    return out


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    """HF `generate` (greedy; it stops after EOS, so compare with `got[:len(ref)]`)."""
    x = torch.tensor([ids])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("build", ["tiny", "planted"])
def test_cached_equals_recompute_and_hf_generate(build):
    model = tiny_model(seed=3) if build == "tiny" else planted_model()[0]
    hf = plain_hf_copy(model)
    for ids in _prompts(int(model.cfg.d_vocab), 3, 16, seed=7):
        got = greedy_generate(model, ids, 8)
        assert got == greedy_generate(model, ids, 8, use_cache=False)
        ref = _hf_greedy(hf, ids, 8)
        assert ref and got[:len(ref)] == ref
    assert compat._VERIFIED[model] is True  # the cached path ran; no fallback happened


@pytest.mark.real_model
def test_bundled_cached_equals_recompute_and_hf_generate(smol, smol_hf):
    ids = smol.tokenizer("The lighthouse keeper climbed the stairs and", add_special_tokens=False)["input_ids"]
    got = greedy_generate(smol, ids, 12)
    assert got == greedy_generate(smol, ids, 12, use_cache=False)
    ref = _hf_greedy(smol_hf, ids, 12)
    assert ref and got[:len(ref)] == ref
    assert compat._VERIFIED[smol] is True


def test_cached_forward_extends_the_cache_token_by_token():
    model = tiny_model(seed=1)
    ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        full = model(ids)[0, -1]
        _, cache = compat.cached_forward(model, ids[:, :4])
        assert cache.get_seq_length() == 4
        _, cache = compat.cached_forward(model, ids[:, 4:5], cache)
        logits, cache = compat.cached_forward(model, ids[:, 5:], cache)
    assert cache.get_seq_length() == 6
    torch.testing.assert_close(logits[0, -1], full, rtol=1e-5, atol=1e-5)


def _drop_cache(module, args, kwargs):
    kwargs = dict(kwargs)
    kwargs["cache"] = kwargs["past_key_values"] = None  # what a future rename the bridge misses looks like
    return args, kwargs


@contextlib.contextmanager
def _cache_never_reaches_attention(model):
    handles = [m.register_forward_pre_hook(_drop_cache, with_kwargs=True) for m in compat._attention_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_a_broken_cache_is_detected_and_generation_falls_back(monkeypatch):
    model, _ = planted_model()
    monkeypatch.setattr(compat, "_attention_sees_cache", _cache_never_reaches_attention)
    ids = _prompts(int(model.cfg.d_vocab), 1, 16, seed=2)[0]
    with pytest.raises(compat.KVCacheMismatch), torch.no_grad():
        compat.cached_forward(model, torch.tensor([ids]))
    with pytest.warns(RuntimeWarning, match="full recomputation"):
        got = greedy_generate(model, ids, 6)
    assert compat._VERIFIED[model] is False
    ref = _hf_greedy(plain_hf_copy(model), ids, 6)
    assert ref and got[:len(ref)] == ref
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # warned once per model, not per call
        assert greedy_generate(model, ids, 6) == got


def test_the_check_leaves_the_users_hooks_in_place():
    model, _ = planted_model()
    seen = []
    hook = ("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t.shape[-2]))
    with model.hooks(fwd_hooks=[hook]):
        greedy_generate(model, [1, 5, 6, 7, 5], 2)
    # The once-per-model check runs with hooks paused; then prefill (4 queries) and 2 decode steps.
    assert seen == [4, 1, 1]
    assert len(model.blocks[0].attn.hook_pattern._forward_hooks) == 0
