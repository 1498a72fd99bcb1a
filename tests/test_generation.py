"""KV-cached greedy generation equals full recomputation and HF `generate` on the tiny, planted and
bundled models, whichever transformers is installed (5.24 renamed the cache argument and TL 4.3's
attention missed it, which turned every generation into garbage). The cached path is a shortcut, so
it is checked at run time: a cache that does not grow makes generation fall back, with a warning."""

import contextlib
import sys
import warnings

import numpy as np
import pytest
import torch

from headscope.errors import InputError
from headscope.generation import greedy_generate, greedy_reproduces, plan_interventions
from headscope.interventions import (
    ACTCalibration,
    MeanAblation,
    ResampleAblation,
    ScaleOutput,
    UniformAttention,
    ZeroAblation,
)
from headscope.models import compat
from headscope.testing import plain_hf_copy, planted_model, tiny_model
from headscope.testing.architectures import plain_hf, random_prompt, tiny_arch_model


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
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("build", ["tiny", "planted"])
def test_cached_equals_recompute_and_hf_generate(build):
    model = tiny_model(seed=3) if build == "tiny" else planted_model()[0]
    hf = plain_hf_copy(model)
    for ids in _prompts(int(model.cfg.d_vocab), 3, 16, seed=7):
        got = greedy_generate(model, ids, 8)
        assert got == greedy_generate(model, ids, 8, use_cache=False)
        ref = _hf_greedy(hf, ids, 8)
        assert ref and got[: len(ref)] == ref
    assert compat._VERIFIED[model] is True  # the cached path ran; no fallback happened


@pytest.mark.real_model
def test_bundled_cached_equals_recompute_and_hf_generate(smol, smol_hf):
    ids = smol.tokenizer("The lighthouse keeper climbed the stairs and", add_special_tokens=False)["input_ids"]
    got = greedy_generate(smol, ids, 12)
    assert got == greedy_generate(smol, ids, 12, use_cache=False)
    ref = _hf_greedy(smol_hf, ids, 12)
    assert ref and got[: len(ref)] == ref
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
    assert ref and got[: len(ref)] == ref
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


# --- generation under interventions: the driver's position rules against a hand-made reference ---------
#
# The reference is a plain HF copy (no bridge) that recomputes the whole sequence at every step with the
# edit written out by hand: head outputs edited on the input of the attention output projection (one
# d_head slice per head), attention probabilities edited inside a copy of HF's eager attention. Positions
# are absolute there (every forward starts at 0), so "decode" = rows >= P - 1 and a span = its rows.

D_HEAD = 16
N_NEW = 6


def _out_proj(hf, layer: int):
    return (
        hf.transformer.h[layer].attn.c_proj if hasattr(hf, "transformer") else hf.model.layers[layer].self_attn.o_proj
    )


def _head_outputs(hf, ids: list[int], layer: int) -> torch.Tensor:
    """[pos, head, d_head]: the input of layer's output projection on `ids`, split by head."""
    got = []
    handle = _out_proj(hf, layer).register_forward_pre_hook(lambda m, args: got.append(args[0][0].clone()))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        handle.remove()
    return got[0].reshape(len(ids), -1, D_HEAD)


