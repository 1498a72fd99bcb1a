"""`headscope report`: run every step of the atlas on a model and write the page.

Each finished step is saved at once (scores/steps/NN-key.json); a rerun into the same folder with the
same model, preset and inputs reuses the finished steps (an interrupted report resumes), `fresh=True`
recomputes them. `from_dir` rebuilds the page from a saved atlas without loading the model.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .._version import __version__
from ..analyzers.classic import ClassicPatterns
from ..errors import InputError
from ..fileio import atomic_write
from ..inputs.prompts import load_prompts
from ..models import load_model, model_info
from ..options import PRESETS, Preset
from .atlas import Atlas, step_file, write_json
from .data import StepResult
from .page import write_page
from .steps import plan, run_step
from .viewer import MAX_TOKENS, VIEWER_PROMPT, default_viewer_ids, viewer_data

_VERSIONS = ("torch", "transformers", "transformer-lens", "numpy", "plotly", "kaleido")
# Written first into every report folder: a folder without it (and without an older report's
# scores/run.json) holds someone else's files, and headscope refuses to write there unless forced.
MARKER = ".headscope-report"


def claim_folder(out_dir: Path, force: bool = False) -> None:
    """Make sure the report can be written into `out_dir` before any work starts: the folder is writable,
    and it is new, empty, or one headscope wrote (or `force`). Then mark it as headscope's."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".headscope-write-check-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise InputError(
            f"cannot write the report into {out_dir}: {err.strerror or err}. Fix: pass --out a folder you can write to"
        ) from None
    ours = (out_dir / MARKER).is_file() or (out_dir / "scores" / "run.json").is_file()
    others = sorted(p.name for p in out_dir.iterdir())
    if others and not ours and not force:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise InputError(
            f"{out_dir} holds files headscope did not write ({shown}). Fix: choose a new or empty folder "
            "with --out, or pass --force (Python: force=True) to write the report's own files "
            "(report.html, plotly.min.js, attention.js, figures/, scores/, docs/) into it; nothing "
            "else there is touched"
        )
    atomic_write(
        out_dir / MARKER,
        lambda p: p.write_text(
            "This folder holds a headscope report; headscope may overwrite its own files here.\n", encoding="utf-8"
        ),
    )


def _versions() -> dict:
    out = {"headscope": __version__, "python": platform.python_version()}
    for name in _VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _run_key(info, preset, prompts_file, viewer_prompt, max_tokens) -> dict:
    """What must match for a saved step to be reused."""
    return {
        "model": info.name,
        "shape": [info.n_layers, info.n_heads],
        "preset": preset,
        "headscope": __version__,
        "prompts_file": str(prompts_file) if prompts_file else None,
        "viewer_prompt": viewer_prompt,
        "viewer_max_tokens": max_tokens,
    }


def _reusable(out_dir: Path, key: dict, steps) -> dict[str, StepResult]:
    run = out_dir / "scores" / "run.json"
    if not run.is_file():
        return {}
    try:
        if json.loads(run.read_text(encoding="utf-8")) != key:
            return {}
        found = {}
        for i, step in enumerate(steps):
            path = step_file(out_dir, i, step.key)
            if path.is_file():
                found[step.key] = StepResult.from_json(json.loads(path.read_text(encoding="utf-8")))
        return found
    except (ValueError, KeyError, TypeError):  # a damaged file is recomputed, not trusted
        return {}


