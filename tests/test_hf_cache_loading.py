"""A hub id that the local HF cache holds loads offline; the same id uncached fails fast."""

import huggingface_hub.constants as hub_constants
import torch

import headscope
from headscope.testing import plain_hf_copy, tiny_model


def test_cached_hub_id_loads_offline(tmp_path, monkeypatch):
    # Lay out a cache entry exactly as huggingface_hub does: models--org--name/{refs,snapshots}.
    repo = tmp_path / "models--someorg--tiny-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    source = tiny_model(seed=7)
    plain_hf_copy(source).save_pretrained(snapshot)
    source.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    model = headscope.load_model("someorg/tiny-llama")
    tokens = torch.tensor([[1, 5, 9, 5, 9]])
    assert torch.allclose(model(tokens), source(tokens), atol=1e-5)
    assert headscope.model_info(model).n_kv_heads == 2
