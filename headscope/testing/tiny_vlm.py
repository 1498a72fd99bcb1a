"""Tiny LLaVA models built in code (offline, < 1 s): random weights, or with one planted image head.

``tiny_llava`` is a random-weight ``LlavaForConditionalGeneration`` (CLIP-style vision tower, 2-layer
projector, Llama text model) booted as a TransformerBridge exactly as a real LLaVA checkpoint from the
HF cache would be: the architecture check for headscope's vision path.

``planted_llava`` additionally wires one text head to attend only to image positions and to read a
large value from them, so its output changes most when the image is removed (VHD ground truth):

- residual dim ``IMAGE_DIM`` is 0 for every text token and ``IMAGE_VALUE`` for every image token (text
  embeddings zeroed there, the projector's last bias sets it); ``CONST_DIM`` is 1 for all tokens;
- no attention or MLP output writes either dim, so they survive to every layer;
- the planted head's query reads ``CONST_DIM`` and its key reads ``IMAGE_DIM`` in the slowest RoPE pair
  (rotation < 0.02 rad over 64 positions), so image keys outscore text keys by ~``SCORE_MARGIN`` logits;
- its value reads ``IMAGE_DIM``, so z = (large) on image tokens and ~0 without the image.

>>> model, truth = planted_llava()
>>> ids, pixels = tiny_vlm_prompt(model, n_before=2, n_after=3)
>>> logits = model(ids, pixel_values=pixels)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headscope.models.compat import set_attn_implementation
from headscope.models.loading import boot
from headscope.testing.tiny import (
    _TINY_INIT_STD,
    BOS_ID,
    PAD_ID,
    TINY_NAME,
    tiny_tokenizer,
)

VOCAB = 48
IMAGE_TOKEN = VOCAB - 1  # the last id of the tiny vocabulary stands for an image patch
IMAGE_DIM, CONST_DIM = 0, 1
IMAGE_VALUE = 30.0
SCORE_MARGIN = 40.0
VALUE_GAIN = 3.0


@dataclass(frozen=True)
class PlantedImageHead:
    head: tuple[int, int]  # (layer, head) that attends only to image tokens
    image_token: int
    n_image_tokens: int


def _config(n_layers: int, n_heads: int, n_kv_heads: int, d_model: int, image_size: int, patch: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
        eos_token_id=PAD_ID,
        initializer_range=_TINY_INIT_STD,
        # transformers' config dataclasses take attn_implementation as an extra keyword, which their
        # dataclass_transform typing does not declare
        attn_implementation="eager",  # type: ignore[call-arg]
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        num_channels=3,
        projection_dim=32,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    cfg.architectures = ["LlavaForConditionalGeneration"]  # TransformerLens picks its adapter from this
    set_attn_implementation(cfg, "eager")
    return cfg


def _boot(hf_model):
    return boot(TINY_NAME, "headscope/tiny-llava", None, None, None, hf_model=hf_model, tokenizer=tiny_tokenizer(VOCAB))


def _hf_llava(seed: int, **shape):
    from transformers import LlavaForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlavaForConditionalGeneration(_config(**shape)).eval()


def tiny_llava(
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 64,
    image_size: int = 32,
    patch: int = 8,
    seed: int = 0,
):
    """A random-weight LLaVA bridge; (image_size / patch)^2 image tokens per image (16 by default)."""
    return _boot(
        _hf_llava(
            seed,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            d_model=d_model,
            image_size=image_size,
            patch=patch,
        )
    )


def n_image_tokens(model) -> int:
    vision = model.original_model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


@torch.no_grad()
def _plant(hf, layer: int, head: int) -> None:
    lm = hf.model.language_model
    d_head = lm.config.head_dim
    n_heads, n_kv = lm.config.num_attention_heads, lm.config.num_key_value_heads
    kv = head // (n_heads // n_kv)
    lm.embed_tokens.weight[:, IMAGE_DIM] = 0.0
    lm.embed_tokens.weight[:, CONST_DIM] = 1.0
    proj = hf.model.multi_modal_projector.linear_2
    proj.weight[[IMAGE_DIM, CONST_DIM]] = 0.0
    proj.bias[IMAGE_DIM], proj.bias[CONST_DIM] = IMAGE_VALUE, 1.0
    for block in lm.layers:  # nothing may overwrite the two marker dims
        block.self_attn.o_proj.weight[[IMAGE_DIM, CONST_DIM]] = 0.0
        block.mlp.down_proj.weight[[IMAGE_DIM, CONST_DIM]] = 0.0
    attn = lm.layers[layer].self_attn
    # The slowest RoPE pair is (d_head/2 - 1, d_head - 1); using its first half keeps scores position-free.
    slot = d_head // 2 - 1
    q_rows, k_rows = slice(head * d_head, (head + 1) * d_head), slice(kv * d_head, (kv + 1) * d_head)
    attn.q_proj.weight[q_rows] = 0.0
    attn.k_proj.weight[k_rows] = 0.0
    attn.v_proj.weight[k_rows, IMAGE_DIM] = VALUE_GAIN
    # RMSNorm makes an image token's IMAGE_DIM entry ~sqrt(d_model); text tokens' CONST_DIM entry is ~1.
    d_model = lm.config.hidden_size
    attn.q_proj.weight[head * d_head + slot, CONST_DIM] = 1.0
    attn.k_proj.weight[kv * d_head + slot, IMAGE_DIM] = SCORE_MARGIN * d_head**0.5 / d_model**0.5


def planted_llava(layer: int = 1, head: int = 2, seed: int = 0):
    """A tiny LLaVA (2 layers, 4 heads, no GQA, so the head owns its K/V) with one planted image head.

    Returns (bridge, PlantedImageHead). The other heads keep their random weights.
    """
    hf = _hf_llava(seed, n_layers=2, n_heads=4, n_kv_heads=4, d_model=64, image_size=32, patch=8)
    _plant(hf, layer, head)
    bridge = _boot(hf)
    return bridge, PlantedImageHead((layer, head), IMAGE_TOKEN, n_image_tokens(bridge))


def tiny_vlm_prompt(model, n_before: int = 2, n_after: int = 4, seed: int = 0, n_images: int = 1):
    """([1, pos] ids, [n_images, 3, H, W] pixels): BOS, `n_before` text ids, the image block(s), `n_after` ids."""
    g = torch.Generator().manual_seed(seed)
    n_img = n_image_tokens(model)
    size = model.original_model.config.vision_config.image_size
    text = lambda n: torch.randint(2, IMAGE_TOKEN, (n,), generator=g).tolist()
    ids = [BOS_ID] + text(n_before)
    for _ in range(n_images):
        ids += [IMAGE_TOKEN] * n_img
    ids += text(n_after)
    pixels = torch.randn(n_images, 3, size, size, generator=g)
    return torch.tensor([ids]), pixels
