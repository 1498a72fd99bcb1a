"""The synthetic shapes world of the "shapes-vlm" testbed: scenes, rendering, tokenizer, QA items.

A scene is 1-3 coloured shapes in distinct cells of a 2x2 grid on a black 32x32 image (one 16x16 cell
= 2x2 patches of 8 px, so the vision tower gives 16 image tokens). Everything is generated in code
from a numpy Generator seed, so the training data and the held-out sets are reproducible.

Items are word sequences. The model input is LLaVA-style and contiguous::

    <s> <image> x16 what colour is the circle ?   |  red          (image item)
    <s> what is two plus one ?                    |  three        (text item)

"Removing the image" = deleting the ``<image>`` tokens and passing no pixel_values.

Scene sampling has a planted co-occurrence prior (each object type has a "companion" that joins it in
``COMPANION_P`` of multi-object scenes), the language bias POPE's "popular/adversarial" splits probe:
a model that leans on it says yes to an absent companion.

    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng)
    >>> px = render(scene)                      # FloatTensor [3, 32, 32] in [0, 1]; render(scene, noise=0.3) is harder
    >>> item = sample_image_item(rng, scene)    # QAItem(kind, question, answer, scene, ...)
    >>> ids, n_prompt = encode_item(item)            # word ids; shapes_tokenizer() gives the same
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args, overload

import numpy as np
import torch

from ..inputs.images import ImagePrompt

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {  # RGB in [0, 1]; far apart so a single pixel identifies the colour
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.85, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0),
}
CELLS = ("top-left", "top-right", "bottom-left", "bottom-right")  # row-major in the 2x2 grid
IMAGE_SIZE, CELL, PATCH = 32, 16, 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
COMPANION_P = 0.5  # chance that a multi-object scene's 2nd object is the 1st one's companion
DESCRIBE_Q = ("describe", "the", "image", ".")
END = "."  # last token of every description

PAD, BOS, IMAGE = "<pad>", "<s>", "<image>"
PAD_ID, BOS_ID, IMAGE_TOKEN_ID = 0, 1, 2
TOKENIZER_NAME = "headscope/shapes-vlm"

# Text-only skills, so the language model has non-visual knowledge (and priors) of its own.
FACTS = {
    "grass": "green",
    "sky": "blue",
    "sun": "yellow",
    "blood": "red",
    "snow": "white",
    "banana": "yellow",
    "leaf": "green",
    "sea": "blue",
    "fire": "red",
    "milk": "white",
}
OPPOSITES = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "up": "down",
    "down": "up",
    "big": "small",
    "small": "big",
    "black": "white",
    "white": "black",
    "hot": "cold",
    "cold": "hot",
    "yes": "no",
    "no": "yes",
}
SIDES = {"triangle": "three", "square": "four", "circle": "zero"}


def _companions() -> dict[tuple[str, str], tuple[str, str]]:
    """A fixed pairing of object types: (colour, shape) -> a different colour and a different shape."""
    cols = list(COLOURS)
    return {
        (c, s): (cols[(i + 2) % len(cols)], SHAPES[(j + 1) % len(SHAPES)])
        for i, c in enumerate(cols)
        for j, s in enumerate(SHAPES)
    }


COMPANION = _companions()


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cell: str
    dx: int = 0  # jitter in pixels, -1..1: part of the scene so rendering stays a pure function
    dy: int = 0

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def at(self, cell: str) -> Obj | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def has(self, colour: str, shape: str) -> bool:
        return any(o.kind == (colour, shape) for o in self.objects)

    def sorted_objects(self) -> list[Obj]:
        return sorted(self.objects, key=lambda o: CELLS.index(o.cell))


@dataclass(frozen=True)
class QAItem:
    kind: str  # "colour_of_shape", "shape_at", ..., "pope", "describe", "fact", ...
    question: tuple[str, ...]
    answer: tuple[str, ...]
    scene: Scene | None = None  # None for text-only items
    meta: dict = field(default_factory=dict, compare=False)  # pope: {"label": bool, "probe": str}

    @property
    def has_image(self) -> bool:
        return self.scene is not None


# ----------------------------------------------------------------------------- rendering


def _mask(shape: str, dx: int, dy: int) -> np.ndarray:
    """Boolean [CELL, CELL] mask of a shape centred in its cell (+ jitter). Every shape covers the centre."""
    y, x = np.mgrid[0:CELL, 0:CELL].astype(np.float32) + 0.5
    cx, cy, r = CELL / 2 + dx, CELL / 2 + dy, 5.5
    u, v = x - cx, y - cy
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return (np.abs(u) <= 4.5) & (np.abs(v) <= 4.5)
    if shape == "triangle":  # apex up, base at the bottom
        return (v >= -r) & (v <= r) & (np.abs(u) <= (v + r) / 2)
    if shape == "cross":
        return ((np.abs(u) <= 1.5) & (np.abs(v) <= r)) | ((np.abs(v) <= 1.5) & (np.abs(u) <= r))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(scene: Scene, noise: float = 0.0, noise_seed: int = 0) -> torch.Tensor:
    """FloatTensor [3, 32, 32]: black background, each object filled with its colour (values in [0, 1]).

    `noise` > 0 adds Gaussian pixel noise of that std (values leave [0, 1]): the knob that makes the
    trained model hallucinate (docs/shapes-vlm.md). The noise is a function of (noise_seed, scene), so a
    scene looks the same in every question and every call, with or without interventions.
    """
    img = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for o in scene.objects:
        row, col = divmod(CELLS.index(o.cell), 2)
        m = _mask(o.shape, o.dx, o.dy)
        sl = (slice(row * CELL, (row + 1) * CELL), slice(col * CELL, (col + 1) * CELL))
        for ch, value in enumerate(COLOURS[o.colour]):
            img[ch][sl][m] = value
    if noise:
        rng = np.random.default_rng([noise_seed, zlib.crc32(repr(scene).encode())])
        img += (noise * rng.standard_normal(img.shape)).astype(np.float32)
    return torch.from_numpy(img)


def render_batch(scenes, noise: float = 0.0, noise_seed: int = 0) -> torch.Tensor:
    """[n, 3, 32, 32]: `render` of each scene."""
    if not scenes:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.stack([render(s, noise, noise_seed) for s in scenes])


# ----------------------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """1-3 objects (uniform) in distinct cells; object types distinct; 2nd object often the 1st's companion."""
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    cells = rng.permutation(len(CELLS))[:n]
    cols = list(COLOURS)
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n:
        if len(kinds) == 1 and rng.random() < COMPANION_P:
            k = COMPANION[kinds[0]]
        else:
            k = (cols[rng.integers(len(cols))], SHAPES[rng.integers(len(SHAPES))])
        if k not in kinds:
            kinds.append(k)
    objs = [
        Obj(shape=s, colour=c, cell=CELLS[ci], dx=int(rng.integers(-1, 2)), dy=int(rng.integers(-1, 2)))
        for (c, s), ci in zip(kinds, cells)
    ]
    return Scene(tuple(objs))


