import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def smol():
    """The bundled SmolLM2-135M-Instruct (builds the fp32 cache once, ~40 s, then ~1 s)."""
    import headscope

    return headscope.load_model()


@pytest.fixture(scope="session")
def smol_hf(smol):
    """An independent HF model on the same fp32 weights, eager attention, for reference numbers."""
    from transformers import AutoModelForCausalLM

    from headscope.models import smollm2_fp32_dir

    return AutoModelForCausalLM.from_pretrained(smollm2_fp32_dir(), attn_implementation="eager").eval()
