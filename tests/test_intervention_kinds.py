"""Mean/resample ablation and ACT/VAR redistribution against hand computations on a tiny model."""

import json

import pytest
import torch
import yaml

from headscope.errors import InputError
from headscope.interventions import (
    ACTCalibration,
    Intervention,
    MeanAblation,
    ResampleAblation,
    VARRedistribution,
    apply,
)
from headscope.testing import tiny_model

PROMPTS = [[3, 9, 4, 17, 8, 22, 5, 30, 11, 6], [7, 2, 40, 13, 9, 9, 21, 4, 3, 12], [15, 15, 2, 8, 33, 6, 1, 19, 27, 5]]


def _acts(model, tokens, names, interventions=()):
    got = {}
    hooks = [(n, lambda t, hook, n=n: got.__setitem__(n, t.detach().clone())) for n in names]
    with torch.no_grad(), apply(model, interventions), model.hooks(fwd_hooks=hooks):
        logits = model(torch.tensor(tokens))
    return logits, got


def test_mean_ablation_substitutes_the_reference_mean():
    model = tiny_model(seed=5)
    reference = PROMPTS[:2]
    # independent reference: every reference token's z for head (1, 2), averaged by hand
    zs = [_acts(model, [p], ["blocks.1.attn.hook_z"])[1]["blocks.1.attn.hook_z"][0, :, 2] for p in reference]
    mean = torch.cat(zs).mean(0)
    _, got = _acts(model, [PROMPTS[2]], ["blocks.1.attn.hook_z"], [MeanAblation(heads=[(1, 2)], reference=reference)])
    _, clean = _acts(model, [PROMPTS[2]], ["blocks.1.attn.hook_z"])
    z, z0 = got["blocks.1.attn.hook_z"][0], clean["blocks.1.attn.hook_z"][0]
    assert torch.allclose(z[:, 2], mean.expand_as(z[:, 2]), atol=1e-6)
    assert torch.equal(z[:, [0, 1, 3]], z0[:, [0, 1, 3]])


def test_resample_takes_the_source_prompts_outputs_position_by_position():
    model = tiny_model(seed=6)
    sources = PROMPTS[1:]
    src_z = [_acts(model, [p], ["blocks.0.attn.hook_z"])[1]["blocks.0.attn.hook_z"][0, :, 3] for p in sources]
    spec = ResampleAblation(heads=[(0, 3)], source=sources, shift=1)
    _, got = _acts(model, [PROMPTS[0], PROMPTS[0]], ["blocks.0.attn.hook_z"], [spec])
    z = got["blocks.0.attn.hook_z"]
    assert torch.allclose(z[0, :, 3], src_z[1], atol=1e-6)  # row 0 -> source (0 + 1) % 2 = 1
    assert torch.allclose(z[1, :, 3], src_z[0], atol=1e-6)  # row 1 -> source 0
    with pytest.raises(InputError, match="at least as long"):
        _acts(model, [PROMPTS[0] + [4, 4]], ["blocks.0.attn.hook_z"], [spec])


def test_mean_and_resample_need_their_prompts_outside_scan():
    with pytest.raises(InputError, match=r"reference=\[prompts\]"):
        _acts(tiny_model(), [PROMPTS[0]], [], [MeanAblation(heads=[(0, 0)])])


def _act_by_hand(A, beta, threshold):
    """ACT on one [N, N] map with plain loops (the official code's rule)."""
    N = A.shape[0]
    s = [sum(float(A[i, j]) for i in range(j, N)) / (N - j) for j in range(N)]
    sinks = [j for j in range(N) if s[j] > threshold][1:]
    out = A.clone()
    for i in range(N):
        freed = sum((1 - beta) * float(A[i, j]) for j in sinks)
        rest = sum(float(A[i, k]) for k in range(N) if k not in sinks)
        if rest == 0:
            continue
        for j in range(N):
            out[i, j] = beta * A[i, j] if j in sinks else A[i, j] + freed * A[i, j] / rest
    out[0, 0] = 1.0
    return out, sinks


