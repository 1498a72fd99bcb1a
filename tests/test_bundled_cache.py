"""The bundled model's fp32 cache is written atomically and validated, never trusted blindly."""

import json

import pytest

from headscope.models import bundled


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(bundled, "smollm2_gguf_path", lambda: gguf)
    calls = []

    def fake_convert(src, out):  # stands in for the 30 s dequantization
        calls.append(out)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out / "model.safetensors").write_bytes(b"x" * 1000)

    monkeypatch.setattr(bundled, "_convert", fake_convert)
    return calls


def test_cache_built_once_then_reused(tmp_path, fake_gguf):
    first = bundled.smollm2_fp32_dir(tmp_path / "cache")
    second = bundled.smollm2_fp32_dir(tmp_path / "cache")
    assert first == second and len(fake_gguf) == 1
    assert bundled.cache_is_valid(first, bundled.smollm2_gguf_path())


def test_truncated_cache_is_rebuilt(tmp_path, fake_gguf):
    folder = bundled.smollm2_fp32_dir(tmp_path / "cache")
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(10)
    assert not bundled.cache_is_valid(folder, bundled.smollm2_gguf_path())
    bundled.smollm2_fp32_dir(tmp_path / "cache")
    assert len(fake_gguf) == 2
    assert (folder / "model.safetensors").stat().st_size == 1000


def test_missing_manifest_means_invalid(tmp_path, fake_gguf):
    folder = bundled.smollm2_fp32_dir(tmp_path / "cache")
    (folder / bundled.MANIFEST).unlink()
    assert not bundled.cache_is_valid(folder, bundled.smollm2_gguf_path())


def test_failed_build_leaves_nothing_behind(tmp_path, fake_gguf, monkeypatch):
    def crash(src, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. the user hits Ctrl-C mid-conversion

    monkeypatch.setattr(bundled, "_convert", crash)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        bundled.smollm2_fp32_dir(root)
    assert list(root.iterdir()) == []  # neither a half-built cache nor a temp folder
