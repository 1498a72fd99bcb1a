"""Bootstrap confidence intervals over prompts for per-head scores (`HeadScores.ci`, `Analyzer.ci`).

The unit resampled is the prompt (for retrieval, the needle sample): the tokens of one prompt share
its content, so they are not independent draws and resampling them would give intervals that are
too narrow. Each resample draws P prompts with replacement out of the P measured ones; the statistic
(a head's mean over prompts, NaN prompts left out, as `HeadScores.mean_over_prompts`) is recomputed
on it; the interval is read off the n_boot resampled values.

Resampling contract (a plain loop can reproduce it, tests/test_confidence_intervals.py does):
resample b takes the rows ``np.random.default_rng(seed).integers(0, P, size=(n_boot, P))[b]``.
It is vectorised as one [n_boot, P] matrix of counts: a resampled mean is (counts @ values) /
(counts @ measured), so the whole bootstrap of every head is two matrix products.

Methods: "percentile" (the default) reads the level's quantiles of the resampled statistic. It is
the simplest, needs no assumption beyond the bootstrap's, and for a mean of 20+ prompts covers at
close to the stated rate; for a skewed score (a few prompts far above the rest, e.g. a head that
fires on rare contexts) and few prompts it covers less. "bca" (bias-corrected and accelerated,
Efron 1987) shifts the quantiles by the resampled values' median bias and a jackknife estimate of
skew; it costs P more statistic evaluations and corrects much of that gap. docs/confidence-intervals.md
has the measured coverage of both.

Kept torch-free, like headscope.results.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np
import pandas as pd

from .errors import InputError

CIMethod = Literal["percentile", "bca"]  # see the module docstring
METHODS: tuple[CIMethod, ...] = get_args(CIMethod)
# Which end of a score ranks first: the largest ("higher"), the smallest ("lower") or the largest |score|
# ("magnitude"). HeadScores.better and headscope.results.rank_heads take the same words.
Better = Literal["higher", "lower", "magnitude"]
# Below this many prompts a percentile interval of a mean covers clearly less than its level (measured:
# ~0.80-0.90 at 5-10 normal prompts, docs/confidence-intervals.md): the interval's text says so.
FEW = 10
MIN_BOOT = 100  # fewer resamples make a 2.5% quantile a guess from two or three values
_CHUNK = 4_000_000  # statistic entries evaluated at once ([rows of weights] x [heads]): ~32 MB of float64

_normal = NormalDist()
_cdf = np.frompyfunc(_normal.cdf, 1, 1)
_ppf = np.frompyfunc(_normal.inv_cdf, 1, 1)


def check_ci_args(level, n_boot, seed, method) -> None:
    """InputError naming the first bad argument of a `.ci(...)` call."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise InputError(f"ci: level={level!r} must be a number strictly between 0 and 1 (0.95 = a 95% interval)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < MIN_BOOT:
        raise InputError(
            f"ci: n_boot={n_boot!r} must be an integer >= {MIN_BOOT} (fewer resamples make the "
            "interval's ends a guess; 1000 is the default, 200 is enough for a quick look)"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"ci: seed={seed!r} must be an integer (the same seed gives the same interval)")
    if method not in METHODS:
        raise InputError(f"ci: method={method!r}: use one of {', '.join(METHODS)}")


def resample_counts(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_units] float counts: how often each unit is drawn in each resample (module docstring)."""
    idx = np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))
    flat = idx + n_units * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units).astype(float)


def _evaluate(stat: Callable[[np.ndarray], np.ndarray], weights: np.ndarray, n_out: int) -> np.ndarray:
    """stat over the rows of `weights`, in chunks that keep memory bounded on a large model."""
    step = max(1, _CHUNK // max(n_out, 1))
    return np.concatenate([stat(weights[i : i + step]) for i in range(0, len(weights), step)])


def _jackknife(stat, n_units: int, n_out: int) -> np.ndarray:
    """stat with each unit left out in turn (weights: ones with a zero at u), built a chunk at a time
    (an [n_units, n_units] weight matrix of 10^4 prompts would be 800 MB)."""
    step = max(1, min(n_units, _CHUNK // max(n_out, n_units, 1)))
    out = []
    for i in range(0, n_units, step):
        rows = np.arange(i, min(i + step, n_units))
        w = np.ones((len(rows), n_units))
        w[np.arange(len(rows)), rows] = 0.0
        out.append(stat(w))
    return np.concatenate(out)


def _column_quantiles(stats: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per column k, the q[k] quantile of the finite entries of stats[:, k] (numpy's default 'linear'
    rule); NaN where a column has none. A resample in which a head has no measured prompt is NaN
    for that head and left out."""
    s = np.sort(np.ascontiguousarray(stats.T), axis=1)  # one row per column: a contiguous sort; NaN last
    n = np.isfinite(s).sum(1)
    pos = np.clip(q, 0.0, 1.0) * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    a = np.take_along_axis(s, lo[:, None], 1)[:, 0]
    b = np.take_along_axis(s, hi[:, None], 1)[:, 0]
    with np.errstate(invalid="ignore"):
        out = a + (pos - lo) * (b - a)
    return np.where(n > 0, out, np.nan)


