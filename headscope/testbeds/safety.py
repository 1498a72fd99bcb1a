"""The safety-tuned testbed "smollm2-135m-safety": the bundled SmolLM2-135M-Instruct plus a LoRA delta
shipped in data/models/smollm2-135m-safety/ (made by analyses/safety_tuning.py; docs/safety-model.md).

The delta is two files: `lora.safetensors` holds fp16 factors `<module>.lora_A` [rank, in] and
`<module>.lora_B` [out, rank] for the attention q/k/v/o and MLP gate/up/down projections of every
layer; `lora.json` holds rank, alpha, targets and the training record. At load the factors are merged
in fp32, W <- W + (alpha / rank) * B @ A, into a copy of the bundled fp32 weights, saved as an HF
folder in the cache next to the bundled one. Like bundled.py, the folder is built in a temporary
sibling and renamed into place, with a manifest written last; the manifest records the sha256 of
both delta files and of the base model's manifest, so a changed delta, a rebuilt base or a
half-built cache is rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import HeadscopeError, ModelNotFoundError
from ..models import bundled
from ..models.catalog import Testbed, register_testbed
from ..models.loading import boot
from ..paths import data_dir

log = logging.getLogger(__name__)

SAFETY_NAME = "smollm2-135m-safety"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DELTA_WEIGHTS = "lora.safetensors"
DELTA_CONFIG = "lora.json"
CACHE_FORMAT = 1
FIX = "Fix: restore data/models/smollm2-135m-safety/ from the repository, or regenerate it with `python analyses/safety_tuning.py`."


def delta_dir() -> Path:
    try:
        return data_dir() / "models" / SAFETY_NAME
    except HeadscopeError as exc:
        raise ModelNotFoundError(f"{SAFETY_NAME} needs headscope's data/ folder: {exc}") from exc


def module_path(layer: int, target: str) -> str:
    """HF module name of a LoRA target, e.g. model.layers.3.self_attn.q_proj."""
    block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{target}"


def _linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of every target projection, from the base config.json (no weights loaded)."""
    d, mlp = cfg["hidden_size"], cfg["intermediate_size"]
    d_head = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d_head, cfg["num_key_value_heads"] * d_head
    return {
        "q_proj": (q, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "o_proj": (d, q),
        "gate_proj": (mlp, d),
        "up_proj": (mlp, d),
        "down_proj": (d, mlp),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_delta(folder: str | Path | None = None, base_dir: Path | None = None):
    """Load and validate the LoRA delta: returns (config dict, {key: fp16 tensor}, sha256 dict).

    Every failure (missing or unreadable file, wrong keys or shapes) is a ModelNotFoundError naming
    the file and the fix, raised before any weights are touched.
    """
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else delta_dir()
    weights, config_path = folder / DELTA_WEIGHTS, folder / DELTA_CONFIG
    for path in (weights, config_path):
        if not path.is_file():
            raise ModelNotFoundError(f"{SAFETY_NAME}: the LoRA delta file {path} is missing. {FIX}")
    try:
        config = json.loads(config_path.read_text())
        rank, alpha = int(config["rank"]), float(config["alpha"])
        targets = tuple(config["targets"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{SAFETY_NAME}: {config_path} is not a valid LoRA config ({exc}). {FIX}") from exc
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise ModelNotFoundError(f"{SAFETY_NAME}: cannot read {weights} ({exc}). {FIX}") from exc
    base_cfg = json.loads(((base_dir or bundled.smollm2_fp32_dir()) / "config.json").read_text())
    shapes = _linear_shapes(base_cfg)
    expected = {}
    for layer in range(base_cfg["num_hidden_layers"]):
        for t in targets:
            if t not in shapes:
                raise ModelNotFoundError(f"{SAFETY_NAME}: {config_path} names an unknown target {t!r}. {FIX}")
            out_f, in_f = shapes[t]
            expected[f"{module_path(layer, t)}.lora_A"] = (rank, in_f)
            expected[f"{module_path(layer, t)}.lora_B"] = (out_f, rank)
    bad = sorted(k for k, s in expected.items() if k not in tensors or tuple(tensors[k].shape) != s)
    extra = sorted(set(tensors) - set(expected))
    if bad or extra or rank < 1 or not alpha > 0:
        raise ModelNotFoundError(
            f"{SAFETY_NAME}: {weights} does not match its config and the base model "
            f"(missing/misshapen: {bad[:3]}, unexpected: {extra[:3]}). {FIX}"
        )
    digests = {DELTA_WEIGHTS: _sha256(weights), DELTA_CONFIG: _sha256(config_path)}
    return config, tensors, digests


def merge_delta(hf_model, config: dict, tensors: dict) -> None:
    """In place: W <- W + (alpha / rank) * B @ A for every factor pair, computed in fp32."""
    import torch

    scale = float(config["alpha"]) / int(config["rank"])
    modules = dict(hf_model.named_modules())
    with torch.no_grad():
        for key, factor_a in tensors.items():
            if not key.endswith(".lora_A"):
                continue
            name = key[: -len(".lora_A")]
            a, b = factor_a.float(), tensors[f"{name}.lora_B"].float()  # [r, in], [out, r]
            weight = modules[name].weight
            weight += (scale * (b @ a)).to(weight.dtype)  # [out, in]


def _manifest(folder: Path, digests: dict, base: Path) -> dict:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != bundled.MANIFEST}
    return {
        "format": CACHE_FORMAT,
        "delta_sha256": digests,
        "base_manifest_sha256": _sha256(base / bundled.MANIFEST),
        "files": files,
    }


def _cache_is_valid(folder: Path, digests: dict, base: Path) -> bool:
    try:
        manifest = json.loads((folder / bundled.MANIFEST).read_text())
        if (
            manifest.get("format") != CACHE_FORMAT
            or manifest.get("delta_sha256") != digests
            or manifest.get("base_manifest_sha256") != _sha256(base / bundled.MANIFEST)
        ):
            return False
        files = manifest["files"]
        return "model.safetensors" in files and all(
            (folder / n).is_file() and (folder / n).stat().st_size == s for n, s in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def safety_fp32_dir(cache_dir: str | Path | None = None, *, delta: str | Path | None = None) -> Path:
    """The merged fp32 HF folder of smollm2-135m-safety, built on first use or when the delta changed.

    `delta` overrides the folder holding lora.safetensors / lora.json (default: the shipped one).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = bundled.smollm2_fp32_dir(cache_dir)
    config, tensors, digests = read_delta(delta, base)
    root = Path(cache_dir).expanduser() if cache_dir else bundled.default_cache_dir()
    final = root / f"{SAFETY_NAME}-fp32"
    if _cache_is_valid(final, digests, base):
        return final
    log.warning("headscope: merging the %s LoRA delta into %s (once, a few seconds)", SAFETY_NAME, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SAFETY_NAME}-", dir=root))
    try:
        hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merge_delta(hf, config, tensors)
        hf.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        (tmp / bundled.MANIFEST).write_text(json.dumps(_manifest(tmp, digests, base), indent=1))
        if final.exists():  # stale (other delta) or half-built: replace it
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _cache_is_valid(final, digests, base):  # another process won the race with a bad copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_safety(cache_dir, device, dtype):
    """The testbed's loader (same boot as the bundled model)."""
    folder = safety_fp32_dir(cache_dir)
    return boot(str(folder), SAFETY_NAME, device, dtype, prepend_bos=False)


register_testbed(
    Testbed(
        SAFETY_NAME,
        load=load_safety,
        summary="SmolLM2-135M-Instruct safety-tuned with a small LoRA delta (refuses harmful requests)",
    )
)
