"""Model loading (bundled SmolLM2, local HF folders, cached hub ids) and ModelInfo."""

from .bundled import SMOLLM2_NAME, default_cache_dir, smollm2_fp32_dir
from .info import ModelInfo, model_info
from .loading import BUNDLED, hf_offline, load_model

__all__ = ["BUNDLED", "ModelInfo", "SMOLLM2_NAME", "default_cache_dir", "hf_offline", "load_model", "model_info", "smollm2_fp32_dir"]
