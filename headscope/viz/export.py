"""Write figures to disk: offline HTML always (plotly.js shared per folder), PNG/SVG through kaleido 1.x when a Chromium exists.

Static export is best-effort by design: a missing browser must never cost the user their HTML (or
their analysis run), so it degrades to ONE warning saying what is missing and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, get_args

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from headscope.fileio import atomic_write

# What a figure can be written as: offline HTML, or a static image rendered by kaleido.
ExportFormat = Literal["html", "png", "svg", "pdf", "jpeg", "webp"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
STATIC_FORMATS: tuple[ExportFormat, ...] = tuple(f for f in FORMATS if f != "html")
# Debian's `chromium` package first (what setup installs), then the headless shell, then PATH names.
_FIXED_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium-headless-shell")
_PATH_NAMES = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "google-chrome-stable")
_FIX = (
    "install one (`apt-get install chromium`, or `plotly_get_chrome`) or set BROWSER_PATH to a Chrome/Chromium binary"
)
# Plotly.js writes HTML/PNG with these; the camera button then downloads SVG, which is what papers want.
HTML_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg", "scale": 1}}


class BrowserNotFound(RuntimeError):
    """No usable Chrome/Chromium for kaleido; the message says why and how to fix it."""


def _is_exe(p: str | os.PathLike) -> bool:
    return os.path.isfile(p) and os.access(p, os.X_OK)


def find_browser() -> str:
    """Path of a Chromium for kaleido; honours BROWSER_PATH (an explicit bad one is an error, not ignored)."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        if _is_exe(env):
            return env
        raise BrowserNotFound(f"BROWSER_PATH={env!r} is not an executable file; fix it or unset it, or {_FIX}")
    for cand in (*_FIXED_PATHS, *(shutil.which(n) for n in _PATH_NAMES)):
        if cand and _is_exe(cand):
            return cand
    try:  # a Chrome previously downloaded by kaleido/plotly's get_chrome into its cache
        from choreographer.browsers.chromium import Chromium

        cand = Chromium.find_browser(skip_local=False)
        if cand and _is_exe(cand):
            return cand
    except Exception:  # choreographer internals moved; the explicit search above is what matters
        pass
    raise BrowserNotFound(f"no Chrome/Chromium found for PNG/SVG export; {_FIX}")


PLOTLY_JS = "plotly.min.js"


