"""Conformance checks of every headscope engine on every family of the architecture matrix.

Each check takes an architecture name (`headscope.testing.architectures.ARCHITECTURES`), runs one
engine on the tiny bridged model and compares it with an independent reference on a plain,
never-bridged Hugging Face copy in eager attention (or with a hand computation). A check returns
None when the engine agrees, returns a short reason when the engine does not apply to the family
*and refuses it with a clear error* (that refusal is what it verifies), and raises AssertionError
otherwise. `run_matrix()` runs them all; `python -m headscope.testing.conformance` prints the table
of docs/architectures.md.

    >>> from headscope.testing.conformance import CHECKS, run_matrix
    >>> CHECKS["scan"]("gemma2")            # None: scan() equals a per-head loop on Gemma 2
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from headscope.analyzers import get_analyzer
from headscope.analyzers.retrieval import RetrievalHeads
from headscope.capture import capture
from headscope.capture.blocked import blocked_support
from headscope.errors import InputError
from headscope.generation import greedy_generate
from headscope.inputs.needle import NeedleSample
from headscope.interventions import (
    KINDS,
    ACTCalibration,
    Intervention,
    ScaleOutput,
    StreamingWindow,
    UniformAttention,
    VARRedistribution,
    ZeroAblation,
    apply,
    forward_with,
    scan,
)
from headscope.models.compat import cache_kwarg, kv_cache_verified, pattern_edits_take_effect
from headscope.models.info import model_info
from headscope.testing import architectures as A
from headscope.testing import sweep as _sweep  # noqa: F401  (registers the swept families with get_arch)
from headscope.testing.reference_loops import reference_stats

CHECKS: dict[str, Callable[[str], str | None]] = {}
TOL_PATTERN = 1e-5
TOL_SCAN = 1e-4


def _check(name: str):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


@functools.cache
def bridged(name: str):
    return A.tiny_arch_model(name)


@functools.cache
def plain(name: str):
    return A.plain_hf(name)


def prompts(name: str) -> list[list[int]]:
    """Two prompts of different lengths (a right-padded batch), with repeats for induction/duplicates."""
    a = A.random_prompt(name, 22, seed=1).tolist()
    b = A.random_prompt(name, 15, seed=2).tolist()
    if A.get_arch(name).is_encoder:
        a = a[:1] + a[1:8] + a[1:8] + a[15:]  # keep [CLS] .. [SEP] framing
    else:
        a = a[:1] + a[1:11] + a[1:11] + a[21:]
    return [a, b]


@functools.cache
def attn_layers(name: str) -> tuple[int, ...]:
    """The layers with attention heads, read from the plain HF model (a hybrid's blocks hold an attention
    module only where they attend), independently of headscope's `ModelInfo.layer_kinds`."""
    blocks = _decoder_layers(plain(name))
    return tuple(i for i, block in enumerate(blocks) if _attention(block) is not None)


def _first_last(name: str) -> tuple[int, int]:
    layers = attn_layers(name)
    return layers[0], layers[-1]


def _hf_attentions(name: str, ids: list[int]) -> torch.Tensor:
    """[attention layer, head, q, k]: HF reports patterns of its attention layers only (in order)."""
    with torch.no_grad():
        out = plain(name)(torch.tensor([ids]), output_attentions=True)
    assert len(out.attentions) == len(attn_layers(name)), f"{name}: {len(out.attentions)} HF patterns"
    return torch.stack([a[0] for a in out.attentions])


def _one_prompt(name: str):
    """(bridged model, its first conformance prompt as [1, T] ids, T)."""
    ids = torch.tensor([prompts(name)[0]])
    return bridged(name), ids, ids.shape[1]


def _visible(name: str, layer: int, T: int) -> torch.Tensor:
    """[q, k] bool: the keys a query may see in this layer of an unpadded prompt."""
    return A.visible_keys(name, layer, T, encoder=A.get_arch(name).is_encoder)


def _sink_logits(name: str, layer: int) -> torch.Tensor | None:
    """[head] learned sink logits of `layer` (GPT-OSS), read from the plain HF model; None without."""
    sinks = getattr(_attention(_decoder_layers(plain(name))[layer]), "sinks", None)
    return sinks.detach() if isinstance(sinks, torch.Tensor) else None


def _row_mass(name: str, layer: int, scores: torch.Tensor) -> torch.Tensor:
    """[head, q]: what each pattern row sums to, given the masked scores [head, q, k] its softmax saw:
    1, or with a learned sink s, 1 - its share exp(s) / (exp(s) + sum_k exp(score_k))."""
    sinks = _sink_logits(name, layer)
    if sinks is None:
        return torch.ones(scores.shape[:-1])
    lse = torch.logsumexp(scores.double(), dim=-1)
    return torch.sigmoid(lse - sinks.double()[:, None]).float()


