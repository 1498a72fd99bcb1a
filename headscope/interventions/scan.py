"""Exact all-heads scans: the effect of every single-head intervention, in few forward passes.

The plain way runs one full forward per head (L x H forwards). scan() gives the same numbers
(tested to 1e-4) by (1) running the clean model once and keeping the residual stream entering
every scanned layer, (2) restarting each layer's variants from that clean residual, since an
intervention at layer l cannot change anything below it, and (3) stacking several heads'
variants of one layer along the batch axis, each block of rows editing a different head
(`replay.py`). TransformerLens 4's `start_at_layer` still executes the lower blocks, so the blocks
are called directly (their hooks fire as usual).

One pipeline for every method: a `ScanRequest` (validated once) goes to `exact()` ("exact"),
`estimate()` ("atp" / "atp*", attribution patching in `atp.py`) or `estimate()` then `verify()`
("+exact": the exact scan of the heads the estimate ranks first, a `ScreenedScan`).
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture.engine import SITES
from ..errors import InputError
from ..inputs.tokens import iter_batches
from ..models.info import model_info
from ..results import HeadScores
from . import atp
from .apply import apply
from .hooks import check_editable, check_specs, layer_hook, query_slice
from .kind import Intervention
from .metrics import important_end
from .prepare import prepare_references
from .replay import CleanRun, clean_readout, finish, full_forward, replay_matches
from .request import METHODS, Readout, ScanRequest, bind, check_top_k
from .screen import ScreenedScan, default_top_k, screen_order
from .targets import metric_name, prompt_labels

__all__ = ["METHODS", "ScanRequest", "clean_readout", "exact", "scan", "variant_outputs", "verify"]


def variant_outputs(
    model,
    token_lists,
    request: ScanRequest | Intervention,
    *,
    last_only: bool = True,
    readout: Readout = "logits",
    desc: str = "scan",
    **options,
):
    """Yield (batch, base [B, pos', out], layer, {head: variant [B, pos', out]}) for every visited layer.

    `request` says what to run: a `ScanRequest`, or an Intervention (its kind and parameters; its heads
    are the ones visited unless `visit` is given) with the request's options as keywords (`visit`,
    `base_interventions`, `batch_size`, `max_rows`, `decode_start`, `progress`, `replay`). Two sets of
    heads, never mixed: the heads visited one at a time (each variant edits one of them) and
    `base_interventions`, specs whose heads are edited together, in the clean run and in every variant
    (Sahara's greedy search grows them). Outputs are logits or, with readout="final_hidden", the
    final-norm hidden state; only each prompt's last real position when last_only. Consume it inside
    `contextlib.closing(...)` so that an error in the consumer detaches the base interventions' hooks
    at once.

    `replay`: "auto" restarts each layer's variants from the stored clean residual after checking, on the
    first batch, that this replay reproduces the model's own forward (else it warns and runs full
    forwards); "off" always runs full forwards; "force" skips the check (benchmarks).
    """
    if isinstance(request, Intervention):
        request = ScanRequest(request, visit=options.pop("visit", request.heads), **options)
    elif options:
        raise InputError(f"pass the options in the ScanRequest, not as keywords too (got {sorted(options)})")
    info = model_info(model)
    visit = request.visit
    if visit is None:
        visit = tuple((l, h) for l in info.check_layers(request.layers) for h in range(info.n_heads))
    spec = dataclasses.replace(request.template, heads=visit)
    check_specs([spec], info)
    check_editable(model, [spec])
    batch_size, per_rows = request.batch_size, request.max_rows
    prepared = prepare_references(model, [spec], default_prompts=token_lists, batch_size=batch_size)
    rows = query_slice(spec.positions, request.decode_start)
    by_layer = {l: [h for ll, h in spec.heads if ll == l] for l in spec.layers}
    pad_id = info.pad_token_id if info.pad_token_id is not None else 0
    batches = list(iter_batches(token_lists, batch_size, pad_id))
    per = max(1, per_rows // min(batch_size, len(token_lists)))
    n_units = len(batches) * sum(-(-len(hs) // per) for hs in by_layer.values())
    progress = request.progress if request.progress is not None else n_units > 8
    bar = tqdm(total=n_units, desc=desc, unit="fwd", disable=not progress)
    use_replay = request.replay != "off"
    try:
        with apply(model, request.base_interventions):
            for n_batch, batch in enumerate(batches):
                clean = CleanRun(model, batch, min(by_layer))
                B, last = len(batch.index), batch.lengths - 1
                if n_batch == 0 and request.replay == "auto":
                    use_replay = replay_matches(
                        model, clean, batch, sorted({min(by_layer), max(by_layer)}), last_only, readout
                    )
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
                                x = clean.inputs[layer].repeat(c, 1, 1)
                                variant = finish(model, x, layer, clean, c, last_rows, readout)
                            else:
                                variant = full_forward(model, batch, c, last_rows, readout)
                        out.update({head: variant[k * B : (k + 1) * B] for k, head in enumerate(chunk)})
                        bar.update()
                    yield batch, base, layer, out
    finally:
        bar.close()


def exact(model, inputs, request: ScanRequest) -> HeadScores:
    """The exact scan of the request's visited heads (whatever its method): every head's variant run.

    Returns HeadScores [prompt, layer, head]; heads not visited are NaN."""
    bound = bind(request, model, inputs)
    info, score, template = bound.info, bound.score, request.template
    values = np.full((len(bound.token_lists), info.n_layers, info.n_heads), np.nan)
    variants_iter = variant_outputs(
        model,
        bound.token_lists,
        request.replace(visit=tuple(bound.visited), method="exact", top_k=None, graddrop=False),
        last_only=getattr(score, "last_only", False),
        desc=f"scan {template.kind}",
    )
    with contextlib.closing(variants_iter):  # a failing metric still detaches the generator's hooks at once
        for batch, base, layer, variants in variants_iter:
            for head, variant in variants.items():
                values[batch.index, layer, head] = score(base, variant, batch).cpu().numpy()
    name = metric_name(score, request.metric)
    params = {"kind": template.kind, "metric": name, **_params(template)}
    if bound.base_interventions:
        params["base_interventions"] = [s.to_dict() for s in bound.base_interventions]
    return HeadScores(
        values,
        name=f"{template.kind}:{name}",
        n_kv_heads=info.n_kv_heads,
        model=info.name,
        layer_kinds=info.layer_kinds,
        analyzer="scan",
        params=params,
        prompts=prompt_labels(inputs),
        better=important_end(score),
        description=f"{getattr(score, 'description', name)}, {template.kind} on one head at a time",
    )


def verify(model, inputs, request: ScanRequest, estimate: HeadScores, top_k: int | None = None) -> ScreenedScan:
    """The exact scan of the `top_k` heads that `estimate` ranks first (largest |prompt-mean estimate|,
    `screen_order`), with the request's options: a `ScreenedScan` of both tables and the verified mask.

    `estimate` is what `estimate(model, inputs, request)` returned (or its saved copy: the screen is
    recomputed from its values, so a reloaded estimate verifies the same heads). `top_k`: this call's
    number, else the request's, else a tenth of the heads screened, at least 20."""
    if request.method == "exact":
        raise InputError(
            "verify() checks an attribution estimate: build the request with method='atp+exact' or "
            "'atp*+exact' (or 'atp' / 'atp*'), the method estimate() ran with"
        )
    info = model_info(model)
    if estimate.values.ndim != 3 or estimate.values.shape[1:] != (info.n_layers, info.n_heads):
        raise InputError(
            f"the estimate has shape {estimate.values.shape}, not [prompt, {info.n_layers}, {info.n_heads}] "
            "of this model: verify() the estimate of the same model, inputs and request"
        )
    order = screen_order(estimate)
    if not order:
        raise InputError("the estimate has no finite value to rank: nothing to verify (was it from this request?)")
    k = top_k if top_k is not None else request.top_k if request.top_k is not None else default_top_k(len(order))
    check_top_k(k)
    k = min(k, len(order))  # top_k is the number of heads verified: never more than were screened
    chosen = order[:k]
    checked = exact(
        model, inputs, request.replace(visit=tuple(chosen), layers=None, method="exact", top_k=None, graddrop=False)
    )
    if checked.values.shape != estimate.values.shape:
        raise InputError(
            f"the estimate has shape {estimate.values.shape} but these inputs and model give "
            f"{checked.values.shape}: verify() the estimate of the same model, inputs and request"
        )
    verified = np.zeros(estimate.values.shape[1:], dtype=bool)
    for l, h in chosen:
        verified[l, h] = True
    return ScreenedScan(estimate, checked, verified, k)


