"""Labelled result types every analyzer returns: `HeadScores` (per head) and `TokenScores` (per token).

Kept torch-free on purpose (numpy/pandas here, plotly/pyarrow imported lazily) so results can be
loaded, tabulated and plotted on a laptop without the model stack installed.
"""

from __future__ import annotations

import copy
import datetime as _dt
import html
import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd

from headscope._version import __version__
from headscope.confidence import Better, CIMethod, HeadScoresCI, mean_ci
from headscope.errors import HeadscopeError, InputError
from headscope.fileio import atomic_write, dump_rows_json, encode_nan, jsonable
from headscope.viz.figures import head_heatmap, token_plot

_FORMAT = {"HeadScores": "headscope.HeadScores", "TokenScores": "headscope.TokenScores"}
_FORMAT_VERSION = 1
_PARQUET_KEY = b"headscope"


# ---- hybrids: which layers have heads (headscope.models.info.ModelInfo.layer_kinds) ----------------


def kinds_text(kinds) -> str:
    """ "0-2 mamba, 3 attention, ..." : runs of equal kinds, by layer index."""
    runs, start = [], 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            runs.append(f"{start}{'' if i - 1 == start else f'-{i - 1}'} {kinds[start]}")
            start = i
    return ", ".join(runs)


def kinds_note(layer_kinds) -> str:
    """Why a hybrid's results have NaN rows: "" when every layer attends."""
    if layer_kinds is None or all(k == "attention" for k in layer_kinds):
        return ""
    absent = [i for i, k in enumerate(layer_kinds) if k != "attention"]
    return (
        f"layers {', '.join(map(str, absent))} have no attention heads (layer kinds: {kinds_text(layer_kinds)}): "
        "their rows are NaN"
    )


class ResultFileError(HeadscopeError, ValueError):
    """A saved result file that is truncated, corrupted or not a headscope result."""


