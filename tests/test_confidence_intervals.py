"""Bootstrap confidence intervals over prompts (`.ci()`): coverage in a seeded simulation, the
vectorised bootstrap against scipy and a plain loop, NaN handling, determinism, the analyzers' own
resampling, a real scan of the planted model, and the atlas's hover."""

import numpy as np
import pytest
import scipy.stats

from headscope.analyzers.head_importance import HeadImportance
from headscope.analyzers.retrieval import RetrievalHeads
from headscope.analyzers.sahara import Sahara
from headscope.atlas import Atlas
from headscope.atlas.data import Column, ColumnCI, StepResult
from headscope.atlas.page import write_page
from headscope.confidence import HeadScoresCI
from headscope.errors import InputError
from headscope.interventions.scan import scan
from headscope.interventions.screen import ScreenedScan
from headscope.results import HeadScores
from headscope.testing import induction_tokens, planted_model

N_PROMPTS, N_DATASETS = 40, 2000


def _datasets(dist: str, seed: int):
    """N_DATASETS independent data sets of N_PROMPTS per-prompt scores, one per 'head', and the
    population mean they were drawn around."""
    rng = np.random.default_rng(seed)
    if dist == "normal":
        values, mean = rng.normal(1.0, 2.0, size=(N_PROMPTS, N_DATASETS)), 1.0
    else:
        sigma = {"lognormal": 0.5, "lognormal_heavy": 1.0}[dist]
        values, mean = rng.lognormal(0.0, sigma, size=(N_PROMPTS, N_DATASETS)), float(np.exp(sigma**2 / 2))
    return HeadScores(values.reshape(N_PROMPTS, 40, N_DATASETS // 40), name=dist), mean


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_95_percent_intervals_cover_the_population_mean_at_the_stated_rate(dist, method):
    """2000 data sets of 40 prompts each (normal, and lognormal with skewness 1.75): the 95% interval
    holds the population mean in 91-98% of them (binomial s.d. of the rate: 0.005; the bootstrap's
    own shortfall at n=40 is ~1.5 points, docs/confidence-intervals.md), and always the estimate."""
    scores, mean = _datasets(dist, seed=0)
    ci = scores.ci(level=0.95, n_boot=1000, seed=0, method=method)
    coverage = float(((ci.low <= mean) & (mean <= ci.high)).mean())
    assert 0.91 <= coverage <= 0.98, coverage
    assert np.allclose(ci.estimate, scores.values.mean(0), rtol=0, atol=1e-12)
    assert ((ci.low <= ci.estimate) & (ci.estimate <= ci.high)).all()  # the full-data value, always


def test_bca_covers_more_often_than_percentile_on_heavily_skewed_scores():
    """Lognormal(sigma=1) scores (skewness 6): the percentile interval falls short (~0.89 at n=40);
    BCa's skew correction recovers part of the gap."""
    scores, mean = _datasets("lognormal_heavy", seed=0)
    cover = {
        m: float(((c.low <= mean) & (mean <= c.high)).mean())
        for m in ("percentile", "bca")
        for c in [scores.ci(seed=0, method=m)]
    }
    assert cover["bca"] > cover["percentile"] + 0.005, cover


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_the_vectorised_bootstrap_equals_scipy(method):
    """Same resamples (rng.integers(0, P, (n_boot, P)) from the seed), so scipy.stats.bootstrap of the
    mean of each head, one head at a time, gives the same interval."""
    rng = np.random.default_rng(5)
    values = rng.gamma(0.7, 2.0, size=(23, 2, 3))
    ci = HeadScores(values, name="x").ci(level=0.9, n_boot=500, seed=11, method=method)
    for layer in range(2):
        for head in range(3):
            ref = scipy.stats.bootstrap(
                (values[:, layer, head],),
                np.mean,
                n_resamples=500,
                confidence_level=0.9,
                method={"percentile": "percentile", "bca": "BCa"}[method],
                rng=np.random.default_rng(11),
                vectorized=True,
            ).confidence_interval
            assert ci.low[layer, head] == pytest.approx(ref.low, rel=1e-10)
            assert ci.high[layer, head] == pytest.approx(ref.high, rel=1e-10)


def test_nan_prompts_are_left_out_per_resample_and_unmeasured_heads_stay_nan():
    """A plain loop over resamples (nanmean of the drawn rows, resamples with no measured row dropped)."""
    rng = np.random.default_rng(2)
    values = rng.normal(size=(12, 2, 2))
    values[:, 0, 0] = np.nan  # never measured
    values[:9, 1, 1] = np.nan  # measured on 3 prompts only
    values[[2, 5], 0, 1] = np.nan  # two prompts missing
    ci = HeadScores(values, name="x").ci(n_boot=300, seed=4)
    idx = np.random.default_rng(4).integers(0, 12, size=(300, 12))
    for layer, head in [(0, 1), (1, 0), (1, 1)]:
        boots = []
        for rows in idx:
            drawn = values[rows, layer, head]
            if np.isfinite(drawn).any():
                boots.append(np.nanmean(drawn))
        assert ci.low[layer, head] == pytest.approx(np.percentile(boots, 2.5), rel=1e-12)
        assert ci.high[layer, head] == pytest.approx(np.percentile(boots, 97.5), rel=1e-12)
        assert ci.estimate[layer, head] == pytest.approx(np.nanmean(values[:, layer, head]), rel=1e-12)
    assert np.isnan([ci.low[0, 0], ci.high[0, 0], ci.estimate[0, 0]]).all()
    assert "not measured" in ci.describe(0, 0)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_intervals_hold_the_full_data_value_even_without_spread(method):
    values = np.random.default_rng(0).normal(size=(30, 3, 4))
    values[:, 0, 0] = 0.1  # every prompt the same: no rounding may push a bound past it
    values[:, 0, 1] = [0.3] * 29 + [5.0]  # one outlier
    values[:, 0, 2] = np.arange(30) % 2  # a 0/1 score
    ci = HeadScores(values, name="x").ci(method=method)
    assert ((ci.low <= ci.estimate) & (ci.estimate <= ci.high)).all()
    assert ci.width[0, 0] < 1e-15 and ci.estimate[0, 0] == pytest.approx(0.1, abs=1e-15)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    scores = HeadScores(np.random.default_rng(1).normal(size=(20, 2, 3)), name="x")
    a, b, c = scores.ci(seed=3), scores.ci(seed=3), scores.ci(seed=4)
    assert np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
    assert not np.array_equal(a.low, c.low)


def test_reduced_or_single_prompt_scores_and_bad_arguments_are_refused():
    with pytest.raises(InputError, match="already reduced over prompts.*per-prompt scores"):
        HeadScores(np.zeros((2, 3)), name="x").ci()
    with pytest.raises(InputError, match="one row on the prompt axis.*'all 8 prompts'"):
        HeadScores(np.zeros((1, 2, 3)), name="x", prompts=["all 8 prompts"]).ci()
    scores = HeadScores(np.zeros((5, 2, 3)), name="x")
    for kw, msg in [
        ({"level": 95}, "strictly between 0 and 1"),
        ({"n_boot": 10}, "n_boot=10"),
        ({"method": "bc"}, "percentile, bca"),
        ({"seed": 1.5}, "seed=1.5"),
    ]:
        with pytest.raises(InputError, match=msg):
            scores.ci(**kw)
    bad = np.zeros((5, 2, 3))
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="infinite values"):
        HeadScores(bad, name="x").ci()


def test_result_table_top_and_plot():
    values = np.random.default_rng(0).normal(size=(20, 2, 3)) + np.arange(6).reshape(2, 3)
    ci = HeadScores(values, name="x", better="lower").ci(n_boot=200)
    df = ci.to_dataframe()
    assert list(df.columns) == ["label", "layer", "head", "estimate", "low", "high"] and len(df) == 6
    assert df.attrs["n_prompts"] == 20 and df.attrs["level"] == 0.95 and df.attrs["n_boot"] == 200
    assert ci.top(2)["label"].tolist() == ["L0H0", "L0H1"]  # better="lower": the smallest first
    fig = ci.plot(k=3)
    assert list(fig.data[0].x) == ["L0H0", "L0H1", "L0H2"]
    assert np.allclose(fig.data[0].error_y.array, ci.top(3)["high"] - ci.top(3)["estimate"])


@pytest.fixture(scope="module")
def planted():
    return planted_model()


def test_ci_of_a_planted_scan_is_narrow_on_the_planted_heads(planted):
    """Zero-ablating the planted previous-token or induction head raises the loss on repeated tokens by
    an amount that depends on the prompt's length; every other head writes nothing (W_O = 0)."""
    model, truth = planted
    prompts = [induction_tokens(model, seq_len=n, seed=n)[0].tolist() for n in range(6, 26)]  # 20 lengths
    s = scan(model, prompts, "zero", "loss")
    ci = s.ci(seed=0)
    planted_heads = [truth.previous_token, truth.induction]
    assert ((ci.low <= ci.estimate) & (ci.estimate <= ci.high)).all()
    assert np.allclose(ci.estimate, s.mean_over_prompts().values, atol=1e-12)
    others = np.ones(ci.estimate.shape, bool)
    for head in planted_heads:
        others[head] = False
        assert 0 < ci.width[head] < 0.25 * ci.estimate[head]  # narrow, but the prompts do differ
        assert ci.low[head] > 0.5
    assert np.abs(ci.high[others]).max() < 1e-5 and np.abs(ci.low[others]).max() < 1e-5


def test_analyzer_ci_uses_the_per_prompt_scores_or_its_own_resampling(planted):
    model, _ = planted
    prompts = [induction_tokens(model, seq_len=n, seed=n)[0].tolist() for n in range(6, 16)]
    imp = HeadImportance().fit(model, prompts)
    ci = imp.ci(n_boot=300, seed=1)
    assert np.allclose(ci.estimate, imp.scores_.values[0], atol=1e-12) and ci.n_prompts == 10
    # plain loop: a resample's importance is its prompts' summed |grad| over their summed tokens, normalised
    idx = np.random.default_rng(1).integers(0, 10, size=(300, 10))
    boots = []
    for rows in idx:
        raw = imp.prompt_grads_[rows].sum(0) / imp.prompt_tokens_[rows].sum()
        boots.append(raw / np.sqrt((raw**2).sum(-1, keepdims=True)))
    assert np.allclose(ci.low, np.percentile(boots, 2.5, axis=0), atol=1e-12)
    assert np.allclose(ci.high, np.percentile(boots, 97.5, axis=0), atol=1e-12)

    sahara = Sahara()
    sahara.scores_ = HeadScores(np.zeros((1, 2, 4)), name="x")  # the refusal needs no model
    with pytest.raises(InputError, match="Sahara.ci: .*one subspace angle of the whole data set"):
        sahara.ci()


def test_retrieval_ci_resamples_all_samples_and_averages_the_retrieved_ones():
    """The score is a mean over the retrieved samples only: a resample draws from every sample, and its
    score is the mean over the retrieved ones it drew (a plain loop)."""
    r = RetrievalHeads()
    rng = np.random.default_rng(0)
    values = rng.random((12, 2, 3))
    success = np.array([True, False, True, True, False, True, True, False, True, True, True, False])
    r.sample_scores_ = HeadScores(values, name="copy_paste_score")
    r.scores_ = HeadScores(values[success].mean(0)[None], name="retrieval_score")
    import pandas as pd

    r.per_sample_ = pd.DataFrame({"success": success})
    ci = r.ci(n_boot=400, seed=2)
    assert np.allclose(ci.estimate, r.scores_.values[0]) and ci.unit == "samples" and ci.n_prompts == 12
    boots = [
        values[rows][success[rows]].mean(0)
        for rows in np.random.default_rng(2).integers(0, 12, size=(400, 12))
        if success[rows].any()
    ]
    assert np.allclose(ci.low, np.percentile(boots, 2.5, axis=0), atol=1e-12)
    assert np.allclose(ci.high, np.percentile(boots, 97.5, axis=0), atol=1e-12)
    r.per_sample_ = pd.DataFrame({"success": np.zeros(12, bool)})
    with pytest.raises(InputError, match="retrieved no sample"):
        r.ci()


def test_screened_scan_ci_is_the_combined_values_ci():
    rng = np.random.default_rng(0)
    est = HeadScores(rng.normal(size=(8, 2, 3)), name="zero:loss", params={"method": "atp"})
    exact = np.full((8, 2, 3), np.nan)
    exact[:, 0, 1] = rng.normal(size=8) + 3
    verified = np.zeros((2, 3), bool)
    verified[0, 1] = True
    screened = ScreenedScan(est, HeadScores(exact, name="zero:loss"), verified, top_k=1)
    ci = screened.ci(n_boot=200)
    ref = HeadScores(np.where(verified[None], exact, est.values), name="x").ci(n_boot=200)
    assert np.array_equal(ci.low, ref.low) and np.array_equal(ci.high, ref.high)


def _atlas_with_interval():
    values = np.array([[0.5, np.nan], [0.25, 0.75]])
    ci = ColumnCI(low=values - 0.1, high=values + 0.2, level=0.95, n=40)
    step = StepResult(
        "demo",
        "demo",
        "what",
        "capture.md",
        columns=[
            Column("score", values, "a score", True, "demo", ci),
            Column("plain", values, "no interval", True, "demo"),
        ],
    )
    return Atlas("m", 2, 2, 2, "quick", [step])


def test_atlas_hover_shows_the_interval_and_the_saved_step_keeps_it(tmp_path):
    atlas = _atlas_with_interval()
    atlas.save(tmp_path)
    again = Atlas.load(tmp_path)
    col = again.columns()["score"]
    assert col.ci is not None and np.allclose(col.ci.low, atlas.columns()["score"].ci.low, equal_nan=True)
    assert again.columns()["plain"].ci is None
    page = write_page(again, tmp_path, static=False).read_text()
    # the cell's hover: the head, the column and value, then the interval on the last line
    assert "0.75 [0.65, 0.95] 95% CI over 40 prompts'>0.75</td>" in page
    assert "no interval (not measured)'" in page  # the NaN head
    assert page.count("CI over") == 3  # only the column with intervals, only its measured heads
    heads = again.to_dataframe(ci=True)
    assert heads.loc[3, "score_ci_high"] == pytest.approx(0.95) and np.isnan(heads["plain_ci_low"]).all()


def test_atlas_interval_over_few_prompts_says_it_covers_less():
    values = np.array([[0.5]])
    col = Column("s", values, "", True, "x", ColumnCI(values - 0.1, values + 0.1, 0.95, 2))
    from headscope.atlas.page import _hover

    lines = _hover("L0H0", "s", 0.5, "0.5", col, (0, 0))
    assert lines[-1].endswith("over 2 prompts (under 10 prompts: covers less than 95%)")


def test_atlas_columns_carry_the_bootstrap_of_their_per_prompt_scores(planted, tmp_path):
    """A planted atlas: the classic columns' intervals are HeadScores.ci(n_boot=200, seed=0) of the same
    per-prompt statistics, and head importance's its own resampling (saved, so --from keeps them)."""
    from headscope.analyzers.classic import PARAMS, TEXT_STATS
    from headscope.atlas import build_atlas
    from headscope.capture import capture
    from headscope.capture.reducers import DEFAULT_REDUCERS
    from headscope.inputs.prompts import load_prompts
    from headscope.inputs.tokens import encode_to_fit
    from headscope.models import model_info

    model, _ = planted
    build_atlas(model, tmp_path, static=False, progress=False)
    atlas = Atlas.load(tmp_path)
    cols = atlas.columns()
    info = model_info(model)
    prompts = [encode_to_fit(model, t, info) for t in load_prompts(None)[: PARAMS["quick"]["n_text_prompts"]]]
    reducer = {c.name: c for c in DEFAULT_REDUCERS}[TEXT_STATS[0]]()
    ref = capture(model, prompts, [reducer], progress=False)[reducer.name].ci(n_boot=200, seed=0)
    got = cols[TEXT_STATS[0]].ci
    assert got.n == len(prompts) and np.allclose(got.low, ref.low) and np.allclose(got.high, ref.high)
    assert cols["importance"].ci is not None and cols["importance"].ci.n == 8
    page = (tmp_path / "report.html").read_text()
    assert f"95% CI over {len(prompts)} prompts" in page
    assert isinstance(HeadScores(np.zeros((3, 1, 1)), name="z").ci(), HeadScoresCI)


def test_the_analyzers_that_refuse_ci_are_the_dataset_level_ones():
    """Every other registered analyzer's ci() is checked by check_analyzer (tests/test_analyzer_contract.py)."""
    from headscope.analyzers.base import REGISTRY

    assert {name for name in REGISTRY if REGISTRY[name].ci_refusal} == {"sahara", "vit-heads"}


def test_the_coverage_table_in_the_docs_is_the_measured_one():
    """docs/confidence-intervals.md quotes docs/ci_coverage.json (written by analyses/ci_coverage.py)."""
    import json
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    measured = json.loads((docs / "ci_coverage.json").read_text())["coverage"]
    table = {}
    for line in (docs / "confidence-intervals.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[1] in ("percentile", "bca"):
            table[(cells[0].split(" (")[0], cells[1])] = [float(c) for c in cells[2:]]
    names = {
        "normal": "normal",
        "lognormal sigma=0.5": "lognormal σ = 0.5",
        "lognormal sigma=1": "lognormal σ = 1",
        "bernoulli(0.2)": "0/1 scores, p = 0.2",
    }
    assert len(table) == 8
    for row in measured:
        quoted = table[(names[row["distribution"]], row["method"])][[5, 10, 20, 40, 100].index(row["n_prompts"])]
        assert quoted == pytest.approx(row["coverage"], abs=0.00051), row


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_chunked_evaluation_gives_the_same_interval(method, monkeypatch):
    """Large grids are evaluated a chunk of resamples (and of jackknife rows) at a time: same numbers."""
    import headscope.confidence as conf

    scores = HeadScores(np.random.default_rng(3).gamma(0.5, size=(17, 3, 5)), name="x")
    whole = scores.ci(method=method, n_boot=300)
    monkeypatch.setattr(conf, "_CHUNK", 40)  # 2-3 rows per chunk
    chunked = scores.ci(method=method, n_boot=300)
    assert np.allclose(whole.low, chunked.low, rtol=1e-13) and np.allclose(whole.high, chunked.high, rtol=1e-13)