def _eager_with(edit_probs):
    """HF's eager attention (scores, mask, softmax, @ V) with `edit_probs(layer, probs [head, q, k])` between."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        scores = query @ key.transpose(2, 3) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.softmax(scores.float(), -1).to(query.dtype)
        probs = edit_probs(module.layer_idx, probs[0])[None]
        return (probs @ value).transpose(1, 2).contiguous(), probs

    return attention


def _hf_generate(hf, ids: list[int], n: int, edit_z=None, edit_probs=None, monkeypatch=None) -> list[int]:
    """Greedy loop recomputing prompt + generated tokens every step; `edit_z(layer, z [pos, head, d], P)`
    rewrites head outputs, `edit_probs(layer, probs [head, q, k])` attention probabilities."""
    P, seq, handles = len(ids), list(ids), []
    if edit_z is not None:
        for layer in range(hf.config.num_hidden_layers):

            def pre(module, args, layer=layer):
                x = args[0]
                z = edit_z(layer, x[0].reshape(x.shape[1], -1, D_HEAD).clone(), P)
                return (z.reshape(1, x.shape[1], -1),)

            handles.append(_out_proj(hf, layer).register_forward_pre_hook(pre))
    if edit_probs is not None:
        monkeypatch.setattr(sys.modules[type(hf).__module__], "eager_attention_forward", _eager_with(edit_probs))
    try:
        with torch.no_grad():
            for _ in range(n):
                seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    finally:
        for h in handles:
            h.remove()
        if edit_probs is not None:
            monkeypatch.undo()
    return seq[P:]


def _by_hand_act(probs: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """ACT on one head's full map [q, k] (no padding): s_j = sum_{i>=j} A[i, j] / (N - j); sinks s_j > threshold
    but the first; sinks keep beta, the freed mass goes to the other keys in proportion; A[0, 0] = 1."""
    N = probs.shape[-1]
    s = torch.stack([probs[j:, j].sum() / (N - j) for j in range(N)])
    sinks = s > threshold
    if sinks.any():
        sinks[int(torch.nonzero(sinks)[0])] = False
    out = probs.clone()
    for i in range(N):
        sink_mass, other = probs[i, sinks].sum(), probs[i, ~sinks].sum()
        if other > 0:
            out[i, sinks] = beta * probs[i, sinks]
            out[i, ~sinks] = probs[i, ~sinks] * (1 + (1 - beta) * sink_mass / other)
    out[0, 0] = 1.0
    return out


def _cases(hf, arch: str, P: int):
    """(name, spec, edit_z, edit_probs): each spec and its edit written by hand on the HF copy, for a
    prompt of P tokens."""
    layer1 = [(1, h) for h in range(4)]
    refs = [random_prompt(arch, 10, seed=20 + i).tolist() for i in range(3)]
    source = random_prompt(arch, 16, seed=30).tolist()  # at least prompt + generated tokens long
    mean = {1: torch.cat([_head_outputs(hf, r, 1) for r in refs]).mean(0)}  # [head, d_head]
    src = {l: _head_outputs(hf, source, l) for l in (0, 1)}

    def zero_decode(layer, z, P):
        if layer == 1:
            z[P - 1 :] = 0
        return z

    def scale_all(layer, z, P):
        if layer == 0:
            z[:, [1, 2]] *= 3.0
        return z

    def mean_span(layer, z, P):
        if layer == 1:
            z[4:9] = mean[1]
        return z

    def resample_all(layer, z, P):
        z[:, [0, 3]] = src[layer][: len(z), [0, 3]]
        return z

    def uniform_decode(layer, probs):
        if layer == 1:
            probs = probs.clone()
            q, k = probs.shape[-2:]
            visible = torch.ones(q, k).tril().bool()  # causal
            rows = slice(P - 1, None)  # every forward of the reference starts at position 0
            probs[:, rows] = (visible / visible.sum(-1, keepdim=True))[rows]
        return probs

    def act_all(layer, probs):
        return torch.stack([_by_hand_act(p, 0.2, 0.1) if layer == 1 else p for p in probs])

    return [
        ("zero, decode", ZeroAblation(heads=layer1, positions="decode"), zero_decode, None),
        ("scale, all", ScaleOutput(heads=[(0, 1), (0, 2)], alpha=3.0), scale_all, None),
        # P = 8: the span covers prefill rows 4..6 and the queries of decode steps 0 and 1 (positions 7, 8)
        ("mean, span", MeanAblation(heads=layer1, positions=(4, 9), reference=refs), mean_span, None),
        (
            "resample, all",
            ResampleAblation(heads=[(0, 0), (0, 3), (1, 0), (1, 3)], source=[source]),
            resample_all,
            None,
        ),
        ("uniform attention, decode", UniformAttention(heads=layer1, positions="decode"), None, uniform_decode),
        # a whole-query kind: a cached step (one query) raises in ACT's edit, so this passes only if
        # the driver recomputes the full sequence every step
        ("act (whole query), all", ACTCalibration(heads=layer1, beta=0.2, threshold=0.1), None, act_all),
    ]


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_generation_under_interventions_equals_a_hand_made_reference(arch, monkeypatch):
    model, hf = tiny_arch_model(arch), plain_hf(arch)
    n_changed = 0
    for seed in range(2):
        ids = random_prompt(arch, 8, seed=seed).tolist()
        clean = greedy_generate(model, ids, N_NEW)
        assert (
            clean
            == _hf_generate(hf, ids, N_NEW)
            == _hf_generate(hf, ids, N_NEW, edit_probs=lambda l, p: p, monkeypatch=monkeypatch)
        )
        for name, spec, edit_z, edit_probs in _cases(hf, arch, len(ids)):
            got = greedy_generate(model, ids, N_NEW, interventions=[spec])
            ref = _hf_generate(hf, ids, N_NEW, edit_z, edit_probs, monkeypatch)
            assert got == ref, f"{arch} {name}, prompt {seed}"
            assert greedy_reproduces(model, ids, got, interventions=[spec]), f"{arch} {name}"
            wrong = got[:-1] + [(got[-1] + 1) % 64]
            assert not greedy_reproduces(model, ids, wrong, interventions=[spec]), f"{arch} {name}"
            n_changed += got != clean
    assert n_changed >= 10, n_changed  # the edits change what is generated (nearly every case, both prompts)


def test_whole_query_kinds_recompute_and_plans_are_reused():
    model, truth = planted_model()
    act = ACTCalibration(heads=[truth.induction])
    with pytest.raises(InputError, match="whole query"):
        greedy_generate(model, [1, 5, 6, 7, 5], 2, interventions=[act], use_cache=True)
    plan = plan_interventions(model, [act])
    assert plan.whole_query
    assert greedy_generate(model, [1, 5, 6, 7, 5], 3, interventions=plan) == greedy_generate(
        model, [1, 5, 6, 7, 5], 3, interventions=[act], use_cache=False
    )
    with pytest.raises(InputError, match="another model"):
        greedy_generate(planted_model()[0], [1, 5, 6, 7, 5], 2, interventions=plan)