def bootstrap(
    stat: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    *,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    method: CIMethod = "percentile",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high), each [K], of a statistic of weighted units.

    stat(weights [m, n_units]) -> [m, K]: the statistic recomputed with each unit counted weights[i, u]
    times (all ones = the full data). Any statistic written that way can be bootstrapped: a mean over
    prompts, a success-conditioned mean (retrieval), a normalised gradient sum (head importance).
    """
    check_ci_args(level, n_boot, seed, method)
    estimate = stat(np.ones((1, n_units)))[0]
    K = estimate.shape[0]
    boot = _evaluate(stat, resample_counts(n_units, n_boot, seed), K)  # [n_boot, K]
    alpha = (1.0 - level) / 2.0
    q_lo, q_hi = np.full(K, alpha), np.full(K, 1.0 - alpha)
    if method == "bca":
        q_lo, q_hi = _bca_levels(stat, n_units, estimate, boot, alpha)
    low, high = _column_quantiles(boot, q_lo), _column_quantiles(boot, q_hi)
    # The resampled statistic is summed in another order than the estimate: on data with (almost) no
    # spread a bound can miss the estimate by a rounding error. Snap those back (only those).
    tol = 1e-12 * np.maximum(1.0, np.abs(estimate))
    with np.errstate(invalid="ignore"):
        low = np.where((low > estimate) & (low - estimate <= tol), estimate, low)
        high = np.where((high < estimate) & (estimate - high <= tol), estimate, high)
    return estimate, low, high


def _bca_levels(stat, n_units, estimate, boot, alpha):
    """Efron's BCa quantile levels per column: bias z0 from the share of resamples below the estimate,
    acceleration from the jackknife (leave one unit out: weights = ones with one zero)."""
    finite = np.isfinite(boot)
    n = np.maximum(finite.sum(0), 1)
    below = ((boot < estimate) & finite).sum(0) + 0.5 * ((boot == estimate) & finite).sum(0)
    share = np.clip(below / n, 0.5 / n, 1 - 0.5 / n)  # no infinite bias from a one-sided bootstrap
    z0 = _ppf(share).astype(float)
    jack = _jackknife(stat, n_units, estimate.shape[0])  # [n_units, K]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN head has no jackknife
        d = np.nanmean(jack, 0) - jack
        accel = np.nansum(d**3, 0) / (6.0 * np.nansum(d**2, 0) ** 1.5)
    accel = np.where(np.isfinite(accel), accel, 0.0)  # no spread: no acceleration
    out = []
    for z in (_normal.inv_cdf(alpha), _normal.inv_cdf(1 - alpha)):
        with np.errstate(invalid="ignore", divide="ignore"):
            shifted = z0 + (z0 + z) / (1 - accel * (z0 + z))
        out.append(np.asarray(_cdf(np.where(np.isfinite(shifted), shifted, z)), dtype=float))
    return out[0], out[1]


def mean_stat(values: np.ndarray, include: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic 'mean over units' of values [unit, ...] (flattened after the first axis), NaN units
    left out per column, and only the units where `include` (broadcastable to values) is true."""
    v = values.reshape(len(values), -1)
    measured = np.isfinite(v)
    if include is not None:
        measured &= np.broadcast_to(include, values.shape).reshape(len(values), -1)
    x0, m = np.where(measured, v, 0.0), measured.astype(float)

    def stat(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ x0) / (w @ m)  # 0 / 0 (no measured unit drawn) -> NaN

    return stat


def check_units(values: np.ndarray, what: str, unit: str = "prompts") -> None:
    if len(values) < 2:
        raise InputError(
            f"{what}: {len(values)} {unit[:-1]} on the prompt axis: a bootstrap over {unit} needs "
            f"at least 2 (20 or more for an interval that covers at its stated rate). Fix: measure "
            f"more {unit}"
        )
    if np.isinf(values).any():
        raise InputError(
            f"{what}: the scores hold infinite values, whose mean has no confidence interval. Fix: "
            "replace them (e.g. np.nan_to_num(values, posinf=...)) or leave those prompts out"
        )


def interval_text(estimate: float, low: float, high: float, level: float, n: int, unit: str = "prompts") -> str:
    """'0.812 [0.751, 0.861] 95% CI over 40 prompts' (the atlas's hover, HeadScoresCI.describe)."""
    if not all(math.isfinite(x) for x in (estimate, low, high)):
        return "no interval (not measured)" if not math.isfinite(estimate) else f"{estimate:.3g} (no interval)"
    few = f" (under {FEW} {unit}: covers less than {level * 100:g}%)" if n < FEW else ""
    return f"{estimate:.3g} [{low:.3g}, {high:.3g}] {level * 100:g}% CI over {n} {unit}{few}"


