"""headscope.testing.architectures: every tiny family boots as a TransformerBridge and matches plain HF.

For each name in ARCHITECTURES the bridge's logits and ``blocks.{l}.attn.hook_pattern`` are compared
with an independent HF eager model on the same weights (``output_attentions=True``), on one 20-token
prompt and on a right-padded batch of two prompts with an attention mask. Patterns are also checked
to be sharp, to have exactly the support the family's mask allows (causal, sliding window,
bidirectional), and the family features (soft-capping, ALiBi, sliding windows) to show up in
``hook_attn_scores`` where the bridge documents them.
"""

import functools
import time
import warnings

import pytest
import torch

from headscope.errors import InputError
from headscope.models.info import model_info
from headscope.testing import architectures as A
from headscope.testing.hf_reference import plain_hf_copy

NAMES = list(A.ARCHITECTURES)
SEQ, SHORT = 20, 13
LOGIT_TOL, PATTERN_TOL = 1e-4, 1e-5
SHARP = 0.8  # mean entropy must be below this fraction of the uniform (log #visible keys) entropy


def with_feature(feature):
    return [n for n in NAMES if feature in A.ARCHITECTURES[n].features]


def layer_names(model, hook="hook_pattern"):
    """The hook of every attention layer, in order (HF's output_attentions lists the same layers)."""
    return [f"blocks.{l}.attn.{hook}" for l in model_info(model).attention_layers]


@functools.lru_cache(maxsize=None)
def reference(name):
    """Bridge and plain-HF outputs for one prompt and one right-padded batch (computed once per name)."""
    model, hf = A.tiny_arch_model(name), A.plain_hf(name)
    single = A.random_prompt(name, SEQ, seed=1)[None]
    batch = torch.full((2, SEQ), A.BERT_PAD if A.ARCHITECTURES[name].is_encoder else A.PAD_ID)
    batch[0] = A.random_prompt(name, SEQ, seed=2)
    batch[1, :SHORT] = A.random_prompt(name, SHORT, seed=3)
    mask = (torch.arange(SEQ) < torch.tensor([[SEQ], [SHORT]])).long()
    with torch.no_grad():
        # The single prompt goes through run_with_cache, the batch through model.hooks.
        wanted = ("attn.hook_pattern", "attn.hook_attn_scores")
        logits, cache = model.run_with_cache(single, names_filter=lambda n: n.endswith(wanted))
        store = {}

        def save(t, hook):
            store[hook.name] = t.detach().clone()

        with model.hooks(fwd_hooks=[(n, save) for n in layer_names(model)]):
            batch_logits = model(batch, attention_mask=mask)
        hf_single = hf(single, output_attentions=True)
        hf_batch = hf(batch, attention_mask=mask, output_attentions=True)
    return dict(
        model=model, single=single, batch=batch, mask=mask, logits=logits, cache=cache,
        batch_logits=batch_logits, batch_patterns=[store[n] for n in layer_names(model)],
        hf_logits=hf_single.logits, hf_patterns=hf_single.attentions,
        hf_batch_logits=hf_batch.logits, hf_batch_patterns=hf_batch.attentions,
    )


def visible(name, layer, n=SEQ):
    """[q, k] bool: the keys a query may see in ``layer`` (causal / sliding window / bidirectional)."""
    if A.ARCHITECTURES[name].is_encoder:
        return torch.ones(n, n, dtype=torch.bool)
    q, k = torch.arange(n)[:, None], torch.arange(n)[None]
    allowed = k <= q
    window = A.layer_windows(name)[layer]
    if window is not None:
        allowed &= q - k < window
    return allowed


# ---------------------------------------------------------------------------------------------
# the matrix itself


def test_matrix_covers_the_brief():
    families = {a.family for a in A.ARCHITECTURES.values()}
    for family in ("gpt2", "gpt_neox", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma2", "gemma3_text",
                   "phi3", "bert", "bloom", "olmo", "olmo2"):
        assert family in families
    assert {a.attention for a in A.ARCHITECTURES.values()} == {"MHA", "GQA", "MQA"}
    for feature in ("sliding_window", "softcap", "qk_norm", "alibi", "encoder", "moe", "local_global", "hybrid"):
        assert with_feature(feature), feature
    for arch in A.ARCHITECTURES.values():
        assert set(arch.features) <= set(A.FEATURES), arch.name
        if "local_global" in arch.features:  # both kinds of layer present
            assert set(map(bool, A.layer_windows(arch.name))) == {True, False}, arch.name


