"""One scan pipeline: a `ScanRequest` validated once, `estimate()` then `verify()` as `scan(method="atp+exact")`
runs them, and the experiments executor persisting between the same two calls (one definition of
"verified", rebuilt identically by a resumed run)."""

import json

import numpy as np
import pytest
import torch

from headscope.errors import InputError
from headscope.experiments import run_experiment
from headscope.experiments.data import materialize
from headscope.experiments.executors import load_screened
from headscope.experiments.spec import load_spec
from headscope.interventions import ScanRequest, ScreenedScan, ZeroAblation, estimate, scan, verify
from headscope.interventions.screen import screen_order
from headscope.models import model_info
from headscope.testing import planted_model, tiny_model

SPEC = """
name: screened
model: testing:planted
figures: []
data:
  rep: {generator: repeated_tokens, seq_len: 8, n_prompts: 3, seed: 0}
units:
  - name: screened
    scan: {kind: mean, method: atp+exact, top_k: 3}
    metric: loss
    data: rep
"""


def _same(a: ScreenedScan, b: ScreenedScan) -> None:
    """Identical tables (NaN where the other is NaN), verified masks and top_k."""
    assert np.array_equal(a.estimate.values, b.estimate.values, equal_nan=True)
    assert np.array_equal(a.exact.values, b.exact.values, equal_nan=True)
    assert np.array_equal(a.verified, b.verified) and a.top_k == b.top_k


def _direct(tmp_path) -> tuple[ScreenedScan, list]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    model, _ = planted_model()
    prompts = materialize(load_spec(spec).data["rep"], model, model_info(model)).token_lists  # what the unit scans
    return scan(model, prompts, "mean", "loss", method="atp+exact", top_k=3), prompts


def test_executor_screened_scan_equals_scan(tmp_path):
    direct, _ = _direct(tmp_path)
    run_experiment(tmp_path / "spec.yaml", tmp_path / "run", progress=False)
    got = load_screened(tmp_path / "run" / "units" / "screened")
    _same(got, direct)
    assert got.verified.sum() == 3 and {tuple(h) for h in np.argwhere(got.verified)} == set(
        screen_order(direct.estimate)[:3]
    )
    # The unit's combined table is that ScreenedScan's: exact where verified, the estimate elsewhere.
    res = json.loads((tmp_path / "run" / "results" / "screened.json").read_text())
    assert res["provenance"]["params"]["verified"] == direct.verified_heads
    assert res["provenance"]["params"]["top_k"] == direct.top_k
    assert np.array_equal(np.array(res["values"], dtype=float), direct.values, equal_nan=True)


def test_resumed_executor_rebuilds_the_same_screened_scan(tmp_path):
    """A run killed after the estimate item: the rerun verifies from the saved estimate, and gives what
    one uninterrupted run gives; a second rerun reuses both items and rebuilds the same ScreenedScan."""
    direct, _ = _direct(tmp_path)
    out = tmp_path / "run"
    run_experiment(tmp_path / "spec.yaml", out, progress=False)
    unit = out / "units" / "screened"
    (unit / "exact.parquet").unlink()  # as if killed between the two items (the marker is written last)
    (unit / "screen.json").unlink()
    (out / "summary.json").unlink()
    est_mtime = (unit / "estimate.parquet").stat().st_mtime_ns
    run_experiment(tmp_path / "spec.yaml", out, progress=False)
    assert (unit / "estimate.parquet").stat().st_mtime_ns == est_mtime  # the estimate was not recomputed
    _same(load_screened(unit), direct)
    run_experiment(tmp_path / "spec.yaml", out, progress=False)
    _same(load_screened(unit), direct)


def test_verify_after_estimate_equals_the_screened_scan():
    model = tiny_model(n_layers=3)
    prompts = [[1, 5, 6, 7, 8, 5, 6, 7, 8], [1, 9, 10, 11, 9, 10, 11, 12, 13]]
    request = ScanRequest.build("zero", "loss", method="atp*+exact", top_k=4)
    est = estimate(model, prompts, request)
    _same(verify(model, prompts, request, est), scan(model, prompts, "zero", "loss", method="atp*+exact", top_k=4))
    _same(verify(model, prompts, request, est), scan(model, prompts, request))
    # verify()'s own top_k wins over the request's; the verified heads are the screen's first ones.
    five = verify(model, prompts, request, est, top_k=5)
    assert five.top_k == 5 and {tuple(h) for h in np.argwhere(five.verified)} == set(screen_order(est)[:5])
    # More heads asked than were screened: top_k is the number verified (the 12 heads of this model).
    every = verify(model, prompts, request, est, top_k=100)
    assert every.top_k == 12 == every.verified.sum()
    # The plain methods go through the same request.
    plain = ScanRequest.build("zero", "loss", method="atp*")
    assert np.array_equal(scan(model, prompts, plain).values, est.values, equal_nan=True)


