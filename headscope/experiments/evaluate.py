"""`evaluate` units: a metric under interventions, one work unit per (condition, K, seed).

Metrics:
- needle_accuracy: fraction of needle prompts whose answer greedy decoding reproduces
  (`headscope.analyzers.retrieval.needle_accuracy`); data from the `needle` / `repeat_samples` generators.
- attack_success_rate: greedy chat responses judged by the refusal-phrase judge
  (`headscope.safety.attack_success_rate`); text prompts (e.g. `generator: prompt_set`).
- kl_last, logit_diff, loss: the scan metrics (`headscope.interventions.METRICS`) with all of the
  condition's heads intervened at once, mean over prompts (per prompt values are kept too).
- image_qa_accuracy, text_qa_accuracy, pope_accuracy, pope_f1, chair_i, chair_s: the shapes-vlm
  testbed's metrics (`headscope.vision.shapes_eval`) on `generator: shapes` data; a `vhr` condition
  evaluates them under VHR (heads chosen per prompt, `headscope.vision.shapes_vhr`).
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from ..errors import InputError
from ._fields import as_mapping, fail
from .conditions import choose_heads
from .data import check_call_params

NEEDLE, ANY, SHAPES = ("needle",), ("text", "tokens", "needle"), ("shapes",)
# shapes metric -> (split its items must come from, key of the result)
SHAPES_METRICS = {"image_qa_accuracy": ("image_qa", "accuracy"), "text_qa_accuracy": ("text_qa", "accuracy"),
                  "pope_accuracy": ("pope", "accuracy"), "pope_f1": ("pope", "f1"),
                  "chair_i": ("describe", "chair_i"), "chair_s": ("describe", "chair_s")}
EVAL_METRICS = {"needle_accuracy": NEEDLE, "attack_success_rate": ("text",),
                "kl_last": ANY, "logit_diff": ANY, "loss": ANY, **{m: SHAPES for m in SHAPES_METRICS}}


def _asr():
    try:
        from ..safety.evaluate import attack_success_rate
    except ImportError as e:
        raise InputError(f"attack_success_rate is not available in this installation ({e})") from None
    return attack_success_rate


def check_metric(unit, sec) -> None:
    """Metric name, the kind of data it needs, and its parameters (before any compute)."""
    if unit.target not in EVAL_METRICS:
        raise fail(sec.at("evaluate"), f"unknown metric {unit.target!r}; known: {', '.join(EVAL_METRICS)}")
    kinds = EVAL_METRICS[unit.target]
    if unit.data.kind not in kinds:
        hint = " (use generator: needle or repeat_samples)" if kinds == NEEDLE else ""
        raise fail(sec.at("data"), f"{unit.target} needs {' or '.join(kinds)} data, dataset "
                                   f"{unit.data.name!r} yields {unit.data.kind}{hint}")
    params = dict(unit.params)
    if unit.target == "attack_success_rate":
        judge = params.pop("judge", None)
        try:
            check_call_params(params, _asr(), sec.at("params"), skip={"model", "prompts", "interventions", "judge"})
        except InputError as e:
            raise fail(sec.at("evaluate"), str(e)) if "not available" in str(e) else e from None
        if judge is not None:
            from ..safety.judge import RefusalPhraseJudge

            check_call_params(as_mapping(judge, sec.at("params.judge")), RefusalPhraseJudge.__init__,
                              sec.at("params.judge"))
    elif unit.target in SHAPES_METRICS:  # pixel noise std of the images (the hallucination regime)
        noise = params.pop("noise", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise fail(sec.at("params.noise"), f"must be a number >= 0 (pixel noise std), got {noise!r}")
        if params:
            raise fail(sec.at("params"), f"metric {unit.target} takes only noise, got {sorted(params)}")
    elif params:
        raise fail(sec.at("params"), f"metric {unit.target} takes no parameters, got {sorted(params)}")
    if unit.target in SHAPES_METRICS:
        split = SHAPES_METRICS[unit.target][0]
        if unit.data.params.get("split", "image_qa") != split:
            raise fail(sec.at("data"), f"{unit.target} needs split: {split} in dataset {unit.data.name!r}")
    if unit.target == "logit_diff" and not unit.data.answers:
        raise fail(sec.at("data"), f"logit_diff needs answers: give dataset {unit.data.name!r} an 'answers' "
                                   "list of [correct, wrong] pairs, one per prompt")


def check_vhr_conditions(unit) -> None:
    """VHR needs an image metric of the shapes world (it compares runs with and without the image)."""
    vhr = [c for c in unit.conditions if c.mode == "vhr"]
    if vhr and (unit.target not in SHAPES_METRICS or unit.target == "text_qa_accuracy"):
        raise fail(vhr[0].path, "a vhr condition needs a shapes image metric (image_qa_accuracy, pope_accuracy, "
                                "pope_f1, chair_i, chair_s): VHR compares runs with and without the image")


def _interventions(unit, cond, heads, ds):
    """Intervention specs of one work unit; mean/resample without a reference use the unit's data."""
    from ..interventions import Intervention

    if cond.mode == "interventions":
        specs = [Intervention.from_dict(d) for d in cond.interventions]
    else:
        specs = [Intervention.from_dict({**unit.intervention, "heads": heads})] if heads else []
    own = tuple(tuple(t) for t in ds.token_lists)
    return [s.with_default_reference(own) for s in specs]