@dataclass
class HeadScoresCI:
    """A confidence interval per head: `estimate`, `low`, `high` are [layer, head] (NaN = not measured).

    `n_prompts` units (prompts, or needle samples: `unit`) were resampled `n_boot` times with `seed`.
    """

    name: str
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    n_prompts: int
    n_boot: int
    method: CIMethod
    seed: int
    better: Better = "higher"
    unit: str = "prompts"
    statistic: str = "mean over prompts"
    attrs: dict = field(default_factory=dict)  # the source's provenance

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low

    def describe(self, layer: int, head: int) -> str:
        e, lo, hi = (float(a[layer, head]) for a in (self.estimate, self.low, self.high))
        return f"L{layer}H{head}: " + interval_text(e, lo, hi, self.level, self.n_prompts, self.unit)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per head: label, layer, head, estimate, low, high; the settings in df.attrs."""
        L, H = self.estimate.shape
        layer, head = (a.ravel() for a in np.meshgrid(np.arange(L), np.arange(H), indexing="ij"))
        df = pd.DataFrame(
            {
                "label": [f"L{a}H{b}" for a, b in zip(layer, head)],
                "layer": layer,
                "head": head,
                "estimate": self.estimate.ravel(),
                "low": self.low.ravel(),
                "high": self.high.ravel(),
            }
        )
        df.attrs = {
            **self.attrs,
            "level": self.level,
            "n_prompts": self.n_prompts,
            "n_boot": self.n_boot,
            "method": self.method,
            "seed": self.seed,
            "unit": self.unit,
            "statistic": self.statistic,
        }
        return df

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k most important heads by the estimate, in the scores' direction (`better`), with bounds."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"top: k must be a positive integer, got {k!r}")
        df = self.to_dataframe()
        e = df["estimate"].to_numpy()
        key = {"higher": -e, "lower": e, "magnitude": -np.abs(e)}[self.better]
        order = np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")[: int(k)]
        out = df.iloc[order].reset_index(drop=True)
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        out.attrs = df.attrs
        return out

    def plot(self, k: int = 20, **kw):
        """The top-k heads' estimates with their intervals as error bars (plotly go.Figure)."""
        import plotly.graph_objects as go

        top = self.top(k)
        e = top["estimate"].to_numpy()
        fig = go.Figure(
            go.Scatter(
                x=top["label"],
                y=e,
                mode="markers",
                name="estimate",
                error_y=dict(
                    type="data", symmetric=False, array=top["high"].to_numpy() - e, arrayminus=e - top["low"].to_numpy()
                ),
                customdata=np.stack([top["low"], top["high"]], -1),
                hovertemplate="%{x}: %{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>",
            )
        )
        fig.update_layout(
            title=kw.get(
                "title",
                f"{self.name}: top {len(top)} heads, {self.level * 100:g}% {self.method} "
                f"CI over {self.n_prompts} {self.unit}",
            ),
            xaxis_title="head",
            yaxis_title=self.statistic,
            template="plotly_white",
        )
        return fig

    def __repr__(self) -> str:
        return (
            f"HeadScoresCI(name={self.name!r}, level={self.level}, method={self.method!r}, "
            f"n_{self.unit}={self.n_prompts}, n_boot={self.n_boot}, shape={self.estimate.shape})"
        )


def ci_result(
    stat: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    shape: tuple[int, int],
    *,
    name: str,
    level=0.95,
    n_boot=1000,
    seed=0,
    method: CIMethod = "percentile",
    better: Better = "higher",
    unit: str = "prompts",
    statistic: str = "mean over prompts",
    attrs: dict | None = None,
) -> HeadScoresCI:
    """`bootstrap` of a statistic over heads, labelled as a HeadScoresCI of the [layer, head] `shape`."""
    est, low, high = bootstrap(stat, n_units, level=level, n_boot=n_boot, seed=seed, method=method)
    return HeadScoresCI(
        name,
        est.reshape(shape),
        low.reshape(shape),
        high.reshape(shape),
        float(level),
        int(n_units),
        int(n_boot),
        method,
        int(seed),
        better,
        unit,
        statistic,
        dict(attrs or {}),
    )


def mean_ci(
    values: np.ndarray,
    *,
    name: str,
    level=0.95,
    n_boot=1000,
    seed=0,
    method: CIMethod = "percentile",
    include: np.ndarray | None = None,
    better: Better = "higher",
    unit: str = "prompts",
    statistic: str = "mean over prompts",
    attrs: dict | None = None,
) -> HeadScoresCI:
    """HeadScoresCI of the mean over the first axis of values [unit, layer, head] (see mean_stat)."""
    check_ci_args(level, n_boot, seed, method)
    check_units(values, name, unit)
    return ci_result(
        mean_stat(values, include),
        len(values),
        values.shape[1:],
        name=name,
        level=level,
        n_boot=n_boot,
        seed=seed,
        method=method,
        better=better,
        unit=unit,
        statistic=statistic,
        attrs=attrs,
    )