def _pattern_kinds_refused(name: str) -> str | None:
    """On a family where neither the bridge nor headscope's own attention forward makes edits at the
    attention hooks take effect (`pattern_edit_route` None), the attention-level kinds must be refused
    with a clear error; returns the reason, or None if they are live."""
    if pattern_edits_take_effect(bridged(name)):
        return None
    try:
        with apply(bridged(name), [UniformAttention(heads=[(attn_layers(name)[0], 0)])]):
            pass
    except InputError as e:
        assert "discarded" in str(e) and "docs/architectures.md" in str(e)
        return "attention-level kinds refused: the bridge reports patterns after HF and headscope cannot route them"
    raise AssertionError(f"{name}: pattern edits do not take effect, yet uniform attention was accepted")


# ---------------------------------------------------------------------------------------------
# capture


@_check("strings")
def check_strings(name: str) -> None:
    """A string prompt is analysed as the model's tokenizer encodes it by default: its own special
    tokens ([CLS] .. [SEP] on an encoder, BOS where the tokenizer adds one), nothing else."""
    text = "t5 t6 t7 t5"
    res = capture(bridged(name), [text])
    assert res.token_ids[0] == list(A.tokenizer_for(name)(text)["input_ids"]), f"{name}: {res.token_ids[0]}"


@_check("patterns")
def check_patterns(name: str) -> None:
    """Captured patterns (a right-padded batch) equal HF's output_attentions, prompt by prompt (1e-5, or
    twice HF's own float32 difference between that padded batch and each prompt alone where it is
    larger: Qwen3-Next's chunked linear attention rounds differently on a padded batch, ~2e-5)."""
    ps = prompts(name)
    res = capture(bridged(name), ps, keep_patterns=True, batch_size=2)
    assert tuple(res.layers) == attn_layers(name), f"{name}: captured layers {res.layers}"
    tol = max(TOL_PATTERN, 2 * _hf_batch_gap(name, ps))
    assert res.patterns is not None, f"{name}: keep_patterns=True kept no patterns"
    for ids, got in zip(ps, res.patterns):
        ref = _hf_attentions(name, ids)
        torch.testing.assert_close(got, ref, rtol=0, atol=tol)


def _hf_batch_gap(name: str, ps: list[list[int]]) -> float:
    """The largest difference between plain HF's patterns on the right-padded batch and on each prompt alone."""
    width = max(map(len, ps))
    tokens = torch.tensor([p + [0] * (width - len(p)) for p in ps])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in ps])
    with torch.no_grad():
        batch = plain(name)(tokens, attention_mask=mask, output_attentions=True).attentions
    gap = 0.0
    for row, ids in enumerate(ps):
        n, alone = len(ids), _hf_attentions(name, ids)
        gap = max(gap, max(float((a[row, :, :n, :n] - b).abs().max()) for a, b in zip(batch, alone)))
    return gap


@_check("reducers")
def check_reducers(name: str) -> str | None:
    """The six default reducers equal plain loops over HF's patterns. On an encoder, entropy is
    over the whole (bidirectional) row and the causal-only statistics (mean backward distance,
    induction) are reported as NaN, never as a number."""
    import numpy as np

    ps = prompts(name)
    res = capture(bridged(name), ps, batch_size=2)
    encoder = A.get_arch(name).is_encoder
    layers = list(attn_layers(name))
    others = [l for l in range(bridged(name).cfg.n_layers) if l not in layers]
    for stat in res:  # a hybrid's layers without heads: NaN rows, said why
        assert np.isnan(res[stat].values[:, others]).all(), f"{name} {stat}: layers {others} have no heads"
        assert bool(res[stat].note) == bool(others), f"{name} {stat}: note {res[stat].note!r}"
    for p, ids in enumerate(ps):
        pattern = _hf_attentions(name, ids).double()
        ref = reference_stats(pattern.tolist(), ids)
        if encoder:
            rows = pattern[:, :, 1:]  # queries 1..T-1, whole rows
            ref["attention_entropy"] = (-torch.special.xlogy(rows, rows).sum(-1).mean(-1)).tolist()
            for stat in ("mean_attention_distance", "induction_score"):
                assert np.isnan(res[stat].values).all(), f"{name}: {stat} must be NaN on an encoder"
                del ref[stat]
        for stat, table in ref.items():
            np.testing.assert_allclose(
                res[stat].values[p][layers], np.array(table), rtol=1e-4, atol=1e-5, err_msg=f"{name} {stat}"
            )
    return "mean backward distance and induction are NaN (causal-only)" if encoder else None


