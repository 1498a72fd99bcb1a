"""Captured patterns and reducer statistics against independent computations (HF output_attentions)."""

import math

import numpy as np
import pytest
import torch
from reference import reference_stats

from headscope.capture import capture, default_reducers
from headscope.inputs import repeated_random_tokens

PROMPTS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of France is",
    "Hello there",
    "def f(x):\n    return x + 1\n\nprint(f(2))",
]


def _hf_patterns(hf, ids, mask=None):
    with torch.no_grad():
        out = hf(ids, attention_mask=mask, output_attentions=True)
    return torch.stack(out.attentions, dim=1)  # [batch, layer, head, q, k]


@pytest.mark.real_model
def test_patterns_match_hf_including_padded_batch(smol, smol_hf):
    res = capture(smol, PROMPTS, default_reducers(), keep_patterns=True, batch_size=3)
    lengths = [len(t) for t in res.token_ids]
    assert len(set(lengths)) > 1  # the batch really was padded
    width = max(lengths)
    ids = torch.full((3, width), smol.tokenizer.pad_token_id)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, toks in enumerate(res.token_ids):
        ids[row, : len(toks)] = torch.tensor(toks)
        mask[row, : len(toks)] = 1
    padded_ref = _hf_patterns(smol_hf, ids, mask)
    for row, toks in enumerate(res.token_ids):
        n = len(toks)
        alone_ref = _hf_patterns(smol_hf, torch.tensor([toks]))[0]
        got = res.patterns[row]
        assert got.shape == (30, 9, n, n)
        assert torch.allclose(got, alone_ref, atol=1e-4), (got - alone_ref).abs().max()
        assert torch.allclose(got, padded_ref[row, :, :, :n, :n], atol=1e-4)
        assert torch.allclose(got.sum(-1), torch.ones(30, 9, n), atol=1e-5)  # rows stay stochastic


@pytest.mark.real_model
def test_reducers_match_loops_over_hf_attentions(smol, smol_hf):
    probe = repeated_random_tokens(smol.cfg.d_vocab, seq_len=12, n_prompts=2, seed=3, first_token=1)
    inputs = [probe[0].tolist(), probe[1].tolist()[:20], smol.tokenizer(PROMPTS[0])["input_ids"]]
    res = capture(smol, inputs, batch_size=2)  # 2 batches, the first one padded
    for p, toks in enumerate(inputs):
        ref = reference_stats(_hf_patterns(smol_hf, torch.tensor([toks]))[0].tolist(), toks)
        for name, expected in ref.items():
            got = res[name].values[p]
            np.testing.assert_allclose(got, np.array(expected), atol=1e-4, equal_nan=True, err_msg=name)
    assert not math.isnan(res["induction_score"].values[0].max())
