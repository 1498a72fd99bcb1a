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


@functools.cache
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
        model=model,
        single=single,
        batch=batch,
        mask=mask,
        logits=logits,
        cache=cache,
        batch_logits=batch_logits,
        batch_patterns=[store[n] for n in layer_names(model)],
        hf_logits=hf_single.logits,
        hf_patterns=hf_single.attentions,
        hf_batch_logits=hf_batch.logits,
        hf_batch_patterns=hf_batch.attentions,
    )


def visible(name, layer, n=SEQ):
    """[q, k] bool: the keys a query may see in ``layer`` (causal / sliding window / chunk / bidirectional)."""
    return A.visible_keys(name, layer, n, encoder=A.ARCHITECTURES[name].is_encoder)


def row_sums(name, layer, scores):
    """[..., head, q]: what a pattern row sums to given its masked scores [..., head, q, k]: 1, or with a
    learned sink logit s (GPT-OSS), exp(lse) / (exp(s) + exp(lse)), lse = logsumexp of the scores."""
    if "learned_sinks" not in A.ARCHITECTURES[name].features:
        return torch.ones(scores.shape[:-1])
    sinks = A.plain_hf(name).model.layers[layer].self_attn.sinks.detach().double()
    return torch.sigmoid(torch.logsumexp(scores.double(), -1) - sinks[:, None]).float()


# ---------------------------------------------------------------------------------------------
# the matrix itself