def write_plotly_js(folder: str | os.PathLike) -> Path:
    """folder/plotly.min.js (the plotly.js of the installed plotly; ~4.8 MB), written once: HTML figures
    in or under `folder` load it by a relative path, so they open offline without each carrying a copy."""
    path = Path(folder) / PLOTLY_JS
    text = get_plotlyjs()
    if not (path.is_file() and path.stat().st_size == len(text.encode("utf-8"))):
        atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def _write_html(fig: go.Figure, path: Path, plotly_js: str | Path) -> Path:
    # plotly.js is ~4.8 MB: one shared copy per folder (a relative <script src>, still offline) unless
    # plotly_js="inline" asks for a file that works alone, moved anywhere.
    include: str | bool = (
        True
        if plotly_js == "inline"
        else Path(os.path.relpath(Path(plotly_js).resolve(), path.parent.resolve())).as_posix()
    )
    text = fig.to_html(include_plotlyjs=include, full_html=True, config=HTML_CONFIG)
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _check_formats(formats: ExportFormat | Sequence[ExportFormat]) -> tuple[ExportFormat, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    bad = [f for f in formats if f != "html" and f not in STATIC_FORMATS]
    if bad:
        raise ValueError(f"unsupported export format(s) {bad}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


def _write_static(jobs: list[tuple[go.Figure, Path, ExportFormat]], scale: float) -> dict[Path, Path]:
    """Render all (fig, final_path, fmt) jobs in ONE kaleido/Chromium session; returns {final: written}.

    Each image goes to a temp name beside its target and is os.replace'd only once complete, so an
    interrupted export never leaves a truncated PNG under the real name.
    """
    if not jobs:
        return {}
    try:
        browser = find_browser()
        import kaleido
    except (BrowserNotFound, ImportError) as e:
        warnings.warn(f"headscope: skipped static export ({len(jobs)} file(s)): {e}", RuntimeWarning, stacklevel=3)
        return {}
    # Let plotly's own fig.write_image work in this session too; never override a user's setting.
    os.environ.setdefault("BROWSER_PATH", browser)
    specs: list[dict] = []
    tmps: list[Path] = []
    for fig, final, fmt in jobs:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{len(tmps)}.tmp")
        tmps.append(tmp)
        specs.append(dict(fig=fig, path=tmp, opts=dict(format=fmt, scale=scale)))
    written: dict[Path, Path] = {}
    try:
        # mathjax=False: the default MathJax is a CDN URL, which stalls renders on offline machines.
        # choreographer already launches Chromium with --no-sandbox (needed when running as root).
        errors = kaleido.write_fig_from_object_sync(specs, kopts=dict(path=browser, mathjax=False))
        errors = [e for e in (errors or ()) if isinstance(e, BaseException)]
        for (_, final, _), tmp in zip(jobs, tmps):
            if tmp.is_file() and tmp.stat().st_size > 0:
                os.replace(tmp, final)
                written[final] = final
        if errors or len(written) < len(jobs):
            why = f"{errors[0]!r}" if errors else "renderer produced no output"
            warnings.warn(
                f"headscope: {len(jobs) - len(written)} of {len(jobs)} static export(s) failed "
                f"with browser {browser}: {why}",
                RuntimeWarning,
                stacklevel=3,
            )
    except Exception as e:  # a broken Chromium install must not kill the caller's analysis
        warnings.warn(
            f"headscope: static export failed with browser {browser} ({e!r}); HTML was still "
            f"written. If the browser is broken, {_FIX}",
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return written


def export_figures(
    figures: Iterable[tuple[go.Figure, str]],
    out_dir: str | os.PathLike,
    formats: ExportFormat | Sequence[ExportFormat] = ("html", "png", "svg"),
    *,
    scale: float = 2.0,
    plotly_js: str | os.PathLike | None = None,
) -> dict[str, dict[str, Path]]:
    """Export many (figure, stem) pairs; static images share one Chromium start-up (seconds each otherwise).

    Returns {stem: {format: path}} with only the files actually written. `scale=2` gives PNGs sharp
    enough for print; SVG is vector regardless. HTML files load plotly.js from `plotly_js` (a path,
    written by `write_plotly_js`; default: out_dir/plotly.min.js, written once) or carry it inline
    (`plotly_js="inline"`, ~4.8 MB each, for a file that must work on its own).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = _check_formats(formats)
    figures = list(figures)
    stems = [s for _, s in figures]
    if len(set(stems)) != len(stems):
        raise ValueError(f"export_figures: duplicate stems would overwrite each other: {stems}")
    result: dict[str, dict[str, Path]] = {stem: {} for stem in stems}
    js: str | Path = "inline"
    if "html" in formats and plotly_js != "inline":  # the shared plotly.js, written (or checked) once
        js = write_plotly_js(out_dir) if plotly_js is None else Path(plotly_js)
    jobs: list[tuple[go.Figure, Path, ExportFormat]] = []
    owners = []
    for fig, stem in figures:
        if "html" in formats:
            result[stem]["html"] = _write_html(fig, out_dir / f"{stem}.html", js)
        for fmt in formats:
            if fmt != "html":
                jobs.append((fig, out_dir / f"{stem}.{fmt}", fmt))
                owners.append(stem)
    written = _write_static(jobs, scale)
    for (_, final, fmt), stem in zip(jobs, owners):
        if final in written:
            result[stem][fmt] = final
    return result


def export_figure(
    fig: go.Figure,
    out_dir: str | os.PathLike,
    stem: str,
    formats: ExportFormat | Sequence[ExportFormat] = ("html", "png", "svg"),
    *,
    scale: float = 2.0,
    plotly_js: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Export one figure as out_dir/stem.{html,png,svg}; returns {format: path} for files written."""
    return export_figures([(fig, stem)], out_dir, formats, scale=scale, plotly_js=plotly_js)[stem]