@_check("blocked")
def check_blocked(name: str) -> str | None:
    """Blocked attention (long contexts, blocks of 5 query rows): the default reducers equal the eager
    capture (1e-5, NaN exactly where eager is NaN) on the padded batch and on one padded past every
    window and chunk, and uniform attention and zero ablation give the eager logits
    (1e-5 relative); on a family whose HF attention does not call transformers' AttentionInterface,
    `attention="blocked"` is refused with an error naming the fix."""
    import numpy as np

    model, ps = bridged(name), prompts(name)
    ok, reason = blocked_support(model)
    if not ok:
        try:
            capture(model, ps, attention="blocked")
        except InputError as e:
            assert "AttentionInterface" in str(e) and "attention='eager'" in str(e), str(e)
            return "eager only: its HF attention does not call transformers' AttentionInterface"
        raise AssertionError(f"{name}: blocked attention unsupported ({reason}) yet accepted")
    # The conformance batch, and one whose shorter prompt is padded by more than two windows / chunks:
    # there a padded query of a sliding-window or chunked layer sees no key at all.
    for batch in (ps, [A.random_prompt(name, 40, seed=3).tolist(), ps[1]]):
        eager = capture(model, batch, batch_size=2, attention="eager")
        blocked = capture(model, batch, batch_size=2, attention="blocked", block_size=5)
        for stat in eager:
            np.testing.assert_allclose(
                blocked[stat].values,
                eager[stat].values,
                rtol=0,
                atol=1e-5,
                equal_nan=True,
                err_msg=f"{name} {stat} ({len(batch[0])} + {len(batch[1])} tokens)",
            )
    n = max(len(p) for p in ps)
    tokens = torch.tensor([p + [p[-1]] * (n - len(p)) for p in ps])
    mask = (torch.arange(n)[None] < torch.tensor([[len(p)] for p in ps])).long()
    real = mask.bool()
    first, last = _first_last(name)
    specs: list[list[Intervention]] = [[ZeroAblation(heads=[(last, 1)])]]
    if pattern_edits_take_effect(model):
        specs.append([UniformAttention(heads=[(first, 1), (last, 2)], positions=(3, None))])
    for spec in specs:
        a = forward_with(model, tokens, spec, attention="eager", attention_mask=mask)
        b = forward_with(model, tokens, spec, attention="blocked", attention_mask=mask)
        assert float((a - b)[real].abs().max()) <= 1e-5 * float(a[real].abs().max()), f"{name} {spec[0].kind}"
    return None


@_check("head_outputs")
def check_head_outputs(name: str) -> None:
    """hook_z equals the input of HF's output projection (heads concatenated)."""
    model, hf = bridged(name), plain(name)
    ids = torch.tensor([prompts(name)[0]])
    got: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}
    hooks = [
        (f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: got.__setitem__(l, z.detach().clone()))
        for l in attn_layers(name)
    ]
    handles = [
        out_proj(hf, l).register_forward_pre_hook(lambda m, args, l=l: ref.__setitem__(l, args[0].detach()))
        for l in attn_layers(name)
    ]
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(ids)
        with torch.no_grad():
            hf(ids)
    finally:
        for h in handles:
            h.remove()
    for layer in got:
        z = got[layer].flatten(-2)
        torch.testing.assert_close(z, ref[layer].reshape(z.shape), rtol=1e-5, atol=1e-5)


_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "SelfAttention", "self")
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo", "o", "o_proj_layer", "proj")


def _decoder_layers(hf) -> torch.nn.ModuleList:
    """The ModuleList of the model's (decoder) blocks: the first with one entry per layer whose entries
    hold an attention module."""
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None) or cfg.n_layer
    for mod in hf.modules():  # a hybrid's first block may be a Mamba / linear-attention one: any block attends
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and any(_attention(b) is not None for b in mod):
            return mod
    raise AssertionError(f"{type(hf).__name__}: no list of {n} blocks with an attention module")


def _attention(block) -> torch.nn.Module | None:
    for name in _ATTENTION_NAMES:
        if isinstance(getattr(block, name, None), torch.nn.Module):
            return getattr(block, name)
    return None


