"""`evaluate` units: an evaluator under interventions, one work unit per (condition, K, seed).

Evaluators are looked up by name in `EVALUATORS` (headscope.experiment_registry); the module that
owns each method registers it there, with what it needs, so this module knows none of them:
- needle_accuracy (headscope.analyzers.retrieval), attack_success_rate (headscope.safety.evaluate),
  image_qa_accuracy, text_qa_accuracy, pope_accuracy, pope_f1, chair_i, chair_s (headscope.vision.
  shapes_vhr, with VHR conditions), kl_last, logit_diff, loss (`.metric_change`, here).
`sorted(EVALUATORS)` lists them; docs/experiments.md says how to add one.
"""

from __future__ import annotations

import hashlib
import json
import time

import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from ..experiment_registry import EVALUATORS, GENERATORS, EvalRequest, Evaluator
from ..interventions import Intervention
from ..viz.figures import title_block
from ._fields import check_params, fail, resolve_params
from .conditions import choose_heads
from .executors import Item


def evaluator(unit, path: str | None = None) -> Evaluator:
    """The unit's evaluator; an unknown name fails listing the registered ones."""
    try:
        return EVALUATORS[unit.target]
    except InputError as e:
        raise fail(path or f"{unit.path}.evaluate", str(e)) from None


def check_evaluator(unit, sec) -> None:
    """Evaluator name, the data it accepts, its parameters and declared needs (before any compute)."""
    entry = evaluator(unit, sec.at("evaluate"))
    data = unit.data
    if data.kind not in entry.data:
        makers = sorted(n for n, g in GENERATORS.items() if g.yields in entry.data)  # (plain prompts need none)
        hint = f" (use generator: {' or '.join(makers)})" if makers and not {"text", "tokens"} & set(entry.data) else ""
        raise fail(
            sec.at("data"),
            f"{unit.target} needs {' or '.join(entry.data)} data, dataset {data.name!r} yields {data.kind}{hint}",
        )
    check_params(unit.params, entry.params, sec.at("params"))
    problem = entry.check_data(data) if entry.check_data else None
    if problem:
        raise fail(sec.at("data"), f"{unit.target} {problem}")
    if "answers" in entry.needs and not data.answers:
        raise fail(
            sec.at("data"),
            f"{unit.target} needs answers: give dataset {data.name!r} an 'answers' "
            "list of [correct, wrong] pairs, one per prompt",
        )


def check_conditions(unit, template_path: str) -> None:
    """What the conditions ask of the evaluator: VHR support, a decode start for positions: decode."""
    entry = evaluator(unit)
    vhr = [c for c in unit.conditions if c.mode == "vhr"]
    if vhr and not entry.vhr:
        names = ", ".join(n for n in sorted(EVALUATORS) if EVALUATORS[n].vhr)
        raise fail(
            vhr[0].path,
            f"a vhr condition needs a shapes image metric, an evaluator that supports VHR "
            f"({names}): VHR compares runs with and without the image",
        )
    if "generation" not in entry.needs:  # whole-prompt forwards: no decode start exists
        found = [(template_path, unit.intervention)] + [
            (f"{c.path}.interventions[{j}].positions", iv)
            for c in unit.conditions
            for j, iv in enumerate(c.interventions or [])
        ]
        for path, iv in found:
            if iv and iv.get("positions") == "decode":
                names = ", ".join(n for n in sorted(EVALUATORS) if "generation" in EVALUATORS[n].needs)
                raise fail(
                    path,
                    f"'decode' is for evaluators that generate ({names}); "
                    f"{unit.target} runs whole prompts: use 'all' or a [start, end) span",
                )


def check_needs(spec, model, info) -> None:
    """Needs that only the loaded model can answer (before any forward pass)."""
    for unit in spec.units:
        if (
            unit.type == "evaluate"
            and "chat" in evaluator(unit).needs
            and not getattr(getattr(model, "tokenizer", None), "chat_template", None)
        ):
            raise fail(
                f"{unit.path}.evaluate",
                f"{unit.target} needs a chat model, but {info.name}'s tokenizer has "
                "no chat template. Fix: use a chat/instruct model (e.g. "
                "smollm2-135m-safety) or another evaluator",
            )


def _interventions(unit, cond, heads, ds):
    """Intervention specs of one work unit; mean/resample without a reference use the unit's data."""
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


def _evaluate(unit, ctx, specs, ds, vhr=None) -> dict:
    entry = evaluator(unit)
    req = EvalRequest(
        model=ctx.model,
        info=ctx.info,
        data=ds,
        interventions=specs,
        name=unit.target,
        batch_size=unit.batch_size,
        cache=ctx.memo.setdefault((unit.name, "clean"), {}),
        vhr=vhr,
    )
    result = entry.run(req, **resolve_params(unit.params, entry.params, f"{unit.path}.params"))
    if not isinstance(result, dict) or "value" not in result:
        raise TypeError(f"evaluator {unit.target!r} returned {type(result).__name__}, not a dict with a 'value'")
    return result


