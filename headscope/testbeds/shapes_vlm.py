"""The "shapes-vlm" testbed: a tiny LLaVA trained from scratch on the synthetic shapes world
(headscope/vision/shapes.py), shipped in data/models/shapes-vlm/ by analyses/train_shapes_vlm.py.
See docs/shapes-vlm.md.

The folder holds config.json (a LlavaConfig), model.safetensors, the word-level tokenizer files and
train_log.json. Loading builds the HF model from the config, loads the safetensors (no pickle) and
boots it as a TransformerBridge with the world's tokenizer.

Gotchas: prompts are built by headscope.vision.shapes (BOS included, so the bridge's
default_prepend_bos is off); the 16 ``<image>`` tokens (id 2) must be in the ids and the image passed
as ``pixel_values`` ([n_images, 3, 32, 32] in [0, 1], from shapes.render).

    >>> model = headscope.load_model("shapes-vlm")
    >>> prompt = shapes.item_prompt(item)               # ImagePrompt(ids, pixel_values)
    >>> logits = model(torch.tensor([prompt.ids]), pixel_values=prompt.pixel_values)
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HeadscopeError, ModelNotFoundError
from ..models.catalog import Testbed, register_testbed
from ..models.compat import set_attn_implementation
from ..models.info import model_info
from ..models.loading import boot
from ..paths import data_dir
from ..vision import shapes
from ..vision.datasets import DETECT_SEED, shapes_set

SHAPES_VLM_NAME = "shapes-vlm"
WEIGHTS, CONFIG, LOG = "model.safetensors", "config.json", "train_log.json"
FIX = (
    "Fix: restore data/models/shapes-vlm/ from the repository, or retrain it with "
    "`OMP_NUM_THREADS=1 python analyses/train_shapes_vlm.py` (~20 min on one CPU thread)."
)


def model_dir() -> Path:
    try:
        return data_dir() / "models" / SHAPES_VLM_NAME
    except HeadscopeError as exc:
        raise ModelNotFoundError(f"{SHAPES_VLM_NAME} needs headscope's data/ folder: {exc}") from exc


def train_log(folder: str | Path | None = None) -> dict:
    """The training record shipped with the checkpoint (seed, steps, wall time, held-out accuracies)."""
    path = Path(folder or model_dir()) / LOG
    if not path.is_file():
        raise ModelNotFoundError(f"{SHAPES_VLM_NAME}: {path} is missing. {FIX}")
    return json.loads(path.read_text())


def shapes_vlm_hf(folder: str | Path | None = None, device=None, dtype=None):
    """The plain HF LlavaForConditionalGeneration (eval mode, eager attention) from the shipped folder."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    folder = Path(folder or model_dir())
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise ModelNotFoundError(f"{SHAPES_VLM_NAME}: {folder / name} is missing. {FIX}")
    try:
        config = LlavaConfig.from_json_file(str(folder / CONFIG))
        config.architectures = ["LlavaForConditionalGeneration"]  # TransformerLens picks its adapter from this
        for cfg in (config, config.text_config, config.vision_config):
            set_attn_implementation(cfg, "eager")
        model = LlavaForConditionalGeneration(config)
        state = load_file(str(folder / WEIGHTS))
        model.load_state_dict(state, strict=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotFoundError(f"{SHAPES_VLM_NAME}: cannot build the model from {folder} ({exc}). {FIX}") from exc
    # transformers wraps PreTrainedModel.to with functools.wraps, whose typing mypy reads as needing `self`
    model.to(device=device or "cpu", dtype=dtype or torch.float32)  # type: ignore[call-arg]
    return model.eval()


def load_tokenizer(folder: str | Path | None = None):
    """The shipped tokenizer; it must equal the world's vocabulary (shapes.vocabulary())."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder or model_dir())
    if not (folder / "tokenizer.json").is_file():
        raise ModelNotFoundError(f"{SHAPES_VLM_NAME}: {folder / 'tokenizer.json'} is missing. {FIX}")
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    vocab = tok.get_vocab()
    if [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])] != shapes.vocabulary():
        raise ModelNotFoundError(
            f"{SHAPES_VLM_NAME}: the shipped tokenizer's vocabulary differs from "
            f"headscope.vision.shapes.vocabulary() (the world changed since training). {FIX}"
        )
    return tok


def load_shapes_vlm(cache_dir=None, device=None, dtype=None):
    """The testbed's loader (cache_dir is unused: the checkpoint is small and read in place)."""
    # shapes prompts carry their own BOS; the image token comes from config.image_token_index.
    return boot(
        shapes.TOKENIZER_NAME,
        SHAPES_VLM_NAME,
        device,
        dtype,
        prepend_bos=False,
        hf_model=shapes_vlm_hf(device=device, dtype=dtype),
        tokenizer=load_tokenizer(),
    )


def is_shapes_vlm(model) -> bool:
    return model_info(model).testbed == SHAPES_VLM_NAME


def image_prompts(model, n: int | None = None) -> list:
    """shapes-vlm's built-in image questions (ImagePrompts) from the detection seed, disjoint from the
    held-out evaluation sets (64 unless `n` says)."""
    return [shapes.item_prompt(it) for it in shapes_set("image_qa", n=n or 64, seed=DETECT_SEED)]


register_testbed(
    Testbed(
        SHAPES_VLM_NAME,
        load=load_shapes_vlm,
        image_prompts=image_prompts,
        summary="a tiny LLaVA trained from scratch on the synthetic shapes world",
    )
)
