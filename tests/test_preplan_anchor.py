"""Preplan-and-Anchor: planted heads land in the right group, WAAD/FAI match analytic values and
plain loops over HF `output_attentions`, and the analyzer runs end to end on SmolLM2."""

import math

import numpy as np
import pytest
import torch

from headscope.analyzers import get_analyzer
from headscope.analyzers._group_pattern import select_tokens
from headscope.analyzers.preplan_anchor import (
    PreplanAnchor,
    encode_pairs,
    load_pairs,
    middle_layers,
)
from headscope.errors import InputError
from headscope.testing import plain_hf_copy, planted_model, tiny_model

DIFFUSE = (1, 0)  # a background head made uniform (below); the tests use it as a known "diffuse" head


def _pairs(n_prompts=3, prompt_len=12, response_len=25, vocab=48, seed=0):
    """BOS + distinct random tokens, split into (prompt ids, response ids); no repeats, so no copying."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_prompts):
        seq = rng.permutation(np.arange(2, vocab))[: prompt_len + response_len - 1].tolist()
        out.append(([1] + seq[: prompt_len - 1], seq[prompt_len - 1 :]))
    return out


def _planted(**kw):
    """planted_model with every background head made diffuse: W_Q = 0 gives uniform causal attention.

    Background heads write nothing (W_O = 0), so this leaves the planted heads exact.
    """
    model, truth = planted_model(induction=None, **kw)
    layers = model.original_model.model.layers
    with torch.no_grad():
        for l, h in truth.background():
            attn = layers[l].self_attn
            attn.q_proj.weight[h * attn.head_dim : (h + 1) * attn.head_dim] = 0.0
    return model, truth


def test_planted_heads_land_in_their_groups():
    model, truth = _planted()
    diffuse = set(truth.background())  # 5 uniform heads, DIFFUSE among them
    an = PreplanAnchor().fit(model, _pairs())  # 8 heads: 30% -> 2 local, 2 global
    assert set(an.local_heads_) == {truth.previous_token, truth.local_window}
    assert an.heads_ == an.local_heads_
    assert an.global_heads_[0] == truth.sink and an.global_heads_[1] in diffuse  # BOS is the farthest key
    wide = PreplanAnchor(local_fraction=0.25, global_fraction=0.75).fit(model, _pairs())
    assert set(wide.global_heads_) == diffuse | {truth.sink}
    # d itself, exactly: prev-token 1, window (w=4) 1.5, sink mean t, uniform mean t/2 over R.
    d = an.scores_.mean_over_prompts()
    t = np.arange(12, 37)
    assert d.score(*truth.previous_token) == pytest.approx(1.0, abs=1e-4)
    assert d.score(*truth.local_window) == pytest.approx(1.5, abs=1e-4)
    assert d.score(*truth.sink) == pytest.approx(t.mean(), abs=1e-3)
    assert d.score(*DIFFUSE) == pytest.approx(t.mean() / 2, abs=1e-3)
    assert an.scores_.values.shape == (3, 2, 4) and not an.scores_.higher_is_more


@pytest.mark.parametrize("window, full", [(10, 1.5), (2, 1.25)])
def test_waad_of_local_window_group_is_analytic(window, full):
    # Only the w=4 window head is local (1 of 8 heads). Responses start at 0, so the short rows
    # near the start are checked too: WAAD_t = sum_{s=t-w_t+1..t} min(t-s, W) / w_t, w_t = min(t+1, 4).
    model, truth = _planted(previous_token=None)
    pairs = [([], ids) for _, ids in _pairs(n_prompts=2)]
    an = PreplanAnchor(local_fraction=1 / 8, global_fraction=1 / 8, window=window).fit(model, pairs)
    assert an.local_heads_ == [truth.local_window]
    expected = [sum(min(t - s, window) for s in range(max(0, t - 3), t + 1)) / min(t + 1, 4) for t in range(25)]
    np.testing.assert_allclose(an.waad_.values, np.array([expected] * 2), atol=1e-4)
    assert expected[-1] == full
    # Δ is then 0 after the start: every token ties, and TopQ still takes round(0.4 * 24) of them.
    assert (an.preplan_tokens_.groupby("prompt").size() == round(0.4 * 24)).all()


@pytest.mark.parametrize("horizon", [(1, None), (2, 5)])
def test_fai_of_uniform_group_is_analytic(horizon):
    # Ā^glob = uniform head: Ā[t, s] = 1/(t+1), so FAI_s = mean over t in T(s) of 1/(t+1).
    model, _ = _planted()
    pairs = _pairs(n_prompts=1)
    an = PreplanAnchor(global_heads=[DIFFUSE], horizon=horizon).fit(model, pairs)
    start, T = 12, 37
    lo, hi = horizon[0], horizon[1] if horizon[1] is not None else math.inf
    expected = []
    for s in range(start, T):
        ts = [t for t in range(start, T) if lo <= t - s <= hi]
        expected.append(np.mean([1 / (t + 1) for t in ts]) if ts else np.nan)
    np.testing.assert_allclose(an.fai_.values[0], expected, atol=1e-5)
    assert np.isnan(an.fai_.values[0, -1])  # the last token has no future inside the response


def _reference(hf, pairs_ids, starts, frac, window, horizon):
    """Plain loops over HF output_attentions (no code shared with the analyzer)."""
    maps = []
    for ids in pairs_ids:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True)
        maps.append([a[0].double().tolist() for a in out.attentions])  # [layer][head][t][s]
    L, H = len(maps[0]), len(maps[0][0])
    d = {}
    for l in range(L):
        for h in range(H):
            per_prompt = []
            for A, ids, start in zip(maps, pairs_ids, starts):
                rows = [sum(A[l][h][t][s] * (t - s) for s in range(t + 1)) for t in range(start, len(ids))]
                per_prompt.append(sum(rows) / len(rows))
            d[(l, h)] = sum(per_prompt) / len(per_prompt)
    k = round(frac * L * H)
    ranked = sorted(d, key=lambda lh: d[lh])
    local, glob = ranked[:k], ranked[::-1][:k]
    waads, fais = [], []
    for A, ids, start in zip(maps, pairs_ids, starts):
        T = len(ids)

        def mean_map(group, t, s, A=A):
            return sum(A[l][h][t][s] for l, h in group) / len(group)

        waads.append([sum(mean_map(local, t, s) * min(t - s, window) for s in range(t + 1)) for t in range(start, T)])
        f = []
        for s in range(start, T):
            ts = [t for t in range(start, T) if horizon[0] <= t - s <= horizon[1]]
            f.append(sum(mean_map(glob, t, s) for t in ts) / len(ts) if ts else math.nan)
        fais.append(f)
    return d, local, glob, waads, fais


def _check_against_reference(an, hf, frac, window, horizon):
    d, local, glob, waads, fais = _reference(hf, an.token_ids_, an.response_starts_, frac, window, horizon)
    mean_d = an.scores_.mean_over_prompts()
    np.testing.assert_allclose([mean_d.score(l, h) for l, h in d], list(d.values()), atol=1e-4)
    assert set(an.local_heads_) == set(local) and set(an.global_heads_) == set(glob)
    for p, (w, f) in enumerate(zip(waads, fais)):
        np.testing.assert_allclose(an.waad_.values[p, : len(w)], w, atol=1e-4)
        np.testing.assert_allclose(an.fai_.values[p, : len(f)], f, atol=1e-4)
        delta = np.abs(np.diff(w))
        np.testing.assert_allclose(an.waad_delta_.values[p, : len(delta)], delta, atol=1e-4)


def test_matches_hf_loops_on_tiny_model():
    model = tiny_model(n_layers=3, seed=1)
    pairs = [(p, r) for p, r in _pairs(n_prompts=2, seed=3)]
    pairs[1] = (pairs[1][0][:5], pairs[1][1][:9])  # ragged: exercises right-padding in the batch
    an = PreplanAnchor(horizon=[2, 6], window=3).fit(model, pairs)  # a list, as `--param` gives
    _check_against_reference(an, plain_hf_copy(model), 0.3, 3, (2, 6))


@pytest.mark.real_model
def test_matches_hf_loops_on_smollm2(smol, smol_hf):
    pairs = [("What is 7 + 5?", "7 + 5 = 12. The answer is 12.")]
    an = PreplanAnchor().fit(smol, pairs)
    tok = smol.tokenizer
    prefix = tok.apply_chat_template(
        [{"role": "user", "content": pairs[0][0]}], add_generation_prompt=True, tokenize=False
    )
    p_ids, r_ids = (
        tok(prefix, add_special_tokens=False)["input_ids"],
        tok(pairs[0][1], add_special_tokens=False)["input_ids"],
    )
    assert an.token_ids_ == [p_ids + r_ids] and an.response_starts_ == [len(p_ids)]
    plain, starts = encode_pairs(smol, pairs, template="plain")
    q_ids = tok("Question: What is 7 + 5?\nAnswer:", add_special_tokens=False)["input_ids"]
    assert plain == [q_ids + tok(" " + pairs[0][1], add_special_tokens=False)["input_ids"]] and starts == [len(q_ids)]
    _check_against_reference(an, smol_hf, 0.3, 10, (1, math.inf))


@pytest.mark.real_model
def test_runs_on_smollm2_and_plots(smol):
    pairs = load_pairs()[:2]
    an = get_analyzer("preplan-anchor", layers="middle").fit(smol, pairs)
    assert an.layers_ == [10, 12, 15, 17, 20]
    n_heads = 5 * 9
    assert len(an.local_heads_) == len(an.global_heads_) == round(0.3 * n_heads)
    assert {l for l, _ in an.local_heads_ + an.global_heads_} <= set(an.layers_)
    d = an.scores_.mean_over_prompts()
    assert max(d.score(*lh) for lh in an.local_heads_) < min(d.score(*lh) for lh in an.global_heads_)
    n_resp = [len(ids) - s for ids, s in zip(an.token_ids_, an.response_starts_)]
    assert an.anchor_tokens_.groupby("prompt").size().tolist() == [round(0.4 * (n - 1)) for n in n_resp]
    row = an.anchor_tokens_.iloc[0]
    assert smol.tokenizer.decode([an.token_ids_[row.prompt][row.position]]) == row.token
    assert len(an.plot().data) == 3 and len(an.plot_tokens(1).data) == 3
    with pytest.raises(InputError, match="prompt_index"):
        an.plot_tokens(5)


def test_select_tokens_and_middle_layers():
    v = np.array([0.1, 0.9, 0.2, 0.8, 0.7, np.nan])
    assert select_tokens(v, 0.4).tolist() == [False, True, False, True, False, False]  # round(0.4 * 5) = 2
    assert select_tokens(v, 0.6, "local_max").tolist() == [False, True, False, True, False, False]
    assert select_tokens(np.array([3.0, 2.0, 1.0]), 1.0, "local_max").tolist() == [True, False, False]
    assert middle_layers(30) == [10, 12, 15, 17, 20] and middle_layers(2) == [0, 1]


def test_chat_and_plain_templates():
    model = tiny_model()
    ids, starts = encode_pairs(model, [("t5 t6", "t7 t8 t9")], template="raw")
    assert ids == [[1, 5, 6, 7, 8, 9]] and starts == [3]  # the tiny model prepends BOS
    with pytest.raises(InputError, match="chat template"):
        encode_pairs(model, [("t5", "t6")], template="chat")


@pytest.mark.parametrize(
    "params, data, match",
    [
        (dict(horizon=(5, 2)), None, "H_lo <= H_hi"),
        (dict(local_fraction=0.7, global_fraction=0.4), None, "overlap"),
        (dict(window=0), None, "window"),
        (dict(layers="late"), None, "middle"),
        (dict(peak_rule="argmax"), None, "peak_rule"),
        ({}, [([1, 2], [])], "empty response"),
        ({}, ["just a string"], "not a \\(prompt, response\\) pair"),
    ],
)
def test_bad_input(params, data, match):
    with pytest.raises(InputError, match=match):
        PreplanAnchor(**params).fit(tiny_model(), data if data is not None else _pairs(1))
