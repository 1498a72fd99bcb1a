"""`headscope report`: the six classic per-head statistics of a model, as one HTML report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ._version import __version__
from .capture import capture
from .capture.reducers import DEFAULT_REDUCERS
from .inputs.probes import repeated_random_tokens
from .inputs.prompts import load_prompts
from .models import load_model, model_info
from .viz.report import ReportSection, write_report

# Which input each statistic is read on: sink/entropy/distance/previous-token describe heads on
# ordinary text; duplicate and induction scores need repeated content, so they are read on
# repeated random tokens, where the right answer is unambiguous.
TEXT_STATS = ("first_token_mass", "attention_entropy", "mean_attention_distance", "previous_token_score")
REPEAT_STATS = ("duplicate_token_score", "induction_score")


def _reducers(names):
    return [cls() for cls in DEFAULT_REDUCERS if cls.name in names]


def run_report(model=None, out_dir: str | Path = "headscope-report", *, prompts_file=None, batch_size: int = 4,
               repeat_len: int = 50, n_repeat_prompts: int = 4, seed: int = 0, static: bool = True,
               progress: bool | None = None) -> Path:
    """Capture the default reducers on a model and write out_dir/report.html (+ figures/, scores/).

    Args:
        model: a TransformerBridge, a name for `load_model`, or None for the bundled SmolLM2.
    """
    model = model if hasattr(model, "cfg") else load_model(model)
    info = model_info(model)
    prompts = load_prompts(prompts_file)
    text = capture(model, prompts, _reducers(TEXT_STATS), batch_size=batch_size, progress=progress)
    probes = repeated_random_tokens(model.cfg.d_vocab, seq_len=repeat_len, n_prompts=n_repeat_prompts, seed=seed,
                                    first_token=info.bos_token_id)
    repeats = capture(model, probes, _reducers(REPEAT_STATS), batch_size=batch_size, progress=progress)

    out_dir = Path(out_dir)
    sections, scores_dir = [], out_dir / "scores"
    for name, source, label in [(n, text, "text prompts") for n in TEXT_STATS] + [
            (n, repeats, "repeated random tokens") for n in REPEAT_STATS]:
        scores = source[name].mean_over_prompts()
        scores.save(scores_dir / f"{name}.json")
        sections.append(ReportSection.from_scores(scores, description=f"{scores.description} Read on {label}."))
    meta = {
        "model": info.name,
        "layers x heads": f"{info.n_layers} x {info.n_heads} (KV heads: {info.n_kv_heads})",
        "text prompts": f"{len(prompts)} ({prompts_file or 'built-in data/prompts/report.json'})",
        "repeated-token probes": f"{n_repeat_prompts} x (1 + 2 x {repeat_len}) tokens, seed {seed}",
        "headscope": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_report(sections, out_dir, title=f"Attention heads of {info.name}", meta=meta, static=static)
