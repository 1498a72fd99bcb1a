"""Safety heads on the safety-tuned SmolLM2 (Zhou et al. 2024): do a few heads carry refusal?

1. Ships on held-out harmful requests (chat format): KL of the last-position next-token
   distribution when one head gets uniform attention (queries x 1e-5). Sahara (Generalized Ships,
   greedy) on the same requests.
2. Attack success rate (ASR, refusal-phrase judge, greedy, 64 new tokens) on all held-out harmful
   requests with: no ablation; the top-1 / top-3 Ships heads (dataset ranking); each request's own
   top Ships head (the paper's query-level protocol); the Sahara group (sizes 1..steps); the same
   numbers of random heads (outside the top 20 Ships heads, several seeds); and the top-1 head with
   Scaling Contribution (head output x 1e-5) instead of Undifferentiated Attention.
3. Over-refusal check: how many held-out harmless requests are still answered with the top-3 heads
   ablated (the unablated rate is in docs/safety_model.json).

Every finished piece is cached (atomically) under --work, so an interrupted run resumes.
Writes docs/safety_heads.json and docs/figures/safety_heads.{html,png,svg}.
Usage: python analyses/safety_heads.py [--n-detect 12] [--seeds 5] [--steps 2] [--replot]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

import headscope
from headscope.analyzers.sahara import Sahara
from headscope.analyzers.ships import Ships
from headscope.fileio import atomic_write
from headscope.fileio import cached_json as cached
from headscope.interventions import ScaleOutput, UniformAttention
from headscope.results import HeadScores
from headscope.safety import attack_success_rate, prompt_set
from headscope.viz.export import export_figure

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-5


def asr(model, prompts, heads, kind="uniform") -> dict:
    spec = (
        ([UniformAttention(heads=heads, epsilon=EPS)] if kind == "uniform" else [ScaleOutput(heads=heads, alpha=EPS)])
        if heads
        else []
    )
    res = attack_success_rate(model, prompts, interventions=spec)
    return {
        "rate": res.rate,
        "heads": [f"L{l}H{h}" for l, h in heads],
        "responses": res.responses,
        "harmful": res.harmful,
    }


def per_query_asr(model, prompts, top_heads) -> dict:
    """Each request with its own top Ships head ablated (the paper's query-level protocol)."""
    runs = [
        attack_success_rate(model, [p], interventions=[UniformAttention(heads=[h], epsilon=EPS)])
        for p, h in zip(prompts, top_heads)
    ]
    return {
        "rate": float(np.mean([r.rate for r in runs])),
        "heads": [f"L{l}H{h}" for l, h in top_heads],
        "responses": [r.responses[0] for r in runs],
        "harmful": [r.harmful[0] for r in runs],
    }


def plot(record: dict, out: Path) -> None:
    c = record["conditions"]
    names, values, errors, colors = [], [], [], []

    def add(label, value, err=0.0, color="#4C78A8"):
        names.append(label), values.append(value), errors.append(err), colors.append(color)

    add("no ablation", c["none"]["rate"], color="#9E9E9E")
    for k in record["ks"]:
        add(f"top-{k} Ships", c[f"ships_top{k}"]["rate"], color="#E45756")
        rates = [c[f"random{k}_seed{s}"]["rate"] for s in range(record["seeds"])]
        add(f"{k} random", float(np.mean(rates)), float(np.std(rates)), color="#72B7B2")
    add("own top-1 Ships per request", c["ships_query_top1"]["rate"], color="#F58518")
    for k in range(1, record["steps"] + 1):
        add(f"Sahara group ({k})", c[f"sahara{k}"]["rate"], color="#B279A2")
    add("top-1, scaling contribution", c["ships_top1_scaling"]["rate"], color="#54A24B")
    fig = go.Figure(
        go.Bar(
            x=names,
            y=values,
            marker_color=colors,
            error_y=dict(type="data", array=errors),
            text=[f"{v:.2f}" for v in values],
            textposition="outside",
        )
    )
    fig.update_layout(
        title=f"Attack success rate on {record['n_eval']} held-out harmful requests — "
        f"smollm2-135m-safety<br><sub>uniform attention (q × 1e-5) on the named heads; random: mean ± std of "
        f"{record['seeds']} seeds; refusal-phrase judge</sub>",
        yaxis_title="attack success rate",
        yaxis_range=[0, 1.1],
        template="plotly_white",
        width=1000,
        height=520,
    )
    export_figure(fig, out / "figures", "safety_heads")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-detect", type=int, default=12, help="held-out harmful requests used by Ships/Sahara")
    p.add_argument("--steps", type=int, default=2, help="Sahara greedy steps")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ks", default="1,3")
    p.add_argument("--work", default=str(ROOT / ".cache" / "safety_heads"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--replot", action="store_true")
    args = p.parse_args()
    out, work = Path(args.out), Path(args.work)
    if args.replot:
        return plot(json.loads((out / "safety_heads.json").read_text()), out)
    start = time.time()
    model = headscope.load_model("smollm2-135m-safety")
    harmful, harmless = prompt_set("harmful-heldout"), prompt_set("harmless-heldout")
    detect = harmful[: args.n_detect]
    ships_path = work / "ships.json"
    if not ships_path.exists():
        Ships(top_k=20).fit(model, detect).scores_.save(ships_path)
    ships = HeadScores.load(ships_path)
    mean = ships.mean_over_prompts()
    ranking = [(int(r.layer), int(r.head)) for r in mean.top(20).itertuples()]
    own_top = [tuple(int(x) for x in np.unravel_index(np.nanargmax(v), v.shape)) for v in ships.values]
    sahara = cached(
        work / f"sahara_{args.steps}.json",
        lambda: Sahara(search_steps=args.steps).fit(model, detect).steps_.to_dict(orient="records"),
    )
    group = [(r["layer"], r["head_index"]) for r in sahara]
    ks = [int(k) for k in args.ks.split(",")]
    rng = np.random.default_rng(0)
    pool = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) not in ranking]
    jobs = {"none": lambda: asr(model, harmful, [])}
    for k in ks:
        jobs[f"ships_top{k}"] = lambda k=k: asr(model, harmful, ranking[:k])
        for s in range(args.seeds):
            pick = [pool[i] for i in rng.choice(len(pool), k, replace=False)]
            jobs[f"random{k}_seed{s}"] = lambda pick=pick: asr(model, harmful, pick)
    jobs["ships_query_top1"] = lambda: per_query_asr(
        model, harmful, own_top + [ranking[0]] * (len(harmful) - len(own_top))
    )
    for k in range(1, args.steps + 1):
        jobs[f"sahara{k}"] = lambda k=k: asr(model, harmful, group[:k])
    jobs["ships_top1_scaling"] = lambda: asr(model, harmful, ranking[:1], kind="scaling")
    jobs["harmless_ships_top3"] = lambda: asr(model, harmless, ranking[:3])
    conditions = {}
    for name, job in jobs.items():
        conditions[name] = cached(work / f"{name}.json", job)
        print(f"{name:22s} ASR {conditions[name]['rate']:.2f}  {conditions[name]['heads'][:5]}", flush=True)
    record = {
        "model": "smollm2-135m-safety",
        "epsilon": EPS,
        "n_detect": len(detect),
        "n_eval": len(harmful),
        "ks": ks,
        "seeds": args.seeds,
        "steps": args.steps,
        "ships_top": [{"head": f"L{l}H{h}", "mean_kl": round(float(mean.values[l, h]), 4)} for l, h in ranking[:10]],
        "ships_share_top1": round(float(mean.values[ranking[0]] / np.nansum(mean.values)), 4),
        "own_top_heads": [f"L{l}H{h}" for l, h in own_top],
        "sahara": sahara,
        "conditions": conditions,
        "seconds": round(time.time() - start, 1),
    }
    atomic_write(out / "safety_heads.json", lambda t: t.write_text(json.dumps(record, indent=1)))
    plot(record, out)
    print(json.dumps({k: record[k] for k in ("ships_top", "sahara", "seconds")})[:2000])


if __name__ == "__main__":
    main()