def describe_text(scene: Scene) -> tuple[str, ...]:
    """Target description: objects in cell order, "red circle top-left , blue square bottom-right ."."""
    words: list[str] = []
    for i, o in enumerate(scene.sorted_objects()):
        words += ([","] if i else []) + [o.colour, o.shape, o.cell]
    return tuple(words + [END])


def describe_item(scene: Scene) -> QAItem:
    return QAItem("describe", DESCRIBE_Q, describe_text(scene), scene)


# POPE's absent-object probes (see _absent_kind).
Probe = Literal["random", "adversarial", "companion"]
PROBES: tuple[Probe, ...] = get_args(Probe)


def _absent_kind(rng, scene: Scene, probe: Probe) -> tuple[str, str] | None:
    """An object type not in the scene: "random", "adversarial" (a present shape in a wrong colour or a
    present colour on a wrong shape) or "companion" (the planted co-occurrence partner of a present object)."""
    cols = list(COLOURS)
    if probe == "random":
        pool = [(c, s) for c in cols for s in SHAPES]
    elif probe == "adversarial":
        pool = [(c, o.shape) for o in scene.objects for c in cols] + [
            (o.colour, s) for o in scene.objects for s in SHAPES
        ]
    elif probe == "companion":
        pool = [COMPANION[o.kind] for o in scene.objects]
    else:
        raise ValueError(f"unknown probe {probe!r}; known: {PROBES}")
    pool = sorted({k for k in pool if not scene.has(*k)})
    return pool[rng.integers(len(pool))] if pool else None


