"""Coverage and cost of headscope's bootstrap intervals (`HeadScores.ci`): writes docs/ci_coverage.json.

Coverage: for each distribution of per-prompt scores and number of prompts n, 2000 independent data
sets (one per 'head' of a single HeadScores) with a known population mean; the share of 95% intervals
holding it. Cost: the wall time of one .ci() on SmolLM2's grid (30 x 9 = 270 heads) with 40 prompts, and on an
80 x 64 grid with 200 prompts.

    OMP_NUM_THREADS=1 python analyses/ci_coverage.py        # ~1 min on one core
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from headscope.results import HeadScores

N_DATASETS = 2000
OUT = Path(__file__).resolve().parents[1] / "docs" / "ci_coverage.json"


def draw(dist: str, n: int, rng) -> tuple[np.ndarray, float]:
    if dist == "normal":
        return rng.normal(1.0, 2.0, size=(n, N_DATASETS)), 1.0
    if dist.startswith("lognormal"):
        sigma = float(dist.split("=")[1])
        return rng.lognormal(0.0, sigma, size=(n, N_DATASETS)), float(np.exp(sigma**2 / 2))
    if dist == "bernoulli(0.2)":
        return (rng.random((n, N_DATASETS)) < 0.2).astype(float), 0.2
    raise ValueError(dist)


def coverage() -> list[dict]:
    rows = []
    for dist in ("normal", "lognormal sigma=0.5", "lognormal sigma=1", "bernoulli(0.2)"):
        for n in (5, 10, 20, 40, 100):
            values, mean = draw(dist.replace(" sigma", ""), n, np.random.default_rng(n))
            scores = HeadScores(values.reshape(n, 40, N_DATASETS // 40), name=dist)
            for method in ("percentile", "bca"):
                ci = scores.ci(level=0.95, n_boot=1000, seed=0, method=method)
                hit = (ci.low <= mean) & (mean <= ci.high)
                rows.append(
                    {
                        "distribution": dist,
                        "n_prompts": n,
                        "method": method,
                        "coverage": float(hit.mean()),
                        "median_width": float(np.median(ci.width)),
                    }
                )
                print(rows[-1])
    return rows


def cost(repeats: int = 9) -> list[dict]:
    """SmolLM2's grid with 40 prompts; a 70B-class grid (80 x 64 heads) with 200 prompts."""
    rows = []
    for shape in ((40, 30, 9), (200, 80, 64)):
        scores = HeadScores(np.random.default_rng(0).normal(size=shape), name="scan")
        for method in ("percentile", "bca"):
            for n_boot in (200, 1000):
                scores.ci(n_boot=n_boot, method=method)  # warm-up
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    scores.ci(n_boot=n_boot, method=method)
                    times.append(time.perf_counter() - t0)
                rows.append(
                    {
                        "heads": shape[1] * shape[2],
                        "n_prompts": shape[0],
                        "n_boot": n_boot,
                        "method": method,
                        "seconds_median": float(np.median(times)),
                    }
                )
                print(rows[-1])
    return rows


def main() -> None:
    doc = {
        "n_datasets": N_DATASETS,
        "level": 0.95,
        "coverage": coverage(),
        "cost": cost(),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
