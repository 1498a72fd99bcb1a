"""The "smollm2-visual-sinks" testbed: SmolLM2-135M-Instruct reading projected "visual" tokens, some of
which are planted visual attention sinks (docs/methods.md, VAR; docs/visual-sink.md).

No vision encoder exists offline, so the "image" is a sequence of codes from a fixed visual codebook:
- K codes (data/models/smollm2-visual-sinks/manifest.json: n_codes = 64) get new token ids after the
  text vocabulary (49152 + k, tokenizer strings ``<img_k>``). Code k's embedding row is a seeded random
  projection of a seeded random "patch feature" vector, rescaled to the median norm of SmolLM2's token
  embeddings, so ordinary codes look like ordinary tokens in scale.
- A seeded subset of `n_sink_codes` codes are *sink codes*: their rows also carry the first token's
  massive activation, i.e. the first token's value(s) in its massive dims (dim 507, ~2.5e4), measured on
  SmolLM2 at the input of the first layer where the first token's activation is massive (Sun et al.'s
  |x| > 100 and >= 1000 x median, layer 12). Measured by `measure_first_token_massive()` and recorded in
  the manifest (a test re-measures it).

Why the embedding rows and not a hook at layer 12's input: a weight edit needs no hook to keep alive,
so the plain HF model, the TransformerBridge, KV-cached generation and any other tool see the same
model, and the independent HF `output_attentions` reference in the tests needs nothing special. The
price: the sink codes are "massive" from layer 0, whereas the real first token becomes massive only at
layer 12 (in layers 2-9 SmolLM2's dim 507 is already the largest dim of many tokens, see the docs).
After each RMSNorm a sink code's vector is ~sqrt(d_model) * e_507, the same direction as the first
token's, which is what makes it a sink; its patch features are drowned, as the paper reports for real
visual sinks (little information).

The lm_head is untied: the text rows keep SmolLM2's (tied) embeddings and the code rows are zero, so
every code gets logit exactly 0 and text predictions are unchanged (tying would give the sink codes
logits ~ 2.5e4 x h_507). Everything is built deterministically in memory at load time (~2 s).

    >>> model = headscope.load_model("smollm2-visual-sinks")
    >>> p = visual_prompt(model, "<|im_start|>user\\n", n_visual=32, n_sinks=2, after_text="\\nWhat is in the image?")
    >>> p.ids, p.image_span, p.sink_positions, p.control_ids
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HeadscopeError, InputError, ModelNotFoundError
from ..models import bundled
from ..models.catalog import Testbed, register_testbed
from ..models.info import model_info, record_facts
from ..models.loading import boot
from ..paths import data_dir

VISUAL_SINKS_NAME = "smollm2-visual-sinks"
MANIFEST = "manifest.json"
FIX = "Fix: restore data/models/smollm2-visual-sinks/manifest.json from the repository."
CODE_TOKEN = "<img_{}>"
# Prompts on which the first token's massive activation is measured (any text works: its value varies
# by < 10% across prompts).
MEASURE_PROMPTS = (
    "<|im_start|>user\nWhat is in the image? Describe it in detail please.<|im_end|>\n<|im_start|>assistant\n",
    "The cat sat on the mat. It was happy and the sun was shining.",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n",
)


@dataclass(frozen=True)
class VisualCodes:
    """The codebook of a loaded testbed: token ids of all codes, of the sink codes and of the others."""

    ids: tuple[int, ...]
    sink_ids: tuple[int, ...]
    sink_dims: tuple[int, ...]
    sink_values: tuple[float, ...]

    @property
    def plain_ids(self) -> tuple[int, ...]:
        return tuple(i for i in self.ids if i not in set(self.sink_ids))


@dataclass(frozen=True)
class VisualPrompt:
    """One prompt with an image: ids, the image's [start, end) span, the planted sink positions, and
    `control_ids`: the same prompt with ordinary codes at those positions (the "without sinks" run)."""

    ids: tuple[int, ...]
    image_span: tuple[int, int]
    sink_positions: tuple[int, ...]
    control_ids: tuple[int, ...]


def manifest_path() -> Path:
    try:
        return data_dir() / "models" / VISUAL_SINKS_NAME / MANIFEST
    except HeadscopeError as exc:
        raise ModelNotFoundError(f"{VISUAL_SINKS_NAME} needs headscope's data/ folder: {exc}") from exc


def read_manifest(path: str | Path | None = None) -> dict:
    path = Path(path) if path is not None else manifest_path()
    try:
        m = json.loads(path.read_text())
        missing = {"n_codes", "n_sink_codes", "feature_dim", "seed", "sink_dims", "sink_values"} - set(m)
        if missing:
            raise KeyError(f"missing fields {sorted(missing)}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{VISUAL_SINKS_NAME}: cannot read the manifest {path} ({exc}). {FIX}") from exc
    if len(m["sink_dims"]) != len(m["sink_values"]) or not 0 < m["n_sink_codes"] < m["n_codes"]:
        raise ModelNotFoundError(
            f"{VISUAL_SINKS_NAME}: {path} is inconsistent (sink_dims/sink_values lengths, "
            f"or n_sink_codes not in 1..n_codes-1). {FIX}"
        )
    return m


def measure_first_token_massive(
    hf_model, tokenizer, prompts=MEASURE_PROMPTS, min_abs: float = 100.0, min_ratio: float = 1000.0
) -> dict:
    """The first token's massive dims and their mean value at the input of the first layer where they are
    massive in every prompt (Sun et al.'s |x| > min_abs and >= min_ratio x the median |x| of that layer)."""
    import torch

    states = []
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            hs = hf_model(ids, output_hidden_states=True).hidden_states  # hs[l] = input of layer l (l < L)
            states.append(torch.stack(hs[:-1])[:, 0])  # [layer, pos, d]; the last entry is post final norm
    for layer in range(states[0].shape[0]):
        found = []
        for x in states:
            x0, med = x[layer, 0], x[layer].abs().median()
            found.append({int(d) for d in torch.nonzero((x0.abs() > min_abs) & (x0.abs() >= min_ratio * med))[:, 0]})
        dims = sorted(set.intersection(*found))
        if dims:
            values = [float(np.mean([float(x[layer, 0, d]) for x in states])) for d in dims]
            return {"layer": layer, "sink_dims": dims, "sink_values": values}
    raise HeadscopeError("the first token has no massive activation in any layer of this model")


def code_rows(manifest: dict, d_model: int, target_norm: float):
    """[n_codes, d_model] embedding rows and the sink code indices, deterministic given the manifest."""
    import torch

    g = torch.Generator().manual_seed(int(manifest["seed"]))
    k, f = int(manifest["n_codes"]), int(manifest["feature_dim"])
    features = torch.randn(k, f, generator=g)  # the codes' "patch features"
    projection = torch.randn(f, d_model, generator=g) / f**0.5  # the fixed "vision projector"
    rows = features @ projection
    rows = rows * (target_norm / rows.norm(dim=-1, keepdim=True))
    sinks = sorted(torch.randperm(k, generator=g)[: int(manifest["n_sink_codes"])].tolist())
    for d, v in zip(manifest["sink_dims"], manifest["sink_values"]):
        rows[sinks, int(d)] = float(v)
    return rows, sinks


def visual_sinks_hf(cache_dir=None, device=None, dtype=None, manifest: dict | None = None):
    """(plain HF LlamaForCausalLM with the codebook, tokenizer with <img_k> tokens, VisualCodes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = manifest or read_manifest()
    folder = bundled.smollm2_fp32_dir(cache_dir)
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    old = hf.model.embed_tokens.weight.detach()  # [V, d], tied to lm_head
    v, d = old.shape
    rows, sinks = code_rows(manifest, d, float(old.norm(dim=-1).median()))
    k = rows.shape[0]
    n_added = tok.add_tokens([CODE_TOKEN.format(i) for i in range(k)], special_tokens=True)
    if n_added != k or tok.convert_tokens_to_ids(CODE_TOKEN.format(0)) != v:
        raise ModelNotFoundError(
            f"{VISUAL_SINKS_NAME}: the tokenizer does not end at the embedding size {v}; "
            "the bundled SmolLM2 cache looks wrong. Fix: delete it so it is rebuilt."
        )
    embed = torch.nn.Embedding(v + k, d)
    lm_head = torch.nn.Linear(d, v + k, bias=False)
    with torch.no_grad():
        embed.weight.copy_(torch.cat([old, rows]))
        lm_head.weight.copy_(torch.cat([old, torch.zeros(k, d)]))  # untied: codes get logit 0
    hf.config.tie_word_embeddings = False
    hf.config.vocab_size = v + k
    hf.model.embed_tokens, hf.lm_head = embed, lm_head
    hf.to(device=device or "cpu", dtype=dtype or torch.float32)
    ids = tuple(range(v, v + k))
    codes = VisualCodes(
        ids,
        tuple(v + s for s in sinks),
        tuple(int(x) for x in manifest["sink_dims"]),
        tuple(float(x) for x in manifest["sink_values"]),
    )
    return hf.eval(), tok, codes


def load_visual_sinks(cache_dir=None, device=None, dtype=None):
    """The testbed's loader (built in memory from the bundled fp32 SmolLM2)."""
    hf, tok, codes = visual_sinks_hf(cache_dir, device, dtype)
    # prepend_bos False as the bundled SmolLM2: its tokenizer adds no BOS.
    bridge = boot(
        str(bundled.smollm2_fp32_dir(cache_dir)),
        VISUAL_SINKS_NAME,
        device,
        dtype,
        prepend_bos=False,
        hf_model=hf,
        tokenizer=tok,
    )
    record_facts(bridge, image_token_ids=frozenset(codes.ids), visual_codes=codes)
    return bridge


def visual_codes(model) -> VisualCodes:
    codes = model_info(model).extra.get("visual_codes")
    if codes is None:
        raise InputError(
            "this model is not the visual-sink testbed (no visual codebook). "
            f"Fix: model = headscope.load_model({VISUAL_SINKS_NAME!r})."
        )
    return codes


def is_visual_sinks(model) -> bool:
    return model_info(model).extra.get("visual_codes") is not None


def _encode(model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def visual_prompt(
    model, before_text: str, n_visual: int = 32, n_sinks: int = 2, after_text: str = "", seed: int = 0
) -> VisualPrompt:
    """before_text + an "image" of `n_visual` codes + after_text, with `n_sinks` sink codes planted at
    seeded positions inside the image (never its first or last token). The other codes and the control
    codes put at the sink positions are drawn (seeded) from the ordinary codes."""
    codes = visual_codes(model)
    if not (isinstance(n_visual, int) and n_visual >= 1 and isinstance(n_sinks, int) and 0 <= n_sinks <= n_visual - 2):
        raise InputError(
            f"need n_visual >= 1 and 0 <= n_sinks <= n_visual - 2, got n_visual={n_visual!r}, "
            f"n_sinks={n_sinks!r}. Fix: use fewer sinks or a longer image."
        )
    rng = np.random.default_rng(seed)
    plain = np.asarray(codes.plain_ids)
    image = rng.choice(plain, n_visual).tolist()
    control_image = list(image)
    where = sorted(rng.choice(np.arange(1, n_visual - 1), n_sinks, replace=False).tolist()) if n_sinks else []
    sink_choice = rng.choice(np.asarray(codes.sink_ids), n_sinks).tolist() if n_sinks else []
    for w, s in zip(where, sink_choice):
        image[w] = int(s)
    before, after = _encode(model, before_text), _encode(model, after_text)
    start = len(before)
    return VisualPrompt(
        tuple(before + [int(t) for t in image] + after),
        (start, start + n_visual),
        tuple(start + w for w in where),
        tuple(before + [int(t) for t in control_image] + after),
    )


# Questions about "the image", in chat form (SmolLM2's template) and plain form.
DEFAULT_TEMPLATES = (
    ("<|im_start|>user\n", "\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n"),
    (
        "<|im_start|>user\nLook at this picture: ",
        "\nDescribe the image in one sentence.<|im_end|>\n<|im_start|>assistant\n",
    ),
    ("<|im_start|>user\n", "\nWhat color is the object in the image?<|im_end|>\n<|im_start|>assistant\n"),
    ("<|im_start|>user\nHere is a photo. ", "\nHow many animals are in the image?<|im_end|>\n<|im_start|>assistant\n"),
    ("Image: ", "\nQuestion: What is shown in the image? Answer:"),
    ("Here is an image: ", "\nQuestion: Is there a person in the image? Answer:"),
    ("Picture: ", "\nCaption: This image shows"),
    ("The following image ", " was taken outdoors. Question: what is the weather in the image? Answer:"),
)


def default_prompts(model, n_prompts: int = 8, n_visual: int = 32, n_sinks: int = 2) -> list[VisualPrompt]:
    """The testbed's default prompt set: the templates above (cycled), prompt i drawn with seed i."""
    out = []
    for i in range(n_prompts):
        before, after = DEFAULT_TEMPLATES[i % len(DEFAULT_TEMPLATES)]
        out.append(visual_prompt(model, before, n_visual=n_visual, n_sinks=n_sinks, after_text=after, seed=i))
    return out


def image_prompts(model, n: int | None = None) -> list:
    """The default prompts (8 unless `n` says) as (prefix, image, suffix) id triples."""
    out = []
    for p in default_prompts(model, n_prompts=n or 8):
        (s, e), ids = p.image_span, list(p.ids)
        out.append((ids[:s], ids[s:e], ids[e:]))
    return out


register_testbed(
    Testbed(
        VISUAL_SINKS_NAME,
        load=load_visual_sinks,
        image_prompts=image_prompts,
        summary="SmolLM2 with a visual codebook whose sink codes carry massive activations",
    )
)
