"""Blocked attention (long contexts, headscope.capture.blocked): the same statistics, interventions and
tokens as the eager path on every family whose HF attention goes through transformers'
AttentionInterface, padded batches included; a clear error where it cannot run; nothing left switched."""

import math
import weakref

import numpy as np
import pytest
import torch

from headscope.analyzers._group_pattern import GroupMeanPattern, GroupTokenStats, ResponseDistance, fai, waad
from headscope.analyzers.retrieval import CopyPasteReducer
from headscope.analyzers.sink_reducers import HiddenSinks, TokenImportance
from headscope.analyzers.visual_sink import ImageCentricRows
from headscope.capture import blocked as blk
from headscope.capture import capture
from headscope.capture.reducers import SinkLogitMass, default_reducers
from headscope.errors import InputError
from headscope.generation import greedy_generate
from headscope.interventions import (
    ACTCalibration,
    MeanAblation,
    StreamingWindow,
    UniformAttention,
    ZeroAblation,
    apply,
    forward_with,
)
from headscope.models.compat import pattern_edits_take_effect
from headscope.models.info import model_info
from headscope.testing import planted_model, tiny_model
from headscope.testing.architectures import ARCHITECTURES, random_prompt, supported, tiny_arch_model

# Every family runs blocked: through transformers' AttentionInterface, or (GPT-Neo, Falcon, BLOOM, MPT,
# whose HF attention computes attention inline, or DeepSeek's MLA, which caches a latent) through headscope's
# forwards in headscope.families; on the families headscope routes at boot (BERT, GPT-Neo, GPT-J, OPT,
# Llama 4: headscope.capture.routed) the blocked session takes over from the route and hands it back.
BLOCKED = list(ARCHITECTURES)


def _prompts(name, lengths=(41, 30, 36)):
    return [random_prompt(name, n, seed).flatten().tolist()[:n] for seed, n in enumerate(lengths)]