def plan_evaluate(unit, ctx):
    folder = ctx.store.unit_dir(unit.name)
    items = []
    for cond in unit.conditions:
        for stem, k, seed in cond.items():

            def run(cond=cond, stem=stem, k=k, seed=seed):
                ds = ctx.dataset(unit)
                heads = []
                if cond.mode in ("top_k", "random"):
                    ranked, n_selected = ctx.ranked(cond.source, cond.rank) if cond.source else (None, 0)
                    all_heads = ctx.info.heads()
                    heads = choose_heads(cond, k, seed, ranked, all_heads, n_selected)
                elif cond.mode == "heads":
                    heads = sorted(cond.heads)
                specs = [] if cond.mode == "vhr" else _interventions(unit, cond, heads, ds)
                key = hashlib.sha256(
                    json.dumps([[s.to_dict() for s in specs], cond.vhr], sort_keys=True, default=str).encode()
                ).hexdigest()
                start = time.time()
                if (unit.name, key) not in ctx.memo:  # e.g. K=0 of several conditions: the same baseline
                    ctx.memo[(unit.name, key)] = _evaluate(unit, ctx, specs, ds, cond.vhr)
                result = ctx.memo[(unit.name, key)]
                record = {
                    "condition": cond.name,
                    "mode": cond.mode,
                    "k": k,
                    "seed": seed,
                    "heads": [list(h) for h in heads],
                    "interventions": [_readable(s, ds) for s in specs],
                    "metric": unit.target,
                    **result,
                    "seconds": round(time.time() - start, 3),
                }
                if cond.mode == "interventions":
                    record["heads"] = sorted({tuple(h) for s in specs for h in s.heads})
                ctx.store.write_json(folder / f"{stem}.json", record)

            items.append(
                Item(unit, stem, folder / f"{stem}.json", run, needs=((cond.source, None),) if cond.source else ())
            )
    return items


def load_table(unit, ctx):
    """The tidy table of an evaluate unit: one row per (condition, K, seed), in spec order."""
    folder = ctx.store.unit_dir(unit.name)
    rows = []
    for cond in unit.conditions:
        for stem, _, _ in cond.items():
            r = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
            rows.append(
                {
                    "condition": r["condition"],
                    "mode": r["mode"],
                    "k": r["k"],
                    "seed": r["seed"],
                    "n_heads": len(r["heads"]),
                    "heads": " ".join(f"L{l}H{h}" for l, h in r["heads"]),
                    "metric": r["metric"],
                    "value": float(r["value"]),
                }
            )
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")  # null for conditions without seeds
    return df


def figure(unit, df, model_name: str = "", n_prompts: int | None = None):
    """Metric vs K: a line per condition (mean over seeds, min-max bars), single markers for fixed sets."""
    fig = go.Figure()
    for cond in unit.conditions:
        sub = df[df["condition"] == cond.name]
        g = sub.groupby("k", sort=True)["value"]
        mean, lo, hi = g.mean(), g.min(), g.max()
        seeds = len(cond.seeds) if cond.mode == "random" else 1
        label = cond.name + (f" (mean, min-max of {seeds} seeds)" if seeds > 1 else "")
        fig.add_scatter(
            x=mean.index.tolist(),
            y=mean.values,
            name=label,
            mode="lines+markers" if len(mean) > 1 else "markers",
            marker=dict(size=9),
            error_y=dict(
                type="data", symmetric=False, array=(hi - mean).values, arrayminus=(mean - lo).values, visible=seeds > 1
            ),
        )
    what = unit.intervention["kind"] if unit.intervention else "the conditions' interventions"
    extra = f"{what}; data {unit.data.name}" + (f" ({n_prompts} prompts)" if n_prompts else "")
    entry = evaluator(unit)
    ylabel = f"{entry.label or unit.target} ({entry.better} is better)"
    fig.update_layout(
        title=title_block(f"{unit.name}: {unit.target} vs heads intervened", model_name, extra),
        template="plotly_white",
        xaxis_title="K heads intervened",
        yaxis_title=ylabel,
        width=900,
        height=500,
    )
    return fig


def finish_evaluate(unit, ctx) -> dict:
    df = load_table(unit, ctx)
    ctx.store.write_table(f"results/{unit.name}.parquet", df)
    ctx.store.write_json(
        f"results/{unit.name}.json",
        {
            "unit": unit.name,
            "metric": unit.target,
            "rows": df.astype(object).where(df.notna(), None).to_dict(orient="records"),
        },
    )
    summary = {
        "type": "evaluate",
        "target": unit.target,
        "better": evaluator(unit).better,
        "table": df.groupby(["condition", "k"], sort=False)["value"]
        .agg(["mean", "min", "max", "count"])
        .reset_index()
        .to_dict(orient="records"),
    }
    n = len(ctx.dataset(unit).token_lists)
    return {"figure": figure(unit, df, ctx.info.name, n), "summary": summary}