def out_proj(hf, layer: int) -> torch.nn.Module:
    """The attention output projection of `layer` in a plain HF model, found by the names HF uses: the
    block's attention module (self_attn, attn, attention, ...) and, inside it, the linear layer named
    o_proj, out_proj, c_proj, dense, ... nearest the attention module (BERT's is attention.output.dense)."""
    attn = _attention(_decoder_layers(hf)[layer])
    if attn is None:
        raise AssertionError(f"{type(hf).__name__}: block {layer} has no attention module among {_ATTENTION_NAMES}")
    leaf = {name: name.rsplit(".", 1)[-1].lower() for name, _ in attn.named_modules() if name}  # ModernBERT: Wo
    found = [
        (name.count("."), _OUT_PROJ_NAMES.index(leaf[name]), mod)
        for name, mod in attn.named_modules()
        if leaf.get(name) in _OUT_PROJ_NAMES and hasattr(mod, "weight")
    ]
    if not found:
        raise AssertionError(f"{type(attn).__name__}: no output projection among {_OUT_PROJ_NAMES}")
    return min(found, key=lambda t: t[:2])[2]


# ---------------------------------------------------------------------------------------------
# interventions


def _z_and_v(model, ids, specs):
    got: dict[tuple[str, int], torch.Tensor] = {}  # (hook: z, v, p, s or g; layer) -> activation
    hooks = []
    for l in model_info(model).attention_layers:
        hooks.append((f"blocks.{l}.attn.hook_z", lambda t, hook, l=l: got.__setitem__(("z", l), t.detach().clone())))
        hooks.append((f"blocks.{l}.attn.hook_v", lambda t, hook, l=l: got.__setitem__(("v", l), t.detach().clone())))
        hooks.append(
            (f"blocks.{l}.attn.hook_pattern", lambda t, hook, l=l: got.__setitem__(("p", l), t.detach().clone()))
        )
        # after apply()'s hooks: the scores as edited
        hooks.append(
            (f"blocks.{l}.attn.hook_attn_scores", lambda t, hook, l=l: got.__setitem__(("s", l), t.detach().clone()))
        )
        if f"blocks.{l}.attn.hook_q_gate" in model.hook_dict:  # gated attention: z = sigmoid(gate) * (A @ V)
            hooks.append(
                (f"blocks.{l}.attn.hook_q_gate", lambda t, hook, l=l: got.__setitem__(("g", l), t.detach().clone()))
            )
    with torch.no_grad(), apply(model, specs), model.hooks(fwd_hooks=hooks):
        logits = model(ids)
    return got, logits