def test_act_calibration_matches_a_hand_computation_and_keeps_rows_stochastic():
    model = tiny_model(seed=7)
    name = "blocks.1.attn.hook_pattern"
    _, clean = _acts(model, [PROMPTS[0]], [name])
    A = clean[name][0, 1]
    expected, sinks = _act_by_hand(A, 0.4, 0.1)
    assert sinks, "the tiny model should have a hidden sink for this test to mean anything"
    _, got = _acts(
        model, [PROMPTS[0]], [name, "blocks.1.attn.hook_v", "blocks.1.attn.hook_z"], [ACTCalibration(heads=[(1, 1)])]
    )
    P = got[name][0, 1]
    assert torch.allclose(P, expected, atol=1e-6)
    assert torch.allclose(P.sum(-1), torch.ones(len(P)), atol=1e-6)
    lost = (P < A - 1e-7).any(0).nonzero().flatten().tolist()
    assert lost == sinks  # only the hidden-sink columns lose mass
    # the head output is the edited pattern applied to V (head 1 reads KV head 0)
    assert torch.allclose(got["blocks.1.attn.hook_z"][0, :, 1], P @ got["blocks.1.attn.hook_v"][0, :, 0], atol=1e-5)


def test_var_moves_sink_mass_to_the_target_span_only():
    model = tiny_model(seed=8)
    name = "blocks.0.attn.hook_pattern"
    _, clean = _acts(model, [PROMPTS[1]], [name])
    A = clean[name][0, 2]
    spec = VARRedistribution(heads=[(0, 2)], sinks=[0, 4], targets=(3, 8), keep_fraction=0.6)
    _, got = _acts(model, [PROMPTS[1]], [name], [spec])
    P = got[name][0, 2]
    assert torch.allclose(P.sum(-1), torch.ones(10), atol=1e-6)
    others = [1, 2, 8, 9]
    assert torch.equal(P[:, others], A[:, others])
    receivers = [3, 5, 6, 7]
    for i in range(10):  # hand computation row by row
        freed = 0.4 * float(A[i, 0] + A[i, 4])
        mass = float(A[i, receivers].sum())
        if mass > 0:
            assert torch.allclose(P[i, [0, 4]], 0.6 * A[i, [0, 4]], atol=1e-7)
            assert torch.allclose(P[i, receivers], A[i, receivers] * (1 + freed / mass), atol=1e-6)
        else:  # queries before the span: nothing can receive the mass, the row is left alone
            assert i < 3 and torch.equal(P[i], A[i])


def test_var_row_selection_by_target_mass():
    model = tiny_model(seed=8)
    name = "blocks.0.attn.hook_pattern"
    _, clean = _acts(model, [PROMPTS[1]], [name])
    A = clean[name][0, 2]
    spec = VARRedistribution(heads=[(0, 2)], sinks=[0], targets=(3, 8), min_target_mass=0.5)
    _, got = _acts(model, [PROMPTS[1]], [name], [spec])
    edited = (got[name][0, 2] != A).any(-1)
    assert torch.equal(edited, A[:, 3:8].sum(-1) >= 0.5)


def test_new_kinds_round_trip_through_json_and_yaml():
    specs = [
        MeanAblation(heads=[(0, 1)], reference=["a b c", [1, 2, 3]]),
        ResampleAblation(heads=[(1, 0)], shift=2),
        ACTCalibration(heads=[(1, 2), (0, 0)], beta=0.3),
        VARRedistribution(heads=[(0, 1)], sinks=[4, 0], targets=(2, None)),
    ]
    for spec in specs:
        assert Intervention.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert Intervention.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
    with pytest.raises(InputError, match="beta"):
        ACTCalibration(heads=[(0, 0)], beta=1.5)
    with pytest.raises(InputError, match="sink"):
        VARRedistribution(heads=[(0, 0)], sinks=[])
