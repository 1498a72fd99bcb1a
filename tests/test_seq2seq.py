"""Encoder-decoders: every stack's heads captured and labelled (equal to plain HF output_attentions), and
every one-stack engine refusing them with an error that names capture_seq2seq."""

import numpy as np
import pytest
import torch

from headscope.capture import capture
from headscope.capture.seq2seq import STACKS, capture_seq2seq
from headscope.errors import InputError
from headscope.interventions import ZeroAblation, apply, scan
from headscope.testing.seq2seq_models import tiny_seq2seq

SOURCES = [[5, 6, 7, 8, 9, 10, 11, 2], [12, 13, 14, 2]]
TARGETS = [[0, 20, 21, 22, 23], [0, 30, 31]]


@pytest.fixture(scope="module", params=["t5", "bart"])
def pair(request):
    return request.param, *tiny_seq2seq(request.param)


def test_patterns_equal_plain_hf_in_every_stack(pair):
    name, model, hf = pair
    start = hf.config.decoder_start_token_id
    targets = [[start] + t[1:] for t in TARGETS]
    res = capture_seq2seq(model, SOURCES, targets, keep_patterns=True)
    for i, (src, tgt) in enumerate(zip(SOURCES, targets)):
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([tgt]), output_attentions=True)
        refs = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
        for stack in STACKS:
            ref = torch.stack([a[0] for a in refs[stack]])
            torch.testing.assert_close(res.patterns[stack][i], ref, rtol=0, atol=1e-5, msg=f"{name} {stack}")
            assert res.patterns[stack][i].shape[-2:] == (
                (len(tgt), len(src)) if stack == "cross" else (len(src),) * 2 if stack == "encoder" else (len(tgt),) * 2
            )


def test_statistics_equal_plain_loops(pair):
    _name, model, _hf = pair
    res = capture_seq2seq(model, SOURCES, TARGETS, keep_patterns=True)
    for stack in STACKS:
        for i, p in enumerate(res.patterns[stack]):
            L, H, Q, _K = p.shape
            for l in range(L):
                for h in range(H):
                    rows = p[l, h].double().tolist()
                    ent = sum(-sum(x * np.log(x) for x in r if x > 0) for r in rows) / Q
                    first = sum(r[0] for r in rows) / Q
                    np.testing.assert_allclose(res.stats[stack]["attention_entropy"].values[i, l, h], ent, rtol=1e-9)
                    np.testing.assert_allclose(res.stats[stack]["first_token_mass"].values[i, l, h], first, rtol=1e-9)
                    if stack == "decoder":
                        prev = sum(rows[q][q - 1] for q in range(1, Q)) / (Q - 1)
                        np.testing.assert_allclose(
                            res.stats[stack]["previous_token_score"].values[i, l, h], prev, rtol=1e-9
                        )
    df = res.to_dataframe()
    assert set(df["stack"]) == set(STACKS) and len(df) == sum(
        s.values.size for by in res.stats.values() for s in by.values()
    )


def test_one_stack_engines_refuse_with_the_fix(pair):
    _, model, _ = pair
    for call in (
        lambda: capture(model, [SOURCES[0]]),
        lambda: scan(model, [SOURCES[0]], "zero", "kl_last"),
        lambda: apply(model, [ZeroAblation(heads=[(0, 0)])]).__enter__(),
    ):
        with pytest.raises(InputError, match="encoder-decoder.*capture_seq2seq"):
            call()


def test_bad_inputs(pair):
    _, model, _ = pair
    with pytest.raises(InputError, match="one target per source"):
        capture_seq2seq(model, SOURCES, TARGETS[:1])
    with pytest.raises(InputError, match="needs an encoder-decoder"):
        from headscope.testing import tiny_model

        capture_seq2seq(tiny_model(), SOURCES, TARGETS)