def test_every_family_boots():
    assert A.supported() == NAMES, A.boot_errors()


@pytest.mark.parametrize("name", NAMES)
def test_tiny_hf_builds_fast_deterministic_and_leaves_rng_alone(name):
    A.tiny_hf(name)  # imports
    state = torch.random.get_rng_state()
    t0 = time.perf_counter()
    hf, tok = A.tiny_hf(name, seed=3)
    assert time.perf_counter() - t0 < 1.0
    assert torch.equal(torch.random.get_rng_state(), state)
    again = A.plain_hf(name, seed=3)
    other = A.plain_hf(name, seed=4)
    params = dict(hf.named_parameters())
    assert all(torch.equal(p, params[k]) for k, p in again.named_parameters())
    assert not all(torch.equal(p, params[k]) for k, p in other.named_parameters())
    assert not hf.training and hf.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in hf.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bridge_shape(name):
    arch, model = A.ARCHITECTURES[name], reference(name)["model"]
    cfg = model.cfg
    n_layers = A.HYBRID_LAYERS if "hybrid" in arch.features else 2
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_vocab) == (n_layers, 4, 16, 64, 64)
    n_kv = {"MHA": 4, "GQA": 2, "MQA": 1}[arch.attention]
    assert (cfg.n_key_value_heads or cfg.n_heads) == n_kv  # TL leaves n_key_value_heads None on MHA
    _, cache = model.run_with_cache(reference(name)["single"], names_filter=lambda n: n.endswith("attn.hook_k"))
    first = model_info(model).attention_layers[0]
    assert cache[f"blocks.{first}.attn.hook_k"].shape == (1, SEQ, n_kv, 16)


@pytest.mark.parametrize("name", NAMES)
def test_plain_hf_copy_equals_plain_hf(name):
    copy, plain = plain_hf_copy(reference(name)["model"]), A.plain_hf(name)
    assert type(copy) is type(plain)
    a, b = copy.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# bridge == plain HF


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_hf(name):
    r = reference(name)
    torch.testing.assert_close(r["logits"], r["hf_logits"], atol=LOGIT_TOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_logits_match_hf(name):
    r = reference(name)
    valid = r["mask"].bool()
    torch.testing.assert_close(r["batch_logits"][valid], r["hf_batch_logits"][valid], atol=LOGIT_TOL, rtol=0)
    # Right padding leaves the short prompt's real positions as they are unpadded.
    with torch.no_grad():
        alone = r["model"](r["batch"][1:, :SHORT])
    torch.testing.assert_close(r["batch_logits"][1, :SHORT], alone[0], atol=LOGIT_TOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_patterns_match_hf(name):
    r = reference(name)
    for layer, hook in enumerate(layer_names(r["model"])):
        torch.testing.assert_close(r["cache"][hook], r["hf_patterns"][layer], atol=PATTERN_TOL, rtol=0)
        # Padded batch: every real query row (pad query rows are not compared).
        got, want = r["batch_patterns"][layer], r["hf_batch_patterns"][layer]
        rows = r["mask"].bool()[:, None, :, None].expand_as(got)
        torch.testing.assert_close(got[rows], want[rows], atol=PATTERN_TOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# what the patterns look like


@pytest.mark.parametrize("name", NAMES)
def test_pattern_support_is_the_mask(name):
    r = reference(name)
    for layer, hook in enumerate(layer_names(r["model"])):
        pattern = r["cache"][hook][0]  # [head, q, k]
        allowed = visible(name, layer)
        assert torch.all(pattern[:, ~allowed] == 0), f"layer {layer} attends outside its mask"
        assert torch.all(pattern[:, allowed] > 0), f"layer {layer} has an unexpected exact zero"
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:2]))
        # The padded batch: no real query attends to a pad key.
        padded = r["batch_patterns"][layer][1]
        assert torch.all(padded[:, :SHORT, SHORT:] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_attention_is_sharp(name):
    r = reference(name)
    for layer, hook in enumerate(layer_names(r["model"])):
        pattern = r["cache"][hook][0]
        n_visible = visible(name, layer).sum(-1).float()  # [q]
        entropy = -torch.where(pattern > 0, pattern * pattern.log(), torch.zeros(())).sum(-1)  # [head, q]
        uniform = n_visible.log()
        ratio = entropy.mean(-1) / uniform.mean()  # per head
        assert torch.all(ratio < SHARP), f"layer {layer}: entropy / uniform per head {ratio.tolist()}"


@pytest.mark.parametrize("name", with_feature("sliding_window"))
def test_sliding_window_masks(name):
    r = reference(name)
    windows = A.layer_windows(name)
    assert any(windows)
    q, k = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None]
    beyond = (k <= q) & (q - k >= A.SLIDING_WINDOW)  # causal keys outside the window
    for layer, hook in enumerate(layer_names(r["model"])):
        pattern = r["cache"][hook][0]
        if windows[layer]:
            assert torch.all(pattern[:, beyond] == 0)
            assert torch.all(r["hf_patterns"][layer][0][:, beyond] == 0)
        else:  # a global layer of a local/global family does look past the window
            assert torch.all(pattern[:, beyond] > 0)


