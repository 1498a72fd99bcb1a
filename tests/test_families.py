"""The family modules (`headscope.families`): every mirrored upstream function still matches the
installed upstream source, and the engines find each family's facts through `family_of`."""

import pytest

from headscope.models.family import FAMILIES, MIRRORS, blocked_forward_for, family_of, source_hash


def test_every_family_module_registers_and_mirrors_are_declared():
    assert len(FAMILIES) >= 6  # loads the plugins, so every family module has registered
    assert MIRRORS, "no mirrored upstream function declared"
    for m in MIRRORS:
        assert m.upstream.count(":") == 1 and m.version and len(m.sha256) == 16, m


@pytest.mark.parametrize("mirror", MIRRORS if (len(FAMILIES) and MIRRORS) else [], ids=lambda m: m.headscope)
def test_mirrored_upstream_source_is_unchanged(mirror):
    got = source_hash(mirror.upstream)
    assert got == mirror.sha256, (
        f"{mirror.upstream} changed since transformers {mirror.version} (hash {got}, expected {mirror.sha256}): "
        f"review {mirror.headscope} against the new upstream code, then update its @mirrors hash"
    )


def test_family_lookup_by_model_type():
    from headscope.testing.architectures import plain_hf

    assert family_of(plain_hf("bert")).name == "bert"
    assert family_of(plain_hf("gemma2")).name == "gemma"
    assert family_of(plain_hf("llama")) is None  # needs nothing special
    assert blocked_forward_for("GPTNeoSelfAttention") is not None
    assert blocked_forward_for("LlamaAttention") is None


# ---------------------------------------------------------------------------------------------
# multi-head latent attention (DeepSeek-V2 / V3): a head is a query head, hooks as [batch, pos, head, d]