@_check("uniform_attention")
def check_uniform_attention(name: str) -> str | None:
    """epsilon = 0: each edited head outputs the mean of V over exactly the keys it may see (scaled by
    1 - the learned sink's share, the sink logit competing with n equal scores, on GPT-OSS; times its
    output gate on gated attention); Ships' epsilon = 1e-5: within 1e-3 of it."""
    refused = _pattern_kinds_refused(name)
    if refused:
        return refused
    model, ids, T = _one_prompt(name)
    heads = [(l, h) for l in attn_layers(name) for h in (0, model.cfg.n_heads - 1)]
    group = model.cfg.n_heads // (getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    for eps, tol in ((0.0, 1e-5), (1e-5, 1e-3)):
        got, _ = _z_and_v(model, ids, [UniformAttention(heads=heads, epsilon=eps)])
        for l, h in heads:
            v = got[("v", l)][0, :, h // group]  # [pos, d]
            vis = _visible(name, l, T).float()
            flat = torch.zeros(model.cfg.n_heads, T, T).masked_fill(vis == 0, float("-inf"))  # equal scores
            ref = (vis / vis.sum(-1, keepdim=True)) @ v * _row_mass(name, l, flat)[h][:, None]
            if ("g", l) in got:  # Qwen3-Next gates each head's output: [pos, heads * d_head]
                d = v.shape[-1]
                ref = ref * torch.sigmoid(got[("g", l)][0, :, h * d : (h + 1) * d])
            z = got[("z", l)][0, :, h]
            scale = max(1.0, ref.abs().max().item())
            assert (z - ref).abs().max().item() <= tol * scale, f"{name} L{l}H{h} eps={eps}"
    return None


@_check("zero")
def check_zero(name: str) -> None:
    """Zero ablation equals HF with the head's slice of the output-projection input zeroed; on a hybrid,
    a head on a layer without attention is refused, the error naming the layer kinds."""
    model, hf = bridged(name), plain(name)
    for layer in sorted(set(range(model.cfg.n_layers)) - set(attn_layers(name))):
        try:
            forward_with(model, torch.tensor([prompts(name)[0]]), [ZeroAblation(heads=[(layer, 0)])])
        except InputError as e:
            assert "no attention heads" in str(e) and "Layer kinds" in str(e), str(e)
        else:
            raise AssertionError(f"{name}: a head on layer {layer}, which has no attention, was accepted")
    ids = torch.tensor([prompts(name)[0]])
    d = model_info(model).d_head  # a head's width in the output projection's input (MLA: v_head_dim)
    first, last = _first_last(name)
    for layer, head in ((first, 1), (last, 2)):
        got = forward_with(model, ids, [ZeroAblation(heads=[(layer, head)])])

        def zero_slice(m, args, head=head):
            x = args[0].clone()
            x[..., head * d : (head + 1) * d] = 0
            return (x,)

        handle = out_proj(hf, layer).register_forward_pre_hook(zero_slice)
        try:
            with torch.no_grad():
                ref = hf(ids).logits
        finally:
            handle.remove()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@_check("scale_identity")
def check_scale_identity(name: str) -> None:
    """ScaleOutput(alpha=1) is the identity, bit for bit."""
    model = bridged(name)
    ids = torch.tensor([prompts(name)[0]])
    heads = [(l, h) for l in attn_layers(name) for h in range(model.cfg.n_heads)]
    with torch.no_grad():
        clean = model(ids)
    assert torch.equal(forward_with(model, ids, [ScaleOutput(heads=heads, alpha=1.0)]), clean)


@_check("streaming_window")
def check_streaming_window(name: str) -> str | None:
    """A streaming head attends only to its sink and recent keys, and its rows still sum to one (to 1 - the
    learned sink's share of the edited softmax on GPT-OSS)."""
    refused = _pattern_kinds_refused(name)
    if refused:
        return refused
    model, ids, T = _one_prompt(name)
    first, last = _first_last(name)
    got, _ = _z_and_v(model, ids, [StreamingWindow(heads=[(first, 0), (last, 3)], sink=2, recent=4)])
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    for l, h in ((first, 0), (last, 3)):
        p = got[("p", l)][0, h]
        allowed = _visible(name, l, T) & ((k < 2) | (q - k < 4))
        assert p[~allowed].abs().max().item() == 0.0, f"{name} L{l}H{h}: attention outside the window"
        torch.testing.assert_close(p.sum(-1), _row_mass(name, l, got[("s", l)][0])[h], rtol=0, atol=1e-5)
    return None


@_check("act_var_rows")
def check_act_var_rows(name: str) -> str | None:
    """ACT and VAR move attention mass between keys; every row still sums to one (to 1 - the learned
    sink's share on GPT-OSS: the sink is not a key, its share stays). On an encoder ACT (whose sink
    statistic and first row assume causal attention) is refused with an error saying so."""
    refused = _pattern_kinds_refused(name)
    if refused:
        return refused
    model, ids, _T = _one_prompt(name)
    heads = [(l, h) for l in attn_layers(name) for h in range(model.cfg.n_heads)]
    specs: list[Intervention] = [VARRedistribution(heads=heads, sinks=(0,), targets=(1, 8))]
    reason = None
    if A.get_arch(name).is_encoder:
        try:
            forward_with(model, ids, [ACTCalibration(heads=heads)])
        except InputError as e:
            assert "causal attention" in str(e) and "'act'" in str(e), str(e)
            reason = "ACT refused on an encoder (its sink statistic assumes causal attention)"
        else:
            raise AssertionError(f"{name}: ACT accepted on an encoder")
    else:
        specs.insert(0, ACTCalibration(heads=heads))
    for spec in specs:
        got, _ = _z_and_v(model, ids, [spec])
        for l in attn_layers(name):
            torch.testing.assert_close(
                got[("p", l)][0].sum(-1), _row_mass(name, l, got[("s", l)][0]), rtol=0, atol=1e-5
            )
    return reason


# ---------------------------------------------------------------------------------------------
# scan


def _kl_last(clean, variant, last):
    c = clean[torch.arange(len(last)), last].log_softmax(-1)
    v = variant[torch.arange(len(last)), last].log_softmax(-1)
    return (c.exp() * (c - v)).sum(-1)


@_check("scan")
def check_scan(name: str) -> str | None:
    """scan() equals one forward per head (1e-4) for every kind that applies (zero, scale, mean,
    resample; uniform attention at 0 and 1e-5, streaming window, VAR, and ACT on causal models), a no-op scan is 0, and
    the replay's self-check passes (no fallback warning) on every family of the matrix."""
    import numpy as np

    model = bridged(name)
    ragged = prompts(name)
    same_length = [p[: min(map(len, ragged))] for p in ragged]  # resample needs sources as long as inputs
    kinds: list[tuple[str, dict[str, Any], list[list[int]]]] = [
        ("zero", {}, ragged),
        ("scale", {"alpha": 2.0}, ragged),
        ("mean", {}, ragged),
        ("resample", {"shift": 1}, same_length),
    ]
    if _pattern_kinds_refused(name) is None:
        kinds += [
            ("uniform_attention", {}, ragged),
            ("uniform_attention", {"epsilon": 1e-5}, ragged),
            ("streaming_window", {"sink": 1, "recent": 3}, ragged),
            ("var", {"sinks": (0,), "targets": (1, 8)}, ragged),
        ]
        if not A.get_arch(name).is_encoder:  # ACT is causal-only (check_act_var_rows verifies the refusal)
            kinds.append(("act", {}, ragged))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a replay fallback would warn
        noop = scan(model, ragged, "scale", "kl_last", alpha=1.0)
        assert np.nanmax(np.abs(noop.values)) < 1e-9, f"{name}: no-op scan gave {np.nanmax(np.abs(noop.values))}"
        for kind, params, ps in kinds:
            width = max(map(len, ps))
            pad = model.tokenizer.pad_token_id or 0
            tokens = torch.tensor([p + [pad] * (width - len(p)) for p in ps])
            mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in ps])
            last = torch.tensor([len(p) - 1 for p in ps])
            with torch.no_grad():
                clean = model(tokens, attention_mask=mask)
            got = scan(model, ps, kind, "kl_last", **params)
            others = [l for l in range(model.cfg.n_layers) if l not in attn_layers(name)]
            assert np.isnan(got.values[:, others]).all(), f"{name} {kind}: layers {others} have no heads"
            # a kind's class, called with its own fields (reference, source), which the base class lacks
            make: Callable[..., Intervention] = KINDS[kind]
            for l in attn_layers(name):
                for h in range(model.cfg.n_heads):
                    spec = make(heads=[(l, h)], **params)
                    if kind == "mean":  # scan's default reference set: the scanned prompts
                        spec = make(heads=[(l, h)], reference=tuple(tuple(p) for p in ps))
                    if kind == "resample":  # scan's default source: the scanned prompts
                        spec = make(heads=[(l, h)], source=tuple(tuple(p) for p in ps), **params)
                    ref = _kl_last(clean, forward_with(model, tokens, [spec], attention_mask=mask), last)
                    np.testing.assert_allclose(
                        got.values[:, l, h],
                        ref.numpy(),
                        rtol=TOL_SCAN,
                        atol=TOL_SCAN,
                        err_msg=f"{name} {kind} L{l}H{h}",
                    )
    return None