@overload
def pope_item(rng, scene: Scene, present: Literal[True], probe: Probe = "random") -> QAItem: ...
@overload
def pope_item(rng, scene: Scene, present: bool, probe: Probe = "random") -> QAItem | None: ...
def pope_item(rng, scene: Scene, present: bool, probe: Probe = "random") -> QAItem | None:
    """ "is there a <colour> <shape> ?" about a present object (yes) or an absent one of the given probe type."""
    if present:
        o = scene.objects[rng.integers(len(scene.objects))]
        kind = o.kind
    else:
        kind = _absent_kind(rng, scene, probe)
        if kind is None:
            return None
    return QAItem(
        "pope",
        ("is", "there", "a", *kind, "?"),
        ("yes" if present else "no",),
        scene,
        {"label": present, "probe": "present" if present else probe},
    )


def sample_image_item(rng, scene: Scene, kind: ImageKind | None = None) -> QAItem:
    """One question about `scene` (kind drawn uniformly over IMAGE_KINDS unless given)."""
    kind = kind or IMAGE_KINDS[rng.integers(len(IMAGE_KINDS))]
    objs = scene.objects
    o = objs[rng.integers(len(objs))]
    if kind == "colour_of_shape":
        unique = [x for x in objs if sum(y.shape == x.shape for y in objs) == 1]
        if not unique:  # every shape appears twice: the question would be ambiguous
            return sample_image_item(rng, scene, "colour_at")
        o = unique[rng.integers(len(unique))]
        return QAItem(kind, ("what", "colour", "is", "the", o.shape, "?"), (o.colour,), scene)
    if kind == "shape_at":  # an empty cell a third of the time: the answer is "nothing"
        cell = (
            o.cell
            if rng.random() < 2 / 3 or len(objs) == len(CELLS)
            else [c for c in CELLS if scene.at(c) is None][rng.integers(len(CELLS) - len(objs))]
        )
        hit = scene.at(cell)
        return QAItem(kind, ("what", "shape", "is", "at", cell, "?"), (hit.shape if hit else "nothing",), scene)
    if kind == "colour_at":
        return QAItem(kind, ("what", "colour", "is", "at", o.cell, "?"), (o.colour,), scene)
    if kind == "count":
        return QAItem(kind, ("how", "many", "objects", "?"), (NUMBERS[len(objs)],), scene)
    if kind == "where":
        return QAItem(kind, ("where", "is", "the", o.colour, o.shape, "?"), (o.cell,), scene)
    if kind == "pope":
        present = rng.random() < 0.5
        probe = PROBES[rng.integers(len(PROBES))]
        return pope_item(rng, scene, present, probe) or pope_item(rng, scene, True)
    if kind == "describe":
        return describe_item(scene)
    raise ValueError(f"unknown image item kind {kind!r}; known: {IMAGE_KINDS}")


ImageKind = Literal["colour_of_shape", "shape_at", "colour_at", "count", "where", "pope", "describe"]
IMAGE_KINDS: tuple[ImageKind, ...] = get_args(ImageKind)
# Each item kind that ends in one answer word (everything but "describe").
SINGLE_ANSWER_KINDS = IMAGE_KINDS[:-1]


def text_items() -> list[QAItem]:
    """All text-only items (a finite set: facts, opposites, arithmetic, sides of shapes)."""
    items = [QAItem("fact", ("what", "colour", "is", k, "?"), (v,)) for k, v in FACTS.items()]
    items += [QAItem("opposite", ("opposite", "of", k, "?"), (v,)) for k, v in OPPOSITES.items()]
    items += [
        QAItem("plus", ("what", "is", NUMBERS[a], "plus", NUMBERS[b], "?"), (NUMBERS[a + b],))
        for a in range(5)
        for b in range(5)
    ]
    items += [
        QAItem("minus", ("what", "is", NUMBERS[a], "minus", NUMBERS[b], "?"), (NUMBERS[a - b],))
        for a in range(NUMBERS.index("eight") + 1)
        for b in range(a + 1)
        if a <= 6
    ]
    items += [QAItem("sides", ("how", "many", "sides", "has", "a", k, "?"), (v,)) for k, v in SIDES.items()]
    return items


