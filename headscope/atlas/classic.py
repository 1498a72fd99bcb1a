"""The atlas's first step: the six classic per-head statistics (what `headscope report` showed before
the atlas), with the roles they define: induction, previous-token, duplicate (specific) and local
(generic). Sink roles come from the attention-sinks analyzer (Gu et al.'s rule), not from here."""

from __future__ import annotations

from dataclasses import dataclass

from ..analyzers.atlas_entry import Role, probe_tokens
from ..capture import capture
from ..capture.reducers import DEFAULT_REDUCERS
from ..inputs.probes import repeated_random_tokens
from ..inputs.prompts import load_prompts
from ..inputs.tokens import encode_to_fit
from ..models import model_info
from .data import Column, StepResult, column_ci
from .roles import resolve

# Sink/entropy/distance/previous-token describe heads on ordinary text; duplicate and induction scores
# need repeated content, so they are read on repeated random tokens, where the right answer is unambiguous.
TEXT_STATS = ("first_token_mass", "attention_entropy", "mean_attention_distance", "previous_token_score")
REPEAT_STATS = ("duplicate_token_score", "induction_score")
# Prompts and repeat lengths per preset. quick: the built-in prompts, 2 repeated-token probes of 2 x 50.
PARAMS = {
    "quick": {"n_text_prompts": 8, "repeat_len": 50, "n_repeat_prompts": 2, "seed": 0, "batch_size": 4},
    "full": {"n_text_prompts": None, "repeat_len": 100, "n_repeat_prompts": 8, "seed": 0, "batch_size": 4},
}

# headscope's conventions (no paper fixes a cut for these): 0.4 of a head's attention on the one key
# the pattern names is far above chance (1/position) and well below the ~0.9 of the clearest heads.
ROLES = (
    Role(
        "induction",
        "induction_score",
        threshold=0.4,
        rule="induction score >= 0.4 on repeated random tokens (headscope convention)",
    ),
    Role(
        "previous-token",
        "previous_token_score",
        threshold=0.4,
        rule="previous-token score >= 0.4 on text (headscope convention)",
    ),
    Role(
        "duplicate",
        "duplicate_token_score",
        threshold=0.4,
        rule="duplicate-token score >= 0.4 on repeated random tokens (headscope convention)",
    ),
    Role(
        "local",
        "mean_attention_distance",
        threshold=2.0,
        specific=False,
        below=True,
        rule="mean attention distance <= 2 tokens on text (headscope convention; generic)",
    ),
)


@dataclass(frozen=True)
class ClassicEntry:
    what: str = (
        "Six statistics of each head's attention pattern: first-token mass, entropy and mean "
        "distance on text; previous-token, duplicate-token and induction scores on repeated random "
        "tokens (where the right key is known)."
    )
    docs: str = "capture.md"
    applies: None = None

    def run(self, step, model, preset: str, prompts_file=None) -> StepResult:
        p = dict(PARAMS[preset])
        info = model_info(model)
        # Text prompts longer than the model's context (a tiny testbed's 64 tokens) are cut to fit.
        prompts = [encode_to_fit(model, text, info) for text in load_prompts(prompts_file)[: p["n_text_prompts"]]]
        reducers = {cls.name: cls for cls in DEFAULT_REDUCERS}
        text = capture(model, prompts, [reducers[n]() for n in TEXT_STATS], batch_size=p["batch_size"], progress=False)
        # A tiny test vocabulary has few distinct tokens, a tiny context little room for two copies.
        p["repeat_len"] = min(p["repeat_len"], probe_tokens(info), (info.n_ctx - 1) // 2)
        probes = repeated_random_tokens(
            model.cfg.d_vocab,
            seq_len=p["repeat_len"],
            n_prompts=p["n_repeat_prompts"],
            seed=p["seed"],
            first_token=info.bos_token_id,
        )
        repeats = capture(
            model, probes, [reducers[n]() for n in REPEAT_STATS], batch_size=p["batch_size"], progress=False
        )
        result = StepResult(step.key, step.title, self.what, self.docs, params={**p, "n_text_prompts": len(prompts)})
        for name, source, label in [(n, text, "text prompts") for n in TEXT_STATS] + [
            (n, repeats, "repeated random tokens") for n in REPEAT_STATS
        ]:
            per_prompt = source[name]
            scores = per_prompt.mean_over_prompts()
            result.columns.append(
                Column(
                    name,
                    scores.values.astype(float),
                    f"{scores.description} Read on {label}.",
                    scores.higher_is_more,
                    step.key,
                    column_ci(per_prompt),
                )
            )
            result.figures.append(scores.plot().to_json())
        by_name = {c.name: c for c in result.columns}
        for role in ROLES:
            col = by_name[role.column]
            result.roles.append(resolve(role, col.values, None, step.key))
        if not info.causal:
            result.notes.append("bidirectional model: the causal statistics (previous-token, induction, ...) are NaN")
        return result


CLASSIC = ClassicEntry()
