"""Attention sinks: planted sink head / massive token / hidden sink found exactly; every statistic equals
plain loops over HF output_attentions / output_hidden_states (tiny model and SmolLM2); runs on SmolLM2."""

import math

import numpy as np
import pytest
import torch

from headscope.analyzers import get_analyzer
from headscope.analyzers.sinks import AttentionSinks
from headscope.errors import InputError
from headscope.testing import induction_tokens, plain_hf_copy, planted_model, tiny_model

BOS = 1
MASSIVE_DIM = 605  # zero padding of planted_model(vocab_size=200): residual dims 603..607 are unused


def massive_planted_model():
    """planted_model(n_layers=3, vocab_size=200) whose layer-1 MLP writes ~4,900 into dim 605 of every BOS
    token (one SwiGLU neuron gated by the is_bos flag: exactly 0 on other tokens) and a small dense vector
    (|x| ~ 1) into every token, so layer medians are ~0.7. The planted heads sit in layers 0-1, before
    the MLP, so they stay exact; layer 2 holds background heads only. d_model = 608, so a token whose
    norm is all in one dim has phi = sqrt(608) = 24.7 > tau = 20. Ground truth: massive entries exactly
    at (layer 1 and 2, every BOS position, dim 605); phi > 20 exactly at BOS positions entering layer 2."""
    model, truth = planted_model(n_layers=3, vocab_size=200)
    mlp = model.original_model.model.layers[1].mlp  # the bridge reads these same modules
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mlp.gate_proj.weight[0, 1] = 1.0  # input dim 1 = is_bos (normalised value ~11 on BOS, 0 elsewhere)
        mlp.up_proj.weight[0, 1] = 1.0
        mlp.down_proj.weight[MASSIVE_DIM, 0] = 40.0
        mlp.gate_proj.weight[1, 0] = 1.0  # input dim 0 = const: active on every token
        mlp.up_proj.weight[1, 0] = 1.0 / 11
        mlp.down_proj.weight[:, 1] = torch.randn(608, generator=gen) / 11
    return model, truth


# ---------------------------------------------------------------- plain reference loops (no shared code)


def hf_run(hf, tokens):
    """Attentions [layer][head][q][k], hidden states entering each layer and each layer's own output."""
    outs = []
    hook = hf.model.layers[-1].register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = hf(torch.tensor([tokens]), output_attentions=True, output_hidden_states=True)
    hook.remove()
    hs = [h[0] for h in out.hidden_states]
    L = len(out.attentions)
    # HF: hidden_states[l] = input of layer l; [l+1] = output of layer l, except the last, which is after
    # the final norm: the pre-norm output of the last layer comes from the hook.
    assert torch.allclose(hs[L], hf.model.norm(outs[0][0]), atol=1e-5)
    return (
        [a[0].tolist() for a in out.attentions],
        [h.tolist() for h in hs[:L]],
        [h.tolist() for h in hs[1:L] + [outs[0][0]]],
    )


def ref_importance(A, k, T):
    n = min(len(A), T)
    return sum(A[i][k] for i in range(k, n)) / (n - k) if n > k else math.nan


def ref_hidden_sinks(A, threshold=0.1):
    N = len(A)
    s = [sum(A[i][j] for i in range(j, N)) / (N - j) for j in range(N)]
    S = [j for j in range(N) if s[j] > threshold]
    return {j: s[j] for j in S[1:]}


