"""Labelled results of activation patching (`PatchScores`) and direct logit attribution (`LogitAttribution`).

Both follow headscope.results: numpy values with named dims, provenance, `.to_dataframe()`, `.plot()`,
`.save()` / `.load()` (JSON, atomic), and a `HeadScores` view where the values are per head.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from .._version import __version__
from ..confidence import Better
from ..errors import InputError
from ..fileio import atomic_write, dump_rows_json, encode_nan, jsonable
from ..results import HeadScores, ResultFileError

_PATCH_FORMAT = "headscope.PatchScores"
_DLA_FORMAT = "headscope.LogitAttribution"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _nanmean(v: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():  # a position past every prompt's end stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(v, axis=axis)


def _load_doc(path, fmt: str) -> dict:
    path = Path(path)
    if path.suffix != ".json":
        raise InputError(f"load: only .json is supported, got {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{path}: not valid JSON (truncated or corrupted file?): {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ResultFileError(
            f"{path}: not a saved {fmt.split('.')[-1]} (format tag {doc.get('format') if isinstance(doc, dict) else None!r})"
        )
    return doc


def _array(x) -> np.ndarray:
    return np.array(x, dtype=np.float64)  # null -> NaN


class PatchScores:
    """The metric of every patched run: values with dims `dims`, a subset of ("prompt", "layer",
    "head" | "kv_head", "position"), plus the two unpatched baselines per prompt.

    `site` "z", "q", "pattern" have a "head" axis; "k" and "v" a "kv_head" axis (on a GQA model a key/
    value head is shared by n_heads / n_kv_heads query heads, so it is patched, and reported, once);
    "resid_pre" has no head axis and is always per position. `clean_metric` / `corrupt_metric` are the
    metric of the unpatched clean and corrupt runs ([prompt]). `direction` "denoising" (corrupt run,
    clean activation patched in) or "noising" (clean run, corrupt activation patched in).
    """

    def __init__(
        self,
        values,
        *,
        dims,
        site: str,
        direction: str,
        metric: str,
        clean_metric,
        corrupt_metric,
        model: str = "",
        n_kv_heads: int | None = None,
        prompts=None,
        corrupt_prompts=None,
        normalized: bool = False,
        params: dict | None = None,
        version: str | None = None,
        created: str | None = None,
    ):
        self.values = np.asarray(values, dtype=np.float64)
        self.dims = tuple(dims)
        if self.values.ndim != len(self.dims):
            raise InputError(f"PatchScores: values have shape {self.values.shape} but dims {self.dims}")
        self.clean_metric = np.asarray(clean_metric, dtype=np.float64)
        self.corrupt_metric = np.asarray(corrupt_metric, dtype=np.float64)
        self.prompts = None if prompts is None else [str(p) for p in prompts]
        self.corrupt_prompts = None if corrupt_prompts is None else [str(p) for p in corrupt_prompts]
        self._prov = {
            "site": site,
            "direction": direction,
            "metric": metric,
            "model": str(model),
            "n_kv_heads": n_kv_heads,
            "normalized": bool(normalized),
            "params": jsonable(params or {}),
            "headscope_version": version or __version__,
            "created": created or _now(),
        }

    site = property(lambda self: self._prov["site"])
    direction = property(lambda self: self._prov["direction"])
    metric = property(lambda self: self._prov["metric"])
    model = property(lambda self: self._prov["model"])
    is_normalized = property(lambda self: self._prov["normalized"])

    @property
    def provenance(self) -> dict:
        return copy.deepcopy(self._prov)

    @property
    def base_metric(self) -> np.ndarray:
        """The metric of the run that is patched (corrupt when denoising, clean when noising)."""
        return self.corrupt_metric if self.direction == "denoising" else self.clean_metric

    @property
    def source_metric(self) -> np.ndarray:
        """The metric of the run the patched activation comes from."""
        return self.clean_metric if self.direction == "denoising" else self.corrupt_metric

    def mean(self) -> np.ndarray:
        """Prompt mean of the values (the values themselves when they have no prompt axis)."""
        return _nanmean(self.values) if self.dims[0] == "prompt" else self.values

    def normalized(self, per_prompt: bool = False) -> PatchScores:
        """(patched − base) / (source − base): the fraction of the gap between the patched run and the
        run the activation comes from that patching this one activation closes. Denoising: (patched −
        corrupt) / (clean − corrupt), TransformerLens's `PatchingResult.normalized` (0: no effect, 1: the
        clean metric restored). Noising: (patched − clean) / (corrupt − clean) (0: no effect, 1: as bad
        as the corrupt run). Default: on prompt means (ARENA's convention: one gap for all prompts);
        `per_prompt=True` per prompt, as TransformerLens does (a prompt with no gap gives inf/NaN)."""
        if self.is_normalized:
            raise InputError("these scores are already normalized")
        if self.dims[0] != "prompt":
            raise InputError("normalized() needs per-prompt values (the result of patch())")
        base, source = self.base_metric, self.source_metric
        if per_prompt:
            shape = (-1,) + (1,) * (self.values.ndim - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = (self.values - base.reshape(shape)) / (source - base).reshape(shape)
            dims = self.dims
        else:
            gap = float(source.mean() - base.mean())
            if gap == 0:
                raise InputError(
                    "normalized(): the clean and corrupt runs have the same mean metric, so there is "
                    "no gap to normalise by; check the prompt pairs differ where the metric looks"
                )
            values, dims = (self.mean() - base.mean()) / gap, self.dims[1:]
        return PatchScores(
            values,
            dims=dims,
            normalized=True,
            prompts=self.prompts,
            corrupt_prompts=self.corrupt_prompts,
            clean_metric=self.clean_metric,
            corrupt_metric=self.corrupt_metric,
            **self._meta(),
        )

    def _meta(self) -> dict:
        p = self._prov
        return {
            "site": p["site"],
            "direction": p["direction"],
            "metric": p["metric"],
            "model": p["model"],
            "n_kv_heads": p["n_kv_heads"],
            "params": p["params"],
        }

    def heads(self, better: Better | None = None) -> HeadScores:
        """The per-head values as HeadScores ([prompt, layer, head] or [layer, head]) for rank_heads / top:
        only for per-head results (not per position, not resid_pre). Ranked by `better`; default: normalized
        scores "higher" (the most of the gap closed first); raw metric values "higher" when denoising and
        "lower" when noising, which assumes the metric is higher on the clean run (logit_diff of the clean
        run's answers is)."""
        unit = self.dims[-1]
        if unit not in ("head", "kv_head"):
            raise InputError(
                f"heads(): these scores have dims {self.dims}; only per-head patching (per_position="
                "False, a head site) gives a [layer, head] table. Use .mean() or .to_dataframe()"
            )
        if better is None:
            better = "higher" if self.is_normalized or self.direction == "denoising" else "lower"
        n_units = self.values.shape[-1]
        kv = n_units if unit == "kv_head" else self._prov["n_kv_heads"]
        name = f"patch {self.direction} {self.site}:{self.metric}" + (" (normalized)" if self.is_normalized else "")
        return HeadScores(
            self.values,
            name=name,
            n_kv_heads=kv,
            model=self.model,
            analyzer="patch",
            params={**self._meta(), "unit": unit},
            better=better,
            prompts=self.prompts if self.dims[0] == "prompt" else None,
            description=f"metric with one {unit}'s {self.site} patched ({self.direction})",
        )

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: one row per cell (prompt, layer, head/kv_head, position as present) with its score."""
        grids = np.meshgrid(*[np.arange(n) for n in self.values.shape], indexing="ij")
        df = pd.DataFrame({d: g.ravel() for d, g in zip(self.dims, grids)})
        if "prompt" in df and self.prompts is not None:
            df.insert(1, "prompt_text", np.asarray(self.prompts, dtype=object)[df["prompt"].to_numpy()])
        df["score"] = self.values.ravel()
        df.attrs = self.provenance
        return df

    def plot(self, **kw):
        """Heatmap of the prompt mean: layer x head for per-head scores, (layer, head) rows x position per
        position, layer x position for resid_pre (plotly go.Figure)."""
        import plotly.graph_objects as go

        z = self.mean()
        dims = self.dims[1:] if self.dims[0] == "prompt" else self.dims
        if dims[-1] in ("head", "kv_head"):
            y = [f"L{l}" for l in range(z.shape[0])]
            x = [f"{'KV' if dims[-1] == 'kv_head' else 'H'}{h}" for h in range(z.shape[1])]
        elif len(dims) == 3:  # layer, unit, position
            y = [
                f"L{l}{'KV' if dims[1] == 'kv_head' else 'H'}{h}" for l in range(z.shape[0]) for h in range(z.shape[1])
            ]
            z, x = z.reshape(-1, z.shape[-1]), [f"pos {p}" for p in range(z.shape[-1])]
        else:
            y, x = [f"L{l}" for l in range(z.shape[0])], [f"pos {p}" for p in range(z.shape[1])]
        finite = z[np.isfinite(z)]
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                colorscale=kw.pop("colorscale", "RdBu_r"),
                zmin=-bound,
                zmax=bound,
                zmid=0,
                hovertemplate="%{y} %{x}: %{z:.4g}<extra></extra>",
            )
        )
        what = "normalized " if self.is_normalized else ""
        fig.update_layout(
            title=kw.pop("title", f"{self.direction} patching of {self.site}: {what}{self.metric}"),
            yaxis=dict(autorange="reversed"),
            template="plotly_white",
            **kw,
        )
        return fig

    def _doc(self) -> dict:
        return {
            "format": _PATCH_FORMAT,
            "format_version": 1,
            "dims": list(self.dims),
            "shape": list(self.values.shape),
            "prompts": self.prompts,
            "corrupt_prompts": self.corrupt_prompts,
            "provenance": self._prov,
            "clean_metric": encode_nan(self.clean_metric),
            "corrupt_metric": encode_nan(self.corrupt_metric),
            "values": encode_nan(self.values),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as JSON (readable; `PatchScores.load` reads it back)."""
        path = Path(path)
        if path.suffix != ".json":
            raise InputError(f"PatchScores.save: only .json is supported, got {path}")
        text = dump_rows_json(self._doc())
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatchScores:
        doc = _load_doc(path, _PATCH_FORMAT)
        try:
            p = doc["provenance"]
            values = _array(doc["values"])
            if list(values.shape) != doc["shape"]:
                raise ValueError(f"values shape {values.shape} != recorded {doc['shape']}")
            return cls(
                values,
                dims=doc["dims"],
                site=p["site"],
                direction=p["direction"],
                metric=p["metric"],
                clean_metric=_array(doc["clean_metric"]),
                corrupt_metric=_array(doc["corrupt_metric"]),
                model=p["model"],
                n_kv_heads=p["n_kv_heads"],
                prompts=doc["prompts"],
                corrupt_prompts=doc["corrupt_prompts"],
                normalized=p["normalized"],
                params=p["params"],
                version=p["headscope_version"],
                created=p["created"],
            )
        except (KeyError, TypeError, ValueError, InputError) as e:
            raise ResultFileError(f"{path}: invalid PatchScores file: {e!r}") from None

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and self.dims == other.dims
            and self._prov == other._prov
            and np.array_equal(self.values, other.values, equal_nan=True)
            and np.array_equal(self.clean_metric, other.clean_metric, equal_nan=True)
            and np.array_equal(self.corrupt_metric, other.corrupt_metric, equal_nan=True)
            and self.prompts == other.prompts
            and self.corrupt_prompts == other.corrupt_prompts
        )

    # Unhashable (mutable numpy payload), declared as typeshed declares list's: see results._Result.
    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"PatchScores(site={self.site!r}, direction={self.direction!r}, metric={self.metric!r}, "
            f"shape={self.values.shape}, dims={self.dims}{', normalized' if self.is_normalized else ''})"
        )


