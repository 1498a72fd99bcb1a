"""headscope's attention route (headscope.capture.routed) on the families whose TransformerLens bridge
lets Hugging Face compute attention and reports patterns afterwards (BERT, GPT-Neo, GPT-J, OPT): the
route is installed and checked at boot, attention-level edits take effect with the semantics they have
elsewhere (masked keys stay masked, rows sum to one, KV-cached decoding equals recomputation), blocked
attention takes over and hands the route back, and a family that cannot be routed is left as it was
and refuses attention-level kinds with the reason."""

import warnings

import pytest
import torch

from headscope.capture import blocked as blk
from headscope.capture.routed import LIVE_IMPLEMENTATION
from headscope.errors import InputError
from headscope.generation import greedy_generate
from headscope.interventions import StreamingWindow, UniformAttention, apply, forward_with
from headscope.models import loading
from headscope.models.compat import pattern_edit_route
from headscope.testing.architectures import BERT_PAD, plain_hf, random_prompt, tiny_arch_model

ROUTED = ["bert", "gpt-neo", "gpt-j", "opt"]


def _padded(name, lengths=(22, 15)):
    """A right-padded batch of random prompts and its attention mask."""
    prompts = [random_prompt(name, n, seed=s).tolist() for s, n in enumerate(lengths)]
    width = max(lengths)
    tokens = torch.tensor([p + [BERT_PAD] * (width - len(p)) for p in prompts])
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    return prompts, tokens, mask


def _first_key_only(pattern, hook):
    pattern = pattern.clone()
    pattern[:, 0] = 0.0
    pattern[:, 0, :, 0] = 1.0
    return pattern


def _edit_moves_logits(model, ids) -> bool:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TransformerLens warns when it discards the edit
        clean = model(ids)
        edited = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", _first_key_only)])
    return float((edited - clean).abs().max()) > 1e-2


@pytest.mark.parametrize("name", ROUTED)
def test_routed_at_boot_and_equal_to_plain_hf(name):
    model = tiny_arch_model(name)
    assert pattern_edit_route(model) == "headscope"
    assert model.original_model.config._attn_implementation == LIVE_IMPLEMENTATION
    _, tokens, mask = _padded(name)
    with torch.no_grad():
        got = model(tokens, attention_mask=mask)
        ref = plain_hf(name)(tokens, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], rtol=0, atol=1e-4)
    assert pattern_edit_route(tiny_arch_model("gpt2")) == "bridge"


