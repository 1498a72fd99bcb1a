"""Blocked attention: long contexts without any [head, T, T] tensor.

TransformerLens's bridge computes attention eagerly: every layer materialises its [batch, head, T, T]
scores and pattern, so memory and time grow with T². Inside `blocked_attention(model, hooks)` each
attention layer of the bridge instead runs through its own Hugging Face attention module (the one
the bridge wraps: same parameter tensors, same q/k/v projections, RoPE and q/k norms), which hands
the post-RoPE queries and keys, the layer's mask, scaling and soft-cap to `attention_forward` here
(registered with transformers' `AttentionInterface` under `BLOCKED_IMPLEMENTATION`):

- a layer nobody observes or edits runs PyTorch's fused `scaled_dot_product_attention` (no T x T
  tensor on CPU or GPU);
- a layer with hooks is computed a block of query rows at a time: scores -> the layer's mask for
  those rows (causal, sliding window, padding: HF's own mask function, evaluated lazily by
  `RowMask`) -> soft-cap -> hooks on "attn_scores" -> softmax -> hooks on "pattern" -> output rows.
  Extra memory is O(batch x head x block x T), and the numbers are the eager path's.

Hooks use TransformerLens's signature `fn(tensor, hook)`; at "attn_scores" and "pattern" the tensor
is a block [batch, head, rows, keys] and `hook` a `BlockHook` saying where the rows sit, so such a
hook must say it understands blocks (`fn.block_aware = True`). At "z" a hook gets the layer's
whole [batch, pos, head, d_head] head outputs, as `hook_z`. Other attention-internal sites ("q", "k",
"v", "rot_q", "rot_k") are not offered here: use the eager path.

Families whose HF attention computes attention inline (GPT-Neo, Falcon, BLOOM, MPT in transformers
5.24) run through headscope's copy of their forward (`Family.blocked_forwards`, in each family's module
of `headscope.families`), which calls `attention_forward` with the family's additive bias or local
window. `blocked_support(model)` probes each model once, comparing the blocked forward (both the
fused and the block path) with the bridge's eager forward on a short padded batch; a family with
neither route, or any mismatch, is refused and callers fall back to eager or say why not.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.compat import (
    attn_implementation,
    hf_module_of,
    hooks_paused,
    override_forward,
    restore_forward,
    set_attn_implementation,
)
from ..models.family import blocked_forward_for
from ..models.info import model_device, model_info
from ..options import ATTENTION_MODES, AttentionMode

BLOCKED_IMPLEMENTATION = "headscope_blocked"
# block_size=None: rows per block such that one block's float32 scores [batch, head, rows, T] take a
# quarter of the bytes of the layer's own MLP activation [batch, T, d_mlp] float32, i.e. rows = d_mlp / (4
# heads), whatever T and the batch: the blocks' temporaries stay a small share of what the forward holds
# anyway (memory flat in T, small models included) and a block is computed while it sits in the cache.
MIN_ROWS, MAX_ROWS = 4, 256
FALLBACK_ROWS = 32  # a model whose config names no MLP width
DEFAULT_BLOCK_SIZE = None
# How capture runs attention: one set of words with the CLI's (headscope.options.AttentionMode).
Attention = AttentionMode
DEFAULT_PATTERN_BUDGET_MB = (
    512.0  # "auto": a forward whose [rows, head, T, T] float32 pattern exceeds this runs blocked
)
# Attention-internal sites the blocked kernel serves itself (the bridge's own hooks there do not fire).
KERNEL_SITES = ("attn_scores", "pattern", "z")
INTERNAL_SITES = ("q", "k", "v", "rot_q", "rot_k") + KERNEL_SITES
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.attn\.hook_(\w+)$")


@dataclass(frozen=True)
class BlockHook:
    """What a hook on the blocked kernel is told (in place of TransformerLens's HookPoint): its site's
    hook name and layer, and which query rows [start, stop) of the forward the block holds. The
    block's keys are absolute positions 0..n_keys-1 (on a causal layer keys past the block's last
    query are left out: they are masked anyway)."""

    name: str
    layer: int
    start: int = 0
    stop: int | None = None
    n_keys: int | None = None


class RowMask:
    """A layer's attention mask, built a block of query rows at a time by HF's own mask function.

    Registered with transformers' `AttentionMaskInterface`: the model builds one per mask type
    (full, sliding window) and passes it to every layer; nothing of size T x T is ever made.
    """

    ndim = None  # not a tensor: model code that folds a bias into a 4-D mask (Falcon's ALiBi) leaves it be

    def __init__(self, **kwargs):
        kwargs.pop("dtype", None)
        kwargs.pop("config", None)
        self._kw = kwargs
        self.q_offset = int(kwargs.get("q_offset") or 0)

    @property
    def plain(self) -> bool:
        """No padding and no window in reach: SDPA's `is_causal` (or no mask) gives the same result."""
        from transformers.masking_utils import _ignore_causal_mask_sdpa, prepare_padding_mask

        kw = self._kw
        padding = prepare_padding_mask(kw.get("attention_mask"), kw["kv_length"], kw.get("kv_offset", 0))
        return _ignore_causal_mask_sdpa(
            padding, kw["q_length"], kw["kv_length"], self.q_offset, kw.get("kv_offset", 0), kw.get("local_size")
        )

    def to(self, *args, **kwargs) -> RowMask:  # MPT casts its mask to bool; the rows are bool already
        return self

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """[batch, 1, stop - start, kv_length] bool, True where query row i may see key k."""
        from transformers.masking_utils import sdpa_mask

        kw = dict(
            self._kw,
            q_length=stop - start,
            q_offset=self.q_offset + start,
            allow_is_causal_skip=False,
            allow_is_bidirectional_skip=False,
        )
        mask = sdpa_mask(**kw)
        assert mask is not None  # both skips are disallowed: sdpa_mask always builds the mask
        return mask


