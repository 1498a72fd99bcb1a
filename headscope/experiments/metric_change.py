"""The scan metrics as evaluators: `evaluate: kl_last | logit_diff | loss` is the metric's change with
all of a condition's heads intervened at once (mean over prompts; per-prompt values are kept).

`scan()` changes one head at a time (its engine stacks single-head variants), so it cannot give
these numbers; this loop is the joint-heads counterpart: one clean forward per batch (kept for
every work unit of the unit) and one forward with all specs applied, compared by the same
metric objects (`headscope.interventions.metrics`) and read at the same positions.
"""

from __future__ import annotations

import numpy as np
import torch

from ..experiment_registry import EVALUATORS, EvalBetter, EvalRequest, Evaluator
from ..inputs.tokens import iter_batches
from ..interventions import apply
from ..interventions.metrics import METRICS, resolve_metric

# The direction in which the model does better (an evaluator's `better`) is the opposite end of the one
# that marks an important head (`important`): KL and the loss change are best small, the logit
# difference change large (a drop = the heads helped).
_OPPOSITE: dict[str, EvalBetter] = {"higher": "lower", "lower": "higher"}
METRIC_BETTER = {m: _OPPOSITE[cls.important] for m, cls in METRICS.items()}


def metric_change(model, info, ds, specs, metric: str, batch_size: int, cache: dict) -> np.ndarray:
    """Per-prompt change of a scan metric with all `specs` applied at once. -> [prompt]

    The clean logits are the same for every work unit of a unit: kept in `cache` (this run only)."""
    score = resolve_metric(
        metric, model, len(ds.token_lists), {"answers": ds.answers} if metric == "logit_diff" else None
    )
    out = np.zeros(len(ds.token_lists))
    pad = info.pad_token_id if info.pad_token_id is not None else 0
    last_only = getattr(score, "last_only", False)

    def cut(logits, batch):  # last_only metrics read [batch, 1, vocab] at each prompt's real last token
        return logits[torch.arange(len(batch.index)), batch.lengths - 1][:, None] if last_only else logits

    batches = list(iter_batches(ds.token_lists, batch_size, pad))
    with torch.no_grad():
        if "bases" not in cache:
            cache["bases"] = [cut(model(b.tokens, attention_mask=b.attention_mask), b) for b in batches]
        bases = cache["bases"]
        with apply(model, specs):  # entered once: hooks built and mean/resample references captured once
            for batch, base in zip(batches, bases):
                variant = cut(model(batch.tokens, attention_mask=batch.attention_mask), batch)
                out[batch.index] = score(base, variant, batch).cpu().numpy()
    return out


def _evaluator(metric: str) -> Evaluator:
    def run(req: EvalRequest) -> dict:
        per = metric_change(req.model, req.info, req.data, req.interventions, metric, req.batch_size, req.cache)
        return {"value": float(per.mean()), "per_prompt": per.tolist()}

    return Evaluator(
        run,
        data=("text", "tokens", "needle"),
        better=METRIC_BETTER[metric],
        needs={"answers"} if metric == "logit_diff" else (),
        label=f"change of {metric} (mean over prompts)",
        doc=f"change of the scan metric {metric} with the condition's heads intervened at once",
    )


for _metric in METRIC_BETTER:
    EVALUATORS.register(_metric, _evaluator(_metric))
