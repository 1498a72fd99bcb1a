"""Every planted head is recovered by its matching statistic and is the top-scoring head of its type;
every statistic equals an independent loop over the model's own attentions (HF output_attentions)."""

import numpy as np
import pytest
import torch
from reference import reference_stats

from headscope.capture import capture, default_reducers
from headscope.testing import induction_tokens, plain_hf_copy, planted_model, tiny_model

# kind -> (statistic, whether the planted head should have the highest (True) or lowest value)
MATCHING = {
    "sink": ("first_token_mass", True),
    "previous_token": ("previous_token_score", True),
    "induction": ("induction_score", True),
    "local_window": ("mean_attention_distance", False),
}

CONFIGS = {
    # w=2: the local head spreads over {i-1, i} (mean distance 0.5), below the previous-token head's 1.0
    "all_kinds_w2": dict(local_window_size=2),
    # w=4 (distance 1.5) would tie-break against a previous-token head (1.0) — a previous-token head
    # *is* local — so the wide window is checked in a model without one.
    "local_w4_alone": dict(local_window_size=4, previous_token=None, induction=None),
}


def _top_head(scores, largest):
    mean = scores.mean_over_prompts().values
    flat = np.nanargmax(mean) if largest else np.nanargmin(mean)
    return tuple(int(x) for x in np.unravel_index(flat, mean.shape))


@pytest.mark.parametrize("config", CONFIGS)
def test_planted_heads_are_top_of_their_type(config):
    model, truth = planted_model(**CONFIGS[config])
    tokens = induction_tokens(model, seq_len=30, n_repeats=2, batch=4, seed=1)
    res = capture(model, tokens, default_reducers(), batch_size=2)
    for kind, where in truth.heads().items():
        stat, largest = MATCHING[kind]
        assert _top_head(res[stat], largest) == where, (kind, stat, res[stat].top(3))


def test_planted_scores_are_exact():
    model, truth = planted_model()
    tokens = induction_tokens(model, seq_len=30, n_repeats=2, batch=2, seed=2)
    res = capture(model, tokens)
    score = lambda stat, kind: res[stat].values[:, truth.heads()[kind][0], truth.heads()[kind][1]]
    np.testing.assert_allclose(score("first_token_mass", "sink"), 1.0, atol=1e-5)
    np.testing.assert_allclose(score("previous_token_score", "previous_token"), 1.0, atol=1e-5)
    np.testing.assert_allclose(score("induction_score", "induction"), 1.0, atol=1e-5)
    # Local window w: query i spreads evenly over min(i+1, w) keys, so its distance is known exactly.
    w, T = truth.local_window_size, tokens.shape[1]
    expected = np.mean([np.mean(range(min(i + 1, w))) for i in range(1, T)])
    np.testing.assert_allclose(score("mean_attention_distance", "local_window"), expected, atol=1e-4)
    assert res["induction_score"].n_kv_heads == truth.n_kv_heads


@pytest.mark.parametrize("builder", ["planted", "random"])
def test_reducers_equal_loops_over_hf_attentions(builder):
    model = planted_model()[0] if builder == "planted" else tiny_model(n_layers=3, seed=4)
    hf = plain_hf_copy(model)  # independent of the bridge's reimplemented attention
    probes = induction_tokens(model, seq_len=15, batch=2, seed=5)
    inputs = [probes[0].tolist(), probes[1].tolist()[:19], [1, 7, 7, 8, 7, 9]]  # ragged → padded batch
    res = capture(model, inputs, batch_size=3)
    for p, toks in enumerate(inputs):
        with torch.no_grad():
            attn = hf(torch.tensor([toks]), output_attentions=True).attentions
        pattern = torch.stack([a[0] for a in attn]).tolist()
        for name, expected in reference_stats(pattern, toks).items():
            np.testing.assert_allclose(
                res[name].values[p],
                np.array(expected),
                atol=1e-5,
                equal_nan=True,
                err_msg=f"{builder} prompt {p} {name}",
            )