def test_estimate_a_head_subset_and_a_nan_prompt_keep_one_verified_mask():
    """Verified means "the exact scan ran on it" (verify()'s mask), even where a verified head's exact value
    is NaN on some prompt: a metric that is NaN on prompt 0 must not un-verify the head."""
    model = tiny_model(n_layers=2)
    prompts = [[1, 5, 6, 7, 5, 6, 7], [1, 9, 10, 11, 9, 10, 11]]

    def nan_on_first(base, variant, batch):  # the squared logit change, NaN on the first prompt
        rows, last = torch.arange(len(variant)), batch.lengths - 1
        d = (variant[rows, last] - base[rows, last]).pow(2).sum(-1)
        return torch.where(torch.as_tensor(batch.index) == 0, torch.full_like(d, float("nan")), d)

    request = ScanRequest.build("zero", nan_on_first, method="atp+exact", top_k=2, visit=[(1, 0), (1, 1), (0, 2)])
    est = estimate(model, prompts, ScanRequest.build("zero", "loss", method="atp", visit=[(1, 0), (1, 1), (0, 2)]))
    got = verify(model, prompts, request, est)
    assert got.top_k == 2 == got.verified.sum()
    assert np.isnan(got.exact.values[0][got.verified]).all()  # the old executor rule would verify none
    assert np.isfinite(got.exact.values[1][got.verified]).all()


@pytest.mark.parametrize(
    "keywords, words",
    [
        ({"method": "atp**"}, r"method='atp\*\*': use one of exact, atp, atp\*, atp\+exact, atp\*\+exact"),
        ({"replay": "maybe"}, r"replay must be 'auto', 'off', 'force'"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_rows": 2.5}, "max_rows must be a positive integer"),
        ({"kl_tokens": True}, "kl_tokens must be a positive integer"),
        ({"top_k": 3}, r"top_k .* only for the '\+exact' methods"),
        ({"method": "atp+exact", "top_k": 0}, "top_k must be a positive integer"),
        ({"graddrop": True}, "graddrop is an attribution-patching option: use method='atp'"),
        ({"graddrop": "yes", "method": "atp"}, "graddrop must be True or False"),
        ({"decode_start": -1}, r"decode_start must be a token position \(an integer >= 0\)"),
        ({"visit": []}, "visit is empty"),
        ({"visit": [(1, 2, 3)]}, r"visit must be \(layer, head\) pairs"),
        ({"layers": ["a"]}, "layers must be layer indices"),
        ({"metric_kwargs": [1]}, "metric_kwargs must be a dict"),
        ({"heads": [(0, 0)]}, r"heads= is not a scan option.*visit=.*base_interventions="),
        ({"alpah": 3}, r"no parameter\(s\) \['alpah'\]"),
        ({"base_interventions": ["zero"]}, "is not an Intervention"),
        (
            {"method": "atp", "base_interventions": [ZeroAblation(heads=[(0, 0)])]},
            "base_interventions need method='exact'",
        ),
    ],
)
def test_request_validation_names_the_problem_and_the_fix(keywords, words):
    with pytest.raises(InputError, match=words):
        ScanRequest.build("zero", "loss", **keywords)


def test_request_is_validated_once_and_frozen():
    with pytest.raises(InputError, match="unknown metric 'accuracy'"):
        ScanRequest.build("zero", "accuracy")  # before any model is loaded
    with pytest.raises(InputError, match="unknown intervention kind 'melt'"):
        ScanRequest.build("melt")
    request = ScanRequest.build("scale", "loss", alpha=2.0, visit=[(1, 2), (0, 1), (1, 2)], layers=1)
    assert request.visit == ((0, 1), (1, 2)) and request.layers == (1,) and request.params == {"alpha": 2.0}
    assert request.template.kind == "scale" and request.template.alpha == 2.0
    with pytest.raises(AttributeError):
        request.method = "atp"  # type: ignore[misc]
    with pytest.raises(InputError, match="top_k"):
        request.replace(top_k=3)  # a changed copy is validated again
    model = tiny_model()
    with pytest.raises(InputError, match="no attribution estimate"):
        estimate(model, [[1, 2, 3]], request)
    with pytest.raises(InputError, match="verify\\(\\) checks an attribution estimate"):
        verify(model, [[1, 2, 3]], request, scan(model, [[1, 2, 3]], "zero", "loss", method="atp"))
    with pytest.raises(InputError, match="holds every option"):
        scan(model, [[1, 2, 3]], request, batch_size=2)