# Families whose float64 forward still runs a whole mixer in float32: the finite difference is that
# precise only. Qwen3-Next's Gated DeltaNet casts q, k, v, beta and the decay to float32
# (transformers' torch_chunk_gated_delta_rule), ~1e-5 of the activations, which the two Richardson
# rounds amplify to ~6e-4 of the derivative. Jamba's Mamba layers do the same (modeling_jamba casts the
# selective scan's dt, A, B and the state to float32): uniform attention's derivative agrees to ~3e-4.
# GraniteMoeHybrid's Mamba-2 torch path casts its scan to float32 too (the swept 2-layer model: ~6e-4).
_FLOAT32_INSIDE = {
    "qwen3-next": 1e-3,
    "jamba": 1e-3,
    "GraniteMoeHybridForCausalLM": 1e-3,
    "Qwen3NextForCausalLM": 1e-3,
    "Qwen3_5MoeForCausalLM": 1e-3,
}


@_check("atp")
def check_atp(name: str) -> str | None:
    """Attribution patching is the first-order term of the exact effect: for every head scaled by
    1 + t and (where pattern edits are live) uniform attention with epsilon = 1 + t, the derivative in
    t at 0 of the "atp" and "atp*" estimates equals that of the exact scan to 2e-4 relative; each
    derivative by central differences with two rounds of Richardson extrapolation (steps 8e-2, 4e-2,
    2e-2; error O(step^6)). The tolerance is the finite difference's own accuracy: many families round
    to float32 inside their forward (RMSNorm, LayerNorm, softmax), so a smaller step measures that
    rounding and a larger one the higher-order terms (on GPT-2, whose forward stays float64, the suite
    checks 1e-6: tests/test_attribution_patching.py). Float64 model, padded batch, a
    metric nonlinear in the logits (a fixed mix of the last position's log-probabilities). Mixtral's
    grouped expert matmul has no float64 kernel: float32 there, to 1e-3; Qwen3-Next's linear attention
    runs in float32 inside (`_FLOAT32_INSIDE`): 1e-3. A hybrid's layers without heads are NaN."""
    import numpy as np

    try:
        model, h, tol = A.tiny_arch_model(name, dtype=torch.float64), 8e-2, _FLOAT32_INSIDE.get(name, 2e-4)
        with torch.no_grad():
            model(torch.tensor([prompts(name)[1]]))
    except (RuntimeError, InputError) as err:  # no float64 kernel on this family (boot wraps the adapter's error)
        if isinstance(err, InputError) and not isinstance(err.__cause__, RuntimeError):
            raise
        model, h, tol = bridged(name), 2e-2, 1e-3
    ps = prompts(name)
    mix = torch.randn(model.cfg.d_vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def metric(base, variant, batch):  # a scan metric is a change: f(variant) - f(base)
        def f(logits):
            last = logits[torch.arange(len(logits)), batch.lengths.to(logits.device) - 1]
            return torch.log_softmax(last, -1) @ mix.to(last.dtype)

        return f(variant) - f(base)

    def derivative(kind, param, method):  # d/dt at t = 0 of the scan's values with param = 1 + t
        def central(step):
            up, down = (scan(model, ps, kind, metric, method=method, **{param: 1 + s}).values for s in (step, -step))
            return (up - down) / (2 * step)

        d1, d2, d3 = central(h), central(h / 2), central(h / 4)
        r1, r2 = (4 * d2 - d1) / 3, (4 * d3 - d2) / 3
        return (16 * r2 - r1) / 15  # error O(h^6): a large step, so float32 rounding inside stays small

    cases = [("scale", "alpha")]
    if _pattern_kinds_refused(name) is None:
        cases.append(("uniform_attention", "epsilon"))
    layers = list(attn_layers(name))
    others = [l for l in range(model.cfg.n_layers) if l not in layers]
    for kind, param in cases:
        exact = derivative(kind, param, "exact")
        scale = max(float(np.abs(exact[:, layers]).max()), 1e-3)
        for est in ("atp", "atp*"):
            estimate = derivative(kind, param, est)
            assert np.isnan(estimate[:, others]).all(), f"{name} {kind} {est}: layers {others} have no heads"
            gap = float(np.abs(estimate[:, layers] - exact[:, layers]).max())
            assert gap <= tol * scale, f"{name} {kind} {est}: |AtP - finite difference| = {gap:.3g} (scale {scale:.3g})"
    return None


# ---------------------------------------------------------------------------------------------
# generation


@_check("generation")
def check_generation(name: str) -> str | None:
    """KV-cached greedy generation (the cache verified, no fallback) equals full recomputation, a plain HF
    argmax loop, and HF `generate` (which stops at EOS: compared up to there)."""
    if A.get_arch(name).is_encoder:
        return "encoder: no generation"
    model, hf = bridged(name), plain(name)
    hf_cache_ok = _hf_cache_consistent(name)
    # The cached path itself, not its fallback to recomputation (a hybrid's cache holds recurrent states),
    # unless plain HF's own cache disagrees with its full forward: then headscope must fall back.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's warning
        verified = kv_cache_verified(model, prompts(name)[0])
    assert verified == hf_cache_ok, (
        f"{name}: KV-cached decoding verified={verified}, plain HF's cache consistent={hf_cache_ok}"
    )
    for ids in prompts(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = greedy_generate(model, ids, 6)
            assert got == greedy_generate(model, ids, 6, use_cache=False), f"{name}: cached != recompute"
        seq = list(ids)
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
            x = torch.tensor([ids])
            ref = (
                hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False, pad_token_id=0)[
                    0, len(ids) :
                ].tolist()
                if hf_cache_ok
                else None
            )
        assert got == seq[len(ids) :], f"{name}: != plain HF greedy loop"
        assert ref is None or (ref and got[: len(ref)] == ref), f"{name}: != HF generate"
    return (
        None
        if hf_cache_ok
        else (
            "plain HF's own KV cache disagrees with its full forward here: headscope "
            "generates by recomputation (same tokens as HF's greedy loop)"
        )
    )


def _hf_cache_consistent(name: str) -> bool:
    """Whether plain HF's cached decode step reproduces its own full forward (transformers 5.24's Bamba
    does not): one step after the prompt, 1e-4 of the logits' scale."""
    hf, ids = plain(name), prompts(name)[0]
    with torch.no_grad():
        full = hf(torch.tensor([ids])).logits[0, -1]
        out = hf(torch.tensor([ids[:-1]]), use_cache=True)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        step = hf(torch.tensor([ids[-1:]]), use_cache=True, **{cache_kwarg(hf): cache}).logits[0, -1]
    return bool((step - full).abs().max() <= 1e-4 * max(1.0, float(full.abs().max())))


@_check("retrieval")
def check_retrieval(name: str) -> str | None:
    """The retrieval score's teacher-forced mode (one forward over prompt + answer) equals its
    generate mode (the paper's step-by-step KV-cached decoding), with copy events to compare."""
    import numpy as np

    if A.get_arch(name).is_encoder:
        return "encoder: no generation"
    model = bridged(name)
    samples = []
    for seed in range(4):
        ids = A.random_prompt(name, 12, seed=seed).tolist()
        full = ids + greedy_generate(model, ids, 12)  # the answer is the model's own continuation
        P = len(full)  # a "needle" covering the whole prompt: any copy from it counts
        samples.append(
            NeedleSample(tuple(full), (0, P), (0, P), tuple(full), "", P, 0.0, "repeat", "all", "repeats", False)
        )
    tf = RetrievalHeads(span="needle", success_rouge=-1).fit(model, samples)
    gen = RetrievalHeads(span="needle", success_rouge=-1, mode="generate").fit(model, samples)
    assert np.nansum(tf.sample_scores_.values) > 0, f"{name}: no copy events to compare"
    np.testing.assert_allclose(tf.sample_scores_.values, gen.sample_scores_.values, rtol=0, atol=1e-12)
    return None


# The text analyzers with inputs a tiny model can take (retrieval has a column of its own; the
# vision analyzers need a VLM testbed and are checked in tests/test_vision_*.py).
_ANALYZER_RUNS: tuple[tuple[str, dict[str, Any], str | None], ...] = (
    ("attention-sinks", {}, "ids"),
    ("streaming-heads", {"seg_len": 12, "n_repeats": 3, "check": False}, None),
    ("head-importance", {}, "ids"),
    ("preplan-anchor", {}, "pairs"),
    ("head-divergence", {}, None),
    ("ships", {}, "ids"),
    ("sahara", {"search_steps": 1}, "ids"),
)


@_check("analyzers")
def check_analyzers(name: str) -> str | None:
    """Each text analyzer either fits, with a [..., layer, head] table that has finite values and
    heads that exist, or refuses the family with an InputError (never another exception)."""
    import numpy as np

    model = bridged(name)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    others = [l for l in range(L) if l not in attn_layers(name)]
    ids = [A.random_prompt(name, 24, seed=s).tolist() for s in range(3)]
    data = {"ids": ids, "pairs": [(p[:12], p[12:]) for p in ids], None: None}
    refused = []
    for analyzer, params, inputs in _ANALYZER_RUNS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                fit = get_analyzer(analyzer, **params).fit(model, data[inputs])
        except InputError:
            refused.append(analyzer)
            continue
        values = np.asarray(fit.scores_.values)
        assert values.shape[-2:] == (L, H), f"{name} {analyzer}: scores_ shape {values.shape}"
        assert np.isfinite(values).any(), f"{name} {analyzer}: no finite score"
        assert np.isnan(values[..., others, :]).all(), f"{name} {analyzer}: layers {others} have no heads"
        assert all(l in attn_layers(name) and 0 <= h < H for l, h in fit.heads_), (
            f"{name} {analyzer}: heads_ {fit.heads_}"
        )
    return f"refused with a clear error: {', '.join(refused)}" if refused else None


# ---------------------------------------------------------------------------------------------
# the table


_OUTCOMES: dict[tuple[str, str], str | Exception | None] = {}  # a check's result, or what it raised


def run_check(check: str, name: str) -> str | None:
    """`CHECKS[check](name)`, run once per process: the suite's test of each pair and the generated table
    share one outcome (the checks are deterministic), so the matrix is not computed twice."""
    key = (check, name)
    if key not in _OUTCOMES:
        try:
            _OUTCOMES[key] = CHECKS[check](name)
        except Exception as err:
            _OUTCOMES[key] = err
    value = _OUTCOMES[key]
    if isinstance(value, Exception):
        raise value
    return value


def run_matrix(names=None, checks=None) -> dict[str, dict[str, str]]:
    """{arch: {check: "ok" | reason | "FAIL: ..."}} for every architecture and check."""
    out = {}
    for name in names or A.ARCHITECTURES:
        row = {}
        for check in checks or CHECKS:
            try:
                reason = run_check(check, name)
                row[check] = "ok" if reason is None else reason
            except Exception as e:  # the table reports a failure; the test suite raises it
                row[check] = f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        out[name] = row
    return out


def markdown(table: dict[str, dict[str, str]]) -> str:
    checks = list(next(iter(table.values())))
    notes: list[str] = []

    def cell(text):
        if text == "ok":
            return "✓"
        if text not in notes:
            notes.append(text)
        return f"— ({notes.index(text) + 1})"

    lines = ["| family | attention | features | " + " | ".join(checks) + " |", "|---|---|---|" + "---|" * len(checks)]
    for name, row in table.items():
        arch = A.ARCHITECTURES[name]
        lines.append(
            f"| `{name}` | {arch.attention} | {', '.join(arch.features) or '—'} | "
            + " | ".join(cell(row[c]) for c in checks)
            + " |"
        )
    lines.append("")
    lines += [f"({i + 1}) {n}" for i, n in enumerate(notes)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(run_matrix()))