def build_atlas(
    model=None,
    out_dir: str | Path = "headscope-report",
    *,
    preset: Preset = "quick",
    prompts_file=None,
    viewer_prompt=None,
    viewer_max_tokens: int = MAX_TOKENS,
    only=None,
    fresh: bool = False,
    static: bool = True,
    progress: bool | None = None,
    force: bool = False,
) -> Path:
    """Run the atlas on `model` (a TransformerBridge, a name for `load_model`, None = bundled SmolLM2) and
    write out_dir/report.html. Returns the page's path.

    preset: "quick" (minutes on a laptop CPU for the bundled model) or "full" (each analyzer's
    defaults). only: step keys to run (default all; see `headscope report --list`). viewer_prompt:
    the prompt of the attention viewer (default: a short built-in text with a repeated phrase, or the first
    prompt of `prompts_file` that fits the viewer's window, cut to fit if none does). force: write into a
    folder that holds files headscope did not write (only the report's own files are written).

    Every input is checked before the first step (the prompts file, the viewer prompt, the output
    folder), so a bad one fails at once, not after minutes of work.
    """
    if preset not in PRESETS:
        raise InputError(f"preset={preset!r}: use one of {PRESETS}")
    if not isinstance(viewer_max_tokens, int) or viewer_max_tokens < 2:
        raise InputError(f"viewer_max_tokens={viewer_max_tokens!r}: give at least 2 tokens")
    t0 = time.perf_counter()
    text_prompts = load_prompts(prompts_file)  # an empty or unreadable file fails here, before any step
    prompt = viewer_prompt
    if isinstance(prompt, str) and not prompt.strip():
        raise InputError("the viewer prompt is empty: give --viewer-prompt some text, or leave it out")
    out_dir = Path(out_dir)
    claim_folder(out_dir, force)
    load_name = None if hasattr(model, "cfg") else (model or "default")  # `headscope view` loads it again
    model = model if hasattr(model, "cfg") else load_model(model)
    info = model_info(model)
    steps = plan(model)
    if only:
        unknown = sorted(set(only) - {s.key for s in steps})
        if unknown:
            raise InputError(f"unknown atlas step(s) {unknown}; steps: {[s.key for s in steps]}")
        steps = [s for s in steps if s.key in set(only) or s.key == ClassicPatterns.name]  # the role map's base
    key = _run_key(info, preset, prompts_file, viewer_prompt, viewer_max_tokens)
    done = {} if fresh else _reusable(out_dir, key, steps)
    write_json(out_dir / "scores" / "run.json", key)
    results = []
    bar = tqdm(steps, desc="atlas", unit="step", disable=progress is False)
    for i, step in enumerate(bar):
        bar.set_description(f"atlas: {step.key}")
        if step.key in done:
            results.append(done[step.key])
            bar.write(f"  {step.key}: reused from {step_file(out_dir, i, step.key)}")
            continue
        result = run_step(step, model, preset, prompts_file=prompts_file)
        write_json(step_file(out_dir, i, step.key), result.to_json())
        results.append(result)
        how = f"{result.seconds:.1f} s" if result.status == "ok" else f"skipped: {result.reason}"
        bar.write(f"  {step.key}: {how}")
        if os.environ.get("HEADSCOPE_STEP_DELAY_S"):  # test-only: keep a run alive between steps (Ctrl-C test)
            time.sleep(float(os.environ["HEADSCOPE_STEP_DELAY_S"]))
    if prompt is None:  # the default fits the window whole (no "…" column): see default_viewer_ids
        prompt, cut = default_viewer_ids(model, text_prompts if prompts_file else [VIEWER_PROMPT], viewer_max_tokens)
        shown = model.tokenizer.decode(prompt) + (f" (cut to its first {len(prompt)} tokens)" if cut else "")
    else:
        shown = prompt if isinstance(prompt, str) else f"{len(prompt)} token ids"
    viewer = viewer_data(model, prompt, max_tokens=viewer_max_tokens)
    seconds = round(time.perf_counter() - t0, 1)
    provenance = {
        "model": info.name,
        "grid": f"{info.n_layers} layers x {info.n_heads} heads ({info.n_kv_heads} KV heads)",
        "dtype / device": f"{model.cfg.dtype} / {model.cfg.device}",
        "preset": preset,
        "text prompts": str(prompts_file or "built-in data/prompts/report.json"),
        "viewer prompt": shown,
        "seeds": "0 for every random input (repeated-token probes, needle prompts, RazorAttention probes)",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("headscope") else "build_atlas(...)",
        "seconds": seconds,
        "versions": _versions(),
    }
    if info.layer_kinds is not None:
        provenance["layers without heads"] = info.kinds_note()
    if load_name is not None:
        provenance["load name"] = str(load_name)
    atlas = Atlas(
        info.name, info.n_layers, info.n_heads, info.n_kv_heads, preset, results, viewer, provenance, info.layer_kinds
    )
    atlas.save(out_dir, steps=False)  # each step was saved as it finished
    return write_page(atlas, out_dir, static=static)


def rebuild(
    from_dir: str | Path, out_dir: str | Path | None = None, *, static: bool = True, force: bool = False
) -> Path:
    """Rewrite the page of a saved atlas (no model, no recomputation) into out_dir (default: from_dir)."""
    atlas = Atlas.load(from_dir)
    out = Path(out_dir) if out_dir is not None else Path(from_dir)
    claim_folder(out, force)
    atlas.save(out)  # the head table's role columns follow the current role rule
    return write_page(atlas, out, static=static)