def _reducers(model, prompts):
    info = model_info(model)
    rng = np.random.default_rng(0)
    groups = {g: rng.random((info.n_layers, info.n_heads)) < 0.5 for g in ("local", "global")}
    for m in groups.values():
        m[[not info.has_heads(l) for l in range(info.n_layers)]] = False  # a hybrid's layers without heads
        m[info.attention_layers[0], 0] = True
    lens = [len(p) for p in prompts]
    late = TokenImportance(3, 64)
    late.name = "sink_importance_k3"
    return default_reducers() + [
        SinkLogitMass(),
        TokenImportance(0, 16),
        late,
        ResponseDistance([n // 2 for n in lens]),
        HiddenSinks(0.05),
        CopyPasteReducer([n - 6 for n in lens], [(2, 12)] * len(prompts)),
        GroupTokenStats(groups, [n // 2 for n in lens], 3, (1, math.inf)),
    ]


def _flat(result):
    """Every number of a capture result, by name (HeadScores values, result tables, per-prompt arrays)."""
    out = {}
    for name, value in result.scores.items():
        if isinstance(value, dict):  # GroupTokenStats
            for key, arrays in value.items():
                out[f"{name}.{key}"] = np.concatenate(arrays)
        elif hasattr(value, "counts"):  # HiddenSinkResult
            out[name] = value.counts.values
            out[name + ".score"] = value.table["score"]
        else:
            out[name] = value.values
    return out


def _assert_same(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, equal_nan=True, err_msg=key)


@pytest.mark.parametrize("name", BLOCKED)
def test_blocked_capture_equals_eager(name):
    model = tiny_arch_model(name)
    prompts = _prompts(name)
    eager = capture(model, prompts, _reducers(model, prompts), attention="eager", batch_size=3)
    blocked = capture(model, prompts, _reducers(model, prompts), attention="blocked", block_size=7, batch_size=3)
    _assert_same(_flat(eager), _flat(blocked))
    attending = list(model_info(model).attention_layers)  # a hybrid's other layers are NaN by rule
    assert np.isfinite(_flat(blocked)["previous_token_score"][:, attending]).all()  # real numbers, not NaN == NaN


def test_group_token_stats_equal_the_maps_reference():
    """WAAD/FAI folded from blocks == waad()/fai() of GroupMeanPattern's [T, T] maps (eager)."""
    model = tiny_arch_model("qwen2")
    prompts = _prompts("qwen2")
    info = model_info(model)
    groups = {
        "local": np.zeros((info.n_layers, info.n_heads), bool),
        "global": np.zeros((info.n_layers, info.n_heads), bool),
    }
    groups["local"][0, [0, 2]] = groups["local"][1, 3] = True
    groups["global"][1, [0, 1]] = True
    starts = [10, 5, 20]
    maps = capture(model, prompts, [GroupMeanPattern(groups)], attention="eager")["group_mean_pattern"]
    stats = capture(model, prompts, [GroupTokenStats(groups, starts, 4, (2, 9))], attention="blocked", block_size=6)[
        "group_token_stats"
    ]
    for p, start in enumerate(starts):
        np.testing.assert_allclose(stats["waad"][p], waad(maps["local"][p], 4), atol=1e-5)
        np.testing.assert_allclose(stats["fai"][p], fai(maps["global"][p], start, (2, 9)), atol=1e-5, equal_nan=True)


def test_image_centric_rows_blocked_equal_eager():
    model = tiny_model(n_layers=4, vocab_size=64)  # image-centric rows start at layer 2
    prompts = _prompts("llama")
    make = lambda: ImageCentricRows(
        [(3, 12), (5, 9), (2, 20)], sink_dims=[0, 5], tau=1.5, max_sink_share=0.5, min_image_attention=0.05
    )
    eager = capture(model, prompts, [make()], attention="eager")["image_centric"]
    blocked = capture(model, prompts, [make()], attention="blocked", block_size=5)["image_centric"]
    for key in eager.stats:
        np.testing.assert_allclose(eager.stats[key], blocked.stats[key], atol=1e-5, equal_nan=True, err_msg=key)
    assert np.isfinite(blocked.stats["fraction"][:, 2:]).any()
    assert [s[2].tolist() for s in eager.sinks] == [s[2].tolist() for s in blocked.sinks]


def test_planted_heads_found_on_blocked_attention():
    model, truth = planted_model()
    tokens = [[1] + [5 + (i % 23) for i in range(70)]]
    res = capture(model, tokens, attention="blocked", block_size=16)
    ind = res["induction_score"].values[0]
    prev = res["previous_token_score"].values[0]
    assert np.unravel_index(np.nanargmax(ind), ind.shape) == tuple(truth.induction)
    assert np.unravel_index(np.nanargmax(prev), prev.shape) == tuple(truth.previous_token)
    eager = capture(model, tokens, attention="eager")
    _assert_same(_flat(eager), _flat(res))


def test_smollm2_blocked_equals_eager(smol):
    text = "The quick brown fox jumps over the lazy dog. " * 30
    reducers = lambda: default_reducers() + [HiddenSinks()]
    eager = capture(smol, [text, text[:500]], reducers(), attention="eager")
    blocked = capture(smol, [text, text[:500]], reducers(), attention="blocked", block_size=64)
    _assert_same(_flat(eager), _flat(blocked), atol=2e-5)


def test_row_mask_equals_hf_full_mask():
    """RowMask's blocks, stacked, are HF's own full sdpa mask (sliding window and padding)."""
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

    padding = torch.ones(2, 19, dtype=torch.bool)
    padding[1, 13:] = False
    kw = dict(
        batch_size=2,
        q_length=19,
        kv_length=19,
        mask_function=sliding_window_causal_mask_function(5),
        attention_mask=padding,
        local_size=5,
        device="cpu",
    )
    full = sdpa_mask(**kw, allow_is_causal_skip=False)
    rows = blk.RowMask(**kw)
    assert not rows.plain
    assert torch.equal(torch.cat([rows.rows(s, min(19, s + 4)) for s in range(0, 19, 4)], dim=2), full)
    plain = blk.RowMask(
        batch_size=1, q_length=19, kv_length=19, attention_mask=torch.ones(1, 19, dtype=torch.bool), device="cpu"
    )
    assert plain.plain


def _forget_adapter(monkeypatch, hf_class: str) -> None:
    """As if no family module registered a blocked forward for `hf_class`."""
    real = blk.blocked_forward_for
    monkeypatch.setattr(blk, "blocked_forward_for", lambda name: None if name == hf_class else real(name))


def test_support_probe_passes_every_family_and_names_the_reason_otherwise(monkeypatch):
    ok = {name: blk.blocked_support(tiny_arch_model(name)) for name in supported()}
    assert {n: why for n, (good, why) in ok.items() if not good} == {}
    # A family with neither the interface nor an adapter (here: GPT-Neo with its adapter taken away).
    model = tiny_arch_model("gpt-neo")
    _forget_adapter(monkeypatch, "GPTNeoSelfAttention")
    monkeypatch.setattr(blk, "_SUPPORT", weakref.WeakKeyDictionary())  # probe afresh, forget afterwards
    good, why = blk.blocked_support(model)
    assert not good and "GPTNeoSelfAttention" in why and "AttentionInterface" in why


def test_auto_uses_blocked_past_the_budget(monkeypatch):
    model = tiny_arch_model("mistral")
    prompts = _prompts("mistral")
    used = []
    real = blk.blocked_attention

    def spy(*args, **kwargs):
        used.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr("headscope.capture.engine.blocked_attention", spy)
    eager = capture(model, prompts)  # tiny: within the budget
    assert not used
    auto = capture(model, prompts, max_pattern_mb=0.001)
    assert used
    _assert_same(_flat(eager), _flat(auto))


def test_past_the_budget_errors_say_why_and_how_much():
    model = tiny_arch_model("llama")
    prompts = _prompts("llama")
    with pytest.raises(
        InputError, match=r"keep_patterns=True keeps every full pattern \(0 MB|keep_patterns=True keeps"
    ):
        capture(model, prompts, keep_patterns=True, max_pattern_mb=1e-4)
    info = model_info(model)
    groups = {"g": np.ones((info.n_layers, info.n_heads), bool)}
    with pytest.raises(InputError, match="GroupMeanPattern.*needs the whole pattern.*attention='eager'"):
        capture(model, prompts, [GroupMeanPattern(groups)], max_pattern_mb=1e-4)
    capture(model, prompts, [GroupMeanPattern(groups)], attention="eager", max_pattern_mb=1e-4)  # forced: runs
    with pytest.raises(InputError, match="attention='sdpa'"):
        capture(model, prompts, attention="sdpa")


def test_unsupported_family_is_a_clear_error_past_the_budget(monkeypatch):
    model = tiny_arch_model("gpt-neo")
    prompts = _prompts("gpt-neo")
    _forget_adapter(monkeypatch, "GPTNeoSelfAttention")  # as a family without an adapter
    monkeypatch.setattr(blk, "_SUPPORT", weakref.WeakKeyDictionary())
    with pytest.raises(InputError, match="GPTNeoSelfAttention.*AttentionInterface.*attention='eager'"):
        capture(model, prompts, max_pattern_mb=1e-4)
    capture(model, prompts)  # within the budget: eager, as before


INTERVENTIONS = [
    [UniformAttention(heads=[(0, 1), (1, 2)], positions=(10, 33))],
    [StreamingWindow(heads=[(1, 0), (0, 3)], sink=2, recent=5)],
    [ZeroAblation(heads=[(1, 1)]), StreamingWindow(heads=[(1, 1)], sink=1, recent=3, positions="decode")],
    [MeanAblation(heads=[(1, 3)], reference=[list(range(3, 40))])],
]


@pytest.mark.parametrize(
    "name",
    [
        "gpt2",
        "llama-mqa",
        "mistral",
        "qwen3",
        "gemma2",
        "gemma3",
        "olmo2",
        "phi3",
        "falcon",
        "falcon-alibi",
        "falcon-new",
        "bloom",
        "mpt",
        "deepseek-v3",
        "gpt-neo",
        "gpt-j",
        "opt",
        "bert",
        "olmo3",
        "exaone4",
        "gpt-oss",
    ],
)
def test_interventions_on_blocked_attention_equal_eager(name):
    model = tiny_arch_model(name)
    tokens = torch.tensor([p[:36] + [1] * (36 - len(p[:36])) for p in _prompts(name)])
    mask = torch.ones_like(tokens)
    mask[1, 30:] = 0
    real = mask.bool()
    clean = forward_with(model, tokens, [], attention="eager", attention_mask=mask)
    for specs in INTERVENTIONS:
        eager = forward_with(model, tokens, specs, attention="eager", attention_mask=mask, decode_start=20)
        blocked = forward_with(model, tokens, specs, attention="blocked", attention_mask=mask, decode_start=20)
        scale = float(eager[real].abs().max())
        assert float((eager - blocked)[real].abs().max()) <= 1e-5 * scale, specs
        assert float((eager - clean)[real].abs().max()) > 1e-3 * scale, specs  # the edit did something


def test_redistributions_stay_eager():
    model = tiny_arch_model("llama")
    with pytest.raises(InputError, match="redistribute the attention pattern"):
        with apply(model, [ACTCalibration(heads=[(1, 0)])], attention="blocked"):
            pass


# DeepSeek: HF's MLA caches the latent, the bridge decompressed K/V; the family's blocked forward keeps the latter.
@pytest.mark.parametrize(
    "name",
    [
        "llama",
        "gemma2",
        "gpt-neox",
        "gpt-neo",
        "gpt-j",
        "opt",
        "falcon",
        "falcon-alibi",
        "falcon-new",
        "bloom",
        "mpt",
        "llama4-text",
        "gpt-oss",
        "deepseek-v3",
        "deepseek-v2",
    ],
)
def test_greedy_generation_with_a_blocked_prefill(name):
    model = tiny_arch_model(name)
    ids = _prompts(name)[0][:30]
    assert pattern_edits_take_effect(model)  # through the bridge, or headscope's route (GPT-Neo, GPT-J, OPT)
    specs = [UniformAttention(heads=[(1, 1)], positions="decode")]
    for interventions in ([], specs):
        eager = greedy_generate(model, ids, 6, interventions=interventions, attention="eager")
        assert greedy_generate(model, ids, 6, interventions=interventions, attention="blocked") == eager


def test_everything_is_restored_also_on_error():
    model = tiny_arch_model("mistral")
    tokens = torch.tensor([_prompts("mistral")[0]])
    before = model(tokens)
    impl = model.original_model.config._attn_implementation
    with pytest.raises(ZeroDivisionError):
        with blk.blocked_attention(model):
            raise ZeroDivisionError
    assert model.original_model.config._attn_implementation == impl == "eager"
    assert all("forward" not in b.attn.__dict__ for b in model.blocks)
    assert not blk._SESSIONS and not blk._LAYER_OF
    assert torch.equal(model(tokens), before)


def test_hooks_must_understand_blocks():
    model = tiny_arch_model("llama")
    with pytest.raises(InputError, match="block_aware"):
        with blk.blocked_attention(model, [("blocks.0.attn.hook_pattern", lambda t, hook: None)]):
            pass
    with pytest.raises(InputError, match="q/k/v"):
        with blk.blocked_attention(model, [("blocks.0.attn.hook_q", lambda t, hook: None)]):
            pass
    with pytest.raises(InputError, match="block_size"):
        with blk.blocked_attention(model, block_size=0):
            pass


@pytest.mark.parametrize("name", ["qwen2", "gemma3"])
def test_residual_and_head_output_reducers_alongside_blocks(name):
    """Reducers of hook_z (served by the kernel) and of the residual stream (the bridge's hooks) give the
    eager numbers next to pattern readers fed by blocks."""
    from headscope.analyzers._z_reducers import ZAtPositions
    from headscope.analyzers.sink_reducers import MassiveActivations, PhiTopK

    model = tiny_arch_model(name)
    prompts = _prompts(name)
    make = lambda: (
        [
            ZAtPositions([[0, 5, 20]] * 3),
            MassiveActivations(min_abs=0.5, min_ratio=2.0),
            PhiTopK(top_k=4),
            HiddenSinks(0.05),
        ]
        + default_reducers()
    )
    eager = capture(model, prompts, make(), attention="eager")
    blocked = capture(model, prompts, make(), attention="blocked", block_size=6)
    for a, b in zip(eager["z_sq_norm"].z, blocked["z_sq_norm"].z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    e, b = eager["massive_activations"], blocked["massive_activations"]
    # float32 residuals after two layers of differently ordered attention sums: a few ulps apart
    np.testing.assert_allclose(e.median, b.median, rtol=1e-5)
    assert len(e.entries["value"]) > 0 and np.array_equal(e.entries["position"], b.entries["position"])
    np.testing.assert_allclose(eager["phi"].top_values, blocked["phi"].top_values, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(eager["hidden_sink_count"].counts.values, blocked["hidden_sink_count"].counts.values)
