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
        f"review {mirror.headscope} against the new upstream code, then update its @mirrors hash")


def test_family_lookup_by_model_type():
    from headscope.testing.architectures import plain_hf

    assert family_of(plain_hf("bert")).name == "bert"
    assert family_of(plain_hf("gemma2")).name == "gemma"
    assert family_of(plain_hf("llama")) is None  # needs nothing special
    assert blocked_forward_for("GPTNeoSelfAttention") is not None
    assert blocked_forward_for("LlamaAttention") is None


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
        boot("tiny-bloom-base", "tiny-bloom-base", "cpu", None, None, hf_model=transformers.BloomModel(cfg),
             tokenizer=tiny_tokenizer(64))
    assert isinstance(err.value.__cause__, AttributeError)
