"""How good is attribution patching on the bundled model? AtP and AtP* against the exact scan, all 270 heads.

Settings (the issue's, plus uniform attention, the kind where AtP*'s QK fix differs from AtP):
  IOI:    the 4 IOI prompts and answers of analyses/ablation_scan.yaml, metric logit_diff;
  report: the report prompts (data/prompts/report.json), metric kl_last (Fisher form, 16 tokens + rest);
  kinds:  zero, mean (reference: the setting's own prompts), uniform_attention.
Per setting: the exact scan, "atp" and "atp*"; on the prompt means, Spearman correlation with the exact
scan over all heads, overlap of the top-10 / top-20 heads by |effect|, whether the exact top-5 is inside
the estimate's top-20, the 5 heads where AtP errs most and AtP*'s error there; timings.

Writes docs/atp_agreement.json and docs/figures/atp_agreement.{html,png,svg}.
Usage: python analyses/atp_agreement.py [--replot]  (~15 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml
from plotly.subplots import make_subplots

import headscope
from headscope.fileio import atomic_write
from headscope.inputs.prompts import load_prompts
from headscope.interventions import scan
from headscope.interventions.screen import screen_order
from headscope.viz.export import export_figure

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
KINDS = ("zero", "mean", "uniform_attention")


def _settings():
    ioi = yaml.safe_load((ROOT / "analyses" / "ablation_scan.yaml").read_text())["data"]["ioi"]
    return {
        "IOI logit_diff": (ioi["prompts"], "logit_diff", {"answers": [tuple(a) for a in ioi["answers"]]}),
        "report kl_last": (load_prompts(), "kl_last", None),
    }


def _spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(exact, estimate) -> dict:
    ex, est = exact.values.mean(0), estimate.values.mean(0)
    order_ex, order_est = screen_order(exact), screen_order(estimate)
    return {
        "spearman": round(_spearman(ex.ravel(), est.ravel()), 3),
        "spearman_abs": round(_spearman(np.abs(ex).ravel(), np.abs(est).ravel()), 3),
        "top10_overlap": len(set(order_ex[:10]) & set(order_est[:10])),
        "top20_overlap": len(set(order_ex[:20]) & set(order_est[:20])),
        "exact_top5_in_top20": len(set(order_ex[:5]) & set(order_est[:20])),
    }


def one_setting(model, label, prompts, metric, kw, kind) -> dict:
    t0 = time.time()
    exact = scan(model, prompts, kind, metric, metric_kwargs=kw, batch_size=len(prompts), progress=False)
    t_exact = time.time() - t0
    row = {
        "setting": label,
        "kind": kind,
        "metric": metric,
        "n_prompts": len(prompts),
        "exact": np.round(exact.values.mean(0), 6).tolist(),
        "exact_seconds": round(t_exact, 1),
    }
    estimates = {}
    for method in ("atp", "atp*"):
        t0 = time.time()
        est = scan(
            model, prompts, kind, metric, method=method, metric_kwargs=kw, batch_size=len(prompts), progress=False
        )
        row[f"{method}_seconds"] = round(time.time() - t0, 2)
        row[method] = np.round(est.values.mean(0), 6).tolist()
        row[f"{method}_vs_exact"] = compare(exact, est)
        estimates[method] = est.values.mean(0)
    ex = exact.values.mean(0)
    err = np.abs(estimates["atp"] - ex)
    worst = np.argsort(-err, axis=None)[:5]
    H = ex.shape[1]
    row["worst_atp"] = [
        {
            "head": f"L{i // H}H{i % H}",
            "exact": round(float(ex.flat[i]), 4),
            "atp": round(float(estimates["atp"].flat[i]), 4),
            "atp*": round(float(estimates["atp*"].flat[i]), 4),
        }
        for i in worst
    ]
    c = row["atp_vs_exact"], row["atp*_vs_exact"]
    print(
        f"{label:15s} {kind:18s} exact {t_exact:6.1f} s | AtP {row['atp_seconds']:5.2f} s rho {c[0]['spearman']:+.2f} "
        f"top10 {c[0]['top10_overlap']} top20 {c[0]['top20_overlap']} | AtP* rho {c[1]['spearman']:+.2f} "
        f"top10 {c[1]['top10_overlap']} top20 {c[1]['top20_overlap']} top5-in-20 {c[1]['exact_top5_in_top20']}",
        flush=True,
    )
    return row


def plot(record, out: Path):
    rows = record["rows"]
    fig = make_subplots(
        rows=len({r["setting"] for r in rows}),
        cols=len(KINDS),
        horizontal_spacing=0.06,
        vertical_spacing=0.12,
        subplot_titles=[f"{r['setting']}: {r['kind']}" for r in rows],
    )
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for r in rows:
        i, j = settings.index(r["setting"]) + 1, KINDS.index(r["kind"]) + 1
        ex = np.array(r["exact"]).ravel()
        H = np.array(r["exact"]).shape[1]
        labels = [f"L{k // H}H{k % H}" for k in range(len(ex))]
        lo, hi = float(min(ex.min(), np.min(r["atp*"]))), float(max(ex.max(), np.max(r["atp*"])))
        fig.add_scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False, row=i, col=j
        )
        for method, color in (("atp", "#1f77b4"), ("atp*", "#d62728")):
            if method == "atp*" and r["kind"] != "uniform_attention":
                continue  # identical to atp for head-output kinds
            fig.add_scatter(
                x=np.array(r[method]).ravel(),
                y=ex,
                mode="markers",
                text=labels,
                name=method.upper(),
                marker=dict(size=5, color=color, opacity=0.6),
                showlegend=(i, j) == (1, 3),
                hovertemplate="%{text}<br>estimate %{x:.3g}<br>exact %{y:.3g}<extra></extra>",
                row=i,
                col=j,
            )
        fig.update_xaxes(title_text="estimate", row=i, col=j)
        fig.update_yaxes(title_text="exact" if j == 1 else None, row=i, col=j)
    fig.update_layout(
        title="Attribution patching vs the exact scan, every head of SmolLM2-135M (prompt means)",
        template="plotly_white",
        height=380 * len(settings),
        width=1200,
    )
    export_figure(fig, out / "figures", "atp_agreement")


def markdown(record) -> str:
    lines = [
        "| setting | kind | exact scan | AtP | Spearman AtP / AtP* | top-10 overlap AtP / AtP* | "
        "top-20 overlap AtP / AtP* | exact top-5 in AtP* top-20 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["rows"]:
        a, s = r["atp_vs_exact"], r["atp*_vs_exact"]
        lines.append(
            f"| {r['setting']} | {r['kind']} | {r['exact_seconds']:.0f} s | {r['atp_seconds']:.1f} s | "
            f"{a['spearman']:.2f} / {s['spearman']:.2f} | {a['top10_overlap']} / {s['top10_overlap']} | "
            f"{a['top20_overlap']} / {s['top20_overlap']} | {s['exact_top5_in_top20']} of 5 |"
        )
    lines += [
        "",
        "Heads where AtP errs most (prompt means):",
        "",
        "| setting | kind | head | exact | AtP | AtP* |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in record["rows"]:
        for w in r["worst_atp"][:3]:
            lines.append(
                f"| {r['setting']} | {r['kind']} | {w['head']} | {w['exact']:.3f} | {w['atp']:.3f} | {w['atp*']:.3f} |"
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(DOCS))
    p.add_argument("--replot", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if not args.replot:
        model = headscope.load_model()
        rows, start = [], time.time()
        record = {"model": "smollm2-135m-instruct", "rows": rows}
        for label, (prompts, metric, kw) in _settings().items():
            for kind in KINDS:
                rows.append(one_setting(model, label, prompts, metric, kw, kind))
                record["seconds"] = round(time.time() - start, 1)
                atomic_write(out / "atp_agreement.json", lambda t: t.write_text(json.dumps(record, indent=1)))
    record = json.loads((out / "atp_agreement.json").read_text())
    plot(record, out)
    print(markdown(record))


if __name__ == "__main__":
    main()
