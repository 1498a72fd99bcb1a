"""Every ranking of a scan reads its metric's direction: the most important head first, for every
built-in metric (a logit difference's most negative change, KL's and the loss's largest increase)."""

import numpy as np
import pytest
import torch

from headscope.interventions import scan
from headscope.interventions.metrics import METRICS, important_end
from headscope.results import HeadScores, rank_heads, select_heads
from headscope.testing import planted_model


@pytest.fixture(scope="module")
def planted():
    model, truth = planted_model()
    g = torch.Generator().manual_seed(0)
    segs = [torch.randint(5, 40, (6,), generator=g).tolist() for _ in range(4)]
    # The second copy stops one token short: induction predicts segs[i][-1] next.
    prompts = [[1] + s + s[:-1] for s in segs]
    answers = [(s[-1], s[0] if s[0] != s[-1] else s[1]) for s in segs]
    return model, truth, prompts, answers


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_top_puts_the_planted_circuit_first(planted, metric):
    model, truth, prompts, answers = planted
    kw = {"answers": answers} if metric == "logit_diff" else None
    scores = scan(model, prompts, "zero", metric, metric_kwargs=kw)
    end = METRICS[metric].important
    assert scores.better == end
    top = scores.top(2)
    assert {(int(r.layer), int(r.head)) for r in top.itertuples()} == {truth.previous_token, truth.induction}
    mean = scores.values.mean(0)
    # the ranking's first head is the metric's extreme in its important direction
    extreme = mean.min() if end == "lower" else mean.max()
    assert top.score.iloc[0] == pytest.approx(extreme)
    assert (top.score < 0).all() if end == "lower" else (top.score > 0).all()
    assert rank_heads(scores)[:2] == [(int(r.layer), int(r.head)) for r in top.itertuples()]
    assert select_heads(scores, top_k=2) == rank_heads(scores)[:2]


def test_direction_survives_mean_save_and_load(planted, tmp_path):
    model, _, prompts, answers = planted
    scores = scan(model, prompts, "zero", "logit_diff", metric_kwargs={"answers": answers})
    assert scores.mean_over_prompts().better == "lower"
    for suffix in (".json", ".parquet"):
        back = HeadScores.load(scores.save(tmp_path / f"s{suffix}"))
        assert back.better == "lower" and list(back.top(3).label) == list(scores.top(3).label)


def test_custom_metric_declares_or_ranks_by_magnitude(planted):
    model, _truth, prompts, _ = planted

    def drop(base, variant, batch):  # larger = the head mattered more, but negative
        last = torch.arange(len(base))
        return -(base[last, batch.lengths - 1] - variant[last, batch.lengths - 1]).abs().sum(-1)

    assert important_end(drop) == "magnitude"
    by_magnitude = scan(model, prompts, "zero", drop)
    assert by_magnitude.better == "magnitude"
    mean = by_magnitude.values.mean(0)
    assert abs(by_magnitude.top(1).score.iloc[0]) == pytest.approx(np.abs(mean).max())
    drop.important = "lower"
    assert scan(model, prompts, "zero", drop).top(1).score.iloc[0] == pytest.approx(mean.min())


def test_atp_estimates_rank_in_the_metric_direction(planted):
    model, _truth, prompts, answers = planted
    est = scan(model, prompts, "zero", "logit_diff", method="atp", metric_kwargs={"answers": answers})
    assert est.better == "lower"
    assert est.top(1).score.iloc[0] == pytest.approx(np.nanmean(est.values, 0).min())
