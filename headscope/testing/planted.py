"""Tiny Llama models with hand-set ("planted") attention heads whose exact patterns are known.

Example::

    >>> from headscope.testing import planted_model, induction_tokens
    >>> model, truth = planted_model()
    >>> truth.heads()
    {'sink': (0, 2), 'previous_token': (0, 1), 'induction': (1, 3), 'local_window': (0, 3)}
    >>> tokens = induction_tokens(model, seq_len=20, batch=2)          # [2, 41]
    >>> _, cache = model.run_with_cache(tokens)
    >>> got = cache["blocks.0.attn.hook_pattern"][:, 1]                      # previous-token head
    >>> bool((got - truth.expected_pattern("previous_token", tokens)).abs().max() < 1e-5)
    True

How it works (residual stream, d_model = 3 + 3V rounded up to 16; V = vocab size):
``[const=1 | is_bos | not_bos | E_cur one-hot (V) | E_prev (V) | E_next (V) | zero padding]``.
Every token embedding has norm^2 3, so each layer's RMSNorm scale is one known constant and every
weight below is set to produce exact q/k/v values. MLPs are zero. Background (non-planted) heads get
small random W_Q (and random W_K/W_V when their KV group holds no planted head) but W_O = 0, so
they never perturb the planted heads. RoPE pairs 0..7 rotate at fixed frequencies; all other pairs
have frequency 0, so content matching is position-independent. Planted K/V layout, shared by all
planted heads (any two may therefore share a GQA group): k[0..7] = const in the rotating pairs,
k[8] = is_bos, k[content dims] = E_prev code; v[0..V) = E_cur one-hot.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from headscope.testing.tiny import BOS_ID, PAD_ID, _boot, _llama_config, _new_hf_model

Head = tuple[int, int]
PlantedKind = Literal["sink", "previous_token", "induction", "local_window"]
KINDS: tuple[PlantedKind, ...] = get_args(PlantedKind)
MAX_CTX = 1024  # the score coefficients below are verified (margin 1) for every offset in [0, MAX_CTX)
LOGIT_SCALE = 20.0  # logit of the copied token; all other logits are exactly 0

# RoPE frequencies of pairs 0..7: dyadic approximations (10 significant bits) of 2*pi/3^k, k=1..6,
# and 2*pi/8, 2*pi/12. Dyadic so position * freq is exact in float32 (no phase error at large
# positions); base-3 periods so that no offset in [0, 1024) other than the target looks alike.
ROPE_FREQS = (
    2.09375,
    0.6982421875,
    0.232666015625,
    0.0775146484375,
    0.025848388671875,
    0.0086212158203125,
    0.78515625,
    0.5234375,
)
# Score profile f(d) = sum_p a_p cos(theta_p d) + b_p sin(theta_p d) over the key offset d = i - j,
# stored as (a_0, b_0, a_1, b_1, ...). Solved offline by LP (scipy linprog/HiGHS: maximise the margin
# under sum|coef| <= 1 for all d in [0, 1024), with equality inside the window; then divided by the
# margin), so each has margin ~1 and is rescaled at build time. "previous": f(1) beats every other d.
# w in 2..4: f(0) = ... = f(w-1) beats every d >= w.
_PROFILES = {
    "previous": (
        -0.474288,
        0.323246,
        0.568514,
        0.054386,
        0.537841,
        0.026889,
        0.295874,
        0.0,
        0.508976,
        0.0,
        0.320630,
        0.0,
        0.278014,
        0.0,
        0.115448,
        0.426270,
    ),
    2: (
        0.0,
        0.154184,
        0.731187,
        0.0,
        0.713979,
        0.002916,
        0.278879,
        0.0,
        0.622574,
        0.0,
        0.361779,
        0.0,
        0.361961,
        0.0,
        0.388845,
        0.430485,
    ),
    3: (
        0.0,
        -0.237458,
        0.317371,
        0.251544,
        0.610299,
        0.227184,
        0.373611,
        0.0,
        0.617914,
        0.0,
        0.465374,
        0.0,
        0.474104,
        0.032195,
        0.473636,
        0.526406,
    ),
    4: (
        0.301764,
        -0.007016,
        0.064559,
        0.243113,
        1.491123,
        0.0,
        0.730746,
        0.0,
        0.604584,
        0.0,
        0.852415,
        0.0,
        0.323412,
        0.049384,
        0.090044,
        0.863831,
    ),
}


@dataclass(frozen=True)
class PlantedHeads:
    """Ground truth of a planted model: where each kind of head is, and its exact pattern.

    Heads are ``(layer, head)`` or None when that kind is not planted. Patterns, for query i over
    keys j <= i (``expected_pattern`` builds them as tensors). Leakage outside the planted keys is
    <= n_ctx * exp(-margin) (~1e-13 at the defaults); the local window's equal weights hold to ~1e-5
    (float32 rounding of its larger logits).

    - ``sink``: all mass on the key(s) holding the BOS token (position 0 for normal inputs), split
      evenly if several; uniform over all keys if there is no BOS. Writes nothing (W_O = 0).
    - ``previous_token``: all mass on i - 1 (query 0: on itself). Copies the token into E_prev.
    - ``local_window``: mass 1/w on each of i-w+1 .. i (fewer keys near the start: split evenly),
      nothing elsewhere; w = ``local_window_size``. Prev-token mass 1/w, mean distance (w-1)/2.
      Writes nothing.
    - ``induction``: all mass, split evenly, on positions k whose *previous* token equals the query's
      token (i.e. k = j + 1 for earlier occurrences j), if the query is a content token (id >= 2) with
      such k; otherwise on the BOS key(s). Copies the attended token into E_next, which the unembedding
      reads: the model predicts the repeat with logit ``LOGIT_SCALE`` (others exactly 0; with no
      copy target all logits are 0).
    """

    sink: Head | None
    previous_token: Head | None
    induction: Head | None
    local_window: Head | None
    local_window_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    margin: float = 30.0  # attention-logit gap between the planted keys and every other key
    bos_token_id: int = BOS_ID

    def kinds(self) -> tuple[PlantedKind, ...]:
        """Kinds planted in this model, in ``KINDS`` order."""
        return tuple(k for k in KINDS if getattr(self, k) is not None)

    def heads(self) -> dict[PlantedKind, Head]:
        """``{kind: (layer, head)}`` for the planted kinds."""
        return {k: getattr(self, k) for k in self.kinds()}

    def background(self) -> list[Head]:
        """All ``(layer, head)`` that are not planted (random Q/K, W_O = 0)."""
        planted = set(self.heads().values())
        return [(l, h) for l in range(self.n_layers) for h in range(self.n_heads) if (l, h) not in planted]

    def kv_group(self, head: int) -> int:
        """GQA key/value head used by query head ``head``."""
        return head // (self.n_heads // self.n_kv_heads)

    def as_dict(self) -> dict:
        """Plain dict of every field (heads as ``(layer, head)`` tuples or None)."""
        return dataclasses.asdict(self)

    def expected_pattern(self, kind: PlantedKind, tokens, attention_mask=None) -> torch.Tensor:
        """Exact pattern of the ``kind`` head: float32 ``[batch, query_pos, key_pos]``.

        ``tokens``: ``[batch, pos]`` (or ``[pos]``). ``attention_mask``: optional ``[batch, pos]`` 1/0;
        masked positions are dropped (as the bridge does with padding) and their rows/columns are 0.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        tokens = torch.as_tensor(tokens).long().reshape(-1, torch.as_tensor(tokens).shape[-1])
        mask = (
            torch.ones_like(tokens, dtype=torch.bool)
            if attention_mask is None
            else (torch.as_tensor(attention_mask).reshape(tokens.shape).bool())
        )
        out = torch.zeros(*tokens.shape, tokens.shape[1])
        for b in range(tokens.shape[0]):
            real = mask[b].nonzero().flatten()
            out[b, real[:, None], real[None, :]] = self._pattern(kind, tokens[b, real])
        return out

    def _pattern(self, kind: PlantedKind, x: torch.Tensor) -> torch.Tensor:
        n, bos = len(x), self.bos_token_id
        idx = torch.arange(n)
        causal = idx[None, :] <= idx[:, None]
        is_bos = (x == bos)[None, :] & causal
        if kind == "previous_token":
            hit = idx[None, :] == (idx[:, None] - 1).clamp(min=0)
        elif kind == "local_window":
            hit = causal & (idx[:, None] - idx[None, :] < self.local_window_size)
        elif kind == "sink":
            hit = is_bos
        else:  # induction: key k carries the token before it (position 0 carries its own token)
            prev = torch.cat([x[:1], x[:-1]])
            content = (x != bos) & (x != PAD_ID)
            hit = (prev[None, :] == x[:, None]) & content[:, None] & causal
            hit = torch.where(hit.any(1, keepdim=True), hit, is_bos)
        hit = torch.where(hit.any(1, keepdim=True), hit, causal)  # nothing to attend to -> uniform
        return hit.float() / hit.sum(1, keepdim=True)