def test_matrix_covers_the_brief():
    families = {a.family for a in A.ARCHITECTURES.values()}
    for family in (
        "gpt2",
        "gpt_neox",
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "phi3",
        "bert",
        "bloom",
        "olmo",
        "olmo2",
        "olmo3",
        "exaone4",
        "llama4_text",
        "gpt_oss",
    ):
        assert family in families
    assert {a.attention for a in A.ARCHITECTURES.values()} == {"MHA", "GQA", "MQA", "MLA"}
    for feature in (
        "sliding_window",
        "softcap",
        "qk_norm",
        "alibi",
        "encoder",
        "moe",
        "local_global",
        "chunked",
        "learned_sinks",
        "mla",
        "hybrid",
    ):
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
    hf, _tok = A.tiny_hf(name, seed=3)
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
    """[batch, pos, head, d] at hook_q/k/v/z on every family; MLA's heads are its query heads, each with
    its own decompressed K (qk_nope + qk_rope wide) and V / z (v_head_dim wide)."""
    arch, model = A.ARCHITECTURES[name], reference(name)["model"]
    cfg, info = model.cfg, model_info(model)
    n_layers = A.HYBRID_LAYERS if "hybrid" in arch.features else 2
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab) == (n_layers, 4, 64, 64)
    n_kv = {"MHA": 4, "GQA": 2, "MQA": 1, "MLA": 4}[arch.attention]
    assert (cfg.n_key_value_heads or cfg.n_heads) == n_kv == info.n_kv_heads  # TL leaves None on MHA
    d_qk = d_v = 16
    if arch.attention == "MLA":
        d_qk, d_v = A.MLA_DIMS["qk_nope_head_dim"] + A.MLA_DIMS["qk_rope_head_dim"], A.MLA_DIMS["v_head_dim"]
    else:
        assert cfg.d_head == 16
    assert info.d_head == d_v
    first = info.attention_layers[0]
    _, cache = model.run_with_cache(
        reference(name)["single"], names_filter=[f"blocks.{first}.attn.hook_{s}" for s in "qkvz"]
    )
    for site, shape in (("q", (4, d_qk)), ("k", (n_kv, d_qk)), ("v", (n_kv, d_v)), ("z", (4, d_v))):
        if site == "q" and "gated_attn" in arch.features:
            continue  # Qwen3-Next's q projection carries each head's output gate too (its hook_q_gate)
        assert cache[f"blocks.{first}.attn.hook_{site}"].shape == (1, SEQ, *shape), site


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
    attention_layers = model_info(r["model"]).attention_layers  # the model's own indices (hybrids skip some)
    for i, (layer, hook) in enumerate(zip(attention_layers, layer_names(r["model"]))):
        pattern = r["cache"][hook][0]  # [head, q, k]
        allowed = visible(name, layer)
        assert torch.all(pattern[:, ~allowed] == 0), f"layer {layer} attends outside its mask"
        assert torch.all(pattern[:, allowed] > 0), f"layer {layer} has an unexpected exact zero"
        scores = r["cache"][f"blocks.{layer}.attn.hook_attn_scores"][0]
        torch.testing.assert_close(pattern.sum(-1), row_sums(name, layer, scores))
        # The padded batch: no real query attends to a pad key.
        padded = r["batch_patterns"][i][1]
        assert torch.all(padded[:, :SHORT, SHORT:] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_attention_is_sharp(name):
    r = reference(name)
    for layer, hook in zip(model_info(r["model"]).attention_layers, layer_names(r["model"])):
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


@pytest.mark.parametrize("name", with_feature("chunked"))
def test_chunked_attention_masks(name):
    """A chunked layer (Llama 4) sees the causal keys of the query's own chunk only: a chunk's first query
    sees itself alone, and no query sees an earlier chunk (bridge and HF); a full layer does."""
    r = reference(name)
    chunks = A.layer_chunks(name)
    assert any(chunks) and not any(A.layer_windows(name))
    q, k = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None]
    earlier_chunk = (k <= q) & (k // A.CHUNK < q // A.CHUNK)
    for layer, hook in enumerate(layer_names(r["model"])):
        pattern = r["cache"][hook][0]
        if chunks[layer]:
            assert torch.all(pattern[:, earlier_chunk] == 0)
            assert torch.all(r["hf_patterns"][layer][0][:, earlier_chunk] == 0)
            torch.testing.assert_close(pattern[:, A.CHUNK, A.CHUNK], torch.ones(A.N_HEADS))
        else:
            assert torch.all(pattern[:, earlier_chunk] > 0)


@pytest.mark.parametrize("name", with_feature("learned_sinks"))
def test_learned_sinks_take_their_share(name):
    """HF's output_attentions over the real keys sums to 1 - exp(s) / (exp(s) + sum exp(scores)), each
    head's learned sink s taking a visible share, larger for a larger logit; the bridge reports the same."""
    r = reference(name)
    for layer in range(r["model"].cfg.n_layers):
        scores = r["cache"][f"blocks.{layer}.attn.hook_attn_scores"][0]
        expected = row_sums(name, layer, scores)  # [head, q]
        torch.testing.assert_close(r["hf_patterns"][layer][0].sum(-1), expected, atol=1e-5, rtol=0)
        share = 1 - expected.mean(-1)
        assert share.min() > 1e-3 and share.max() > 0.1, share
        assert torch.equal(share.argsort(), torch.tensor(A.SINK_LOGITS).argsort()), share


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


# TransformerLens 4.3 wraps BERT, GPT-Neo, GPT-J, OPT, Llama 4 and Jamba in its generic AttentionBridge, which lets the HF
# module compute attention and fires hook_attn_scores / hook_pattern afterwards on the returned weights;
# headscope routes those layers through its own attention forward at boot (headscope.capture.routed),
# so on every family here hook_attn_scores is pre-softmax and an edit at hook_pattern takes effect.
@pytest.mark.parametrize("name", NAMES)
def test_attn_scores_are_pre_softmax(name):
    r = reference(name)
    for layer in model_info(r["model"]).attention_layers:
        scores = r["cache"][f"blocks.{layer}.attn.hook_attn_scores"]
        pattern = scores.softmax(-1) * row_sums(name, layer, scores)[..., None]  # a learned sink's share taken
        torch.testing.assert_close(pattern, r["cache"][f"blocks.{layer}.attn.hook_pattern"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_pattern_edits_reach_the_output(name):
    r = reference(name)

    def first_key_only(pattern, hook):  # head 0 of the first attention layer reads only key 0
        pattern = pattern.clone()
        pattern[:, 0] = 0.0
        pattern[:, 0, :, 0] = 1.0
        return pattern

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("error", message=".*edit is discarded", category=UserWarning)  # TL discarding it
        edited = r["model"].run_with_hooks(r["single"], fwd_hooks=[(layer_names(r["model"])[0], first_key_only)])
    assert (edited - r["logits"]).abs().max() > 1e-2


def test_encoder_is_bidirectional_and_uses_cls_sep():
    tok = A.tokenizer_for("bert")
    assert tok("t5 t6")["input_ids"] == [A.BERT_CLS, 5, 6, A.BERT_SEP]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id) == (
        A.BERT_PAD,
        A.BERT_CLS,
        A.BERT_SEP,
        A.BERT_MASK,
        A.BERT_UNK,
    )
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

        cfg = BioGptConfig(
            vocab_size=A.VOCAB,
            hidden_size=A.D_MODEL,
            num_hidden_layers=A.N_LAYERS,
            num_attention_heads=A.N_HEADS,
            intermediate_size=A.D_MLP,
            max_position_embeddings=A.N_CTX,
        )
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
