"""Activation patching between paired prompts: `patch(model, clean, corrupt, metric, sites)`.

Denoising runs the corrupt prompt with one activation (one head's z / q / k / v / pattern, or the
residual stream at one position) replaced by its value on the clean prompt; noising runs the clean
prompt with the corrupt value. TransformerLens runs one forward per patched activation
(`patching.get_act_patch_*`); here, as in `scan()`, the run being patched is kept once per batch
(the residual entering every block, with each block's own masks and RoPE arguments), and each layer's
variants restart from that residual with several variants stacked along the batch axis, block k of
rows patching variant k. A patch at layer l cannot change anything below l, so this is exact (tested
against a plain TransformerLens hook loop to 1e-5); a run-time check on the first batch falls back
to full forwards where the replay does not reproduce the model's own logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture.engine import SITES
from ..errors import InputError
from ..inputs.tokens import iter_batches, to_token_lists
from ..models.compat import pattern_edits_take_effect
from ..models.info import model_device, model_info
from ..options import REPLAYS, Replay
from .metrics import _answer_ids
from .patch_results import PatchScores
from .replay import CleanRun, finish, full_forward, replay_matches
from .targets import prompt_labels

# Sites `patch` accepts, and the axis a variant patches one entry of (None: the residual, per position).
PatchSite = Literal["z", "q", "k", "v", "pattern", "resid_pre"]
PATCH_SITES: dict[PatchSite, str | None] = {
    "z": "head",
    "q": "head",
    "k": "kv_head",
    "v": "kv_head",
    "pattern": "head",
    "resid_pre": None,
}
Direction = Literal["denoising", "noising"]  # run corrupt and patch clean in, or the reverse
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)


class PatchLogitDiff:
    """logit(correct) − logit(wrong) at each prompt's last real position (the run's own value, not a change)."""

    name, last_only = "logit_diff", True

    def __init__(self, answer_ids: torch.Tensor):
        self.answer_ids = answer_ids  # [n_prompts, 2]

    def __call__(self, logits, batch):
        ids = self.answer_ids[torch.as_tensor(batch.index)].to(logits.device)
        last = logits[:, -1].float()
        return last.gather(-1, ids[:, :1])[:, 0] - last.gather(-1, ids[:, 1:])[:, 0]


def _resolve(metric, model, n_prompts: int, metric_kwargs):
    kwargs = dict(metric_kwargs or {})
    if callable(metric) and not isinstance(metric, str):
        if kwargs:
            raise InputError(
                "metric_kwargs are for the built-in metric 'logit_diff'; a callable metric takes none "
                "(bind its arguments with functools.partial)"
            )
        return metric
    if metric != "logit_diff":
        raise InputError(
            f"unknown patching metric {metric!r}: use 'logit_diff' (metric_kwargs={{'answers': "
            "[(correct, wrong), ...]}}) or a callable metric(logits [batch, pos, vocab], batch) -> [batch]"
        )
    answers = kwargs.pop("answers", None)
    if kwargs:
        raise InputError(f"metric 'logit_diff' takes only metric_kwargs['answers'], got {sorted(kwargs)}")
    return PatchLogitDiff(_answer_ids(model, answers, n_prompts))


def _check_pairs(clean_ids, corrupt_ids) -> None:
    if len(clean_ids) != len(corrupt_ids):
        raise InputError(
            f"patch: {len(clean_ids)} clean prompts but {len(corrupt_ids)} corrupt prompts; give one "
            "corrupt prompt per clean prompt (pair i patches between clean[i] and corrupt[i])"
        )
    for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)):
        if len(a) != len(b):
            raise InputError(
                f"patch: pair {i} has a clean prompt of {len(a)} tokens and a corrupt prompt of {len(b)} "
                "tokens; activations are patched position by position, so each pair must tokenize to "
                "the same length (reword the corrupt prompt, e.g. swap a name for a one-token name)"
            )


def _check_sites(sites: PatchSite | Sequence[PatchSite], model) -> list[PatchSite]:
    site_list = [sites] if isinstance(sites, str) else list(sites)
    if not site_list:
        raise InputError(f"sites is empty: name at least one of {', '.join(PATCH_SITES)}")
    for s in site_list:
        if s not in PATCH_SITES:
            raise InputError(f"unknown patching site {s!r}: use one of {', '.join(PATCH_SITES)}")
    if len(set(site_list)) != len(site_list):
        raise InputError(f"sites {site_list} names a site twice")
    if "pattern" in site_list and not pattern_edits_take_effect(model):
        arch = type(getattr(model, "original_model", model)).__name__
        raise InputError(
            f"site 'pattern': on {arch} the TransformerLens bridge lets Hugging Face compute attention "
            "and only reports the pattern afterwards, so a patched pattern would be discarded. Fix: "
            "patch 'z' or 'v' on this model (see docs/architectures.md)"
        )
    return site_list


def _capture(model, batch, site_list, n_layers):
    """One forward of `batch` keeping every site's activation at every layer: ({(site, layer): t}, logits)."""
    got = {}

    def keep(key):
        def hook(t, hook):
            got[key] = t.detach()

        return hook

    hooks = [(SITES[s].format(l=l), keep((s, l))) for s in site_list for l in range(n_layers)]
    device = model_device(model)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(batch.tokens.to(device), attention_mask=batch.attention_mask.to(device))
    return got, logits