def _readable(spec, ds) -> dict:
    """to_dict() of a spec, with a reference/source that is the unit's own data named, not listed."""
    d = spec.to_dict()
    key = spec.reference_field
    if key is not None and d[key] == [list(t) for t in ds.token_lists]:
        d[key] = f"data:{ds.name}"
    return d


def _metric_change(model, info, ds, specs, metric: str, batch_size: int, cache: dict) -> np.ndarray:
    """Per-prompt change of a scan metric with all `specs` applied at once. -> [prompt]

    The clean logits are the same for every work unit of a unit: kept in `cache` (this run only)."""
    import torch

    from ..inputs.tokens import iter_batches
    from ..interventions import apply
    from ..interventions.metrics import resolve_metric

    score = resolve_metric(metric, model, len(ds.token_lists),
                           {"answers": ds.answers} if metric == "logit_diff" else None)
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


def _shapes(unit, model, ds, specs, vhr) -> dict:
    """A shapes-world metric with fixed interventions, or under VHR (`vhr` = its alpha and layers)."""
    from ..vision import shapes_eval as E
    from ..vision import shapes_vhr as V

    split, key = SHAPES_METRICS[unit.target]
    items = ds.items
    noise = {"noise": float(unit.params.get("noise", 0.0))} if split != "text_qa" else {}
    if vhr is not None:
        run = {"image_qa": V.vhr_image_qa, "pope": V.vhr_pope}.get(split)
        res = run(model, items, **vhr, **noise) if run else V.vhr_describe(model, [it.scene for it in items], **vhr, **noise)
        return {"value": float(res[key]), "vhr": vhr, **({"texts": res["texts"]} if "texts" in res else {})}
    if split == "describe":
        texts = E.describe(model, [it.scene for it in items], interventions=specs, **noise)
        return {"value": float(E.chair([it.scene for it in items], texts)[key]), "texts": texts}
    run = {"image_qa": E.image_qa_accuracy, "text_qa": E.text_qa_accuracy, "pope": E.pope}[split]
    return {"value": float(getattr(run(model, items, interventions=specs, **noise), key))}


def _evaluate(unit, ctx, specs, ds, vhr=None) -> dict:
    model = ctx.model
    if unit.target in SHAPES_METRICS:
        return _shapes(unit, model, ds, specs, vhr)
    if unit.target == "needle_accuracy":
        from ..analyzers.retrieval import needle_accuracy

        return {"value": needle_accuracy(model, ds.items, specs)}
    if unit.target == "attack_success_rate":
        params = dict(unit.params)
        if "judge" in params:
            from ..safety.judge import RefusalPhraseJudge

            params["judge"] = RefusalPhraseJudge(**params["judge"])
        res = _asr()(model, ds.items, interventions=specs, **params)
        return {"value": res.rate, "per_prompt": [float(h) for h in res.harmful], "responses": res.responses}
    per = _metric_change(model, ctx.info, ds, specs, unit.target, unit.batch_size,
                         ctx.memo.setdefault((unit.name, "clean"), {}))
    return {"value": float(per.mean()), "per_prompt": per.tolist()}


