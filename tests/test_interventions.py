"""Each intervention kind against a hand computation on tiny models; hooks never outlive a call."""

import pytest
import torch

from headscope.errors import InputError
from headscope.interventions import Intervention, ScaleOutput, StreamingWindow, UniformAttention, ZeroAblation, apply
from headscope.testing import induction_tokens, planted_model, tiny_model

TOKENS = torch.tensor([[1, 5, 9, 12, 5, 9, 12, 7, 3, 30, 31, 5]])


def _run_capturing(model, interventions, names, decode_start=None):
    got = {}
    hooks = [(n, lambda t, hook, n=n: got.__setitem__(n, t.detach().clone())) for n in names]
    with torch.no_grad(), apply(model, interventions, decode_start=decode_start), model.hooks(fwd_hooks=hooks):
        logits = model(TOKENS)
    return logits, got


def hook_count(model):
    return sum(len(hp._forward_hooks) for hp in set(model.hook_dict.values()))


def test_uniform_attention_gives_running_mean_of_v():
    model = tiny_model(seed=1)  # 4 heads, 2 KV heads: head 3 reads KV head 1
    _, got = _run_capturing(
        model,
        [UniformAttention(heads=[(1, 3)])],
        ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z"],
    )
    T = TOKENS.shape[1]
    expected_rows = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    assert torch.allclose(got["blocks.1.attn.hook_pattern"][0, 3], expected_rows, atol=1e-6)
    v = got["blocks.1.attn.hook_v"][0, :, 1]  # [pos, d_head] of KV head 1
    running_mean = torch.cumsum(v, 0) / torch.arange(1, T + 1)[:, None]
    assert torch.allclose(got["blocks.1.attn.hook_z"][0, :, 3], running_mean, atol=1e-5)
    # the other heads of the same KV group are untouched
    _, clean = _run_capturing(model, [], ["blocks.1.attn.hook_pattern"])
    assert torch.equal(got["blocks.1.attn.hook_pattern"][0, 2], clean["blocks.1.attn.hook_pattern"][0, 2])


def test_decode_positions_leave_earlier_queries_alone():
    model = tiny_model(seed=1)
    _, clean = _run_capturing(model, [], ["blocks.0.attn.hook_pattern"])
    _, got = _run_capturing(
        model, [UniformAttention(heads=[(0, 1)], positions="decode")], ["blocks.0.attn.hook_pattern"], decode_start=8
    )
    a, b = got["blocks.0.attn.hook_pattern"][0, 1], clean["blocks.0.attn.hook_pattern"][0, 1]
    assert torch.equal(a[:8], b[:8])
    assert torch.allclose(a[8:], torch.tril(torch.ones(12, 12))[8:] / torch.arange(9, 13)[:, None], atol=1e-6)


def test_zero_and_scale_act_on_the_head_output_only():
    model = tiny_model(seed=2)
    _, clean = _run_capturing(model, [], ["blocks.1.attn.hook_z"])
    _, zero = _run_capturing(model, [ZeroAblation(heads=[(1, 0)])], ["blocks.1.attn.hook_z"])
    _, scaled = _run_capturing(model, [ScaleOutput(heads=[(1, 2)], alpha=2.0)], ["blocks.1.attn.hook_z"])
    z0, z, zs = clean["blocks.1.attn.hook_z"], zero["blocks.1.attn.hook_z"], scaled["blocks.1.attn.hook_z"]
    assert torch.count_nonzero(z[0, :, 0]) == 0 and torch.equal(z[0, :, 1:], z0[0, :, 1:])
    assert torch.allclose(zs[0, :, 2], 2 * z0[0, :, 2]) and torch.equal(zs[0, :, :2], z0[0, :, :2])


def test_streaming_window_masks_outside_sink_and_recent():
    model = tiny_model(seed=3)
    _, got = _run_capturing(model, [StreamingWindow(heads=[(0, 2)], sink=2, recent=3)], ["blocks.0.attn.hook_pattern"])
    pattern = got["blocks.0.attn.hook_pattern"][0, 2]  # [q, k]
    q, k = torch.arange(12)[:, None], torch.arange(12)[None, :]
    visible = ((k < 2) | (q - k < 3)) & (k <= q)
    assert pattern[~visible].abs().max() == 0
    assert torch.allclose(pattern.sum(-1), torch.ones(12), atol=1e-6)  # rows stay stochastic


def test_masking_the_planted_copy_head_breaks_copying():
    model, truth = planted_model()
    tokens = induction_tokens(model, seq_len=20, batch=2, seed=0)
    targets = tokens[:, 22:]  # query i in the second repeat (i >= 21) predicts token i + 1
    with torch.no_grad():
        clean = model(tokens)[:, 21:-1].argmax(-1)
        with apply(model, [UniformAttention(heads=[truth.induction])]):
            masked = model(tokens)[:, 21:-1].argmax(-1)
    assert (clean == targets).float().mean() == 1.0
    assert (masked == targets).float().mean() < 0.2


def test_noop_spec_leaves_logits_identical_and_no_hooks_survive_errors():
    model = tiny_model(seed=4)
    with torch.no_grad():
        before = model(TOKENS)
    with torch.no_grad(), apply(model, [ScaleOutput(heads=[(0, 0)], alpha=1.0)]):
        assert torch.equal(model(TOKENS), before)
    with pytest.raises(RuntimeError, match="inside"):
        with apply(model, [UniformAttention(heads=[(0, 1)]), StreamingWindow(heads=[(1, 0)])]):
            assert hook_count(model) == 2
            raise RuntimeError("failure inside an intervened run")
    assert hook_count(model) == 0
    with torch.no_grad():
        assert torch.equal(model(TOKENS), before)


def test_specs_round_trip_and_reject_bad_fields():
    spec = StreamingWindow(heads=[(1, 2), (0, 3)], positions=(4, None), sink=2, recent=8)
    assert Intervention.from_dict(spec.to_dict()) == spec
    with pytest.raises(InputError, match="unknown intervention kind 'melt'"):
        Intervention.from_dict({"kind": "melt", "heads": [[0, 0]]})
    with pytest.raises(InputError, match=r"no field\(s\) \['alpah'\]"):
        Intervention.from_dict({"kind": "scale", "heads": [[0, 0]], "alpah": 2})
    with pytest.raises(InputError, match="head 9 is out of range"):
        with apply(tiny_model(), [ZeroAblation(heads=[(0, 9)])]):
            pass
