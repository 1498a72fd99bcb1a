"""Model loading (bundled SmolLM2, testbeds, local HF folders, cached hub ids) and ModelInfo."""

from .bundled import SMOLLM2_NAME, default_cache_dir, smollm2_fp32_dir
from .catalog import TESTBEDS, Testbed, default_image_prompts, register_testbed
from .info import ModelInfo, model_info, record_facts
from .loading import boot, hf_offline, load_model

__all__ = [
    "SMOLLM2_NAME",
    "TESTBEDS",
    "ModelInfo",
    "Testbed",
    "boot",
    "default_cache_dir",
    "default_image_prompts",
    "hf_offline",
    "load_model",
    "model_info",
    "record_facts",
    "register_testbed",
    "smollm2_fp32_dir",
]