def _row_mask(**kwargs) -> RowMask:
    return RowMask(**kwargs)


class _Session:
    """The hooks of every `blocked_attention` context open on one model, by layer and site."""

    def __init__(self, block_size: int | None, default_rows: int = FALLBACK_ROWS):
        self.block_size = block_size
        self.default_rows = default_rows
        self.hooks: dict[tuple[int, str], list] = {}
        self.calls: dict[int, int] = {}

    def rows_per_block(self) -> int:
        return self.default_rows if self.block_size is None else self.block_size

    def add(self, layer: int, site: str, fn) -> None:
        self.hooks.setdefault((layer, site), []).append(fn)

    def remove(self, layer: int, site: str, fn) -> None:
        fns = self.hooks.get((layer, site), [])
        if fn in fns:
            fns.remove(fn)


# Per-model state in weak-keyed tables: an entry goes with its model (or module), so an object that happens
# to get a collected one's id() is never handed its session (as a table keyed by id() could).
# model -> (its session, how many open contexts share it)
_SESSIONS: weakref.WeakKeyDictionary[object, tuple[_Session, int]] = weakref.WeakKeyDictionary()
# HF attention (sub)module -> (its model's session, its layer)
_LAYER_OF: weakref.WeakKeyDictionary[object, tuple[_Session, int]] = weakref.WeakKeyDictionary()
# HF attention (sub)module -> its route (`headscope.capture.routed`): how a layer whose bridge would report
# patterns after HF computes attention outside any blocked context, with the bridge's hooks live.
LIVE_ROUTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    softcap=None,
    *,
    score_bias=None,
    window: int | None = None,
    **kwargs,
):
    """The `AttentionInterface` function: query [b, h, T, d], key/value [b, kv_h, Tk, d] (post-RoPE,
    before GQA expansion) -> ([b, T, h, d] output, None).

    Two extras for the families headscope adapts itself (`headscope.families`): `score_bias(start, stop,
    n_keys)` gives an additive bias for a block of rows, broadcastable to [b, h, rows, n_keys] (ALiBi),
    added after the scaling; `window` hides keys `window` or more positions before the query (GPT-Neo's
    local layers, whose HF mask is plain causal).

    Learned attention sinks (GPT-OSS: HF passes the per-head logits as `s_aux`) join each row's softmax
    as one more column that has no value and is dropped afterwards, exactly as HF's eager attention and
    TransformerLens do: hooks at "attn_scores" see the scores without it, and the pattern over real keys
    sums to 1 - the sink's probability."""
    entry = _LAYER_OF.get(module)
    if entry is None and module in LIVE_ROUTES:  # not blocked: headscope's eager route (capture.routed)
        return LIVE_ROUTES[module](
            module, query, key, value, attention_mask, scaling, dropout, softcap, _Extra(score_bias, window)
        )
    if entry is None:
        raise RuntimeError(
            f"{type(module).__name__} called headscope's blocked attention outside "
            "blocked_attention(); its config still names it (a bug in headscope)"
        )
    session, layer = entry
    session.calls[layer] = session.calls.get(layer, 0) + 1
    _b, h, T, d = query.shape
    groups = h // key.shape[1]
    scaling = d**-0.5 if scaling is None else scaling
    causal = bool(getattr(module, "is_causal", True))
    name = f"blocks.{layer}.attn.hook_{{}}"
    score_fns = session.hooks.get((layer, "attn_scores"), [])
    pattern_fns = session.hooks.get((layer, "pattern"), [])
    block = session.rows_per_block()
    # GPT-OSS passes its learned per-head sink logits as `s_aux`: one more softmax column with no value
    extra = _Extra(score_bias, window, kwargs.get("s_aux"))
    if score_fns or pattern_fns or softcap is not None:
        out = _blocked(
            query,
            key,
            value,
            attention_mask,
            scaling,
            softcap,
            causal,
            groups,
            block,
            score_fns,
            pattern_fns,
            name,
            layer,
            extra,
        )
    else:
        out = _fused(query, key, value, attention_mask, scaling, causal, groups, block, extra)
    z = out.transpose(1, 2).contiguous()  # [b, T, h, d], what hook_z sees
    for fn in session.hooks.get((layer, "z"), []):
        edited = fn(z, BlockHook(name.format("z"), layer, 0, T, key.shape[2]))
        z = z if edited is None else edited
    return z, None


