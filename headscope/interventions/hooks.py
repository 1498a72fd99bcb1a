"""Realise intervention specs as hook functions.

One hook per (spec, layer), vectorised over every (batch row, head) pair it edits: the pairs are
gathered into one slice, edited by the spec's own `edit()` (its kind class), and scattered back. A
`Selector` says which pairs: `apply()` edits every row x the spec's heads of that layer; `scan()`
edits a different head in each block of rows, so many single-head variants share one forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..capture.engine import SITES, site_name
from ..capture.reducers import Tower
from ..errors import InputError
from ..models.compat import pattern_edit_route, pattern_route_failure
from ..models.info import ModelInfo, model_info
from .kind import ATTENTION_SITES, KINDS, EditContext, Intervention
from .prepare import Prepared

# selector(batch_size) -> (row_idx [n], head_idx [n], local_row [n]); local_row indexes the
# prompt a row holds (scan stacks copies of the batch, so row r holds prompt r % batch).
Selector = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def query_slice(positions, decode_start: int | None = None, offset: int = 0) -> slice:
    """The rows of one forward's query axis that a spec with `positions` edits.

    Positions are absolute positions in the sequence: `offset` is the absolute position of the
    forward's first query (0 for a whole sequence; a KV-cached decode step feeds one query, at
    offset = its position) and `decode_start` the absolute position of the first decode query (the
    last prompt token). "all" is every row; "decode" the queries at >= decode_start; a [start, end)
    span the queries inside it. The slice may be empty (`rows_on(...)` says so).
    """
    if positions == "all":
        return slice(None)
    if positions == "decode":
        if decode_start is None:
            raise InputError(
                "an intervention with positions='decode' needs decode_start (the first decode query position)"
            )
        start, end = decode_start, None
    else:
        start, end = positions
    return slice(max(0, start - offset), None if end is None else max(0, end - offset))


def rows_on(rows: slice, n_queries: int) -> bool:
    """Whether `rows` (a `query_slice`) selects any of a forward's `n_queries` query rows."""
    return len(range(*rows.indices(n_queries))) > 0


def every_row(heads: torch.Tensor) -> Selector:
    """All batch rows x the given heads (the apply() case)."""

    def select(batch: int):
        rows = torch.arange(batch).repeat_interleave(len(heads))
        return rows, heads.repeat(batch), rows

    return select


def _reference(spec: Intervention, layer: int, prepared: Prepared | None):
    if not spec.needs_reference:
        return None
    if prepared is None:
        raise InputError(
            f"intervention {spec.kind!r} needs reference activations: build its hooks with "
            "prepared=prepare_references(model, specs), or use apply() / scan(), which prepare them"
        )
    return prepared.for_layer(spec, layer)


def layer_hook(
    spec: Intervention, layer: int, select: Selector, rows: slice, prepared: Prepared | None = None, offset: int = 0
):
    """The hook realising `spec` at `layer` on the (row, head) pairs `select` names; `offset` is the
    absolute position of the forward's first query (see `query_slice`)."""
    reference = _reference(spec, layer, prepared)
    attention_site = spec.edits_attention

    def hook(tensor, hook):
        row_idx, head_idx, local_row = select(tensor.shape[0])
        # Blocked attention hands an attention site a block of query rows starting at `hook.start`.
        start = getattr(hook, "start", 0) if attention_site else 0
        block_rows = rows if not start else shifted(rows, start)
        ctx = EditContext(layer, head_idx, local_row, reference, offset + start)
        out = tensor.clone()
        if attention_site:  # [batch, head, q, k] -> sel [n, q, k]
            out[row_idx, head_idx] = spec.edit(tensor[row_idx, head_idx], block_rows, ctx)
        else:  # [batch, pos, head, d] -> sel [n, pos, d]
            out[row_idx, :, head_idx] = spec.edit(tensor[row_idx, :, head_idx], block_rows, ctx)
        return out

    # exact on blocks of rows; a redistribution (ACT, VAR) stays eager. A function attribute the blocked
    # engine reads (headscope.capture.blocked), which mypy's function type has no room for.
    hook.block_aware = spec.row_local  # type: ignore[attr-defined]
    return hook


def shifted(rows: slice, start: int) -> slice:
    """`rows` (a slice of a forward's query axis) seen from a block of rows beginning at row `start`."""
    lo = 0 if rows.start is None else max(0, rows.start - start)
    hi = None if rows.stop is None else max(0, rows.stop - start)
    return slice(lo, hi)


