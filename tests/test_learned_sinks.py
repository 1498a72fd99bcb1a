"""Learned attention sinks (GPT-OSS): the share each head's sink logit takes, captured on the eager and
the blocked path and by the attention-sinks analyzer, equals a plain computation from the HF model's
weights; models without learned sinks report none."""

import math

import numpy as np
import pytest
import torch

from headscope.analyzers.sinks import AttentionSinks
from headscope.capture import SinkLogitMass, capture
from headscope.capture.reducers import AttentionEntropy, QueryMeanReducer
from headscope.testing.architectures import SINK_LOGITS, layer_windows, plain_hf, random_prompt, tiny_arch_model

NAME = "gpt-oss"


def _prompts():
    # ragged: the batch is right-padded, by more than the sliding window (8) for the shortest
    return [random_prompt(NAME, n, seed).tolist() for seed, n in ((1, 30), (2, 15), (3, 24))]


def _attention_inputs(hf, ids):
    """Per layer, the hidden states and (cos, sin) HF's attention module receives for one unpadded prompt."""
    seen = {}
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, kwargs, l=l: seen.__setitem__(l, kwargs), with_kwargs=True
        )
        for l, layer in enumerate(hf.model.layers)
    ]
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return seen, out.attentions


def _plain_sink_shares(hf, ids):
    """[layer, head, query] exp(s) / (exp(s) + sum_k exp(score_k)) over the keys the query may see, in
    float64 plain loops from HF's projections, RoPE, scaling, sliding window and `sinks` parameter."""
    from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb

    seen, attentions = _attention_inputs(hf, ids)
    T, windows = len(ids), layer_windows(hf.config)
    shares = []
    for l, layer in enumerate(hf.model.layers):
        attn = layer.self_attn
        x, (cos, sin) = seen[l]["hidden_states"], seen[l]["position_embeddings"]
        d = attn.head_dim
        with torch.no_grad():
            q = attn.q_proj(x).view(1, T, -1, d).transpose(1, 2)
            k = attn.k_proj(x).view(1, T, -1, d).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        q, k = q[0].double(), k[0].double()
        group = q.shape[0] // k.shape[0]
        out = torch.zeros(q.shape[0], T, dtype=torch.float64)
        for h in range(q.shape[0]):
            sink = float(attn.sinks[h])
            for i in range(T):
                keys = [j for j in range(i + 1) if windows[l] is None or i - j < windows[l]]
                total = sum(math.exp(float(q[h, i] @ k[h // group, j]) * attn.scaling) for j in keys)
                out[h, i] = math.exp(sink) / (math.exp(sink) + total)
        shares.append(out)
    return torch.stack(shares), attentions


def test_sink_logit_mass_equals_a_plain_computation_on_both_paths():
    hf, model, prompts = plain_hf(NAME), tiny_arch_model(NAME), _prompts()
    expected = []
    for ids in prompts:
        shares, attentions = _plain_sink_shares(hf, ids)
        # what HF returns: output_attentions over the real keys sums to 1 - the sink's share
        got = 1 - torch.stack([a[0] for a in attentions]).double().sum(-1)
        torch.testing.assert_close(got, shares, atol=1e-6, rtol=0)
        expected.append(shares.mean(-1).numpy())  # every query, query 0 included
    expected = np.stack(expected)
    assert expected.min() > 1e-3 and expected.max() > 0.2  # the sinks matter on this model
    for attention, block in (("eager", None), ("blocked", 4), ("blocked", 7)):
        res = capture(model, prompts, [SinkLogitMass()], batch_size=3, attention=attention, block_size=block)
        np.testing.assert_allclose(res["sink_logit_mass"].values, expected, atol=1e-5, rtol=0, err_msg=attention)
    fit = AttentionSinks().fit(model, prompts)
    np.testing.assert_allclose(fit.sink_logit_mass_.values, expected, atol=1e-5, rtol=0)
    # a larger logit takes a larger share, head by head
    assert np.array_equal(expected.mean((0, 1)).argsort(), np.argsort(SINK_LOGITS))


def test_blocked_fused_layers_keep_the_sink():
    """A layer nobody observes runs the fused kernel (SDPA with a zero key carrying the sink logit): the
    statistics of the observed last layer, which reads its output, equal eager's."""
    model, prompts = tiny_arch_model(NAME), _prompts()
    reducers = lambda: [SinkLogitMass(), AttentionEntropy()]
    eager = capture(model, prompts, reducers(), layers=[1], attention="eager")
    blocked = capture(model, prompts, reducers(), layers=[1], attention="blocked", block_size=5)
    for name in eager:
        np.testing.assert_allclose(blocked[name].values, eager[name].values, atol=1e-5, rtol=0, equal_nan=True)
        assert not np.isnan(eager[name].values[:, 1]).any()


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_no_learned_sinks_no_sink_statistic(name):
    model = tiny_arch_model(name)
    prompts = [random_prompt(name, 12, 0).tolist()]
    assert np.isnan(capture(model, prompts, [SinkLogitMass()])["sink_logit_mass"].values).all()
    assert AttentionSinks().fit(model, prompts).sink_logit_mass_ is None


def test_an_uncovered_row_never_reaches_the_mean():
    """A padded query of a sliding-window layer may see no key; whatever its per-query value (inf, NaN),
    it is not covered and leaves the prompt's statistic alone."""

    class Poisoned(QueryMeanReducer):
        name = "poisoned"

        def per_query(self, acts, ctx):
            stat = torch.ones(acts["pattern"].shape[:3])
            stat[..., -1] = float("inf")
            stat[..., -2] = float("nan")
            covered = ctx.valid_queries.clone()
            covered[:, -2:] = False
            return stat, covered

    model = tiny_arch_model("mistral")
    res = capture(model, [random_prompt("mistral", 10, 0).tolist()], [Poisoned()])
    np.testing.assert_array_equal(res["poisoned"].values, np.ones_like(res["poisoned"].values))


def test_bf16_blocked_rounds_as_eager():
    """On a bf16 model eager subtracts the row max (sink included) in bf16 before its float32 softmax; the
    blocked kernel does the same, so the support probe passes and the statistics agree to float32 rounding."""
    from headscope.capture.blocked import blocked_support

    model = tiny_arch_model(NAME, dtype=torch.bfloat16)
    assert blocked_support(model) == (True, "")
    prompts = _prompts()
    reducers = lambda: [SinkLogitMass(), AttentionEntropy()]
    eager = capture(model, prompts, reducers(), attention="eager")
    blocked = capture(model, prompts, reducers(), attention="blocked", block_size=6)
    for name in eager:
        np.testing.assert_allclose(blocked[name].values, eager[name].values, atol=1e-5, rtol=0)