def _as_array(values: Any, kind: str, ndims: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(
            f"{kind}: values must be numeric and rectangular (for a torch tensor pass t.detach().cpu()): {e}"
        ) from None
    if arr.ndim not in ndims:
        raise InputError(f"{kind}: values must have {' or '.join(map(str, ndims))} dims, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{kind}: values are empty (shape {arr.shape})")
    return arr


def _read_json(path: Path, cls: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{path}: not valid JSON (truncated or corrupted file?): {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT[cls]:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ResultFileError(f"{path}: not a saved {cls} (format tag {got!r}, expected {_FORMAT[cls]!r})")
    missing = {"values", "provenance"} - doc.keys()
    if missing:
        raise ResultFileError(f"{path}: {cls} file is missing key(s) {sorted(missing)}")
    return doc


class _Result:
    """Shared provenance / save plumbing for HeadScores and TokenScores."""

    values: np.ndarray
    dims: tuple[str, ...]
    prompts: list[str] | None

    def _init_meta(self, *, name, model, analyzer, params, prompts, description, version, created, extra):
        if not isinstance(name, str) or not name:
            raise InputError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        if prompts is not None:
            prompts = [str(p) for p in prompts]
        self.prompts = prompts
        self._prov = {
            "name": name,
            "analyzer": str(analyzer),
            "params": jsonable(params or {}),
            "model": str(model),
            "headscope_version": version or __version__,
            "created": created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **extra,
            "description": str(description),
        }

    name = property(lambda self: self._prov["name"])
    model = property(lambda self: self._prov["model"])
    analyzer = property(lambda self: self._prov["analyzer"])
    params = property(lambda self: copy.deepcopy(self._prov["params"]))
    description = property(lambda self: self._prov["description"])

    @property
    def provenance(self) -> dict:
        return copy.deepcopy(self._prov)  # a copy: editing it must not silently rewrite the record

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and self.values.shape == other.values.shape
            and np.array_equal(self.values, other.values, equal_nan=True)
            and self._prov == other._prov
            and self.prompts == other.prompts
        )

    # Unhashable: a mutable numpy payload. Declared as typeshed declares list's: mypy types every
    # object's __hash__ as a method, so setting it to None needs the ignore.
    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    def allclose(self, other: _Result, atol: float = 1e-8, rtol: float = 0.0) -> bool:
        """Same shape and values within tolerance (NaN == NaN); ignores provenance."""
        return self.values.shape == other.values.shape and bool(
            np.allclose(self.values, other.values, atol=atol, rtol=rtol, equal_nan=True)
        )

    def _json_doc(self) -> dict:
        return {
            "format": _FORMAT[type(self).__name__],
            "format_version": _FORMAT_VERSION,
            "dims": list(self.dims),
            "shape": list(self.values.shape),
            "prompts": self.prompts,
            "provenance": self._prov,
            "values": encode_nan(self.values),
        }

    def _save_json(self, path: Path) -> Path:
        text = dump_rows_json(self._json_doc())
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

    def _header_html(self, extra: str = "") -> str:
        p = self._prov
        params = ", ".join(f"{k}={json.dumps(v)[:40]}" for k, v in list(p["params"].items())[:8])
        note = getattr(self, "note", "")
        rows = [
            ("model", p["model"] or "—"),
            ("analyzer", p["analyzer"] or "—"),
            ("shape", f"{self.values.shape} {self.dims}"),
            *([("kv heads", extra)] if extra else []),
            ("params", params or "—"),
            *([("note", note)] if note else []),
        ]
        cells = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return (
            f"<div><b>{type(self).__name__}: {html.escape(p['name'])}</b>"
            f"<table style='font-size:smaller'>{cells}</table>"
        )


class HeadScores(_Result):
    """Per-head scores, dims ("layer","head") or ("prompt","layer","head")."""

    def __init__(
        self,
        values,
        *,
        name: str,
        n_kv_heads: int | None = None,
        model: str = "",
        analyzer: str = "",
        params: dict | None = None,
        prompts: list[str] | None = None,
        higher_is_more: bool = True,
        description: str = "",
        version: str | None = None,
        created: str | None = None,
        better: Better | None = None,
        layer_kinds=None,
    ):
        self.values = _as_array(values, "HeadScores", (2, 3))
        self.dims = ("layer", "head") if self.values.ndim == 2 else ("prompt", "layer", "head")
        self.n_layers, self.n_heads = self.values.shape[-2:]
        kv = self.n_heads if n_kv_heads is None else n_kv_heads
        if isinstance(kv, bool) or not isinstance(kv, (int, np.integer)) or kv < 1 or self.n_heads % kv:
            raise InputError(
                f"HeadScores: n_kv_heads={n_kv_heads!r} must be a positive integer dividing "
                f"n_heads={self.n_heads} (query heads per KV group must be whole)"
            )
        self.n_kv_heads = int(kv)
        if prompts is not None and self.values.ndim == 3 and len(prompts) != self.values.shape[0]:
            raise InputError(
                f"HeadScores: {len(prompts)} prompts given but values have "
                f"{self.values.shape[0]} along 'prompt' (shape {self.values.shape})"
            )
        if better is None:
            better = "higher" if higher_is_more else "lower"
        if better not in BETTER:
            raise InputError(f"HeadScores: better={better!r}: use one of {', '.join(BETTER)}")
        kinds = (
            None if layer_kinds is None or all(k == "attention" for k in layer_kinds) else tuple(map(str, layer_kinds))
        )
        if kinds is not None:
            if len(kinds) != self.n_layers:
                raise InputError(f"HeadScores: {len(kinds)} layer kinds for {self.n_layers} layers")
            # A hybrid's layers without attention have no heads: their rows are NaN whatever was computed.
            self.values = self.values.copy()
            self.values[..., [k != "attention" for k in kinds], :] = np.nan
        self._init_meta(
            name=name,
            model=model,
            analyzer=analyzer,
            params=params,
            prompts=prompts,
            description=description,
            version=version,
            created=created,
            extra={
                "n_kv_heads": self.n_kv_heads,
                "higher_is_more": better != "lower",
                "better": better,
                **({"layer_kinds": list(kinds)} if kinds else {}),
            },
        )

    higher_is_more = property(lambda self: self._prov["higher_is_more"])
    # Which end ranks first ("higher", "lower", "magnitude"): a scan's metric declares it (a logit
    # difference's most negative change is its most important head), an analyzer's scores say "higher"
    # or "lower"; top(), rank_heads and every summary read it.
    better = property(lambda self: self._prov["better"])

    @property
    def layer_kinds(self) -> tuple[str, ...] | None:
        """Per layer "attention" or the mixer a hybrid has instead (None: every layer attends)."""
        kinds = self._prov.get("layer_kinds")
        return None if kinds is None else tuple(kinds)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        kinds = self.layer_kinds
        return (
            tuple(range(self.n_layers)) if kinds is None else tuple(i for i, k in enumerate(kinds) if k == "attention")
        )

    @property
    def note(self) -> str:
        """Why some rows are NaN by construction ("" unless a hybrid: its non-attention layers)."""
        return kinds_note(self.layer_kinds)

    @property
    def kv_group(self) -> np.ndarray:
        return np.arange(self.n_heads) // (self.n_heads // self.n_kv_heads)

    @property
    def labels(self) -> np.ndarray:
        return np.array([[f"L{layer}H{h}" for h in range(self.n_heads)] for layer in range(self.n_layers)])

    def _mean(self) -> np.ndarray:
        if self.values.ndim == 2:
            return self.values
        with warnings.catch_warnings():  # all-NaN heads legitimately stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.values, axis=0)

    def mean_over_prompts(self) -> HeadScores:
        p = self._prov
        return HeadScores(
            self._mean(),
            name=p["name"],
            n_kv_heads=self.n_kv_heads,
            model=p["model"],
            analyzer=p["analyzer"],
            params=p["params"],
            prompts=self.prompts,
            higher_is_more=p["higher_is_more"],
            description=p["description"],
            version=p["headscope_version"],
            created=p["created"],
            better=p["better"],
            layer_kinds=self.layer_kinds,
        )

    def ci(
        self, level: float = 0.95, n_boot: int = 1000, seed: int = 0, method: CIMethod = "percentile"
    ) -> HeadScoresCI:
        """Bootstrap confidence interval of each head's prompt mean, resampling prompts with replacement
        (NaN prompts left out, as mean_over_prompts; an unmeasured head stays NaN). method: "percentile"
        or "bca". See headscope.confidence and docs/confidence-intervals.md.

        Example:
            >>> s = HeadScores(np.arange(24.0).reshape(4, 2, 3), name="x")
            >>> ci = s.ci(n_boot=200)
            >>> bool((ci.low <= ci.estimate).all() and (ci.estimate <= ci.high).all())
            True
        """
        if self.values.ndim == 2:
            raise InputError(
                f"HeadScores.ci: {self.name!r} has no prompt axis (values [layer, head]): the scores "
                "were already reduced over prompts, so there is nothing to resample. Fix: call .ci() on "
                "the per-prompt scores (a [prompt, layer, head] HeadScores, e.g. analyzer.scores_ or a "
                "scan's result before .mean_over_prompts()), or analyzer.ci()"
            )
        if len(self.values) == 1:
            hint = f" (its one row is {self.prompts[0]!r})" if self.prompts else ""
            raise InputError(
                f"HeadScores.ci: {self.name!r} has one row on the prompt axis{hint}: a statistic of the "
                "whole data set, or a single prompt, has nothing to resample. Fix: use the analyzer's "
                "own .ci() (it resamples its per-prompt data where it keeps them) or measure more prompts"
            )
        return mean_ci(
            self.values,
            name=self.name,
            level=level,
            n_boot=n_boot,
            seed=seed,
            method=method,
            better=self.better,
            attrs=self.provenance,
        )

    def score(self, layer: int, head: int) -> float:
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise InputError(f"L{layer}H{head} out of range: model has {self.n_layers} layers x {self.n_heads} heads")
        kinds = self.layer_kinds
        if kinds is not None and layer not in self.attention_layers:  # (every layer attends without kinds)
            raise InputError(
                f"L{layer}H{head}: layer {layer} is a {kinds[layer]} layer, it has no attention "
                f"heads ({self.note}). Fix: an attention layer ({', '.join(map(str, self.attention_layers))})"
            )
        return float(self._mean()[layer, head])

    def top(self, k: int = 10, better: Better | None = None) -> pd.DataFrame:
        """The k most important heads (prompt-mean if 3-D), in the scores' own direction (`better`: a
        logit-difference scan's most negative change first); NaN heads always sort last. `better`
        ("higher", "lower" or "magnitude") overrides the direction, e.g. `top(8, better="lower")`."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"top: k must be a positive integer, got {k!r}")
        if better is None:
            better = self.better
        if better not in BETTER:
            raise InputError(f"top: better={better!r}: use one of {', '.join(BETTER)}")
        mean = self._mean()
        key = {"higher": -mean, "lower": mean, "magnitude": -np.abs(mean)}[better]
        df = self._long(mean[None], with_prompt=False)
        df["_key"] = np.where(np.isnan(key), np.inf, key).ravel()
        df = df[df["layer"].isin(self.attention_layers)]  # a hybrid's other layers have no heads to rank
        df = df.sort_values("_key", kind="stable").head(int(k))
        df.insert(0, "rank", np.arange(1, len(df) + 1))
        df = df[["rank", "label", "layer", "head", "kv_group", "score"]].reset_index(drop=True)
        df.attrs = self.provenance
        return df

    def _long(self, v3: np.ndarray, with_prompt: bool) -> pd.DataFrame:
        P, L, H = v3.shape
        pi, li, hi = (a.ravel() for a in np.meshgrid(np.arange(P), np.arange(L), np.arange(H), indexing="ij"))
        cols: dict[str, Any] = {}
        if with_prompt:
            cols["prompt"] = pi
            if self.prompts is not None:
                cols["prompt_text"] = np.asarray(self.prompts, dtype=object)[pi]
        cols.update(
            layer=li,
            head=hi,
            label=[f"L{layer}H{h}" for layer, h in zip(li, hi)],
            kv_group=self.kv_group[hi],
            score=v3.ravel(),
        )
        return pd.DataFrame(cols)

    def to_dataframe(self) -> pd.DataFrame:
        """Long format, one row per (prompt,) layer, head; provenance in df.attrs."""
        three = self.values.ndim == 3
        df = self._long(self.values if three else self.values[None], with_prompt=three)
        df.attrs = self.provenance
        return df

    def plot(self, **kw):
        """Interactive heatmap (plotly go.Figure); kwargs go to headscope.viz.figures.head_heatmap."""
        return head_heatmap(self, **kw)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; format by suffix: .json (readable) or .parquet (long table + provenance)."""
        path = Path(path)
        if path.suffix == ".json":
            return self._save_json(path)
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            df = self.to_dataframe()
            table = pa.table({c: df[c].to_numpy() for c in df.columns})
            meta = {k: v for k, v in self._json_doc().items() if k != "values"}
            table = table.replace_schema_metadata({_PARQUET_KEY: json.dumps(meta).encode()})
            return atomic_write(path, lambda p: pq.write_table(table, p))
        raise InputError(f"HeadScores.save: unsupported suffix {path.suffix!r} in {path}; use .json or .parquet")

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadScores:
        path = Path(path)
        if path.suffix == ".json":
            doc = _read_json(path, "HeadScores")
            try:
                values = np.array(doc["values"], dtype=np.float64)  # null -> NaN
            except (TypeError, ValueError) as e:
                raise ResultFileError(f"{path}: 'values' is not a rectangular numeric array: {e}") from None
        elif path.suffix == ".parquet":
            doc, values = _load_parquet(path)
        else:
            raise InputError(f"HeadScores.load: unsupported suffix {path.suffix!r} in {path}; use .json or .parquet")
        if list(values.shape) != doc.get("shape"):
            raise ResultFileError(f"{path}: values shape {values.shape} != recorded shape {doc.get('shape')}")
        p = doc["provenance"]
        try:
            return cls(
                values,
                name=p["name"],
                n_kv_heads=p["n_kv_heads"],
                model=p["model"],
                analyzer=p["analyzer"],
                params=p["params"],
                prompts=doc.get("prompts"),
                higher_is_more=p["higher_is_more"],
                description=p["description"],
                version=p["headscope_version"],
                created=p["created"],
                better=p.get("better"),
                layer_kinds=p.get("layer_kinds"),
            )
        except (KeyError, TypeError, InputError) as e:
            raise ResultFileError(f"{path}: invalid HeadScores provenance/values: {e!r}") from None

    def __repr__(self) -> str:
        kinds = f", attention_layers={list(self.attention_layers)}" if self.layer_kinds else ""
        return (
            f"HeadScores(name={self.name!r}, model={self.model!r}, shape={self.values.shape}, "
            f"dims={self.dims}, n_kv_heads={self.n_kv_heads}{kinds})"
        )

    def _repr_html_(self) -> str:
        kv = f"{self.n_kv_heads} ({self.n_heads // self.n_kv_heads} query heads each)"
        table = self.top(5).to_html(index=False, na_rep="NaN", float_format="{:.4g}".format)
        return self._header_html(kv) + table + "</div>"


# ---- ranking heads ------------------------------------------------------------------------------------
# "Which direction is better" has one spelling in the ranking code: better="higher" (the largest
# score ranks first: more of what the scores measure), "lower" (the smallest first), or "magnitude"
# (the largest |score| first). One older spelling maps onto it: HeadScores' stored `higher_is_more`
# (the default); an experiment spec's `rank: largest / smallest / magnitude` is its own vocabulary.
BETTER: tuple[Better, ...] = get_args(Better)
# select_heads' `better`: a threshold or a top-k is taken from one end of the signed scale.
SelectBetter = Literal["higher", "lower"]


def rank_heads(scores: HeadScores, better: Better | None = None) -> list[tuple[int, int]]:
    """Every measured head of `scores`, best first: the one head ranking of headscope.

    Uses the prompt mean of 3-D scores. NaN heads (not measured, e.g. layers a scan skipped) are never
    ranked; ±inf are extreme scores and rank first or last. Ties keep (layer, head) order.

    Args:
        better: "higher", "lower" or "magnitude" (see BETTER); None = the scores' own direction
            (`HeadScores.better`).

    Example:
        >>> s = HeadScores(np.array([[0.2, np.nan], [0.9, -0.5]]), name="x")
        >>> rank_heads(s), rank_heads(s, "magnitude")
        ([(1, 0), (0, 0), (1, 1)], [(1, 0), (1, 1), (0, 0)])
    """
    if better is None:
        better = scores.better
    if better not in BETTER:
        raise InputError(f"better={better!r}: use one of {', '.join(BETTER)}")
    mean = scores._mean()  # [layer, head]
    key = {"higher": -mean, "lower": mean, "magnitude": -np.abs(mean)}[better].ravel()
    order = np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")
    order = order[~np.isnan(key[order])]
    layers, heads = np.unravel_index(order, mean.shape)
    return [(int(l), int(h)) for l, h in zip(layers, heads, strict=True)]


def select_heads(
    scores: HeadScores,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    top_fraction: float | None = None,
    better: SelectBetter | None = None,
) -> list[tuple[int, int]]:
    """Heads by threshold (beyond it), top-k, or top fraction of `rank_heads`, best first (prompt-mean;
    NaN never selected).

    `better` ("higher" or "lower"; default: the scores' own `higher_is_more`) says which end is best.
    A top fraction keeps at least one head.
    """
    if sum(x is not None for x in (threshold, top_k, top_fraction)) != 1:
        raise InputError("select_heads takes exactly one of threshold, top_k, top_fraction")
    if better is not None and better not in get_args(SelectBetter):
        raise InputError(f"better={better!r}: use {' or '.join(map(repr, get_args(SelectBetter)))}")
    heads = rank_heads(scores, better)
    if threshold is not None:
        end = scores.better if better is None else better
        mean = scores._mean()
        beyond = {
            "higher": lambda v: v > threshold,
            "lower": lambda v: v < threshold,
            "magnitude": lambda v: abs(v) > threshold,
        }[end]
        return [h for h in heads if beyond(mean[h])]
    if top_k is not None:
        return heads[: int(top_k)]
    assert top_fraction is not None  # the one of the three given (checked above)
    return heads[: max(1, round(top_fraction * len(heads)))]  # a fraction of the measured heads


def _load_parquet(path: Path) -> tuple[dict, np.ndarray]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError) for bad files
        raise ResultFileError(f"{path}: not a readable parquet file (truncated or corrupted?): {e}") from None
    raw = (table.schema.metadata or {}).get(_PARQUET_KEY)
    no_metadata = ResultFileError(f"{path}: parquet has no headscope metadata (not saved by HeadScores.save)")
    if raw is None:
        raise no_metadata
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError):
        raise no_metadata from None
    if doc.get("format") != _FORMAT["HeadScores"] or "provenance" not in doc or "shape" not in doc:
        raise ResultFileError(f"{path}: headscope metadata is not a HeadScores record")
    shape = tuple(doc["shape"])
    idx_cols = ["prompt", "layer", "head"][-len(shape) :] if len(shape) in (2, 3) else []
    missing = set(idx_cols + ["score"]) - set(table.column_names)
    if not idx_cols or missing:
        raise ResultFileError(f"{path}: missing column(s) {sorted(missing)} for shape {shape}")
    idx = tuple(np.asarray(table.column(c).to_numpy(), dtype=np.int64) for c in idx_cols)
    if any(i.min() < 0 or i.max() >= n for i, n in zip(idx, shape)) or len(idx[0]) != int(np.prod(shape)):
        raise ResultFileError(f"{path}: index columns do not cover shape {shape} exactly once")
    values = np.full(shape, np.nan)
    values[idx] = np.asarray(table.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
    return doc, values


class TokenScores(_Result):
    """Per-token scores: values [token] or [prompt, token] (NaN-pad ragged prompts); tokens as strings."""

    def __init__(
        self,
        values,
        *,
        tokens,
        name: str,
        model: str = "",
        analyzer: str = "",
        params: dict | None = None,
        prompts: list[str] | None = None,
        description: str = "",
        version: str | None = None,
        created: str | None = None,
    ):
        self.values = _as_array(values, "TokenScores", (1, 2))
        self.dims = ("token",) if self.values.ndim == 1 else ("prompt", "token")
        rows = [tokens] if self.values.ndim == 1 else list(tokens)
        if (
            len(rows) != len(self.values.reshape(-1, self.values.shape[-1]))
            or any(len(r) > self.values.shape[-1] for r in rows)
            or any(isinstance(r, str) for r in rows)
        ):
            raise InputError(
                f"TokenScores: tokens must be a list of strings per prompt, each no longer "
                f"than the token axis; values shape {self.values.shape}"
            )
        self.tokens = [[str(t) for t in r] for r in rows]  # always per-prompt internally
        if prompts is not None and self.values.ndim == 2 and len(prompts) != self.values.shape[0]:
            raise InputError(f"TokenScores: {len(prompts)} prompts for {self.values.shape[0]} rows of values")
        self._init_meta(
            name=name,
            model=model,
            analyzer=analyzer,
            params=params,
            prompts=prompts,
            description=description,
            version=version,
            created=created,
            extra={},
        )

    def to_dataframe(self) -> pd.DataFrame:
        v = self.values.reshape(-1, self.values.shape[-1])
        recs = [(p, i, t, v[p, i]) for p, row in enumerate(self.tokens) for i, t in enumerate(row)]
        df = pd.DataFrame(recs, columns=["prompt", "position", "token", "score"])
        if self.values.ndim == 1:
            df = df.drop(columns="prompt")
        elif self.prompts is not None:
            df.insert(1, "prompt_text", [self.prompts[p] for p in df["prompt"]])
        df.attrs = self.provenance
        return df

    def plot(self, **kw):
        return token_plot(self, **kw)

    def _json_doc(self) -> dict:
        return {**super()._json_doc(), "tokens": self.tokens if self.values.ndim == 2 else self.tokens[0]}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != ".json":
            raise InputError(f"TokenScores.save: only .json is supported, got {path}")
        return self._save_json(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenScores:
        path = Path(path)
        doc = _read_json(path, "TokenScores")
        p = doc["provenance"]
        try:
            return cls(
                np.array(doc["values"], dtype=np.float64),
                tokens=doc["tokens"],
                name=p["name"],
                model=p["model"],
                analyzer=p["analyzer"],
                params=p["params"],
                prompts=doc.get("prompts"),
                description=p["description"],
                version=p["headscope_version"],
                created=p["created"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ResultFileError(f"{path}: invalid TokenScores file: {e!r}") from None

    def __repr__(self) -> str:
        return f"TokenScores(name={self.name!r}, model={self.model!r}, shape={self.values.shape}, dims={self.dims})"

    def _repr_html_(self) -> str:
        return self._header_html() + self.to_dataframe().head(10).to_html(index=False, na_rep="NaN") + "</div>"