def _profile(key, n_ctx: int, margin: float) -> np.ndarray:
    """Coefficients (a_0, b_0, ...) whose profile has *exactly* ``margin`` over offsets [0, n_ctx)."""
    coef = np.array(_PROFILES[key], dtype=np.float64)
    d = np.arange(n_ctx, dtype=np.float64)[:, None] * np.array(ROPE_FREQS)[None, :]
    basis = np.stack([np.cos(d), np.sin(d)], axis=-1).reshape(n_ctx, -1)  # f = basis @ coef
    lo, width = (1, 1) if key == "previous" else (0, key)
    inside = np.zeros(n_ctx, dtype=bool)
    inside[lo : lo + width] = True
    if width > 1:  # table is rounded to 1e-6: project back onto f(lo) = ... = f(lo+w-1) exactly
        eq = basis[lo + 1 : lo + width] - basis[lo]
        coef = coef - eq.T @ np.linalg.solve(eq @ eq.T, eq @ coef)
    f = basis @ coef
    gap = f[lo] - f[~inside].max()
    if not gap > 0.5:  # cannot happen for n_ctx <= MAX_CTX; guards against edits to the table
        raise RuntimeError(f"planted score profile {key!r} lost its margin ({gap:.3g})")
    return coef * (margin / gap)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def planted_model(
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab_size: int = 48,
    n_ctx: int = 128,
    sink: Head | None = (0, 2),
    previous_token: Head | None = (0, 1),
    local_window: Head | None = (0, 3),
    induction: Head | None = (1, 3),
    local_window_size: int = 4,
    margin: float = 30.0,
    seed: int = 0,
):
    """Build a tiny Llama ``TransformerBridge`` with planted heads; returns ``(model, PlantedHeads)``.

    Default: 2 layers, 4 query heads, 2 KV heads (GQA: heads 0,1 share KV head 0; 2,3 share 1).
    Layer 0: head 0 background, head 1 previous-token, head 2 sink, head 3 local window (w=4; shares
    its KV head with the sink). Layer 1: head 3 induction, heads 0-2 background. Pass None to omit a
    kind, or another (layer, head). Constraints: induction needs a previous-token head in an earlier
    layer, and no planted head may sit above the induction layer (its output, unlike the others, can
    change the residual norm and so the later RMSNorm scales). ``margin``: attention-logit gap
    (leakage <= n_ctx * exp(-margin)). Builds in ~0.1 s; deterministic given ``seed``.

    >>> model, truth = planted_model(local_window=None, local_window_size=2)
    >>> truth.kinds()
    ('sink', 'previous_token', 'induction')
    """
    V = vocab_size
    truth = PlantedHeads(
        sink, previous_token, induction, local_window, local_window_size, n_layers, n_heads, n_kv_heads, float(margin)
    )
    placed = truth.heads()
    for kind, (l, h) in placed.items():
        _check(0 <= l < n_layers and 0 <= h < n_heads, f"{kind} head {(l, h)} outside the model")
    _check(len(set(placed.values())) == len(placed), f"two kinds planted on one head: {placed}")
    _check(local_window_size in (2, 3, 4), "local_window_size must be 2, 3 or 4")
    _check(8 <= n_ctx <= MAX_CTX, f"n_ctx must be in [8, {MAX_CTX}]")
    _check(
        V >= 4 and margin > 0 and n_heads % n_kv_heads == 0,
        "need vocab_size >= 4, margin > 0, n_heads divisible by n_kv_heads",
    )
    if induction is not None:
        _check(
            previous_token is not None and previous_token[0] < induction[0],
            "the induction head needs a previous-token head in an earlier layer",
        )
        _check(
            all(l <= induction[0] for l, _ in placed.values()),
            "planted heads must not sit above the induction head's layer",
        )

    half = max(32, 8 * math.ceil((V + 15) / 16))  # room for 8 rotating pairs + BOS + V-2 content dims
    d_head, d_model = 2 * half, 16 * math.ceil((3 + 3 * V) / 16)
    CONST, IS_BOS, NOT_BOS, CUR, PREV, NEXT = 0, 1, 2, 3, 3 + V, 3 + 2 * V
    content = torch.arange(2, V)  # token ids that induction matches and the unembedding predicts
    # zero-frequency head dims for content codes (pair 8 = dims 8 and half+8; dim 8 is the BOS flag)
    cdims = torch.tensor([*range(9, half), *range(half + 8, d_head)][: V - 2])
    group = n_heads // n_kv_heads

    cfg = _llama_config(
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=16,
        vocab_size=V,
        n_ctx=n_ctx,
        init_std=0.02,
    )
    hf = _new_hf_model(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    eps = cfg.rms_norm_eps

    def rms_scale(n_written: int) -> float:  # RMSNorm factor when n_written unit one-hots were added
        return ((3 + n_written) / d_model + eps) ** -0.5

    def written_before(layer: int) -> int:  # the prev-token and induction heads each add one unit code
        return sum(p is not None and p[0] < layer for p in (previous_token, induction))

    sqrt_dh = math.sqrt(d_head)  # cancels the 1/sqrt(d_head) attention scaling
    profiles = {
        kind: _profile(key, n_ctx, margin)
        for kind, key in (("previous_token", "previous"), ("local_window", local_window_size))
        if kind in placed
    }
    with torch.no_grad():
        for name, p in hf.named_parameters():  # MLPs and everything not set below stay exactly 0
            p.fill_(1.0 if "norm" in name else 0.0)
        rot = hf.model.rotary_emb
        for buf in (rot.inv_freq, getattr(rot, "original_inv_freq", torch.zeros(len(ROPE_FREQS)))):
            buf.zero_()  # pairs 8.. get frequency 0: no rotation
            buf[: len(ROPE_FREQS)] = torch.tensor(ROPE_FREQS)
        E = hf.model.embed_tokens.weight  # [V, d_model]
        E[:, CONST], E[:, NOT_BOS] = 1.0, 1.0
        E[BOS_ID, NOT_BOS], E[BOS_ID, IS_BOS] = 0.0, 1.0  # is_bos / not_bos: equal norms for all tokens
        E[torch.arange(V), CUR + torch.arange(V)] = 1.0
        s_final = rms_scale(written_before(n_layers))
        hf.lm_head.weight[content, NEXT + content] = LOGIT_SCALE / s_final

        for layer, block in enumerate(hf.model.layers):
            attn, s = block.self_attn, rms_scale(written_before(layer))
            Wq, Wk, Wv, Wo = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight)
            here = {kind: h for kind, (l, h) in placed.items() if l == layer}
            planted_groups = {h // group for h in here.values()}
            for g in range(n_kv_heads):
                k = v = slice(g * d_head, (g + 1) * d_head)
                if g in planted_groups:  # the shared planted K/V layout (module docstring)
                    Wk[k][: len(ROPE_FREQS), CONST] = 1 / s
                    Wk[k][8, IS_BOS] = 1 / s
                    Wk[k][cdims, PREV + content] = 1 / s
                    Wv[v][torch.arange(V), CUR + torch.arange(V)] = 1 / s
                else:  # background KV head: random K and V (x_norm has norm sqrt(d_model))
                    Wk[k] = torch.randn(d_head, d_model, generator=gen) * (0.5 / d_model**0.5)
                    Wv[v] = torch.randn(d_head, d_model, generator=gen) * (1.0 / d_model**0.5)
            for h in range(n_heads):
                q = Wq[h * d_head : (h + 1) * d_head]  # view: rows of head h
                head_kind = next((kd for kd, hh in here.items() if hh == h), None)
                if head_kind is None:
                    q.copy_(torch.randn(d_head, d_model, generator=gen) * (3.0 / d_model**0.5))
                elif head_kind in profiles:  # q = (a_p, -b_p) in pair p gives score f(i - j), see _profile
                    c = torch.tensor(profiles[head_kind], dtype=torch.float32).reshape(-1, 2)
                    q[: len(ROPE_FREQS), CONST] = c[:, 0] * sqrt_dh / s
                    q[half : half + len(ROPE_FREQS), CONST] = -c[:, 1] * sqrt_dh / s
                elif head_kind == "sink":
                    q[8, CONST] = margin * sqrt_dh / s
                else:  # induction: content match scores 2*margin, BOS scores margin, rest 0
                    q[cdims, CUR + content] = 2 * margin * sqrt_dh / s
                    q[8, CONST] = margin * sqrt_dh / s
                copies: dict[str | None, int] = {"previous_token": PREV, "induction": NEXT}
                target = copies.get(head_kind)
                if target is not None:  # copy the attended token's one-hot (v = E_cur) into the block
                    Wo[target + torch.arange(V), h * d_head + torch.arange(V)] = 1.0
    _verify_profiles(hf, truth, n_ctx, [rms_scale(written_before(l)) for l in range(n_layers)])
    return _boot(hf, V), truth


def _verify_profiles(hf, truth: PlantedHeads, n_ctx: int, scales: list[float]) -> None:
    """Recompute each positional head's actual attention score at every offset from the built weights.

    Positional heads read only the const dim (value ``scales[layer]`` after RMSNorm), so q and k are
    weight columns; RoPE is relative, so query at offset d vs key at 0 covers every (i, j) pair.
    """
    freqs = hf.model.rotary_emb.inv_freq.double()
    ang = torch.arange(n_ctx, dtype=torch.float64)[:, None] * freqs[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    for kind, lo, w in (("previous_token", 1, 1), ("local_window", 0, truth.local_window_size)):
        if getattr(truth, kind) is None:
            continue
        layer, h = getattr(truth, kind)
        attn, s, g = hf.model.layers[layer].self_attn, scales[layer], truth.kv_group(h)
        dh = attn.head_dim
        q = attn.q_proj.weight[h * dh : (h + 1) * dh, 0].double() * s
        k = attn.k_proj.weight[g * dh : (g + 1) * dh, 0].double() * s
        rot_half = torch.cat([-q[dh // 2 :], q[: dh // 2]])
        f = ((q * cos + rot_half * sin) @ k) * attn.scaling
        inside = torch.zeros(n_ctx, dtype=torch.bool)
        inside[lo : lo + w] = True
        gap, spread = f[inside].min() - f[~inside].max(), f[inside].max() - f[inside].min()
        if not (gap > truth.margin - 1e-4 and spread < 1e-4):  # float32 weights round at ~1e-6
            raise RuntimeError(f"planted {kind} head {(layer, h)} failed its check: gap {gap}, spread {spread}")