def _mla_run(name):
    import torch

    from headscope.testing.architectures import random_prompt, tiny_arch_model

    model = tiny_arch_model(name)
    ids = random_prompt(name, 14, seed=3)[None]
    wanted = [f"blocks.0.attn.hook_{s}" for s in ("q", "k", "v", "z", "rot_k", "pattern")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=wanted)
    return model, ids, logits, {w.split("hook_", 1)[1]: cache[w][0] for w in wanted}


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2"])
def test_mla_head_is_a_query_head_with_its_own_decompressed_k_and_v(name):
    """hook_q/k [pos, head, qk_nope + qk_rope], hook_v/z [pos, head, v_head_dim]; head h's pattern is
    softmax(scaling q_h k_h^T + causal mask) and its output pattern_h v_h (docs/architectures.md)."""
    import torch

    from headscope.models.info import model_info
    from headscope.testing.architectures import MLA_DIMS, plain_hf

    model, ids, _, a = _mla_run(name)
    T, H = ids.shape[1], 4
    d_qk, d_v = MLA_DIMS["qk_nope_head_dim"] + MLA_DIMS["qk_rope_head_dim"], MLA_DIMS["v_head_dim"]
    assert (a["q"].shape, a["k"].shape, a["v"].shape, a["z"].shape) == ((T, H, d_qk),) * 2 + ((T, H, d_v),) * 2
    assert a["k"].shape[1] == model_info(model).n_kv_heads and model_info(model).d_head == d_v
    assert a["k"].shape == (T, H, d_qk) and a["rot_k"].shape == (T, 1, MLA_DIMS["qk_rope_head_dim"])
    # the rope part of every head's key is the one shared rotary key
    rope = MLA_DIMS["qk_rope_head_dim"]
    torch.testing.assert_close(a["k"][..., -rope:], a["rot_k"].expand(T, H, rope), rtol=0, atol=0)
    scaling = plain_hf(name).model.layers[0].self_attn.scaling
    scores = torch.einsum("qhd,khd->hqk", a["q"], a["k"]) * scaling
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(a["pattern"], scores.softmax(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(a["z"], torch.einsum("hqk,khd->qhd", a["pattern"], a["v"]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2"])
def test_mla_hook_v_edit_changes_one_heads_value(name):
    """Zeroing head 2's hook_v equals plain HF with head 2's value rows of kv_b_proj zeroed."""
    import torch

    from headscope.testing.architectures import MLA_DIMS, plain_hf

    model, ids, _, _ = _mla_run(name)
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=[("blocks.0.attn.hook_v", lambda v, hook: v.index_fill(2, torch.tensor([2]), 0.0))]),
    ):
        got = model(ids)
    hf = plain_hf(name)
    nope, dv = MLA_DIMS["qk_nope_head_dim"], MLA_DIMS["v_head_dim"]
    with torch.no_grad():
        hf.model.layers[0].self_attn.kv_b_proj.weight[2 * (nope + dv) + nope : 3 * (nope + dv)] = 0.0
        ref = hf(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert (ref - plain_hf(name)(ids).logits).abs().max() > 1e-2  # the edit does something


def test_mla_bridge_booted_outside_headscope_gets_the_layout_on_first_read():
    """TransformerLens 4.3 splits MLA's hook_z into qk_rope_head_dim-wide pieces; `model_info` (every
    engine's first read) gives a bridge headscope did not boot the family's layout."""
    from transformer_lens.model_bridge import TransformerBridge

    from headscope.models.compat import no_runtime_installs
    from headscope.models.info import model_info
    from headscope.models.loading import hf_offline
    from headscope.testing.architectures import MLA_DIMS, random_prompt, tiny_hf

    hf, tok = tiny_hf("deepseek-v3")
    with hf_offline(), no_runtime_installs():
        bridge = TransformerBridge.boot_transformers("tiny-deepseek", hf_model=hf, tokenizer=tok, device="cpu")
    ids = random_prompt("deepseek-v3", 9)[None]

    def z_shape():
        _, cache = bridge.run_with_cache(ids, names_filter=["blocks.0.attn.hook_z"])
        return tuple(cache["blocks.0.attn.hook_z"].shape)

    assert z_shape() != (1, 9, 4, MLA_DIMS["v_head_dim"])  # TL 4.3's own split (if this fails: TL fixed it)
    assert model_info(bridge).d_head == MLA_DIMS["v_head_dim"]
    assert z_shape() == (1, 9, 4, MLA_DIMS["v_head_dim"])


# ---------------------------------------------------------------------------------------------
# Falcon's new decoder architecture: booted with multi_query=False, its grouped QKV rows re-split


def _bridge_and_plain(name, cfg_edits):
    """(headscope-booted bridge, plain HF model) of the tiny model `name` with `cfg_edits` on its config."""
    import torch
    import transformers

    from headscope.models.loading import boot
    from headscope.testing import architectures as A

    def build():
        cfg = A.ARCHITECTURES[name].build_config()
        for key, value in cfg_edits.items():
            setattr(cfg, key, value)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            hf = getattr(transformers, cfg.architectures[0])(cfg)
            A._sharpen(hf, A.INIT_STD)
        return hf.eval()

    bridged = boot(
        f"tiny-{name}",
        f"tiny-{name}",
        "cpu",
        torch.float32,
        None,
        hf_model=build(),
        tokenizer=A.tiny_tokenizer(A.VOCAB),
    )
    return bridged, build()


def _assert_equals_hf(model, hf, name):
    """Logits and every layer's pattern of the bridge equal plain HF's (eager, output_attentions)."""
    import torch

    from headscope.testing.architectures import random_prompt

    ids = random_prompt(name, 16, seed=5)[None]
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=names)
        ref = hf(ids, output_attentions=True)
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-4)
    for layer, hook in enumerate(names):
        torch.testing.assert_close(cache[hook], ref.attentions[layer], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, cfg_edits",
    [
        ("deepseek-v3", {"q_lora_rank": None}),
        ("deepseek-v3", {"rope_interleave": False}),
        ("deepseek-v2", {"q_lora_rank": None}),
    ],
    ids=["v3-direct-q", "v3-rope-halves", "v2-lite-direct-q"],
)
def test_mla_variants_equal_hf_and_run_blocked(name, cfg_edits):
    """DeepSeek-V2-Lite / GigaChat-style direct q_proj and V3 without interleaved RoPE: the bridge equals
    plain HF, and blocked attention (the family's MLA forward) gives the eager statistics."""
    import numpy as np

    from headscope.capture import capture
    from headscope.testing.architectures import random_prompt

    model, hf = _bridge_and_plain(name, cfg_edits)
    _assert_equals_hf(model, hf, name)
    prompts = [random_prompt(name, n, seed=n).tolist() for n in (19, 12)]
    eager = capture(model, prompts, attention="eager")
    blocked = capture(model, prompts, attention="blocked", block_size=5)
    for stat in eager:
        np.testing.assert_allclose(blocked[stat].values, eager[stat].values, rtol=0, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("cfg_edits", [{}, {"alibi": True, "bias": True}], ids=["rotary", "alibi-bias"])
def test_falcon_new_decoder_bridge_equals_hf(cfg_edits):
    """Logits and patterns equal plain HF's, also with ALiBi and biased QKV (the bias rows re-split too)."""
    model, hf = _bridge_and_plain("falcon-new", cfg_edits)
    assert hf.config.multi_query and hf.config.new_decoder_architecture  # the released configs' flags
    _assert_equals_hf(model, hf, "falcon-new")


def test_transformerlens_alone_cannot_bridge_falcon_new_decoder():
    """Why the family boots it with overrides and re-splits: TL 4.3 fails on the released flags and, with
    multi_query=False, builds a bridge whose attention reads the wrong rows (if this fails, TL fixed it)."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    from headscope.models.compat import no_runtime_installs
    from headscope.models.loading import hf_offline
    from headscope.testing import architectures as A

    ids = A.random_prompt("falcon-new", 12)[None]
    with torch.no_grad():
        ref = A.plain_hf("falcon-new")(ids).logits
    for multi_query in (True, False):
        hf, tok = A.tiny_hf("falcon-new")
        hf.config.multi_query = multi_query
        try:
            with hf_offline(), no_runtime_installs():
                bridge = TransformerBridge.boot_transformers(
                    "tiny-falcon-new", hf_model=hf, tokenizer=tok, device="cpu"
                )
        except RuntimeError as exc:
            assert multi_query and "split" in str(exc)
            continue
        assert not multi_query
        with torch.no_grad():
            assert (bridge(ids) - ref).abs().max() > 0.1 * ref.abs().max()


def test_a_refused_config_is_an_input_error_before_the_bridge_is_built(tmp_path, monkeypatch):
    """Family.refuse is asked at boot, from an in-memory model's config or a folder's config.json."""
    from headscope import load_model
    from headscope.errors import InputError
    from headscope.models import loading
    from headscope.testing import architectures as A

    seen = []
    monkeypatch.setattr(loading, "refusal", lambda cfg: seen.append(cfg.model_type) or "no reason. Fix: none")
    with pytest.raises(InputError, match="no reason. Fix: none"):
        A._boot("llama", 0)
    A.tiny_hf("gpt2")[0].config.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="no reason"):
        load_model(tmp_path)
    assert seen == ["llama", "gpt2"]


def test_boot_refuses_a_saved_model_of_a_refused_family(tmp_path):
    """A Mamba folder on disk meets the family's refusal (an InputError naming family, model_type and
    reason) before TransformerLens boots anything."""
    import transformers

    from headscope import load_model
    from headscope.errors import InputError

    cfg = transformers.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, state_size=4)
    transformers.MambaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"recurrent family \(model_type 'mamba'\).*no attention heads"):
        load_model(tmp_path)


def test_boot_wraps_an_adapter_error_naming_model_type_and_class():
    """An exception TransformerLens's adapter raises while booting reaches the user as an InputError
    naming the model_type, the HF class and the original error, which it chains."""
    import transformers

    from headscope.errors import InputError
    from headscope.models.loading import boot
    from headscope.testing.tiny import tiny_tokenizer

    cfg = transformers.BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2)
    cfg.architectures = ["BloomModel"]  # TL lists BloomModel, whose adapter expects an LM head
    with pytest.raises(InputError, match=r"model_type 'bloom', HF class BloomModel\): AttributeError") as err:
        boot(
            "tiny-bloom-base",
            "tiny-bloom-base",
            "cpu",
            None,
            None,
            hf_model=transformers.BloomModel(cfg),
            tokenizer=tiny_tokenizer(64),
        )
    assert isinstance(err.value.__cause__, AttributeError)
