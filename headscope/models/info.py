"""ModelInfo: what analyzers need to know about a model without poking at the bridge."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from ..errors import InputError
from ..results import kinds_note
from ..results import kinds_text as _kinds_text
from .family import family_of, prepare_bridge
from .family import layer_kinds as config_layer_kinds

# Facts headscope learns when it loads a model (its name, which testbed it is, its image tokens...) and
# the ModelInfo read from it, kept beside the model rather than written onto it: the bridge and its
# tokenizer belong to the user. Weak keys, so a dropped model takes its entries with it.
_FACTS: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()
_INFO: weakref.WeakKeyDictionary[object, ModelInfo] = weakref.WeakKeyDictionary()
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
    d_head: int  # the width of one head's output z (hook_z); MLA: v_head_dim (the q/k width differs)
    d_model: int
    n_ctx: int
    d_vocab: int = 0  # 0 = unknown (a hand-built ModelInfo)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    prepend_bos: bool = False
    causal: bool = True  # False for bidirectional encoders (BERT): causal-only statistics are NaN there
    testbed: str | None = None  # the headscope testbed this model is (load_model records it), else None
    image_token_ids: frozenset = frozenset()  # ids that stand for image patches (empty: a text model)
    # Learned per-head sink logits join every softmax (GPT-OSS): a pattern row over the real keys sums to
    # 1 - the sink's share (`sink_logit_mass`), not to 1.
    learned_sinks: bool = False
    # Ids that end a greedy answer (see stop_token_ids); empty without a tokenizer.
    stop_token_ids: frozenset = field(default=frozenset(), compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False)  # a testbed's own facts (e.g. visual codes)
    # Hybrids (Qwen3-Next, Jamba, Granite-MoE-hybrid...): per layer, "attention" or the mixer it has
    # instead ("linear_attention", "mamba"...). None = every layer is attention. Heads exist only on
    # attention layers: results keep the model's own layer indices, other layers' rows are NaN.
    layer_kinds: tuple[str, ...] | None = None

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """KV head read by query head `head`."""
        self.check_head(self.attention_layers[0] if self.attention_layers else 0, head)
        return head // self.group_size

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The layers that have attention heads, by the model's own indices (all of them unless a hybrid)."""
        if self.layer_kinds is None:
            return tuple(range(self.n_layers))
        return tuple(i for i, kind in enumerate(self.layer_kinds) if kind == "attention")

    def heads(self) -> list[tuple[int, int]]:
        """Every (layer, head) the model has: the heads of its attention layers."""
        return [(l, h) for l in self.attention_layers for h in range(self.n_heads)]

    def has_heads(self, layer: int) -> bool:
        return self.layer_kinds is None or self.layer_kinds[int(layer)] == "attention"

    def kinds_note(self) -> str:
        """One line saying which layers have no heads and why ("" on a model whose layers all attend)."""
        return kinds_note(self.layer_kinds)

    def check_head(self, layer: int, head: int) -> None:
        """Raise InputError naming the valid range when (layer, head) does not exist (a layer without
        attention, on a hybrid, has no heads)."""
        if not 0 <= int(layer) < self.n_layers:
            raise InputError(f"layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}")
        if not self.attention_layers:
            raise InputError(
                f"{self.name} has no layer whose attention the TransformerLens bridge maps as `attn` (layer "
                f"kinds: {_kinds_text(self.layer_kinds)}), so it has no heads headscope can read. Fix: a model "
                "whose bridge maps its attention (docs/architectures.md lists the families checked)"
            )
        if not self.has_heads(layer) and self.layer_kinds is not None:  # (False only with layer_kinds)
            raise InputError(
                f"layer {layer} of {self.name} is a {self.layer_kinds[int(layer)]} layer: it has no attention "
                f"heads. Layer kinds: {_kinds_text(self.layer_kinds)}. Fix: use an attention layer "
                f"({', '.join(map(str, self.attention_layers))})"
            )
        if not 0 <= int(head) < self.n_heads:
            raise InputError(f"head {head} is out of range: {self.name} has heads 0..{self.n_heads - 1} per layer")

    def require_causal(self, method: str, why: str) -> None:
        """Raise InputError when `method` needs causal attention and this model is an encoder."""
        if not self.causal:
            raise InputError(
                f"{method} {why}, which assumes causal attention; {self.name} is a bidirectional "
                "encoder. Fix: use a decoder model for this method."
            )

    def check_layers(self, layers) -> list[int]:
        """Normalise a layer selection of layers with heads (None = every attention layer; negatives
        count from the end; a hybrid's other layers are refused by `check_head`)."""
        if layers is None:
            if not self.attention_layers:
                self.check_head(0, 0)  # the InputError saying the bridge maps no attention
            return list(self.attention_layers)
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
    """Record facts about a loaded model for its ModelInfo: `name`, `testbed`, `image_token_ids`,
    `layer_kinds` (per layer "attention" or the mixer a hybrid has instead; boot records it from the
    config), and anything else under `extra` (loaders and testbeds call this; nothing is written onto
    the model)."""
    known = {"name", "testbed", "image_token_ids", "layer_kinds"}
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
    prepare_bridge(model)  # a bridge booted outside headscope gets its family's hook layouts too
    if is_encoder_decoder(model):
        raise InputError(
            f"{type(model.original_model).__name__} is an encoder-decoder: its heads live in three stacks (encoder "
            "self-attention, decoder self-attention, decoder cross-attention), and headscope's engines (capture, "
            "interventions, scan, generation, analyzers) run on one stack of decoder or encoder layers. Fix: "
            "capture its heads with headscope.capture.seq2seq.capture_seq2seq(model, sources, targets), or use a "
            "decoder-only or encoder-only model for the other methods (docs/architectures.md, 'Encoder-decoders')."
        )
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
        d_head=_d_head(model),
        d_model=int(cfg.d_model),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(getattr(cfg, "d_vocab", 0) or 0),
        bos_token_id=getattr(tok, "bos_token_id", None),
        pad_token_id=getattr(tok, "pad_token_id", None),
        prepend_bos=bool(getattr(cfg, "default_prepend_bos", False)),
        causal=_causal(model, cfg),
        testbed=facts.get("testbed"),
        image_token_ids=image_token_ids(model),
        learned_sinks=getattr(family_of(model), "learned_sinks", None) is not None,
        stop_token_ids=stop_token_ids(tok),
        extra=dict(facts.get("extra", {})),
        layer_kinds=_recorded_kinds(facts["layer_kinds"]) if "layer_kinds" in facts else bridge_layer_kinds(model),
    )
    if cacheable:
        _INFO[model] = info
    return info