@dataclass(frozen=True)
class _Extra:
    """What a layer adds to its mask and softmax: an additive score bias and a local window (adapted
    families), learned sink logits (GPT-OSS)."""

    # (start, stop, n_keys) -> tensor broadcastable to [b, h, rows, n_keys]
    bias: Callable[[int, int, int], torch.Tensor] | None = None
    window: int | None = None
    sinks: torch.Tensor | None = None  # [h] learned sink logit per query head

    @property
    def none(self) -> bool:
        return self.bias is None and self.window is None and self.sinks is None


def attention_softmax(scores: torch.Tensor, sinks: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """Softmax of attention scores [b, h, q, keys] over the keys (in `dtype`) and, with learned sinks [h]
    (GPT-OSS), over one more column per head holding its sink logit, dropped afterwards (HF's eager
    GPT-OSS attention: cat, subtract the row max, softmax, slice): the row then sums to 1 - the sink's
    probability, and a row whose keys are all masked gives the sink everything (zeros, as eager)."""
    if scores.dtype == torch.float64:
        # float64's masked value (its most negative) is -inf in float32, and a row whose keys are all
        # masked (a pad query past a window or chunk) would turn into NaN and spread through V
        dtype = torch.float64
    if sinks is None:
        return torch.softmax(scores, dim=-1, dtype=dtype)
    # the row max is subtracted in the scores' own dtype, as eager does (bf16 rounding included)
    sink = sinks.to(device=scores.device, dtype=scores.dtype).view(1, -1, 1, 1)
    top = torch.maximum(scores.amax(-1, keepdim=True), sink)
    e = (scores - top).to(dtype).exp_()
    return e.div_(e.sum(-1, keepdim=True) + (sink - top).to(dtype).exp())


def _visible(
    mask, start: int, stop: int, n_keys: int, q_offset: int, causal: bool, device, window: int | None = None
) -> torch.Tensor | None:
    """[b or 1, 1, rows, n_keys] bool visibility of query rows [start, stop), or None when all visible."""
    if isinstance(mask, RowMask):
        seen = mask.rows(start, stop)[..., :n_keys].to(device)
    elif mask is not None:  # a 4-D mask someone prepared: bool (True = visible) or additive float
        rows = mask[:, :, start:stop, :n_keys]
        seen = rows if rows.dtype == torch.bool else rows > torch.finfo(rows.dtype).min / 2
    elif causal:
        q = torch.arange(start, stop, device=device)[:, None] + q_offset
        seen = (torch.arange(n_keys, device=device)[None, :] <= q)[None, None]
    else:
        seen = None
    if window is not None:
        q = torch.arange(start, stop, device=device)[:, None] + q_offset
        near = (q - torch.arange(n_keys, device=device)[None, :] < window)[None, None]
        seen = near if seen is None else seen & near
    return seen


def _blocked(
    query,
    key,
    value,
    mask,
    scaling,
    softcap,
    causal,
    groups,
    block,
    score_fns,
    pattern_fns,
    name,
    layer,
    extra: _Extra = _Extra(),
):
    b, h, T, d = query.shape
    kv_heads, n_kv = key.shape[1], key.shape[2]
    q_offset = mask.q_offset if isinstance(mask, RowMask) else n_kv - T
    # A plain causal mask (no padding, no window) hides only keys after the query: inside a causal block
    # that is the triangle over the block's own keys, so the mask is applied to that corner alone.
    plain_causal = causal and extra.window is None and (mask is None or (isinstance(mask, RowMask) and mask.plain))
    if math.frexp(scaling)[0] == 0.5:  # a power of two: scaling q first gives the same bits, one pass less
        query, scaling = query * scaling, None
    out = query.new_empty(b, h, T, value.shape[-1])
    neg = torch.finfo(query.dtype).min
    for start in range(0, T, block):
        stop = min(T, start + block)
        # a causal query sees no key after itself: leave those keys out of the block
        n_keys = min(n_kv, q_offset + stop) if causal else n_kv
        rows = stop - start
        # GQA without repeating k/v: the `groups` query heads of one kv head (heads kv*groups + j, as
        # repeat_kv orders them) stacked into one [groups * rows, d] operand, a taller matmul per kv head.
        q_rows = query[:, :, start:stop].reshape(b, kv_heads, groups * rows, d)
        scores = torch.matmul(q_rows, key[:, :, :n_keys].transpose(-1, -2)).view(b, h, rows, n_keys)
        if scaling is not None:
            scores.mul_(scaling)
        if softcap is not None:
            scores = scores.div_(softcap).tanh_().mul_(softcap)
        if extra.bias is not None:
            scores.add_(extra.bias(start, stop, n_keys))
        if plain_causal:
            corner = scores[..., n_keys - (stop - start) :]  # keys q_offset+start .. q_offset+stop-1
            corner.masked_fill_(_above_diagonal(stop - start, query.device), neg)
        else:
            visible = _visible(mask, start, stop, n_keys, q_offset, causal, query.device, extra.window)
            if visible is not None:
                scores.masked_fill_(~visible, neg)
        hook = BlockHook(name.format("attn_scores"), layer, start, stop, n_keys)
        for fn in score_fns:
            edited = fn(scores, hook)
            scores = scores if edited is None else edited
        pattern = attention_softmax(scores, extra.sinks).to(query.dtype)
        hook = BlockHook(name.format("pattern"), layer, start, stop, n_keys)
        for fn in pattern_fns:
            edited = fn(pattern, hook)
            pattern = pattern if edited is None else edited
        grouped = pattern.reshape(b, kv_heads, groups * rows, n_keys)
        out[:, :, start:stop] = torch.matmul(grouped, value[:, :, :n_keys]).view(b, h, rows, -1)
    return out


@functools.lru_cache(maxsize=8)
def _above_diagonal(rows: int, device) -> torch.Tensor:
    """[rows, rows] True above the diagonal: a causal block's own keys that come after the query."""
    return torch.ones(rows, rows, dtype=torch.bool, device=device).triu_(1)


def _fused(query, key, value, mask, scaling, causal, groups, block, extra: _Extra = _Extra()):
    """PyTorch's fused kernel: at once when the mask is plain causal (or absent), else a block of query
    rows at a time with that block's boolean mask, or additive one with a score bias or learned sinks
    (still nothing of size T x T)."""
    b, h, T, d = query.shape
    n_kv = key.shape[2]
    gqa = groups > 1
    if extra.none and (mask is None or (isinstance(mask, RowMask) and mask.plain)):
        is_causal = causal and T > 1 and (mask is None or T == n_kv)
        if not causal or T == n_kv or T == 1:
            return F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scaling, enable_gqa=gqa)
    q_offset = mask.q_offset if isinstance(mask, RowMask) else n_kv - T
    # Learned sinks: a zero key (score 0) and zero value put first, with the sink logit as its additive mask,
    # are the softmax's extra column; the block's keys stay one contiguous slice.
    first = 1 if extra.sinks is not None else 0
    if first:
        key = torch.cat([key.new_zeros(b, key.shape[1], 1, d), key], dim=2)
        value = torch.cat([value.new_zeros(b, value.shape[1], 1, value.shape[-1]), value], dim=2)
    out = query.new_empty(b, h, T, value.shape[-1])
    for start in range(0, T, block):
        stop = min(T, start + block)
        n_keys = min(n_kv, q_offset + stop) if causal else n_kv
        visible = _visible(mask, start, stop, n_keys, q_offset, causal, query.device, extra.window)
        if extra.bias is not None or first:  # additive mask; a hidden key gets the dtype's min, as the eager path
            shape = (b, h, stop - start, n_keys)
            bias = (
                query.new_zeros(shape)
                if extra.bias is None
                else extra.bias(start, stop, n_keys).to(query.dtype).expand(shape)
            )
            visible = bias if visible is None else bias.masked_fill(~visible, torch.finfo(query.dtype).min)
            if extra.sinks is not None:  # `first`: the sink logits' column goes first
                sink = extra.sinks.to(query.dtype).view(1, h, 1, 1).expand(b, h, stop - start, 1)
                visible = torch.cat([sink, visible], dim=-1)
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            query[:, :, start:stop],
            key[:, :, : first + n_keys],
            value[:, :, : first + n_keys],
            attn_mask=visible,
            scale=scaling,
            enable_gqa=gqa,
        )
    return out


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(BLOCKED_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(BLOCKED_IMPLEMENTATION, _row_mask)


def _attention_components(model) -> list:
    blocks = getattr(model, "blocks", None)
    if not blocks:
        raise InputError(
            f"{type(model).__name__} has no TransformerLens blocks: blocked attention needs a "
            "TransformerBridge (headscope.load_model)"
        )
    # (layer, attention component) by the model's own layer index: a hybrid's other layers have none.
    return [(layer, blk.attn) for layer, blk in enumerate(blocks) if hasattr(blk, "attn")]


def _configs(model, components) -> list:
    """Every config object whose `_attn_implementation` the language model's mask and attention read."""
    found, seen = [], set()
    root = model.original_model.config
    candidates = [root, getattr(root, "text_config", None)]
    candidates += [getattr(getattr(c, "original_component", None), "config", None) for _, c in components]
    for cfg in candidates:
        if cfg is not None and id(cfg) not in seen:
            seen.add(id(cfg))
            found.append(cfg)
    return found


def _hf_forward(hf_module):
    # HF attention classes that compute attention inline instead of calling `AttentionInterface` run
    # through the forward their family module registers (`headscope.families`).
    adapter = blocked_forward_for(type(hf_module).__name__)

    def forward(*args, **kwargs):
        if adapter is not None:
            return adapter(hf_module, *args, **kwargs)
        return hf_module(*args, **kwargs)

    return forward


@contextlib.contextmanager
def _switched(model, session: _Session):
    """Route every attention layer of `model` through its HF module and `attention_forward`."""
    components = _attention_components(model)
    hf_modules = [hf_module_of(c) for _, c in components]
    if any(m is None for m in hf_modules):
        raise InputError(
            f"the bridge of {type(model.original_model).__name__} keeps no HF attention module to "
            "run blocked; use attention='eager'"
        )
    _register()
    configs = _configs(model, components)
    before = [attn_implementation(cfg) for cfg in configs]
    try:
        for (layer, c), m in zip(components, hf_modules):
            override_forward(c, _hf_forward(m))
            for sub in m.modules():  # the module HF passes may be a child (BERT's BertSelfAttention)
                _LAYER_OF[sub] = (session, layer)
        for cfg in configs:
            set_attn_implementation(cfg, BLOCKED_IMPLEMENTATION)
        yield
    finally:
        for cfg, impl in zip(configs, before):
            set_attn_implementation(cfg, impl)  # as found, None included
        for (_, c), m in zip(components, hf_modules):
            restore_forward(c)
            for sub in m.modules():
                _LAYER_OF.pop(sub, None)


def split_hooks(hooks) -> tuple[list, list]:
    """(bridge hooks, kernel hooks): kernel hooks are (layer, site, fn) on "attn_scores", "pattern" or "z";
    raises InputError for hooks the blocked kernel cannot honour."""
    bridge, kernel = [], []
    for name, fn in hooks:
        m = _HOOK_NAME.match(name) if isinstance(name, str) else None
        if m is None or m.group(2) not in INTERNAL_SITES:
            bridge.append((name, fn))
            continue
        layer, site = int(m.group(1)), m.group(2)
        if site not in KERNEL_SITES:
            raise InputError(
                f"hook {name!r}: the blocked attention kernel offers {list(KERNEL_SITES)} inside "
                "attention, not the pre-softmax q/k/v sites; use attention='eager'"
            )
        if site != "z" and not getattr(fn, "block_aware", False):
            raise InputError(
                f"hook {name!r} would get blocks of query rows under blocked attention but does not "
                "declare block_aware = True (see headscope.capture.blocked); use attention='eager'"
            )
        kernel.append((layer, site, fn))
    return bridge, kernel


def default_rows(model) -> int:
    """Query rows per block when `block_size=None`: d_mlp / (4 heads), between MIN_ROWS and MAX_ROWS (see
    the constants above; SmolLM2: 42, a 7B Llama: 86)."""
    cfg = model.cfg
    d_mlp = getattr(cfg, "d_mlp", None)
    if not d_mlp:
        return FALLBACK_ROWS
    return max(MIN_ROWS, min(MAX_ROWS, int(d_mlp) // (4 * int(cfg.n_heads))))


@contextlib.contextmanager
def blocked_attention(model, hooks=(), *, block_size: int | None = DEFAULT_BLOCK_SIZE):
    """Context manager: `model`'s attention runs blocked (see the module doc) with `hooks` attached.

    `hooks` are TransformerLens (name, fn) pairs: those at the attention-internal sites go to the
    kernel, the others (residual stream, MLP, ...) to the bridge. Contexts nest (a capture inside an
    `apply`): the hooks of all of them run, in the order they were opened. Everything is restored on
    exit, also on error.
    """
    if block_size is not None and int(block_size) < 1:
        raise InputError(f"block_size must be >= 1 (or None: d_mlp / (4 heads) rows), got {block_size}")
    bridge_hooks, kernel_hooks = split_hooks(hooks)
    with contextlib.ExitStack() as stack:
        if model in _SESSIONS:
            session, depth = _SESSIONS[model]
            _SESSIONS[model] = (session, depth + 1)
        else:
            session = _Session(None if block_size is None else int(block_size), default_rows(model))
            stack.enter_context(_switched(model, session))
            _SESSIONS[model] = (session, 1)
        try:
            for layer, site, fn in kernel_hooks:
                session.add(layer, site, fn)
            stack.enter_context(model.hooks(fwd_hooks=bridge_hooks))
            yield session
        finally:
            for layer, site, fn in kernel_hooks:
                session.remove(layer, site, fn)
            session_, depth = _SESSIONS[model]
            if depth > 1:
                _SESSIONS[model] = (session_, depth - 1)
            else:
                del _SESSIONS[model]


# ---- eager or blocked? ----------------------------------------------------------------------------


def pattern_mb(rows: int, n_heads: int, n_tokens: int) -> float:
    """MB of one layer's float32 attention pattern [rows, head, T, T] (what eager attention materialises)."""
    return rows * n_heads * n_tokens * n_tokens * 4 / 2**20


def resolve_attention(
    model,
    attention: Attention,
    rows: int,
    n_tokens: int,
    *,
    max_pattern_mb: float = DEFAULT_PATTERN_BUDGET_MB,
    why_not=list,
) -> bool:
    """Whether a forward of `rows` x `n_tokens` runs blocked: `attention` "eager" never, "blocked" always,
    "auto" when one layer's pattern would exceed `max_pattern_mb`. `why_not()` lists what the caller
    needs that blocked attention cannot give (a reducer of whole patterns, a redistribution); with
    the model's own `blocked_support` it makes "blocked" (or "auto" past the budget) a clear error."""
    if attention not in ATTENTION_MODES:
        raise InputError(f"attention={attention!r}: use one of {', '.join(ATTENTION_MODES)}")
    if attention == "eager":
        return False
    need = pattern_mb(rows, model_info(model).n_heads, n_tokens)
    if attention == "auto" and need <= max_pattern_mb:
        return False
    why = list(why_not())
    if not why:
        ok, reason = blocked_support(model)
        if not ok:
            why.append(f"{model_info(model).name}'s attention cannot run blocked: {reason}")
    if not why:
        return True
    if attention == "blocked":
        raise InputError(f"attention='blocked' is not possible: {'; '.join(why)}. Fix: attention='eager'")
    n_heads = model_info(model).n_heads
    raise InputError(
        f"a forward of {rows} x {n_tokens} tokens needs {need:,.0f} MB per layer for its attention pattern "
        f"([{rows}, {n_heads}, {n_tokens}, {n_tokens}] float32), over the {max_pattern_mb:,.0f} MB budget "
        f"(max_pattern_mb), and blocked attention is not possible: {'; '.join(why)}. Fix: attention='eager' "
        "to run it eagerly anyway, a larger max_pattern_mb, or smaller batches"
    )


# ---- is it exact on this model? -------------------------------------------------------------------

_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the logits' scale; halves: 2e-2


def block_aware(fn: Callable) -> Callable:
    """Mark a hook as understanding blocks of query rows (see the module doc); returns it."""
    fn.block_aware = True  # type: ignore[attr-defined]
    return fn


@block_aware
def _observe_rows(tensor, hook):
    return None


def _probe_batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 24 ordinary token ids (no image or special tokens), the second right-padded."""
    info = model_info(model)
    vocab = int(model.cfg.d_vocab)
    banned = set(info.image_token_ids) | {t for t in (info.bos_token_id, info.pad_token_id) if t is not None}
    pool = torch.tensor([t for t in range(min(vocab, 2048)) if t not in banned][3:])
    g = torch.Generator().manual_seed(0)
    tokens = pool[torch.randint(len(pool), (2, 24), generator=g)]
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    return tokens, mask


def blocked_support(model) -> tuple[bool, str]:
    """(ok, why not): whether blocked attention reproduces the bridge's eager forward on this model.

    Checked once per model on a short padded batch, with the block path on every layer (blocks of 5
    rows) and with the fused path, against the eager logits at every real position. A family whose
    HF attention does not call `AttentionInterface`, or any mismatch, gives (False, reason).
    """
    if model in _SUPPORT:
        return _SUPPORT[model]
    tokens, mask = _probe_batch(model)
    device = model_device(model)
    tokens, mask = tokens.to(device), mask.to(device)
    layers = model_info(model).attention_layers
    verdict = (True, "")
    with torch.no_grad(), hooks_paused(model):
        eager = model(tokens, attention_mask=mask).float()
        real = mask.bool().cpu()
        scale = max(1.0, float(eager[real].abs().max()))
        tol = _TOLERANCE.get(next(model.parameters()).dtype, 2e-2) * scale
        for path, hooks in (
            ("block", [(f"blocks.{l}.attn.hook_pattern", _observe_rows) for l in layers]),
            ("fused", []),
        ):
            calls: dict[int, int] = {}
            try:
                with blocked_attention(model, hooks, block_size=5) as session:
                    calls = session.calls
                    got = model(tokens, attention_mask=mask).float()
            except Exception as exc:  # the family's attention cannot run through the interface
                hf = type(hf_module_of(_attention_components(model)[0][1])).__name__
                verdict = (
                    False,
                    f"its HF attention ({hf}) does not go through transformers' AttentionInterface"
                    if not calls
                    else f"the {path} path fails: {type(exc).__name__}: {str(exc)[:200]}",
                )
                break
            missing = [l for l in layers if calls.get(l, 0) != 1]
            if missing:
                verdict = (
                    False,
                    f"the HF attention of layers {missing} does not call transformers' AttentionInterface",
                )
                break
            diff = float((got - eager)[real].abs().max())
            if not diff <= tol:
                verdict = (False, f"the {path} path differs from the eager forward by {diff:.3g} (tolerance {tol:.3g})")
                break
    _SUPPORT[model] = verdict
    return verdict