# ----------------------------------------------------------------------------- tokenizer and inputs


def vocabulary() -> list[str]:
    """Every word of the world, ids in this order (<pad> 0, <s> 1, <image> 2)."""
    words = [PAD, BOS, IMAGE, "?", ".", ",", "yes", "no", "nothing", *SHAPES, *COLOURS, *CELLS, *NUMBERS]
    for it in text_items() + [QAItem("x", DESCRIBE_Q, ())]:
        words += list(it.question) + list(it.answer)
    words += ["what", "colour", "shape", "is", "the", "at", "how", "many", "objects", "where", "there", "a"]
    return list(dict.fromkeys(words))  # de-duplicated, first occurrence order


_VOCAB_IDS: dict[str, int] = {}


def _vocab_ids() -> dict[str, int]:
    if not _VOCAB_IDS:
        _VOCAB_IDS.update({w: i for i, w in enumerate(vocabulary())})
    return _VOCAB_IDS


def shapes_tokenizer():
    """Word-level PreTrainedTokenizerFast over `vocabulary()`; BOS ``<s>`` is prepended on encode.

    >>> tok = shapes_tokenizer()
    >>> tok.decode(tok("what colour is the circle ?")["input_ids"])
    '<s> what colour is the circle ?'
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, BOS_ID)])
    # name_or_path + add_bos_token stop TransformerLens from trying to download a tokenizer.
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        pad_token=PAD,
        eos_token=PAD,
        unk_token=PAD,
        additional_special_tokens=[IMAGE],
        add_bos_token=True,
        name_or_path=TOKENIZER_NAME,
    )


def _ids(tok, words) -> list[int]:
    """Word ids via `tok`, or straight from `vocabulary()` when tok is None (the same ids)."""
    if tok is None:
        vocab = _vocab_ids()
        ids = [vocab.get(w, PAD_ID) for w in words]
    else:
        ids = tok.convert_tokens_to_ids(list(words))
    unknown = [w for w, i in zip(words, ids) if i == PAD_ID]
    if unknown:
        raise ValueError(f"words not in the shapes vocabulary: {unknown}")
    return ids


def prompt_ids(item: QAItem, tok=None) -> list[int]:
    """BOS, the image block (image items only), the question: what the model sees before answering."""
    image = [IMAGE_TOKEN_ID] * N_IMAGE_TOKENS if item.has_image else []
    return [BOS_ID] + image + _ids(tok, item.question)


def encode_item(item: QAItem, tok=None) -> tuple[list[int], int]:
    """(prompt + answer ids, prompt length): the training sequence; loss on positions >= prompt length."""
    p = prompt_ids(item, tok)
    return p + _ids(tok, item.answer), len(p)


def item_prompt(item: QAItem, tok=None, noise: float = 0.0, noise_seed: int = 0):
    """An ImagePrompt (image items) or a plain id list (text items), for headscope's analyzers."""
    ids = prompt_ids(item, tok)
    if item.scene is None:  # a text item (not has_image)
        return ids
    return ImagePrompt(tuple(ids), render(item.scene, noise, noise_seed).unsqueeze(0))


def sample_items(seed: int, n: int, text_fraction: float = 0.15, kinds=IMAGE_KINDS) -> list[QAItem]:
    """`n` items: image questions over fresh scenes, plus about `text_fraction` text-only items."""
    rng = np.random.default_rng(seed)
    texts = text_items()
    out = []
    for _ in range(n):
        if rng.random() < text_fraction:
            out.append(texts[rng.integers(len(texts))])
        else:
            out.append(sample_image_item(rng, sample_scene(rng), kinds[rng.integers(len(kinds))]))
    return out


def pope_items(seed: int, n_scenes: int, probes: Sequence[Probe] = PROBES) -> list[QAItem]:
    """Balanced POPE set: per scene one present probe and one absent probe (probe type cycling)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_scenes):
        scene = sample_scene(rng)
        absent = None
        for k in range(len(probes)):  # a probe type with no absent candidate falls through to the next
            absent = pope_item(rng, scene, False, probes[(i + k) % len(probes)])
            if absent is not None:
                break
        out += [pope_item(rng, scene, True), absent]
    return [x for x in out if x is not None]
