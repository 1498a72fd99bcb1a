"""Retrieval vs streaming heads: planted copy head, KV-group max by hand, streaming check on SmolLM2."""

import pytest

from headscope.analyzers.streaming import StreamingHeads
from headscope.testing import planted_model


def test_planted_copy_head_is_retrieval_and_streaming_the_rest_keeps_copying():
    model, truth = planted_model()
    sh = StreamingHeads(seg_len=20, n_repeats=3, token_range=(2, 48), recent=8, induction_ratio=0.25).fit(model)
    layer, head = truth.induction
    assert sh.heads_[:2] == [(layer, 2 * (head // 2)), (layer, 2 * (head // 2) + 1)]  # its whole KV group
    check = sh.streaming_check_.set_index("head_set")["accuracy"]
    assert check["none"] == 1.0
    assert check["streaming candidates"] == 1.0  # sink, previous-token and local heads need no far keys
    assert check["retrieval heads"] < 0.2  # the copy head cannot see the first copy any more


def test_kv_group_max_and_selection_by_hand():
    model, _ = planted_model()
    sh = StreamingHeads(seg_len=20, n_repeats=2, token_range=(2, 48), check=False, induction_ratio=0.5).fit(model)
    ind = sh.scores_.mean_over_prompts().values  # [layer, head], 2 KV heads of 2 query heads each
    for row in sh.kv_table_.itertuples():
        expected = max(ind[row.layer, 2 * row.kv_head], ind[row.layer, 2 * row.kv_head + 1])
        assert row.induction_max == pytest.approx(expected)
    assert sh.kv_table_.retrieval.sum() == 2  # round(4 KV heads * 0.5)
    top2 = sh.kv_table_.nlargest(2, "induction_max")
    assert set(top2.index) == set(sh.kv_table_.index[sh.kv_table_.retrieval])


@pytest.mark.real_model
def test_real_model_retrieval_heads_include_the_induction_group(smol):
    sh = StreamingHeads(seg_len=64, n_repeats=2, n_prompts=2, recent=16, n_random=2).fit(smol)
    assert (17, 3) in sh.heads_ and (17, 4) in sh.heads_  # the strong induction KV group of layer 17
    assert len(sh.heads_) == 3 * round(90 * 0.14) or len(sh.heads_) == 3 * (round(90 * 0.14) + 1)
    check = sh.streaming_check_.set_index("head_set")["accuracy"]
    assert check["retrieval heads"] < check["none"] - 0.2
    assert sh.plot().data


@pytest.mark.real_model
def test_needle_task_breaks_when_retrieval_heads_stream(smol):
    sh = StreamingHeads(seg_len=64, n_repeats=2, n_prompts=1, recent=16, check=False).fit(smol)
    check = sh.check_streaming(smol, task="needle", head_sets={"none": [], "retrieval heads": sh.heads_}).set_index(
        "head_set"
    )
    assert check.loc["none", "accuracy"] >= 0.6  # the bundled model retrieves at 200 tokens
    assert check.loc["retrieval heads", "accuracy"] < check.loc["none", "accuracy"] - 0.3