@pytest.mark.parametrize("name", ROUTED)
def test_uniform_attention_on_a_padded_batch_sees_only_real_keys(name):
    """epsilon = 0: the head outputs the mean of V over the keys it may see (padding never among them),
    and each prompt's real positions get the logits that prompt gets alone."""
    model = tiny_arch_model(name)
    prompts, tokens, mask = _padded(name)
    layer, head = 1, 2
    spec = [UniformAttention(heads=[(layer, head)])]
    got = {}
    hooks = [
        (f"blocks.{layer}.attn.hook_{site}", lambda t, hook, site=site: got.__setitem__(site, t.detach().clone()))
        for site in ("v", "z")
    ]
    with torch.no_grad(), apply(model, spec), model.hooks(fwd_hooks=hooks):
        batch = model(tokens, attention_mask=mask)
    encoder = name == "bert"
    for row, ids in enumerate(prompts):
        T = len(ids)
        q, k = torch.arange(T)[:, None], torch.arange(T)[None]
        visible = torch.ones(T, T, dtype=torch.bool) if encoder else k <= q
        v = got["v"][row, :T, head]
        ref = (visible.float() / visible.sum(-1, keepdim=True)) @ v
        torch.testing.assert_close(got["z"][row, :T, head], ref, rtol=0, atol=1e-5)
        alone = forward_with(model, torch.tensor([ids]), spec)
        torch.testing.assert_close(batch[row, :T], alone[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt-neo", "gpt-j", "opt"])
def test_decode_edits_cached_equal_recomputed(name):
    model = tiny_arch_model(name)
    ids = random_prompt(name, 20, seed=4).tolist()
    every = [(l, h) for l in range(2) for h in range(4)]
    specs = [
        UniformAttention(heads=every[:6], positions="decode"),
        StreamingWindow(heads=every[6:], sink=1, recent=3, positions="decode"),
    ]
    cached = greedy_generate(model, ids, 6, interventions=specs)
    assert cached == greedy_generate(model, ids, 6, interventions=specs, use_cache=False)
    assert cached != greedy_generate(model, ids, 6)  # the edit reaches the tokens


def test_blocked_attention_hands_the_route_back():
    model = tiny_arch_model("gpt-j")
    ids = torch.tensor([random_prompt("gpt-j", 20, seed=1).tolist()])
    with blk.blocked_attention(model):
        assert model.original_model.config._attn_implementation == blk.BLOCKED_IMPLEMENTATION
        with torch.no_grad():
            model(ids)
    assert model.original_model.config._attn_implementation == LIVE_IMPLEMENTATION
    assert _edit_moves_logits(model, ids)


def _forget_adapter(monkeypatch, hf_class: str) -> None:
    """As if no family module registered a forward for `hf_class` (see test_blocked_attention)."""
    real = blk.blocked_forward_for
    monkeypatch.setattr(blk, "blocked_forward_for", lambda name: None if name == hf_class else real(name))


def _assert_left_as_it_was(model, name, impl="eager"):
    assert model.original_model.config._attn_implementation == impl
    assert not any(m in blk.LIVE_ROUTES for m in model.original_model.modules())
    ids = torch.tensor([random_prompt(name, 20, seed=1).tolist()])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), plain_hf(name)(ids).logits, rtol=0, atol=1e-4)
    assert not _edit_moves_logits(model, ids)  # the bridge's post-hoc hooks: the edit is discarded


def test_a_family_that_cannot_be_routed_refuses_attention_kinds(monkeypatch):
    # GPT-Neo computes attention inline: without its family forward, nothing reaches headscope's kernel.
    _forget_adapter(monkeypatch, "GPTNeoSelfAttention")
    model = tiny_arch_model("gpt-neo")
    assert pattern_edit_route(model) is None
    _assert_left_as_it_was(model, "gpt-neo")
    with pytest.raises(InputError, match="discarded.*") as err:
        forward_with(model, torch.tensor([[1, 5, 6, 7]]), [UniformAttention(heads=[(0, 0)])])
    assert "GPTNeoSelfAttention" in str(err.value) and "inline" in str(err.value)
    assert "docs/architectures.md" in str(err.value)


def test_a_family_without_a_route_refuses_attention_kinds(monkeypatch):
    monkeypatch.setattr(loading, "attention_route_for", lambda model: None)  # no family route, no default
    model = tiny_arch_model("bert")
    assert pattern_edit_route(model) is None
    _assert_left_as_it_was(model, "bert")
    with pytest.raises(InputError, match="no headscope attention forward is registered"):
        with apply(model, [StreamingWindow(heads=[(1, 1)])]):
            pass


def test_gptj_scores_in_float32_in_a_half_model():
    """HF's GPT-J computes attention scores in float32 whatever the model's dtype; so does its route."""
    model = tiny_arch_model("gpt-j", dtype=torch.bfloat16)
    assert pattern_edit_route(model) == "headscope"
    ids = torch.tensor([random_prompt("gpt-j", 20, seed=1).tolist()])
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_attn_scores"))
        ref = plain_hf("gpt-j").to(torch.bfloat16)(ids).logits
    assert cache["blocks.0.attn.hook_attn_scores"].dtype == torch.float32
    scale = float(ref.float().abs().max())
    assert float((logits.float() - ref.float()).abs().max()) <= 2e-2 * scale