def plan_evaluate(unit, ctx):
    from .executors import Item

    folder = ctx.store.unit_dir(unit.name)
    items = []
    for cond in unit.conditions:
        for stem, k, seed in cond.items():
            def run(cond=cond, stem=stem, k=k, seed=seed):
                ds = ctx.dataset(unit)
                heads = []
                if cond.mode in ("top_k", "random"):
                    ranked, n_selected = ctx.ranked(cond.source, cond.rank) if cond.source else (None, 0)
                    all_heads = [(l, h) for l in range(ctx.info.n_layers) for h in range(ctx.info.n_heads)]
                    heads = choose_heads(cond, k, seed, ranked, all_heads, n_selected)
                elif cond.mode == "heads":
                    heads = sorted(cond.heads)
                specs = [] if cond.mode == "vhr" else _interventions(unit, cond, heads, ds)
                key = hashlib.sha256(json.dumps([[s.to_dict() for s in specs], cond.vhr], sort_keys=True,
                                                default=str).encode()).hexdigest()
                start = time.time()
                if (unit.name, key) not in ctx.memo:  # e.g. K=0 of several conditions: the same baseline
                    ctx.memo[(unit.name, key)] = _evaluate(unit, ctx, specs, ds, cond.vhr)
                result = ctx.memo[(unit.name, key)]
                record = {"condition": cond.name, "mode": cond.mode, "k": k, "seed": seed,
                          "heads": [list(h) for h in heads], "interventions": [_readable(s, ds) for s in specs],
                          "metric": unit.target, **result, "seconds": round(time.time() - start, 3)}
                if cond.mode == "interventions":
                    record["heads"] = sorted({tuple(h) for s in specs for h in s.heads})
                ctx.store.write_json(folder / f"{stem}.json", record)
            items.append(Item(unit, stem, folder / f"{stem}.json", run))
    return items


def load_table(unit, ctx):
    """The tidy table of an evaluate unit: one row per (condition, K, seed), in spec order."""
    import pandas as pd

    folder = ctx.store.unit_dir(unit.name)
    rows = []
    for cond in unit.conditions:
        for stem, _, _ in cond.items():
            r = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
            rows.append({"condition": r["condition"], "mode": r["mode"], "k": r["k"], "seed": r["seed"],
                         "n_heads": len(r["heads"]), "heads": " ".join(f"L{l}H{h}" for l, h in r["heads"]),
                         "metric": r["metric"], "value": float(r["value"])})
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")  # null for conditions without seeds
    return df


def figure(unit, df, model_name: str = "", n_prompts: int | None = None):
    """Metric vs K: a line per condition (mean over seeds, min-max bars), single markers for fixed sets."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for cond in unit.conditions:
        sub = df[df["condition"] == cond.name]
        g = sub.groupby("k", sort=True)["value"]
        mean, lo, hi = g.mean(), g.min(), g.max()
        seeds = len(cond.seeds) if cond.mode == "random" else 1
        label = cond.name + (f" (mean, min-max of {seeds} seeds)" if seeds > 1 else "")
        fig.add_scatter(x=mean.index.tolist(), y=mean.values, name=label,
                        mode="lines+markers" if len(mean) > 1 else "markers", marker=dict(size=9),
                        error_y=dict(type="data", symmetric=False, array=(hi - mean).values,
                                     arrayminus=(mean - lo).values, visible=seeds > 1))
    from ..viz.figures import title_block

    what = unit.intervention["kind"] if unit.intervention else "the conditions' interventions"
    extra = f"{what}; data {unit.data.name}" + (f" ({n_prompts} prompts)" if n_prompts else "")
    ylabel = unit.target if unit.target in ("needle_accuracy", "attack_success_rate") else \
        f"change of {unit.target} (mean over prompts)"
    fig.update_layout(title=title_block(f"{unit.name}: {unit.target} vs heads intervened", model_name, extra),
                      template="plotly_white", xaxis_title="K heads intervened", yaxis_title=ylabel,
                      width=900, height=500)
    return fig


def finish_evaluate(unit, ctx) -> dict:
    df = load_table(unit, ctx)
    ctx.store.write_table(f"results/{unit.name}.parquet", df)
    ctx.store.write_json(f"results/{unit.name}.json", {"unit": unit.name, "metric": unit.target,
                                                        "rows": df.astype(object).where(df.notna(), None)
                                                        .to_dict(orient="records")})
    summary = {"type": "evaluate", "target": unit.target,
               "table": df.groupby(["condition", "k"], sort=False)["value"]
               .agg(["mean", "min", "max", "count"]).reset_index().to_dict(orient="records")}
    n = len(ctx.dataset(unit).token_lists)
    return {"figure": figure(unit, df, ctx.info.name, n), "summary": summary}
