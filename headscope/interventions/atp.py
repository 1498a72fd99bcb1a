"""Attribution patching: every head's effect estimated from one clean forward and one backward.

The exact scan (`scan.py`) reruns the layers above each head; attribution patching (AtP, Nanda 2023;
Kramár et al. 2024) takes the first-order Taylor estimate instead, for all heads at once:

    effect(head) ≈ Σ_{positions, features} (x'_head - x_head) · ∂M/∂x_head

where x is the head's node (its output `hook_z`, or its attention scores / pattern), x' what the
intervention makes of it, and ∂M/∂x comes from a single backward pass of the metric on the clean
forward. The node's change x' - x is computed by the intervention kind's own `edit()` (the same code
`apply()` and `scan()` run), on every head at once; a kind with reference activations (mean,
resample) gets them from a reference forward as in `scan()`.

Estimators:
- "atp": linear at the kind's own site. Head-output kinds (zero, mean, resample, scale) at hook_z;
  score kinds (uniform attention) at the attention scores, which is where the linear estimate is
  poor (the softmax saturates); a kind that masks keys (streaming window) changes a score by an
  infinite amount and has no "atp" estimate.
- "atp*": AtP*'s QK fix for score kinds: the head's softmax is recomputed under the intervention
  (the exact new pattern), and the estimate is linear from the pattern on. For head-output and
  pattern kinds it is the same as "atp" (their change is already exact at the node).
- `graddrop=True` (AtP*'s GradDrop): the estimate is repeated with the gradient through each
  layer's residual contribution (attention and MLP output) dropped in turn, and
  Σ_layers |estimate| / (L - 1) is returned: a magnitude (no sign) that does not vanish when paths
  cancel. L extra backward passes.

Metrics: `logit_diff`, `loss` and differentiable callables are linearised directly. `kl_last` is zero
with a zero gradient at the clean point (a divergence is minimal there), so its first-order estimate
would be 0 for every head: it gets the second-order (Fisher) estimate ½ Δℓᵀ F Δℓ of the next-token
KL, with F the Fisher matrix of the clean distribution coarse-grained to its `kl_tokens` most likely
tokens plus "the rest" (one backward per outcome). See docs/attribution-patching.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..capture.blocked import attention_softmax
from ..capture.engine import SITES
from ..errors import InputError
from ..inputs.tokens import iter_batches
from ..models.family import sink_logits
from ..models.info import model_device
from ..results import HeadScores
from .hooks import check_editable, check_specs, layer_hook, query_slice
from .kind import ATTENTION_SITES
from .metrics import KLLast, important_end
from .prepare import prepare_references
from .request import Estimator, ScanRequest, bind
from .targets import metric_name, prompt_labels


def _node_site(spec, estimator: Estimator) -> str:
    """Where the gradient is taken: the kind's own site, except that AtP*'s QK fix moves a score kind
    to the pattern (its change computed exactly through the softmax)."""
    if spec.site == "attn_scores" and estimator == "atp*":
        return "pattern"
    return spec.site


def _check_kind(spec, estimator: Estimator) -> None:
    if spec.site not in ("z",) + ATTENTION_SITES:
        raise InputError(
            f"attribution patching estimates head-output and attention kinds; {spec.kind!r} edits "
            f"hook_{spec.site}. Use scan(..., method='exact')"
        )
    if spec.whole_query and estimator == "atp" and spec.site == "attn_scores":
        raise InputError(f"{spec.kind!r} edits whole score columns; use method='atp*'")


def _all_heads(batch_index: torch.Tensor, n_heads: int):
    """Selector: every batch row x every head; the prompt of a row is its global index (resample)."""

    def select(n_rows: int):
        rows = torch.arange(n_rows).repeat_interleave(n_heads)
        return rows, torch.arange(n_heads).repeat(n_rows), batch_index.repeat_interleave(n_heads)

    return select


class _Nodes:
    """Hooks that, on the clean forward, record each scanned layer's node change Δ = x' - x for every
    head (the kind's edit, nothing changed in the forward) and add a zero leaf ε to the node, so that
    ∂M/∂ε is the total derivative of the metric with respect to the node."""

    def __init__(
        self, spec, estimator: Estimator, layers, rows: slice, prepared, batch_index: torch.Tensor, n_heads: int, model
    ):
        self.delta: dict[int, torch.Tensor] = {}
        self.eps: dict[int, torch.Tensor] = {}
        self.node = _node_site(spec, estimator)
        self.hooks = []
        select = _all_heads(batch_index, n_heads)
        for layer in layers:
            edit = layer_hook(spec, layer, select, rows, prepared)
            if self.node == spec.site:
                self.hooks.append((SITES[spec.site].format(l=layer), self._at_node(layer, edit, spec.site)))
            else:  # QK fix: the kind edits the scores, the node is the pattern they give
                self.hooks.append(
                    (SITES["attn_scores"].format(l=layer), self._new_pattern(layer, edit, sink_logits(model, layer)))
                )
                self.hooks.append((SITES["pattern"].format(l=layer), self._at_pattern(layer)))
        self._new: dict[int, torch.Tensor] = {}

    def _leaf(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        eps = torch.zeros_like(x, requires_grad=True)
        self.eps[layer] = eps
        return x + eps

    def _at_node(self, layer, edit, site):
        def hook(x, hook):
            with torch.no_grad():
                edited = edit(x.detach(), hook)
                delta = _wide(edited) - _wide(x.detach())
                if site == "attn_scores":
                    # A key the edit masks (streaming window) moves its score by an infinite amount.
                    floor = torch.finfo(x.dtype).min / 2
                    if bool(((edited <= floor) & (x.detach() > floor)).any()):
                        raise InputError(
                            "this intervention masks keys (an infinite change of their scores), which "
                            "a linear estimate at the scores cannot take; use method='atp*' (the "
                            "softmax recomputed under the intervention)"
                        )
                    delta = torch.where(x.detach() > floor, delta, torch.zeros_like(delta))
            self.delta[layer] = delta
            return self._leaf(layer, x)

        return hook

    def _new_pattern(self, layer, edit, sinks):
        def hook(scores, hook):  # the model's own softmax, learned sinks (GPT-OSS) included
            with torch.no_grad():
                edited = _wide(edit(scores.detach(), hook))
                self._new[layer] = attention_softmax(edited, sinks, dtype=edited.dtype)
            return None

        return hook

    def _at_pattern(self, layer):
        def hook(pattern, hook):
            self.delta[layer] = self._new.pop(layer) - _wide(pattern.detach())
            return self._leaf(layer, pattern)

        return hook

    def per_head(self, grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """{layer: [batch, head]} Σ Δ · ∂M/∂node over everything but batch and head (fp32)."""
        head_dim = 1 if self.node in ATTENTION_SITES else 2  # [b, h, q, k] or [b, pos, h, d]
        out = {}
        for layer, g in grads.items():
            prod = self.delta[layer] * _wide(g)
            dims = [d for d in range(prod.ndim) if d not in (0, head_dim)]
            out[layer] = prod.sum(dim=dims)
        return out


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half precision widened to float32 (differences and products accumulate there); float32 and
    float64 kept (a float64 model's tiny steps need float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _metric_outputs(metric, logits, batch, kl_tokens: int):
    """[(weight [batch] or None, scalar per row [batch])]: the functions of the logits whose gradients
    make the estimate. A first-order metric is one output; kl_last is the Fisher form over the clean
    distribution's top `kl_tokens` tokens + the rest (weights = their probabilities)."""
    base = logits.detach()
    if isinstance(metric, KLLast):
        last = logits[torch.arange(len(logits)), batch.lengths.to(logits.device) - 1].float()  # [b, vocab]
        p = F.softmax(last.detach().double(), -1)
        k = min(kl_tokens, p.shape[-1] - 1)
        top_p, top_ids = p.topk(k, dim=-1)
        log_q = F.log_softmax(last, -1)
        outputs = [(top_p[:, j].float(), log_q.gather(-1, top_ids[:, j : j + 1])[:, 0]) for j in range(k)]
        rest_p = (1 - top_p.sum(-1)).clamp_min(0)
        rest_log = torch.log1p(-log_q.gather(-1, top_ids).exp().sum(-1).clamp(max=1 - 1e-7))
        outputs.append((rest_p.float(), rest_log))
        return outputs
    value = metric(base, logits, batch)
    if not isinstance(value, torch.Tensor) or not value.requires_grad:
        raise InputError(
            "attribution patching needs a differentiable metric (torch operations on the variant "
            "logits, returning a [batch] tensor); this one returned a value without a gradient. "
            "Use scan(..., method='exact') for a metric that is not differentiable"
        )
    return [(None, value)]


_NORMS = ("ln1", "ln2", "ln1_post", "ln2_post")


def _branch_outputs(model, layer: int) -> list[str]:
    """The hooks on what `layer` adds to the residual stream: its attention and MLP outputs, or on a
    block without them (a hybrid's linear-attention / Mamba layer, Granite's MoE + shared MLP) the
    output of each of the block's own sublayers."""
    names = [SITES["attn_out"].format(l=layer), f"blocks.{layer}.hook_mlp_out"]
    if all(n in model.hook_dict for n in names):
        return names
    block = model.blocks[layer]
    return [
        f"blocks.{layer}.{child}.hook_out"
        for child in block._modules
        if child not in _NORMS and f"blocks.{layer}.{child}.hook_out" in model.hook_dict
    ]


def _graddrop_hooks(model, n_layers: int, keep: list):
    """Tensor hooks on each layer's attention and MLP outputs scaling their gradient by keep[layer]."""

    def make(layer):
        def hook(x, hook):
            if x.requires_grad:
                x.register_hook(lambda g: g * keep[layer])
            return None

        return hook

    return [(name, make(layer)) for layer in range(n_layers) for name in _branch_outputs(model, layer)]


def estimate(model, inputs, request: ScanRequest) -> HeadScores:
    """The estimated metric change when each single head is intervened on, for every head and prompt,
    from one clean forward and one backward per batch (see the module doc), with the request's estimator
    ("atp" or "atp*", from its method: "atp+exact" estimates with "atp"). Same output as the exact scan
    (`scan()` calls this for the attribution methods); heads not visited are NaN.

    Only the layers of the visited heads get a node; the estimate of a head uses only its own node.
    """
    estimator, graddrop, batch_size = request.estimator, request.graddrop, request.batch_size
    template = request.template
    _check_kind(template, estimator)
    bound = bind(request, model, inputs)
    info, token_lists, score, visited = bound.info, bound.token_lists, bound.score, bound.visited
    scan_layers = sorted({l for l, _ in visited})
    spec = dataclasses.replace(template, heads=tuple((l, h) for l in scan_layers for h in range(info.n_heads)))
    check_specs([spec], info)
    check_editable(model, [spec])
    prepared = prepare_references(model, [spec], default_prompts=token_lists, batch_size=batch_size)
    rows = query_slice(spec.positions, request.decode_start)
    values = np.full((len(token_lists), info.n_layers, info.n_heads), np.nan)
    pad_id = info.pad_token_id if info.pad_token_id is not None else 0
    batches = list(iter_batches(token_lists, batch_size, pad_id))
    keep = [1.0] * info.n_layers
    device = model_device(model)
    bar = tqdm(
        total=len(batches),
        desc=f"atp {template.kind}",
        unit="batch",
        disable=not (request.progress if request.progress is not None else len(batches) > 4),
    )
    # Gradients whatever the caller's grad mode (TransformerLens tutorials start with
    # torch.set_grad_enabled(False)): the forward, the metric and the sums all need the graph.
    try:
        with torch.enable_grad():
            for batch in batches:
                nodes = _Nodes(
                    spec, estimator, scan_layers, rows, prepared, torch.as_tensor(batch.index), info.n_heads, model
                )
                hooks = nodes.hooks + (_graddrop_hooks(model, info.n_layers, keep) if graddrop else [])
                with model.hooks(fwd_hooks=hooks):
                    logits = model(batch.tokens.to(device), attention_mask=batch.attention_mask.to(device))
                outputs = _metric_outputs(score, logits, batch, request.kl_tokens)
                eps = [nodes.eps[l] for l in scan_layers]
                drops = list(range(info.n_layers)) if graddrop else [None]
                total = {l: torch.zeros(len(batch.index), info.n_heads, dtype=torch.float64) for l in scan_layers}
                for n_drop, drop in enumerate(drops):
                    if drop is not None:
                        keep[:] = [0.0 if i == drop else 1.0 for i in range(info.n_layers)]
                    per_output = []
                    for j, (_, out) in enumerate(outputs):
                        last = n_drop == len(drops) - 1 and j == len(outputs) - 1
                        raw = torch.autograd.grad(out.sum(), eps, retain_graph=not last, allow_unused=True)
                        grads = {
                            l: (g if g is not None else torch.zeros_like(e)) for l, g, e in zip(scan_layers, raw, eps)
                        }
                        per_output.append(nodes.per_head(grads))
                    est = _combine(outputs, per_output, scan_layers)
                    for l in scan_layers:
                        total[l] += est[l].abs() if graddrop else est[l]
                keep[:] = [1.0] * info.n_layers
                for l in scan_layers:
                    heads = [h for ll, h in visited if ll == l]
                    got = total[l] / (info.n_layers - 1) if graddrop else total[l]
                    values[np.ix_(batch.index, [l], heads)] = got[:, heads].cpu().numpy()[:, None, :]
                bar.update()
    finally:
        bar.close()
    prompts = prompt_labels(inputs)
    name = metric_name(score, request.metric)
    params = {
        "kind": template.kind,
        "metric": name,
        "method": estimator,
        **({"graddrop": True} if graddrop else {}),
        **({"kl_tokens": request.kl_tokens} if isinstance(score, KLLast) else {}),
    }
    what = "|effect| estimate (GradDrop)" if graddrop else "estimated change"
    return HeadScores(
        values,
        name=f"{template.kind}:{name}",
        n_kv_heads=info.n_kv_heads,
        model=info.name,
        layer_kinds=info.layer_kinds,
        analyzer=f"scan.{estimator}",
        params=params,
        prompts=prompts,
        better=important_end(score),
        description=f"{what} of {getattr(score, 'description', name)}, {template.kind} on one head "
        f"at a time ({estimator})",
    )


def _combine(outputs, per_output, layers) -> dict[int, torch.Tensor]:
    """The estimate per head from the outputs' directional derivatives a_j = Σ Δ·∂f_j/∂node: a_0 for a
    first-order metric; ½ Σ_j p_j (a_j - Σ_i p_i a_i)² for the Fisher form (probabilities p_j per row)."""
    if outputs[0][0] is None:
        return per_output[0]
    p = torch.stack([w for w, _ in outputs], dim=-1).cpu()  # [b, outcomes]
    out = {}
    for l in layers:
        a = torch.stack([po[l] for po in per_output], dim=-1).cpu()  # [b, head, outcomes]
        mean = (a * p[:, None]).sum(-1, keepdim=True)
        out[l] = 0.5 * (p[:, None] * (a - mean) ** 2).sum(-1)
    return out
