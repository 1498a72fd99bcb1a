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