@pytest.mark.parametrize("name", with_feature("softcap"))
def test_softcap_shows_in_scores_and_logits(name):
    """hook_attn_scores carries cap * tanh(raw / cap) (then the mask); the final logits are capped too."""
    r = reference(name)
    model = r["model"]
    wanted = ("hook_attn_scores", "hook_rot_q", "hook_rot_k")
    _, cache = model.run_with_cache(r["single"], names_filter=lambda n: n.endswith(wanted))
    for layer, hook in enumerate(layer_names(model, "hook_attn_scores")):
        scores = cache[hook][0]
        allowed = visible(name, layer)
        assert scores[:, allowed].abs().max() < A.ATTN_SOFTCAP
        # hook_rot_q / hook_rot_k are [batch, pos, head, d_head] (after RoPE), like hook_q.
        q = cache[f"blocks.{layer}.attn.hook_rot_q"][0].transpose(0, 1)
        k = cache[f"blocks.{layer}.attn.hook_rot_k"][0].transpose(0, 1)
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # GQA: one key head per query group
        raw = q @ k.transpose(-1, -2) * A.D_HEAD**-0.5  # query_pre_attn_scalar = d_head
        assert raw[:, allowed].abs().max() > A.ATTN_SOFTCAP  # the cap binds somewhere
        capped = A.ATTN_SOFTCAP * torch.tanh(raw / A.ATTN_SOFTCAP)
        torch.testing.assert_close(scores[:, allowed], capped[:, allowed], atol=1e-5, rtol=0)
    assert r["logits"].abs().max() < A.FINAL_SOFTCAP


@pytest.mark.parametrize("name", with_feature("alibi"))
def test_alibi_bias_is_in_the_scores(name):
    """hook_attn_scores = q.k / sqrt(d_head) + slope_h * key_position (+ a per-row constant), slopes distinct."""
    r = reference(name)
    wanted = ("hook_attn_scores", "hook_q", "hook_k")
    _, cache = r["model"].run_with_cache(r["single"], names_filter=lambda n: n.endswith(wanted))
    q = cache["blocks.0.attn.hook_q"][0].transpose(0, 1)
    k = cache["blocks.0.attn.hook_k"][0].transpose(0, 1)
    bias = cache["blocks.0.attn.hook_attn_scores"][0] - q @ k.transpose(-1, -2) * A.D_HEAD**-0.5
    row = bias[:, SEQ - 1]  # the last query sees every key
    step = row[:, 1:] - row[:, :-1]
    torch.testing.assert_close(step, step[:, :1].expand_as(step), atol=1e-5, rtol=0)  # linear in key position
    slopes = step[:, 0]
    assert torch.all(slopes > 0) and len(set(slopes.tolist())) == A.N_HEADS


