"""Attribution patching (scan(method="atp" | "atp*" | "+exact")): the first-order term of the exact scan,
checked against finite differences, planted heads, bf16, the screen-then-verify flow, specs and errors.
(Every family of the architecture matrix: the conformance column `atp`.)"""

import numpy as np
import pytest
import torch

from headscope.errors import InputError
from headscope.experiments import run_experiment
from headscope.interventions import ScreenedScan, ZeroAblation, scan
from headscope.interventions.screen import screen_order
from headscope.results import HeadScores
from headscope.testing import planted_model, tiny_model
from headscope.testing.architectures import random_prompt, tiny_arch_model


def _mix_metric(d_vocab: int, seed: int = 0):
    """A scan metric nonlinear in the logits: change of a fixed mix of the last log-probabilities."""
    mix = torch.randn(d_vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def metric(base, variant, batch):
        def f(logits):
            last = logits[torch.arange(len(logits)), batch.lengths - 1]
            return torch.log_softmax(last, -1) @ mix.to(last.dtype)

        return f(variant) - f(base)

    return metric


def test_atp_equals_finite_differences_in_float64():
    """GPT-2's forward stays in float64 throughout: a tiny step's exact change over the step is AtP's
    directional derivative to 1e-6 relative (every head, a padded batch)."""
    model = tiny_arch_model("gpt2", dtype=torch.float64)
    prompts = [random_prompt("gpt2", 12, seed=1).tolist(), random_prompt("gpt2", 9, seed=2).tolist()]
    metric = _mix_metric(model.cfg.d_vocab)
    h = 1e-6
    for kind, param in (("scale", "alpha"), ("uniform_attention", "epsilon")):
        up, down = (scan(model, prompts, kind, metric, **{param: 1 + s}).values for s in (h, -h))
        exact = (up - down) / (2 * h)
        for est in ("atp", "atp*"):
            got = scan(model, prompts, kind, metric, method=est, **{param: 1 + h}).values / h
            assert np.abs(got - exact).max() <= 1e-6 * np.abs(exact).max(), (kind, est)


def test_atp_error_is_second_order_in_the_step():
    """For a step h (every head scaled by 1 + h) AtP's error against the exact change is O(h^2), i.e. O(h)
    relative: it equals the exact effect as the change becomes linear (float32 model, logit difference)."""
    model = tiny_model(n_layers=3)
    prompts = [[1, 5, 6, 7, 8, 5, 6, 7, 8], [1, 9, 10, 11, 9, 10, 11, 12, 13]]
    kw = {"answers": [(3, 4), (5, 6)]}
    errors = []
    for h in (1e-2, 1e-3):
        exact = scan(model, prompts, "scale", "logit_diff", alpha=1 + h, metric_kwargs=kw).values
        got = scan(model, prompts, "scale", "logit_diff", method="atp", alpha=1 + h, metric_kwargs=kw).values
        errors.append(np.abs(got - exact).max() / np.abs(exact).max())
        assert errors[-1] <= 3 * h, (h, errors[-1])
    assert errors[1] < errors[0] / 5  # shrinks with the step


def test_planted_circuit_ranks_first():
    """On repeated random segments the planted previous-token head (0, 1) and induction head (1, 3) are
    AtP's (and AtP*'s) top two for zero and mean ablation with the loss, as in the exact scan."""
    model, truth = planted_model()
    g = torch.Generator().manual_seed(0)
    segs = [torch.randint(5, 40, (6,), generator=g).tolist() for _ in range(4)]
    prompts = [[1] + s + s for s in segs]
    circuit = {truth.previous_token, truth.induction}
    assert set(screen_order(scan(model, prompts, "zero", "loss"))[:2]) == circuit
    for method in ("atp", "atp*"):
        for kind in ("zero", "mean"):
            assert set(screen_order(scan(model, prompts, kind, "loss", method=method))[:2]) == circuit, (method, kind)


def test_atp_runs_with_gradients_globally_off():
    """TransformerLens tutorials begin with torch.set_grad_enabled(False): AtP enables gradients itself
    (built-in metrics and a custom differentiable one) and gives the same numbers, leaving the mode off."""
    model, _ = planted_model()
    prompts = [[1, 5, 6, 7, 5, 6, 7], [1, 8, 9, 10, 8, 9, 10]]
    metric = _mix_metric(model.cfg.d_vocab)
    expected = {m: scan(model, prompts, "zero", m, method="atp*").values for m in ("loss", "kl_last")}
    expected["mix"] = scan(model, prompts, "zero", metric, method="atp").values
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        got = {m: scan(model, prompts, "zero", m, method="atp*").values for m in ("loss", "kl_last")}
        got["mix"] = scan(model, prompts, "zero", metric, method="atp").values
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(previous)
    for m in expected:
        assert np.isfinite(got[m]).all() and np.abs(got[m]).max() > 0, m
        np.testing.assert_allclose(got[m], expected[m], rtol=1e-6, atol=1e-9, err_msg=m)


def test_kl_last_uses_the_fisher_form():
    """kl_last has a zero gradient at the clean point; its second-order estimate tracks a small step's
    exact KL (O(step) relative) and is non-negative."""
    model = tiny_model(n_layers=2)
    prompts = [[1, 5, 6, 7, 8, 5, 6, 7, 8], [1, 9, 10, 11, 9, 10, 11, 12, 13]]
    exact = scan(model, prompts, "scale", "kl_last", alpha=1.01).values
    got = scan(model, prompts, "scale", "kl_last", method="atp", alpha=1.01, kl_tokens=model.cfg.d_vocab).values
    assert (got >= 0).all()
    assert np.abs(got - exact).max() <= 0.05 * np.abs(exact).max()
    coarse = scan(model, prompts, "scale", "kl_last", method="atp", alpha=1.01, kl_tokens=4).values
    assert (coarse <= got + 1e-9).all()  # coarse-graining can only lose divergence


def test_bf16_estimates_accumulate_in_float32():
    fp32 = tiny_arch_model("llama")
    bf16 = tiny_arch_model("llama", dtype=torch.bfloat16)
    prompts = [random_prompt("llama", 12, seed=1).tolist(), random_prompt("llama", 12, seed=2).tolist()]
    kw = {"answers": [(3, 4), (5, 6)]}
    a = scan(fp32, prompts, "zero", "logit_diff", method="atp", metric_kwargs=kw).values
    b = scan(bf16, prompts, "zero", "logit_diff", method="atp", metric_kwargs=kw).values
    assert np.isfinite(b).all() and b.dtype == np.float64
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


def test_streaming_window_needs_the_qk_fix_and_graddrop_is_a_magnitude():
    model = tiny_arch_model("llama")
    prompts = [random_prompt("llama", 14, seed=1).tolist()]
    with pytest.raises(InputError, match="masks keys.*method='atp\\*'"):
        scan(model, prompts, "streaming_window", "loss", method="atp", sink=1, recent=3)
    star = scan(model, prompts, "streaming_window", "loss", method="atp*", sink=1, recent=3)
    assert np.isfinite(star.values).all()
    drop = scan(model, prompts, "zero", "loss", method="atp", graddrop=True)
    assert (drop.values >= 0).all() and drop.params["graddrop"] is True


def test_screen_then_verify(tmp_path):
    model = tiny_model(n_layers=3)
    prompts = [[1, 5, 6, 7, 8, 5, 6, 7, 8], [1, 9, 10, 11, 9, 10, 11, 12, 13]]
    res = scan(model, prompts, "zero", "loss", method="atp*+exact", top_k=4)
    assert isinstance(res, ScreenedScan) and res.verified.sum() == 4
    chosen = screen_order(res.estimate)[:4]
    assert {tuple(x) for x in np.argwhere(res.verified)} == set(chosen)
    exact = scan(model, prompts, "zero", "loss", visit=chosen)
    np.testing.assert_allclose(res.exact.values, exact.values, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(res.values), np.isnan(res.estimate.values))
    df = res.to_dataframe()
    assert (
        df["verified"].sum() == 4 * len(prompts) and (df["value"][df["verified"]] == df["exact"][df["verified"]]).all()
    )
    assert res.plot().data
    res.save(tmp_path / "s.json")
    res.save(tmp_path / "s.parquet")
    assert isinstance(res.combined, HeadScores) and len(res.combined.params["verified"]) == 4


def test_errors_name_the_fix():
    model = tiny_model()
    prompts = [[1, 5, 6, 7, 5, 6, 7]]
    with pytest.raises(InputError, match="method="):
        scan(model, prompts, "zero", "loss", method="atp**")
    with pytest.raises(InputError, match="differentiable"):
        scan(
            model,
            prompts,
            "zero",
            lambda b, v, batch: torch.as_tensor((v.argmax(-1) == 3).float().sum(-1)),
            method="atp",
        )
    with pytest.raises(InputError, match="base_interventions"):
        scan(model, prompts, "zero", "loss", method="atp", base_interventions=[ZeroAblation(heads=[(0, 0)])])


SPEC = """
name: atp
model: testing:planted
figures: [html]
data:
  rep: {generator: repeated_tokens, seq_len: 8, n_prompts: 3, seed: 0}
units:
  - name: exact
    scan: zero
    metric: loss
    data: rep
  - name: screened
    scan: {kind: zero, method: atp*+exact, top_k: 3}
    metric: loss
    data: rep
"""


def test_spec_scan_method(tmp_path):
    spec = tmp_path / "atp.yaml"
    spec.write_text(SPEC)
    run_experiment(spec, tmp_path / "run")
    exact = HeadScores.load(tmp_path / "run" / "results" / "exact.parquet")
    screened = HeadScores.load(tmp_path / "run" / "results" / "screened.parquet")
    verified = screened.params["verified"]
    assert len(verified) == 3 and screened.params["method"] == "atp*+exact"
    for l, h in verified:  # the verified heads carry the exact scan's values
        np.testing.assert_allclose(screened.values[:, l, h], exact.values[:, l, h], rtol=1e-6)
    bad = SPEC.replace("top_k: 3", "top_k: 3, graddrop: maybe")
    spec.write_text(bad)
    with pytest.raises(InputError, match="graddrop"):
        run_experiment(spec, tmp_path / "run2")
