"""ModelInfo: what analyzers need to know about a model without poking at the bridge."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from ..errors import InputError

# Facts headscope learns when it loads a model (its name, which testbed it is, its image tokens...) and
# the ModelInfo read from it, kept beside the model rather than written onto it: the bridge and its
# tokenizer belong to the user. Weak keys, so a dropped model takes its entries with it.
_FACTS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_INFO: "weakref.WeakKeyDictionary[object, ModelInfo]" = weakref.WeakKeyDictionary()
_CONFIG_IMAGE_KEYS = ("image_token_index", "image_token_id")


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts of a decoder model, read once from a TransformerBridge.

    Example:
        >>> from headscope.testing import tiny_model
        >>> info = model_info(tiny_model())
        >>> info.kv_group(3)        # GQA: query head 3 reads KV head 3 // group_size
        1
    """

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int = 0  # 0 = unknown (a hand-built ModelInfo)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    prepend_bos: bool = False
    causal: bool = True  # False for bidirectional encoders (BERT): causal-only statistics are NaN there
    testbed: str | None = None  # the headscope testbed this model is (load_model records it), else None
    image_token_ids: frozenset = frozenset()  # ids that stand for image patches (empty: a text model)
    # Ids that end a greedy answer (see stop_token_ids); empty without a tokenizer.
    stop_token_ids: frozenset = field(default=frozenset(), compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False)  # a testbed's own facts (e.g. visual codes)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """KV head read by query head `head`."""
        self.check_head(0, head)
        return head // self.group_size

    def check_head(self, layer: int, head: int) -> None:
        """Raise InputError naming the valid range when (layer, head) does not exist."""
        if not 0 <= int(layer) < self.n_layers:
            raise InputError(
                f"layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}"
            )
        if not 0 <= int(head) < self.n_heads:
            raise InputError(
                f"head {head} is out of range: {self.name} has heads 0..{self.n_heads - 1} per layer"
            )

    def require_causal(self, method: str, why: str) -> None:
        """Raise InputError when `method` needs causal attention and this model is an encoder."""
        if not self.causal:
            raise InputError(f"{method} {why}, which assumes causal attention; {self.name} is a bidirectional "
                             "encoder. Fix: use a decoder model for this method.")

    def check_layers(self, layers) -> list[int]:
        """Normalise a layer selection (None = all; negatives count from the end)."""
        if layers is None:
            return list(range(self.n_layers))
        out = []
        for layer in layers:
            layer = int(layer)
            if -self.n_layers <= layer < 0:
                layer += self.n_layers
            self.check_head(layer, 0)
            out.append(layer)
        if not out:
            raise InputError("layers is empty: pass None for all layers or a non-empty list")
        return sorted(set(out))


def record_facts(model, **facts) -> None:
    """Record facts about a loaded model for its ModelInfo: `name`, `testbed`, `image_token_ids`, and
    anything else under `extra` (loaders and testbeds call this; nothing is written onto the model)."""
    known = {"name", "testbed", "image_token_ids"}
    entry = _FACTS.setdefault(model, {"extra": {}})
    for key, value in facts.items():
        if key in known:
            entry[key] = value
        else:
            entry["extra"][key] = value
    _INFO.pop(model, None)  # re-read with the new facts


def image_token_ids(model) -> frozenset[int]:
    """The token ids that stand for image patches in `model`'s input: a testbed's recorded ids, else the
    HF config's `image_token_index` / `image_token_id` (LLaVA family); empty for a text model."""
    recorded = _FACTS.get(model, {}).get("image_token_ids") if _weakrefable(model) else None
    if recorded is not None:
        return frozenset(int(t) for t in recorded)
    config = getattr(getattr(model, "original_model", None), "config", None)
    for key in _CONFIG_IMAGE_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return frozenset({int(value)})
    return frozenset()


def stop_token_ids(tokenizer) -> frozenset[int]:
    """Ids that end a greedy answer: every token whose text contains a newline, plus EOS.

    (The retrieval paper's code stops at Llama's `<0x0A>` token; byte-level BPE vocabularies spell
    newlines `Ċ` and have many tokens holding one, e.g. `ĊĊ`.) `model_info(model).stop_token_ids`
    holds them for a model's own tokenizer, read once.
    """
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return frozenset()
    names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids = {i for i, t in enumerate(names) if t and ("\n" in t or "Ċ" in t or t == "<0x0A>")}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def _weakrefable(model) -> bool:
    try:
        weakref.ref(model)
        return True
    except TypeError:
        return False


def model_info(model) -> ModelInfo:
    """Read a ModelInfo from a TransformerBridge (read once per model, kept beside it)."""
    cacheable = _weakrefable(model)
    cached = _INFO.get(model) if cacheable else None
    if cached is not None:
        return cached
    facts = _FACTS.get(model, {}) if cacheable else {}
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    if n_heads % n_kv:
        raise InputError(f"n_heads={n_heads} is not a multiple of n_key_value_heads={n_kv}")
    tok = getattr(model, "tokenizer", None)
    info = ModelInfo(
        name=str(facts.get("name") or cfg.model_name),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(getattr(cfg, "d_vocab", 0) or 0),
        bos_token_id=getattr(tok, "bos_token_id", None),
        pad_token_id=getattr(tok, "pad_token_id", None),
        prepend_bos=bool(getattr(cfg, "default_prepend_bos", False)),
        causal=_causal(model, cfg),
        testbed=facts.get("testbed"),
        image_token_ids=image_token_ids(model),
        stop_token_ids=stop_token_ids(tok),
        extra=dict(facts.get("extra", {})),
    )
    if cacheable:
        _INFO[model] = info
    return info


def _causal(model, cfg) -> bool:
    """Whether attention is causal. TransformerLens marks every BERT-like adapter bidirectional, but an
    HF encoder config with `is_decoder=True` (BertLMHeadModel's use) masks causally."""
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(hf_cfg, "is_decoder", False) and not getattr(hf_cfg, "is_encoder_decoder", False):
        return True
    return getattr(cfg, "attention_dir", "causal") != "bidirectional"


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether `tokenizer(text)` starts with its BOS token by default (Llama: yes; GPT-2, Qwen: no).
    An encoder's [CLS] plays that part (TransformerLens treats it as the BOS to prepend)."""
    if tokenizer is None:
        return False
    # The bridge gives a tokenizer without BOS one (BERT's becomes [UNK]), so check both names.
    firsts = {getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "cls_token_id", None)} - {None}
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] in firsts


def model_device(model):
    """The device of the model's parameters: every input headscope builds is moved there."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return getattr(getattr(model, "cfg", None), "device", None) or "cpu"
