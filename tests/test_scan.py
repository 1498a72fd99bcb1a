"""The batched all-heads scan equals the one-forward-per-head loop, and finds planted heads."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headscope.errors import InputError
from headscope.interventions import KINDS, apply, scan
from headscope.testing import induction_tokens, planted_model, tiny_model


def _kl_last(base, variant, lengths):
    rows = torch.arange(len(base))
    p = F.log_softmax(base[rows, lengths - 1].double(), -1)
    q = F.log_softmax(variant[rows, lengths - 1].double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def naive_scan(model, token_lists, kind, heads, **params):
    """One forward per head and per prompt (no padding, no batching): the plain way."""
    out = np.full((len(token_lists), model.cfg.n_layers, model.cfg.n_heads), np.nan)
    with torch.no_grad():
        for i, ids in enumerate(token_lists):
            tokens = torch.tensor([ids])
            base = model(tokens)
            for layer, head in heads:
                with apply(model, [KINDS[kind](heads=[(layer, head)], **params)]):
                    variant = model(tokens)
                out[i, layer, head] = float(_kl_last(base, variant, torch.tensor([len(ids)]))[0])
    return out


RAGGED = [[5, 9, 14, 3, 22, 9, 14, 3, 7], [11, 4, 4, 30, 2, 19], [8, 27, 6, 13, 40, 6, 13, 21, 17, 2, 33]]


@pytest.mark.parametrize(
    "kind,params",
    [
        ("uniform_attention", {"epsilon": 1e-5}),
        ("zero", {}),
        ("scale", {"alpha": 2.0}),
        ("streaming_window", {"sink": 1, "recent": 3}),
        ("act", {}),
    ],
)
def test_scan_equals_the_naive_loop_on_a_tiny_model_with_ragged_prompts(kind, params):
    model = tiny_model(seed=11)
    heads = [(l, h) for l in range(2) for h in range(4)]
    fast = scan(model, RAGGED, kind, "kl_last", batch_size=2, max_rows=4, **params)  # several chunks per layer
    slow = naive_scan(model, RAGGED, kind, heads, **params)
    assert fast.values.shape == (3, 2, 4)
    assert np.abs(slow).max() > 1e-3  # the interventions do something
    np.testing.assert_allclose(fast.values, slow, atol=1e-4)


def test_mean_and_resample_scans_default_to_the_scanned_inputs():
    model = tiny_model(seed=12)
    prompts = [p[:6] for p in RAGGED]
    heads = [(l, h) for l in range(2) for h in range(4)]
    np.testing.assert_allclose(
        scan(model, prompts, "mean", "kl_last").values,
        naive_scan(model, prompts, "mean", heads, reference=prompts),
        atol=1e-4,
    )
    # resample: prompt i takes prompt i + 1's head outputs (mod 3)
    fast = scan(model, prompts, "resample", "kl_last", batch_size=2)
    for i in range(3):
        src = prompts[(i + 1) % 3]
        row = naive_scan(model, [prompts[i]], "resample", heads, source=[src])
        np.testing.assert_allclose(fast.values[i], row[0], atol=1e-4)


def test_scan_subset_loss_and_logit_diff_metrics():
    model = tiny_model(seed=13)
    s = scan(model, RAGGED, "zero", "loss", visit=[(1, 2), (0, 0)])
    assert np.isfinite(s.values[:, 1, 2]).all() and np.isnan(s.values[:, 1, 0]).all()
    with torch.no_grad():  # independent check of the loss change for one prompt and head
        ids = torch.tensor([RAGGED[1]])
        base = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
        with apply(model, [KINDS["zero"](heads=[(1, 2)])]):
            abl = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
    assert abs(s.values[1, 1, 2] - float(abl - base)) < 1e-4
    ld = scan(model, RAGGED, "zero", "logit_diff", metric_kwargs={"answers": [(3, 4), (5, 6), (7, 8)]})
    with torch.no_grad():
        ids = torch.tensor([RAGGED[2]])
        b = model(ids)[0, -1]
        with apply(model, [KINDS["zero"](heads=[(0, 3)])]):
            v = model(ids)[0, -1]
    assert abs(ld.values[2, 0, 3] - float((v[7] - v[8]) - (b[7] - b[8]))) < 1e-4


def test_scan_finds_the_planted_copy_head():
    model, truth = planted_model()
    tokens = induction_tokens(model, seq_len=12, batch=2, seed=1)
    s = scan(model, tokens, "uniform_attention", "loss")
    mean = s.mean_over_prompts()
    # the planted circuit is exactly the previous-token head feeding the induction head: uniform
    # attention on either breaks copying; every other head is inert (W_O = 0)
    hit = {(int(l), int(h)) for l, h in zip(*np.nonzero(mean.values > 0.1))}
    assert hit == {truth.previous_token, truth.induction}
    assert np.abs(mean.values).max(initial=0, where=mean.values < 0.1) < 1e-5


def test_scan_rejects_bad_kinds_params_and_metrics_before_compute():
    model = tiny_model()
    with pytest.raises(InputError, match="unknown intervention kind 'melt'"):
        scan(model, RAGGED, "melt")
    with pytest.raises(InputError, match=r"no parameter\(s\) \['alpah'\]"):
        scan(model, RAGGED, "scale", alpah=3)
    with pytest.raises(InputError, match="unknown metric"):
        scan(model, RAGGED, "zero", "accuracy")
    with pytest.raises(InputError, match="one pair per prompt"):
        scan(model, RAGGED, "zero", "logit_diff")
    with pytest.raises(InputError, match="out of range"):
        scan(model, RAGGED, "zero", visit=[(5, 0)])
    # A span past every prompt (the longest has 11 tokens) would report 0 for every head: refused, for
    # the exact scan and for attribution patching; a span reaching into the longest prompt runs.
    for method in ("exact", "atp"):
        with pytest.raises(InputError, match=r"positions \[11, 20\] start past the end of every prompt"):
            scan(model, RAGGED, "zero", positions=[11, 20], method=method)
    assert np.isfinite(scan(model, RAGGED, "zero", positions=[10, 20], layers=[0]).values[:, 0]).all()


@pytest.mark.real_model
def test_scan_equals_the_naive_loop_on_smollm2(smol):
    ids = smol.tokenizer("The capital of France is Paris. The capital of Italy is", add_special_tokens=False)[
        "input_ids"
    ]
    heads = [(l, h) for l in (0, 14, 29) for h in range(9)]  # bottom, middle and top layers (27 of 270 heads)
    fast = scan(smol, [ids], "uniform_attention", "kl_last", visit=heads, epsilon=1e-5)
    slow = naive_scan(smol, [ids], "uniform_attention", heads, epsilon=1e-5)
    got = fast.values[:, [0, 14, 29]]
    np.testing.assert_allclose(got, slow[:, [0, 14, 29]], atol=1e-4)
    assert np.nanmax(slow) > 1e-3


def test_a_failing_scan_leaves_no_hooks_and_the_model_unchanged():
    model = tiny_model(seed=14)
    tokens = torch.tensor([RAGGED[0]])
    with torch.no_grad():
        before = model(tokens)

    def broken_metric(base, variant, batch):
        raise RuntimeError("metric failed mid-scan")

    with pytest.raises(RuntimeError, match="mid-scan"):
        scan(model, [RAGGED[0]], "mean", broken_metric)
    assert sum(len(hp._forward_hooks) for hp in set(model.hook_dict.values())) == 0
    assert all(not b._forward_pre_hooks for b in model.blocks) and not model.ln_final._forward_hooks
    with torch.no_grad():
        assert torch.equal(model(tokens), before)


def test_a_consumer_error_detaches_the_base_interventions_at_once():
    from headscope.interventions import UniformAttention
    from headscope.interventions.scan import variant_outputs

    model = tiny_model(seed=15)
    outputs = variant_outputs(
        model,
        [RAGGED[0]],
        UniformAttention(heads=[(1, 0), (1, 1)]),
        base_interventions=[UniformAttention(heads=[(0, 2)])],
    )
    with pytest.raises(RuntimeError, match="consumer"):
        import contextlib

        with contextlib.closing(outputs):
            for _ in outputs:
                assert sum(len(hp._forward_hooks) for hp in set(model.hook_dict.values())) == 1  # the base spec
                raise RuntimeError("consumer failed")
    assert sum(len(hp._forward_hooks) for hp in set(model.hook_dict.values())) == 0