def is_encoder_decoder(model) -> bool:
    """Whether `model` is a bridged encoder-decoder (T5, BART, ...): TransformerLens gives those
    `encoder_blocks` and `decoder_blocks` instead of `blocks`."""
    return hasattr(model, "encoder_blocks") and hasattr(model, "decoder_blocks") and not hasattr(model, "blocks")


def _d_head(model) -> int:
    """The width of one head's output z (hook_z): the family's own where cfg.d_head is not it (MLA)."""
    fam = family_of(model)
    if fam is not None and fam.d_head is not None:
        return int(fam.d_head(model.original_model.config))
    return int(model.cfg.d_head)


def _recorded_kinds(kinds) -> tuple[str, ...] | None:
    return None if kinds is None or all(k == "attention" for k in kinds) else tuple(str(k) for k in kinds)


def bridge_layer_kinds(model) -> tuple[str, ...] | None:
    """The kinds of a bridge's decoder layers: the config's (`headscope.models.family.layer_kinds`),
    checked against the bridge, whose blocks have an `attn` exactly on the attention layers. A block
    without `attn` where the config names attention gets the kind "unbridged attention" (the bridge maps
    that layer's attention under another name: headscope cannot read its heads)."""
    configured = config_layer_kinds(model)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return configured
    n = len(blocks)
    kinds = list(configured) if configured is not None and len(configured) == n else ["attention"] * n
    for i, block in enumerate(blocks):
        has_attn = hasattr(block, "attn")
        if kinds[i] == "attention" and not has_attn:
            kinds[i] = "unbridged attention"
        elif kinds[i] != "attention" and has_attn:
            raise InputError(
                f"the config says layer {i} of {type(model.original_model).__name__} is a {kinds[i]} "
                "layer, but the bridge maps an attention module there: a family module must say "
                "which layers attend (headscope/families/, `layer_kinds`)"
            )
    return None if all(k == "attention" for k in kinds) else tuple(kinds)


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