def check_editable(model, specs) -> None:
    """Refuse attention-pattern kinds on a model where neither the bridge nor headscope's own attention
    forward applies them (`compat.pattern_edit_route`: the edit would be discarded and the result
    silently equal the clean model), and causal-only kinds (ACT) on an encoder."""
    for kind in sorted({s.kind for s in specs if s.causal_only}):
        model_info(model).require_causal(
            f"intervention kind {kind!r}", "computes hidden sinks as column means over the queries at or after each key"
        )
    kinds = sorted({s.kind for s in specs if s.edits_attention})
    if kinds and pattern_edit_route(model) is None:
        arch = type(getattr(model, "original_model", model)).__name__
        usable = sorted(name for name, cls in KINDS.items() if cls.site not in ATTENTION_SITES)
        raise InputError(
            f"intervention kind(s) {kinds} edit attention scores or patterns, but on {arch} the "
            "TransformerLens bridge lets Hugging Face compute attention and only reports the pattern "
            f"afterwards, and headscope cannot compute it itself ({pattern_route_failure(model)}), so such an "
            f"edit would be discarded. Fix: use a head-output kind ({', '.join(usable)}) on this model, or a "
            "family whose attention the bridge or headscope computes (see docs/architectures.md)."
        )


def check_specs(interventions, info: ModelInfo) -> list[Intervention]:
    specs = list(interventions)
    for spec in specs:
        if not isinstance(spec, Intervention):
            raise InputError(f"{spec!r} is not an Intervention (build one, or use Intervention.from_dict)")
        for layer, head in spec.heads:
            info.check_head(layer, head)
    return specs


def build_hooks(
    interventions,
    info: ModelInfo,
    decode_start: int | None = None,
    prepared: Prepared | None = None,
    *,
    offset: int = 0,
    n_queries: int | None = None,
) -> list[tuple[str, Callable]]:
    """(hook name, fn) pairs for the specs; validates every head against the model first.
    Specs with a reference field (mean, resample) need `prepared` (see `prepare.prepare_references`).

    `decode_start` and `offset` place the forward's query rows in the sequence (see `query_slice`);
    given `n_queries`, the forward's query length, a spec whose positions miss every row gets no hook.
    """
    hooks = []
    for spec in check_specs(interventions, info):
        rows = query_slice(spec.positions, decode_start, offset)
        if n_queries is not None and not rows_on(rows, n_queries):
            continue
        for layer in sorted({l for l, _ in spec.heads}):
            heads = torch.tensor([h for l, h in spec.heads if l == layer])
            hooks.append(
                (SITES[spec.site].format(l=layer), layer_hook(spec, layer, every_row(heads), rows, prepared, offset))
            )
    return hooks


def head_gate_hooks(gates: torch.Tensor, layers=None, tower: Tower = "language") -> list[tuple[str, Callable]]:
    """Hooks multiplying every head's output (hook_z) by a gate (Michel et al.'s head mask ξ).

    `gates` is [n_layers, n_heads] (every batch row), usually ones with requires_grad so that
    ∂loss/∂gates is each head's importance; or [variants, n_layers, n_heads], one gate set per block of
    rows: the batch holds the variants' rows in variant-major blocks of equal size (the pruning scans of
    vit-heads stack variants this way). `layers` None = every layer whose gates differ from 1 (all of
    them when the gates need a gradient). `tower` "vision" gates a VLM's vision-encoder heads.
    Not a serialisable spec: it exists for gradient attribution and pruning curves.
    """
    stacked = gates if gates.ndim == 3 else gates[None]
    n_variants = stacked.shape[0]
    if layers is None:
        layers = (
            range(stacked.shape[1])
            if gates.requires_grad
            else torch.nonzero((stacked != 1).any(-1).any(0)).flatten().tolist()
        )

    def make(layer):
        def hook(z, hook):  # [variants * rows, pos, head, d_head]
            if z.shape[0] % n_variants:
                raise InputError(f"a batch of {z.shape[0]} rows is not {n_variants} equal variant blocks")
            g = stacked[:, layer].repeat_interleave(z.shape[0] // n_variants, dim=0)  # [rows, head]
            return z * g[:, None, :, None].to(z.dtype)

        return hook

    return [(site_name("z", layer, tower), make(layer)) for layer in layers]