def _patch_hook(site: str, source: torch.Tensor, variants, rows: int):
    """A hook writing `source`'s entry into block k of rows for variant k = (unit, position or None)."""

    def hook(t, hook):
        out, src = t.clone(), source.to(t.device, t.dtype)
        for k, (u, p) in enumerate(variants):
            r = slice(k * rows, (k + 1) * rows)
            at = slice(None) if p is None else p
            if site == "resid_pre":  # [batch, pos, d]
                out[r, at] = src[:, at]
            elif site == "pattern":  # [batch, head, q, k]: a position is a query (destination) row
                out[r, u, at] = src[:, u, at]
            else:  # [batch, pos, head, d]
                out[r, at, u] = src[:, at, u]
        return out

    return hook


def _at_last(logits, batch, last_only: bool):
    return logits[torch.arange(len(batch.index)), batch.lengths - 1][:, None] if last_only else logits


def patch(
    model,
    clean,
    corrupt,
    metric="logit_diff",
    sites: PatchSite | Sequence[PatchSite] = "z",
    *,
    direction: Direction = "denoising",
    per_position: bool = False,
    metric_kwargs: dict | None = None,
    batch_size: int = 8,
    max_rows: int = 64,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
    replay: Replay = "auto",
):
    """Exact activation patching of every head (or residual position) between paired prompts.

    Args:
        clean, corrupt: paired prompts (strings, id lists or a token tensor), pair i of the same length.
        metric: "logit_diff" = logit(correct) − logit(wrong) at each prompt's last real token, with
            metric_kwargs={"answers": [(correct, wrong), ...]} (one pair per prompt, single tokens or ids;
            the answers the *clean* prompt should give); or a callable metric(logits, batch) -> [batch]
            on the patched run's logits [batch, pos, vocab] (right-padded; `batch.lengths`, `batch.index`
            = the prompts' indices, as TransformerLens's patching_metric with reduce="none").
        sites: one of "z" (head output), "q", "k", "v" (per KV head on GQA/MQA models), "pattern" (a
            head's attention pattern; per position = its query row), "resid_pre" (the residual entering
            a layer, always per position); a str gives one PatchScores, a list a {site: PatchScores}.
        direction: "denoising" (run corrupt, patch in clean) or "noising" (run clean, patch in corrupt).
        per_position: patch one (head, position) at a time instead of a head at every position.
        max_rows: most rows per forward (variants stacked per forward = max_rows // batch).
        replay: "auto" / "off" / "force", as in `scan()`.

    Returns:
        PatchScores with values [prompt, layer, head] (k/v: kv_head; per position: [..., position];
        resid_pre: [prompt, layer, position]) of the metric on the patched run; positions past a
        prompt's end are NaN. `.normalized()` gives TransformerLens's (patched − corrupt)/(clean − corrupt).

    Example:
        >>> from headscope.testing import planted_model
        >>> model, truth = planted_model()
        >>> clean, corrupt = [[1, 5, 6, 7, 5, 6]], [[1, 5, 6, 7, 9, 6]]
        >>> r = patch(model, clean, corrupt, lambda logits, batch: logits[:, -1, 7], "z")
        >>> r.values.shape
        (1, 2, 4)
    """
    if direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}: use 'denoising' (run corrupt, patch clean in) or 'noising'")
    if replay not in REPLAYS:
        raise InputError(f"replay must be {', '.join(map(repr, REPLAYS[:-1]))} or {REPLAYS[-1]!r}, got {replay!r}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be a positive integer, got {max_rows!r}")
    site_list = _check_sites(sites, model)
    info = model_info(model)
    clean_ids = to_token_lists(model, clean, info, prepend_bos)
    corrupt_ids = to_token_lists(model, corrupt, info, prepend_bos)
    _check_pairs(clean_ids, corrupt_ids)
    score = _resolve(metric, model, len(clean_ids), metric_kwargs)
    last_only = getattr(score, "last_only", False)
    base_ids, source_ids = (corrupt_ids, clean_ids) if direction == "denoising" else (clean_ids, corrupt_ids)
    n, T, L = len(base_ids), max(len(t) for t in base_ids), info.n_layers
    pad = info.pad_token_id if info.pad_token_id is not None else 0
    values, base_m, source_m = {}, np.zeros(n), np.zeros(n)
    use_replay, bar = replay != "off", None
    per = max(1, max_rows // min(batch_size, n))
    try:
        for n_batch, (bb, sb) in enumerate(
            zip(iter_batches(base_ids, batch_size, pad), iter_batches(source_ids, batch_size, pad))
        ):
            sources, source_logits = _capture(model, sb, site_list, L)
            base = CleanRun(model, bb, 0)
            with torch.no_grad():
                source_m[sb.index] = score(_at_last(source_logits, sb, last_only), sb).float().cpu().numpy()
                base_m[bb.index] = score(_at_last(base.logits, bb, last_only), bb).float().cpu().numpy()
            B, width = len(bb.index), bb.tokens.shape[1]
            if n_batch == 0 and replay == "auto":
                use_replay = replay_matches(model, base, bb, sorted({0, L - 1}), last_only, "logits")
            for site in site_list:
                unit = PATCH_SITES[site]
                n_units = 1 if unit is None else sources[(site, 0)].shape[1 if site == "pattern" else 2]
                positioned = per_position or unit is None
                if site not in values:
                    shape = (n, L) + (() if unit is None else (n_units,)) + ((T,) if positioned else ())
                    values[site] = np.full(shape, np.nan)
                variants = [(u, p) for u in range(n_units) for p in (range(width) if positioned else [None])]
                if bar is None:
                    total = sum(-(-len(variants) // per) for _ in range(L)) * -(-n // batch_size) * len(site_list)
                    bar = tqdm(
                        total=total,
                        desc=f"patch {direction}",
                        unit="fwd",
                        disable=not (progress if progress is not None else total > 8),
                    )
                for layer in range(L):
                    for i in range(0, len(variants), per):
                        chunk = variants[i : i + per]
                        c, last_rows = len(chunk), (bb.lengths - 1).repeat(len(chunk)) if last_only else None
                        hook = (SITES[site].format(l=layer), _patch_hook(site, sources[(site, layer)], chunk, B))
                        with torch.no_grad(), model.hooks(fwd_hooks=[hook]):
                            if use_replay:
                                out = finish(model, base.inputs[layer].repeat(c, 1, 1), layer, base, c, last_rows)
                            else:
                                out = full_forward(model, bb, c, last_rows, "logits")
                            for k, (u, p) in enumerate(chunk):
                                m = score(out[k * B : (k + 1) * B], bb).float().cpu().numpy()
                                idx = (bb.index, layer) + (() if unit is None else (u,)) + (() if p is None else (p,))
                                values[site][idx] = m
                        bar.update()
            if per_position or "resid_pre" in site_list:  # a position past a prompt's end patched only padding
                for row, length in zip(bb.index, bb.lengths.tolist()):
                    for site, v in values.items():
                        if v.ndim == 4 or PATCH_SITES[site] is None:
                            v[row, ..., length:] = np.nan
    finally:
        if bar is not None:
            bar.close()
    clean_m, corrupt_m = (source_m, base_m) if direction == "denoising" else (base_m, source_m)
    name = getattr(score, "name", getattr(metric, "__name__", "metric"))
    results = {}
    for site in site_list:
        unit = PATCH_SITES[site]
        dims = (
            ("prompt", "layer")
            + (() if unit is None else (unit,))
            + (("position",) if per_position or unit is None else ())
        )
        results[site] = PatchScores(
            values[site],
            dims=dims,
            site=site,
            direction=direction,
            metric=name,
            clean_metric=clean_m,
            corrupt_metric=corrupt_m,
            model=info.name,
            n_kv_heads=info.n_kv_heads,
            prompts=prompt_labels(clean),
            corrupt_prompts=prompt_labels(corrupt),
            params={"per_position": per_position, "batch_size": batch_size},
        )
    return results[sites] if isinstance(sites, str) else results
