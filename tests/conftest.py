import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Nothing may be installed while the suite runs: pip and uv see no index (the Makefile sets these
# too; here they also cover a bare `pytest`), and the session fails if the installed distributions
# differ between its start and its end.
os.environ["PIP_NO_INDEX"] = "1"
os.environ["UV_OFFLINE"] = "1"
pytest_plugins = ("headscope.testing.installed", "pytester")


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