# TransformerLens 4.3 wraps these families' attention in the generic AttentionBridge, which lets the
# HF module compute attention and then fires hook_pattern AND hook_attn_scores on the returned
# (post-softmax) weights: hook_attn_scores is not pre-softmax, and edits at either hook are discarded
# (with a UserWarning). Every other family here reimplements attention with live hooks.
POST_HOC = {
    "gpt-neo": "GPT-Neo attention runs as the generic AttentionBridge (HF computes attention)",
    "bert": "BERT attention runs as the generic AttentionBridge (HF computes attention)",
    "jamba": "Jamba attention runs as the generic AttentionBridge (maintain_native_attention)",
}


def post_hoc_xfail(names):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=POST_HOC[n] + ": hook_pattern / "
                         "hook_attn_scores fire after the fact on post-softmax weights")) if n in POST_HOC else n
            for n in names]


@pytest.mark.parametrize("name", post_hoc_xfail(NAMES))
def test_attn_scores_are_pre_softmax(name):
    r = reference(name)
    for layer in model_info(r["model"]).attention_layers:
        scores = r["cache"][f"blocks.{layer}.attn.hook_attn_scores"]
        torch.testing.assert_close(scores.softmax(-1), r["cache"][f"blocks.{layer}.attn.hook_pattern"],
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", post_hoc_xfail(NAMES))
def test_pattern_edits_reach_the_output(name):
    r = reference(name)

    def first_key_only(pattern, hook):  # head 0 of the first attention layer reads only key 0
        pattern = pattern.clone()
        pattern[:, 0] = 0.0
        pattern[:, 0, :, 0] = 1.0
        return pattern

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the post-hoc families warn that the edit is dropped
        edited = r["model"].run_with_hooks(r["single"], fwd_hooks=[(layer_names(r["model"])[0], first_key_only)])
    assert (edited - r["logits"]).abs().max() > 1e-2


def test_encoder_is_bidirectional_and_uses_cls_sep():
    tok = A.tokenizer_for("bert")
    assert tok("t5 t6")["input_ids"] == [A.BERT_CLS, 5, 6, A.BERT_SEP]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id) == (
        A.BERT_PAD, A.BERT_CLS, A.BERT_SEP, A.BERT_MASK, A.BERT_UNK)
    r = reference("bert")
    assert r["model"].to_tokens("t5 t6").tolist() == [[A.BERT_CLS, 5, 6, A.BERT_SEP]]
    assert torch.all(r["cache"]["blocks.0.attn.hook_pattern"][0, :, 0, 1:] > 0)  # [CLS] sees later tokens


def test_decoder_tokenizer_is_tiny_tokenizer():
    assert A.tokenizer_for("llama")("t5 t6")["input_ids"] == [A.BOS_ID, 5, 6]
    assert reference("gpt2")["model"].to_tokens("t5 t6").tolist() == [[A.BOS_ID, 5, 6]]


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_name_raises_input_error_naming_supported():
    with pytest.raises(InputError) as err:
        A.tiny_arch_model("no-such-family")
    message = str(err.value)
    assert "no-such-family" in message
    assert all(name in message for name in A.supported())


def test_unbridgeable_family_raises_input_error(monkeypatch):
    def biogpt():  # a transformers family TransformerLens has no adapter for
        from transformers import BioGptConfig

        cfg = BioGptConfig(vocab_size=A.VOCAB, hidden_size=A.D_MODEL, num_hidden_layers=A.N_LAYERS,
                           num_attention_heads=A.N_HEADS, intermediate_size=A.D_MLP, max_position_embeddings=A.N_CTX)
        return A._finish(cfg, "BioGptForCausalLM")

    archs = dict(A.ARCHITECTURES, biogpt=A.Architecture("biogpt", "biogpt", "MHA", (), biogpt))
    monkeypatch.setattr(A, "ARCHITECTURES", archs)
    A.tiny_hf("biogpt")  # the HF model itself builds
    with pytest.raises(InputError) as err:
        A.tiny_arch_model("biogpt")
    message = str(err.value)
    assert "'biogpt'" in message and "Supported:" in message
    assert all(name in message.split("Supported:")[1] for name in NAMES)
    assert "biogpt" not in A.supported()
