"""Exact all-heads scans: the effect of every single-head intervention, in few forward passes.

The plain way runs one full forward per head (L x H forwards). scan() gives the same numbers
(tested to 1e-4) by (1) running the clean model once and keeping the residual stream entering
every scanned layer, (2) restarting each layer's variants from that clean residual, since an
intervention at layer l cannot change anything below it, and (3) stacking several heads'
variants of one layer along the batch axis, each block of rows editing a different head.
TransformerLens 4's `start_at_layer` still executes the lower blocks, so the blocks are called
directly here (their hooks fire as usual).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture.engine import SITES
from ..errors import InputError
from ..inputs.tokens import iter_batches, to_token_lists
from ..models.family import family_of
from ..models.info import model_device, model_info
from ..results import HeadScores
from .apply import apply
from .atp import DEFAULT_KL_TOKENS, attribution_scan
from .hooks import check_editable, check_specs, layer_hook, query_slice
from .kind import Intervention
from .metrics import important_end, resolve_metric
from .prepare import prepare_references
from .screen import ScreenedScan, default_top_k, screen_order
from .targets import check_reach as _check_reach
from .targets import metric_name, prompt_labels
from .targets import template as _template
from .targets import visited_heads as _visited_heads


def _expand(value, batch: int, copies: int, n_heads: int = 1):
    """Repeat a block argument along the batch axis for `copies` stacked variants: tensors with a
    batch axis first, also flattened batch x heads (Bloom's ALiBi is [batch * heads, 1, key])."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] in (batch, batch * n_heads):
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    if isinstance(value, tuple):
        return tuple(_expand(v, batch, copies, n_heads) for v in value)
    if isinstance(value, dict):
        return {k: _expand(v, batch, copies, n_heads) for k, v in value.items()}
    return value


_NOT_REPLAYED = ("past_key_values", "cache", "layer_past", "use_cache")


def _is_cache(value) -> bool:
    """A KV cache object (whatever a family calls the argument): a replay must not extend it."""
    return type(value).__name__.endswith("Cache") and hasattr(value, "get_seq_length")


class _CleanRun:
    """One clean forward keeping the input of every block from the first scanned layer on, with
    the keyword arguments the model gave *that* block (masks and RoPE differ per layer on
    local/global models), the logits and the final-norm hidden states."""

    def __init__(self, model, batch, first_layer: int):
        self.inputs, self.args, self.kwargs = {}, {}, {}
        handles = []

        def grab(layer):
            def pre_hook(module, args, kwargs):
                self.inputs[layer] = args[0].detach()
                self.args[layer] = args[1:]  # some families pass the mask positionally (BERT)
                self.kwargs[layer] = {k: v for k, v in kwargs.items() if k not in _NOT_REPLAYED and not _is_cache(v)}

            return pre_hook

        try:
            for layer in range(first_layer, len(model.blocks)):
                handles.append(model.blocks[layer].register_forward_pre_hook(grab(layer), with_kwargs=True))
            with torch.no_grad():
                self.logits, final = _forward_keeping_final(model, batch.tokens, batch.attention_mask)
            self.final_hidden = final.detach()
        finally:  # hooks never outlive the call
            for h in handles:
                h.remove()

    def readout(self, batch, last_only: bool, readout: str):
        """The clean output the variants are compared with: logits or final hidden, all positions or
        each prompt's last real one."""
        full = self.logits if readout == "logits" else self.final_hidden
        return full[torch.arange(len(batch.index)), batch.lengths - 1][:, None] if last_only else full


def clean_readout(
    model, inputs, readout: str = "logits", *, batch_size: int = 8, prepend_bos: bool | None = None
) -> torch.Tensor:
    """The model's own output at each prompt's last real token, as the scan reads it for the clean run:
    "logits" [n_prompts, d_vocab] or "final_hidden" (the final norm's output) [n_prompts, d_model],
    float32 on the CPU. What a method compares its own variants with (Sahara's base subspace)."""
    if readout not in ("logits", "final_hidden"):
        raise InputError(f"readout={readout!r}: use 'logits' or 'final_hidden'")
    info = model_info(model)
    ids = to_token_lists(model, inputs, info, prepend_bos)
    out = None
    for batch in iter_batches(ids, batch_size, info.pad_token_id if info.pad_token_id is not None else 0):
        clean = _CleanRun(model, batch, first_layer=len(model.blocks))  # no block inputs needed
        rows = clean.readout(batch, True, readout)[:, 0].float().cpu()
        out = torch.zeros(len(ids), rows.shape[-1]) if out is None else out
        out[batch.index] = rows
    return out


def _forward_keeping_final(model, tokens, attention_mask):
    """The model's own forward on the model's device: (logits, the unembedding's input)."""
    got = {}

    def keep(module, args, kwargs):  # the unembedding's input: the final norm's output, or the family's readout
        got.update(h=args[0] if args else next(iter(kwargs.values())))

    handle = model.unembed.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        device = model_device(model)
        logits = model(tokens.to(device), attention_mask=attention_mask.to(device))
    finally:
        handle.remove()
    return logits, got["h"]


def _final_norm(model, x):
    """The model's own path from the last block's output to the unembedding's input: the final norm,
    or the family's own readout (BERT's masked-LM transform, `headscope.families.bert`)."""
    fam = family_of(model)
    if fam is not None and fam.readout is not None:
        return fam.readout(model, x)
    return model.ln_final(x) if hasattr(model, "ln_final") else x  # GPT-1: no final norm


def _logits(model, x):
    """The unembedding as the model's own forward applies it, with the family's final transform
    (Gemma's soft-cap, `headscope.families.gemma`)."""
    logits = model.unembed(x)
    fam = family_of(model)
    return fam.logits(model, logits) if fam is not None and fam.logits is not None else logits


def _finish(model, x, layer, clean: _CleanRun, copies: int, last_idx, readout: str = "logits"):
    """Run blocks layer.. on residual x [copies * B, pos, d], each with its own clean kwargs; then
    the final norm and (for "logits") the unembedding, of all positions or only of each row's last_idx."""
    batch, H = x.shape[0] // copies, model.cfg.n_heads
    for b in range(layer, len(model.blocks)):
        args = tuple(_expand(a, batch, copies, H) for a in clean.args[b])
        x = model.blocks[b](
            x, *args, **{k: _expand(v, batch, copies, H) for k, v in clean.kwargs[b].items()}, use_cache=False
        )
        x = x[0] if isinstance(x, tuple) else x
    if last_idx is not None:
        x = x[torch.arange(len(x)), last_idx][:, None]  # [rows, 1, d]
    x = _final_norm(model, x)
    return _logits(model, x) if readout == "logits" else x


def _full_forward(model, batch, copies: int, last_idx, readout: str):
    """The model's own forward on `copies` stacked copies of the batch (the fallback: exact by construction)."""
    logits, final = _forward_keeping_final(
        model, batch.tokens.repeat(copies, 1), batch.attention_mask.repeat(copies, 1)
    )
    out = logits if readout == "logits" else final
    return out[torch.arange(len(out)), last_idx][:, None] if last_idx is not None else out


# Relative tolerance of the replay self-check (the issue: 1e-5 of the logits' scale).
REPLAY_RTOL = 1e-5
_REPLAY_TOLERANCE = {torch.float32: REPLAY_RTOL, torch.float64: 1e-10}  # halves: 1e-2


def replay_error(model, clean: _CleanRun, batch, layers, last_only: bool, readout: str) -> float | None:
    """Largest deviation, relative to the output's scale, of the block replay (two stacked copies,
    no edit) from the model's own clean forward, over `layers`; None if the replay crashes."""
    last = batch.lengths - 1
    ref = clean.readout(batch, last_only, readout)
    worst = 0.0
    try:
        with torch.no_grad():
            for layer in layers:
                got = _finish(
                    model,
                    clean.inputs[layer].repeat(2, 1, 1),
                    layer,
                    clean,
                    2,
                    last.repeat(2) if last_only else None,
                    readout,
                )
                diff = (got.float() - ref.float().repeat(2, *([1] * (ref.ndim - 1)))).abs().max().item()
                worst = max(worst, diff / max(1.0, ref.float().abs().max().item()))
    except Exception:  # a replay that cannot even run is the clearest mismatch
        return None
    return worst


def _warn_no_replay(model, err) -> None:
    what = "crashed" if err is None else f"deviates by {err:.2e} of the output scale"
    warnings.warn(
        f"scan: replaying blocks from the stored residual {what} on this model "
        f"({type(model.original_model).__name__}); every variant runs the model's own full forward "
        f"instead (same numbers as a per-head loop, slower).",
        RuntimeWarning,
        stacklevel=4,
    )


def variant_outputs(
    model,
    token_lists,
    spec: Intervention,
    *,
    visit=None,
    batch_size: int = 8,
    max_rows: int = 64,
    last_only: bool = True,
    readout: str = "logits",
    base_interventions=(),
    decode_start: int | None = None,
    progress: bool | None = None,
    desc: str = "scan",
    replay: str = "auto",
):
    """Yield (batch, base [B, pos', out], layer, {head: variant [B, pos', out]}) for every visited layer.

    Two sets of heads, never mixed: `visit`, the heads visited one at a time (each variant edits one
    of them, with `spec`'s kind and parameters; default: `spec.heads`), and `base_interventions`,
    specs whose heads are edited together, in the clean run and in every variant (Sahara's greedy
    search grows them). Outputs are logits or, with readout="final_hidden", the final-norm hidden
    state; only each prompt's last real position when last_only. Consume it inside
    `contextlib.closing(...)` so that an error in the consumer detaches the base interventions'
    hooks at once.

    `replay`: "auto" restarts each layer's variants from the stored clean residual after checking,
    on the first batch, that this replay reproduces the model's own forward (else it warns and
    runs full forwards); "off" always runs full forwards; "force" skips the check (benchmarks).
    """
    if replay not in ("auto", "off", "force"):
        raise InputError(f"replay must be 'auto', 'off' or 'force', got {replay!r}")
    info = model_info(model)
    if visit is not None:
        spec = dataclasses.replace(spec, heads=visit)
    check_specs([spec], info)
    check_editable(model, [spec])
    prepared = prepare_references(model, [spec], default_prompts=token_lists, batch_size=batch_size)
    rows = query_slice(spec.positions, decode_start)
    by_layer = {l: [h for ll, h in spec.heads if ll == l] for l in spec.layers}
    pad_id = info.pad_token_id if info.pad_token_id is not None else 0
    batches = list(iter_batches(token_lists, batch_size, pad_id))
    per = max(1, max_rows // min(batch_size, len(token_lists)))
    n_units = len(batches) * sum(-(-len(hs) // per) for hs in by_layer.values())
    bar = tqdm(total=n_units, desc=desc, unit="fwd", disable=not (progress if progress is not None else n_units > 8))
    use_replay = replay != "off"
    try:
        with apply(model, base_interventions):
            for n_batch, batch in enumerate(batches):
                clean = _CleanRun(model, batch, min(by_layer))
                B, last = len(batch.index), batch.lengths - 1
                if n_batch == 0 and replay == "auto":
                    err = replay_error(model, clean, batch, sorted({min(by_layer), max(by_layer)}), last_only, readout)
                    tol = _REPLAY_TOLERANCE.get(clean.logits.dtype, 1e-2)
                    if err is None or err > tol:
                        use_replay = False
                        _warn_no_replay(model, err)
                base = clean.readout(batch, last_only, readout)
                for layer, heads in by_layer.items():
                    out = {}
                    for i in range(0, len(heads), per):
                        chunk = heads[i : i + per]
                        c, global_rows = len(chunk), torch.as_tensor(batch.index).repeat(len(chunk))

                        def select(n_rows, chunk=chunk, B=B, global_rows=global_rows):
                            return torch.arange(n_rows), torch.tensor(chunk).repeat_interleave(B), global_rows

                        hook = (SITES[spec.site].format(l=layer), layer_hook(spec, layer, select, rows, prepared))
                        last_rows = last.repeat(c) if last_only else None
                        with torch.no_grad(), model.hooks(fwd_hooks=[hook]):
                            if use_replay:
                                variant = _finish(
                                    model, clean.inputs[layer].repeat(c, 1, 1), layer, clean, c, last_rows, readout
                                )
                            else:
                                variant = _full_forward(model, batch, c, last_rows, readout)
                        out.update({head: variant[k * B : (k + 1) * B] for k, head in enumerate(chunk)})
                        bar.update()
                    yield batch, base, layer, out
    finally:
        bar.close()


METHODS = ("exact", "atp", "atp*", "atp+exact", "atp*+exact")


def scan(
    model,
    inputs,
    kind="uniform_attention",
    metric="kl_last",
    *,
    visit=None,
    layers=None,
    base_interventions=(),
    batch_size: int = 8,
    max_rows: int = 64,
    metric_kwargs: dict | None = None,
    positions="all",
    decode_start: int | None = None,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
    replay: str = "auto",
    heads=None,
    method: str = "exact",
    top_k: int | None = None,
    graddrop: bool = False,
    kl_tokens: int = DEFAULT_KL_TOKENS,
    **kind_params,
):
    """The metric's change when each single head is intervened on, for every head and prompt.

    Two sets of heads, kept apart: the heads *visited one at a time* (`visit` / `layers`: each gets
    its own variant, edited alone) and the heads *edited together* (`base_interventions`: specs
    applied in the clean run and in every variant, so the scan measures each visited head on top of
    them, as Sahara's greedy search does).

    Args:
        inputs: prompts as for `capture()` (strings, token tensors, id lists; ragged is fine).
        kind: a key of KINDS ("uniform_attention", "zero", "mean", "resample", "scale", ...), a kind
            class, or an Intervention used as a template (its heads are ignored: they are not what
            is visited). Kind parameters as keywords, e.g. epsilon=1e-5. Mean/resample default to
            the scanned inputs as reference/source.
        metric: "kl_last", "logit_diff" (metric_kwargs={"answers": [(correct, wrong), ...]}),
            "loss", or a callable metric(base_logits, variant_logits, batch) -> [batch].
        visit: the (layer, head) pairs visited one at a time (default: every head of `layers`).
        layers: visit every head of these layers (default: all layers); ignored when `visit` is given.
        base_interventions: Intervention specs kept applied underneath every variant.
        heads: the old name of `visit`, still accepted.
        max_rows: most rows per variant forward (heads stacked per forward = max_rows // batch).
        replay: "auto" (default) restarts each layer's variants from the stored clean residual once a
            run-time check shows that this replay reproduces the model's own logits (1e-5 relative),
            else warns and runs full forwards; "off" always runs full forwards.
        method: "exact" (default: every head's variant run); "atp" / "atp*": attribution patching, the
            first-order estimate for all heads from one forward and one backward per batch ("atp*"
            with AtP*'s QK fix for score kinds; see `headscope.interventions.atp`); "atp+exact" /
            "atp*+exact": the estimate for all heads, then the exact scan of the `top_k` heads with
            the largest |prompt-mean estimate| (default: a tenth of the heads screened, at least 20),
            returned as a `ScreenedScan`.
        graddrop, kl_tokens: attribution patching options (AtP*'s GradDrop; the kl_last Fisher form's
            number of tokens), see `attribution_scan`.

    Returns:
        HeadScores [prompt, layer, head]; heads not visited are NaN. A `ScreenedScan` (both tables
        and which heads were verified) for the "+exact" methods.

    Example:
        >>> from headscope.testing import planted_model
        >>> model, truth = planted_model()
        >>> s = scan(model, [[1, 5, 6, 7, 5, 6, 7]], "zero", "kl_last")
        >>> s.values.shape
        (1, 2, 4)
    """
    if heads is not None and visit is not None:
        raise InputError("pass the heads to visit as visit= (heads= is its old name), not both")
    if method not in METHODS:
        raise InputError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if method != "exact":
        if base_interventions:
            raise InputError(
                "attribution patching estimates single heads on the clean model; base_interventions need method='exact'"
            )
        estimator = method.removesuffix("+exact")
        estimate = attribution_scan(
            model,
            inputs,
            kind,
            metric,
            estimator=estimator,
            visit=visit if heads is None else heads,
            layers=layers,
            batch_size=batch_size,
            metric_kwargs=metric_kwargs,
            positions=positions,
            decode_start=decode_start,
            prepend_bos=prepend_bos,
            graddrop=graddrop,
            kl_tokens=kl_tokens,
            progress=progress,
            **kind_params,
        )
        if not method.endswith("+exact"):
            return estimate
        if top_k is None:
            top_k = default_top_k(len(screen_order(estimate)))
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer (heads verified exactly), got {top_k!r}")
        chosen = screen_order(estimate)[:top_k]
        exact = scan(
            model,
            inputs,
            kind,
            metric,
            visit=chosen,
            batch_size=batch_size,
            max_rows=max_rows,
            metric_kwargs=metric_kwargs,
            positions=positions,
            decode_start=decode_start,
            prepend_bos=prepend_bos,
            progress=progress,
            replay=replay,
            **kind_params,
        )
        verified = np.zeros(estimate.values.shape[1:], dtype=bool)
        for l, h in chosen:
            verified[l, h] = True
        return ScreenedScan(estimate, exact, verified, top_k)
    info = model_info(model)
    template = _template(kind, positions, kind_params)
    base_interventions = check_specs(base_interventions, info)
    token_lists = to_token_lists(model, inputs, info, prepend_bos)
    _check_reach(template, token_lists, decode_start)
    score = resolve_metric(metric, model, len(token_lists), metric_kwargs)
    visited = _visited_heads(info, visit if heads is None else heads, layers, "visit" if heads is None else "heads")
    values = np.full((len(token_lists), info.n_layers, info.n_heads), np.nan)
    variants_iter = variant_outputs(
        model,
        token_lists,
        template,
        visit=visited,
        batch_size=batch_size,
        max_rows=max_rows,
        base_interventions=base_interventions,
        decode_start=decode_start,
        last_only=getattr(score, "last_only", False),
        progress=progress,
        desc=f"scan {template.kind}",
        replay=replay,
    )
    with contextlib.closing(variants_iter):  # a failing metric still detaches the generator's hooks at once
        for batch, base, layer, variants in variants_iter:
            for head, variant in variants.items():
                values[batch.index, layer, head] = score(base, variant, batch).cpu().numpy()
    prompts = prompt_labels(inputs)
    name = metric_name(score, metric)
    params = {"kind": template.kind, "metric": name, **_params(template)}
    if base_interventions:
        params["base_interventions"] = [s.to_dict() for s in base_interventions]
    return HeadScores(
        values,
        name=f"{template.kind}:{name}",
        n_kv_heads=info.n_kv_heads,
        model=info.name,
        layer_kinds=info.layer_kinds,
        analyzer="scan",
        params=params,
        prompts=prompts,
        better=important_end(score),
        description=f"{getattr(score, 'description', name)}, {template.kind} on one head at a time",
    )


def _params(template: Intervention) -> dict:
    d = template.to_dict()
    for key in ("kind", "heads"):
        d.pop(key)
    return {k: v for k, v in d.items() if not isinstance(v, list) or len(str(v)) < 200}