def ref_median(values):
    v = sorted(values)
    return v[(len(v) - 1) // 2]  # torch.median: the lower middle value


def ref_massive(x, min_abs, min_ratio):
    med = ref_median([abs(a) for row in x for a in row])
    return med, {
        (t, d): row[d]
        for t, row in enumerate(x)
        for d in range(len(row))
        if abs(row[d]) > min_abs and abs(row[d]) >= min_ratio * med
    }


def ref_phi(row, dims):
    rms = math.sqrt(sum(a * a for a in row) / len(row) + 1e-6)
    return max(abs(row[d]) / rms for d in dims)


def check_against_reference(model, hf, prompts, sinks, atol=1e-5, rtol=1e-4):
    """Every learned statistic of a fitted AttentionSinks equals the loops above, prompt by prompt."""
    all_massive, first_dims = {}, set()
    hidden = {
        key: dict(zip(g.position, g.score)) for key, g in sinks.hidden_sinks_.groupby(["prompt", "layer", "head"])
    }
    mags = sinks.layer_magnitudes_.set_index(["prompt", "layer"])
    flagged_at = set(sinks.sink_tokens_[["prompt", "layer", "position"]].itertuples(index=False, name=None))
    for p, toks in enumerate(prompts):
        attn, pre, post = hf_run(hf, toks)
        L, H = len(attn), len(attn[0])
        for layer in range(L):
            for h in range(H):
                A = attn[layer][h]
                expect = ref_importance(A, sinks.sink_position, sinks.max_tokens)
                np.testing.assert_allclose(sinks.scores_.values[p, layer, h], expect, atol=atol)
                ftm = sum(A[i][0] for i in range(1, len(A))) / (len(A) - 1)
                np.testing.assert_allclose(sinks.first_token_mass_.values[p, layer, h], ftm, atol=atol)
                got = hidden.get((p, layer, h), {})
                ref = ref_hidden_sinks(A, sinks.hidden_sink_threshold)
                assert sorted(got) == sorted(ref), (p, layer, h)
                np.testing.assert_allclose([got[j] for j in ref], list(ref.values()), atol=atol)
            med, massive = ref_massive(post[layer], sinks.massive_min_abs, sinks.massive_min_ratio)
            mag = mags.loc[(p, layer)]
            np.testing.assert_allclose(mag["median"], med, rtol=rtol)
            top3 = sorted((abs(a) for row in post[layer] for a in row), reverse=True)[:3]
            np.testing.assert_allclose(mag[["top1", "top2", "top3"]].astype(float), top3, rtol=rtol)
            all_massive.update({(p, layer, t, d): v for (t, d), v in massive.items()})
            first_dims |= {d for (t, d) in massive if t == 0}
            if sinks.sink_dims_:
                phi = [ref_phi(row, sinks.sink_dims_) for row in pre[layer]]
                got = sinks.phi_[p, layer, : len(toks)]
                exact = ~np.isnan(got)
                np.testing.assert_allclose(got[exact], np.array(phi)[exact], rtol=rtol)
                # NaN only where phi is provably below tau (no sink dim among the token's top-k)
                assert all(phi[t] <= sinks.tau for t in np.nonzero(~exact)[0])
                flagged = {t for (q, lay, t) in flagged_at if (q, lay) == (p, layer)}
                assert flagged == {t for t in range(len(toks)) if phi[t] > sinks.tau}
    got = {(r.prompt, r.layer, r.position, r.dim): r.value for r in sinks.massive_activations_.itertuples()}
    assert got.keys() == all_massive.keys()
    np.testing.assert_allclose([got[k] for k in sorted(got)], [all_massive[k] for k in sorted(got)], rtol=rtol)
    if sinks.sink_dims is None:
        assert sinks.sink_dims_ == sorted(first_dims)


# ---------------------------------------------------------------------------------------- planted


def test_planted_sink_head_ranks_first_with_exact_importance():
    model, truth = planted_model()
    tokens = induction_tokens(model, seq_len=20, batch=2, seed=3)  # [2, 41], BOS first
    sinks = AttentionSinks().fit(model, tokens)
    assert sinks.heads_[0] == truth.sink
    alpha = sinks.scores_.values
    np.testing.assert_allclose(alpha[:, 0, 2], 1.0, atol=1e-6)  # every query, query 0 included
    np.testing.assert_allclose(alpha[:, 0, 1], 2 / 41, atol=1e-6)  # previous-token head: queries 0 and 1
    expect_rate = 100 * np.mean(alpha > 0.3, axis=(1, 2)).mean()
    assert sinks.sink_rate_ == pytest.approx(expect_rate) and 0 < sinks.sink_rate_ < 100


def test_planted_massive_token_and_hidden_sink_are_found_exactly():
    model, truth = massive_planted_model()
    plain = induction_tokens(model, seq_len=15, batch=1, seed=1)[0].tolist()  # [BOS, s, s]
    second = list(plain)
    second[12] = BOS  # a second BOS: the sink head splits its mass 1/2 : 1/2 from query 12 on
    sinks = AttentionSinks().fit(model, [plain, second])
    bos_at = {0: [0], 1: [0, 12]}
    massive = set(sinks.massive_activations_[["prompt", "layer", "position", "dim"]].itertuples(index=False, name=None))
    assert massive == {(p, layer, t, MASSIVE_DIM) for p in (0, 1) for layer in (1, 2) for t in bos_at[p]}
    assert sinks.sink_dims_ == [MASSIVE_DIM] == sinks.massive_dims_
    flagged = set(sinks.sink_tokens_[["prompt", "layer", "position"]].itertuples(index=False, name=None))
    assert flagged == {(p, 2, t) for p in (0, 1) for t in bos_at[p]}
    np.testing.assert_allclose(sinks.phi_[1, 2, bos_at[1]], math.sqrt(608), rtol=1e-3)
    hs = sinks.hidden_sinks_
    in_sink_head = hs[(hs.layer == truth.sink[0]) & (hs["head"] == truth.sink[1])]
    assert list(zip(in_sink_head.prompt, in_sink_head.position)) == [(1, 12)]  # ACT: S = {0, 12} minus 0
    np.testing.assert_allclose(in_sink_head.score, 0.5, atol=1e-6)
    assert in_sink_head.token.tolist() == ["<s>"]
    assert sinks.heads_[0] == truth.sink
    # explicit sink dims give the same sink tokens, with exact phi at every token
    explicit = AttentionSinks(sink_dims=[MASSIVE_DIM]).fit(model, [plain, second])
    assert set(explicit.sink_tokens_[["prompt", "layer", "position"]].itertuples(index=False, name=None)) == flagged
    assert not np.isnan(explicit.phi_[0, :, : len(plain)]).any()


# -------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("case", ["tiny_random", "massive_planted"])
def test_every_statistic_equals_loops_over_hf(case):
    if case == "tiny_random":  # random residuals are O(1): lower the massive thresholds so entries exist
        model = tiny_model(n_layers=3, seed=4)
        params = dict(massive_min_abs=0.5, massive_min_ratio=3.0, max_tokens=12, tau=2.0, hidden_sink_threshold=0.15)
    else:
        model, _ = massive_planted_model()
        params = {}
    hf = plain_hf_copy(model)
    probes = induction_tokens(model, seq_len=10, batch=2, seed=5)
    prompts = [probes[0].tolist(), probes[1].tolist()[:15], [1, 7, 7, 8, 1, 9]]  # ragged -> padded batch
    for sink_dims in (None, [3, 5]) if case == "tiny_random" else (None,):
        sinks = AttentionSinks(sink_dims=sink_dims, batch_size=3, **params).fit(model, prompts)
        assert len(sinks.massive_activations_) > 0 and len(sinks.sink_tokens_) > 0
        check_against_reference(model, hf, prompts, sinks)


@pytest.mark.real_model
def test_smollm2_statistics_equal_loops_over_hf(smol, smol_hf):
    prompts = ["The cat sat on the mat. It was warm.", "Alice gave Bob a book, and Bob read the book."]
    token_ids = [smol.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sinks = AttentionSinks(max_tokens=8, batch_size=2).fit(smol, prompts)
    check_against_reference(smol, smol_hf, token_ids, sinks, atol=1e-4, rtol=1e-4)
    assert 507 in sinks.sink_dims_


# ------------------------------------------------------------------------------------ real model


@pytest.mark.real_model
def test_smollm2_default_prompts_find_dim_507_at_the_first_token(smol):
    sinks = get_analyzer("attention-sinks").fit(smol)  # the CLI path: built-in prompts
    ma = sinks.massive_activations_
    first = ma[(ma.position == 0) & (ma.dim == 507)]
    assert set(first.prompt) == set(range(len(sinks.tokens_)))
    assert first.value.abs().max() > 15_000 and (first.ratio > 1000).all()
    assert 507 in sinks.sink_dims_
    assert (sinks.phi_[:, 15, 0] > sinks.tau).all()  # the first token is a VAR sink token mid-network
    assert 50 < sinks.sink_rate_ < 100 and len(sinks.heads_) > 0
    for fig in (sinks.plot(), sinks.plot_phi(), sinks.plot_phi(layer=15), sinks.plot_massive()):
        assert fig.data


# ------------------------------------------------------------------------------------------ input


def test_bad_parameters_raise_input_errors_naming_the_fix():
    model, _ = planted_model()
    with pytest.raises(InputError, match="sink_dims"):
        AttentionSinks(sink_dims=[10_000]).fit(model, [[1, 2, 3]])
    with pytest.raises(InputError, match="sink_position"):
        AttentionSinks(sink_position=64).fit(model, [[1, 2, 3]])
    with pytest.raises(InputError, match="epsilon"):
        AttentionSinks(epsilon=-1).fit(model, [[1, 2, 3]])
    with pytest.raises(InputError, match="not fitted"):
        AttentionSinks().plot_phi()
    sinks = AttentionSinks().fit(model, [[1, 2, 3, 4]])
    with pytest.raises(InputError, match="layer"):
        sinks.phi_scores(5)