class LogitAttribution:
    """Direct logit attribution: each component's direct contribution to logit(correct) − logit(wrong).

    `heads`: HeadScores [prompt, layer, head]; `components`: {name: [prompt]} for everything else that
    is written into the residual stream or added after it: "embed" (token + position embeddings, the
    residual entering layer 0), "attn_bias.L{l}" (layer l's attention output minus its heads' z·W_O: the
    output bias), "mlp.L{l}", "ln_final.bias", "unembed.bias". `logit_diff` [prompt] is the model's own
    logit difference (before a family's final logit transform, e.g. a soft-cap: see `params`); on the
    families DLA accepts, heads + components sum to it (`total()`).
    """

    def __init__(self, heads: HeadScores, components: dict, logit_diff, *, params: dict | None = None):
        self.heads = heads
        self.components = {k: np.asarray(v, dtype=np.float64) for k, v in components.items()}
        self.logit_diff = np.asarray(logit_diff, dtype=np.float64)
        self.params = jsonable(params or {})

    @property
    def prompts(self):
        return self.heads.prompts

    def total(self) -> np.ndarray:
        """[prompt]: every head's and every other component's contribution summed."""
        return self.heads.values.sum(axis=(1, 2)) + sum(self.components.values())

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: one row per (prompt, component) with layer/head where they apply."""
        rows = self.heads.to_dataframe().rename(columns={"label": "component"})
        rows = rows[[c for c in ("prompt", "prompt_text", "component", "layer", "head", "score") if c in rows]]
        extra = []
        for name, v in self.components.items():
            layer = int(name.split(".L")[1]) if ".L" in name else -1
            for p, s in enumerate(v):
                extra.append({"prompt": p, "component": name, "layer": layer, "head": -1, "score": float(s)})
        df = pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)
        df.attrs = {**self.heads.provenance, "components": list(self.components)}
        return df

    def plot(self, **kw):
        """Layer x head heatmap of the prompt-mean head contributions."""
        return self.heads.plot(**kw)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as JSON; `LogitAttribution.load` reads it back."""
        path = Path(path)
        if path.suffix != ".json":
            raise InputError(f"LogitAttribution.save: only .json is supported, got {path}")
        doc = {
            "format": _DLA_FORMAT,
            "format_version": 1,
            "params": self.params,
            "logit_diff": encode_nan(self.logit_diff),
            "components": {k: encode_nan(v) for k, v in self.components.items()},
            "heads": self.heads._json_doc(),
        }
        text = json.dumps(doc, indent=1, allow_nan=True, ensure_ascii=False)
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LogitAttribution:
        doc = _load_doc(path, _DLA_FORMAT)
        try:
            h, p = doc["heads"], doc["heads"]["provenance"]
            heads = HeadScores(
                _array(h["values"]),
                name=p["name"],
                n_kv_heads=p["n_kv_heads"],
                model=p["model"],
                analyzer=p["analyzer"],
                params=p["params"],
                prompts=h.get("prompts"),
                description=p["description"],
                version=p["headscope_version"],
                created=p["created"],
                better=p.get("better"),
            )
            return cls(
                heads,
                {k: _array(v) for k, v in doc["components"].items()},
                _array(doc["logit_diff"]),
                params=doc["params"],
            )
        except (KeyError, TypeError, ValueError, InputError) as e:
            raise ResultFileError(f"{path}: invalid LogitAttribution file: {e!r}") from None

    def __repr__(self) -> str:
        return (
            f"LogitAttribution(model={self.heads.model!r}, prompts={self.heads.values.shape[0]}, "
            f"heads={self.heads.values.shape[1:]}, components={len(self.components)})"
        )