def scan(model, inputs, kind="uniform_attention", metric="kl_last", **options):
    """The metric's change when each single head is intervened on, for every head and prompt.

    Builds a `ScanRequest` from `kind`, `metric` and the keywords (its fields by name: `visit`, `layers`,
    `base_interventions`, `method`, `top_k`, `batch_size`, `max_rows`, `metric_kwargs`, `positions`,
    `decode_start`, `prepend_bos`, `progress`, `replay`, `graddrop`, `kl_tokens`; any other keyword is a
    parameter of the kind, e.g. epsilon=1e-5), or takes a built one as `kind` (then no other option),
    and runs it: `exact()` for method "exact"; `estimate()` for "atp" / "atp*"; `estimate()` then
    `verify()` for "atp+exact" / "atp*+exact". See `ScanRequest` for every option.

    Two sets of heads, kept apart: the heads *visited one at a time* (`visit` / `layers`: each gets its
    own variant, edited alone) and the heads *edited together* (`base_interventions`: specs applied in
    the clean run and in every variant, so the scan measures each visited head on top of them, as
    Sahara's greedy search does). Mean/resample default to the scanned inputs as reference/source.

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
    if isinstance(kind, ScanRequest):
        if options or metric != "kl_last":
            raise InputError("scan(model, inputs, request): the request holds every option; pass none beside it")
        request = kind
    else:
        request = ScanRequest.build(kind, metric, **options)
    if request.method == "exact":
        return exact(model, inputs, request)
    est = atp.estimate(model, inputs, request)
    return verify(model, inputs, request, est) if request.method.endswith("+exact") else est


def _params(template: Intervention) -> dict:
    d = template.to_dict()
    for key in ("kind", "heads"):
        d.pop(key)
    return {k: v for k, v in d.items() if not isinstance(v, list) or len(str(v)) < 200}
