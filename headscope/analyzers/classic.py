"""Classic attention patterns: six per-head statistics of the attention pattern (what `headscope report`
showed before the atlas), with the roles they define: induction, previous-token, duplicate (specific)
and local (generic). Sink roles come from the attention-sinks analyzer (Gu et al.'s rule), not from here.

First-token mass, entropy, mean distance and previous-token score are read on text prompts; duplicate
and induction scores need repeated content, so they are read on repeated random tokens, where the
right key is unambiguous. `scores_` is the statistic named by `score` (default: the induction score);
`statistics_` holds all six, each [prompt, layer, head].

    >>> from headscope.analyzers.classic import ClassicPatterns
    >>> cp = ClassicPatterns(n_text_prompts=8, repeat_len=50, n_repeat_prompts=2).fit(model)
    >>> cp.heads_; cp.statistics_["previous_token_score"].top(5)
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from ..capture import capture
from ..capture.reducers import DEFAULT_REDUCERS
from ..errors import InputError
from ..inputs.probes import repeated_random_tokens
from ..inputs.prompts import load_prompts
from ..inputs.tokens import encode_to_fit
from ..models.info import model_info
from ..results import HeadScores, SelectBetter
from .atlas_entry import AtlasEntry, Role, probe_tokens
from .base import Analyzer, register, select_heads
from .params import Interval, Options

TextStat = Literal["first_token_mass", "attention_entropy", "mean_attention_distance", "previous_token_score"]
RepeatStat = Literal["duplicate_token_score", "induction_score"]
Statistic = Literal[TextStat, RepeatStat]
TEXT_STATS: tuple[TextStat, ...] = get_args(TextStat)
REPEAT_STATS: tuple[RepeatStat, ...] = get_args(RepeatStat)
STATISTICS: tuple[Statistic, ...] = (*TEXT_STATS, *REPEAT_STATS)

# Prompts and repeat lengths per atlas preset. quick: 8 built-in prompts, 2 repeated-token probes of
# 2 x 50; full: the analyzer's defaults.
PARAMS: dict[str, dict[str, Any]] = {
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
# The default cut of `heads_` for each statistic: its role's (none for mass and entropy: give threshold=),
# and the end its role counts from (a local head has a *short* mean distance).
ROLE_CUTS: dict[str, float] = {role.column: float(role.threshold) for role in ROLES if role.threshold is not None}
BETTER: dict[str, SelectBetter] = {role.column: "lower" for role in ROLES if role.below}
_LABEL: dict[str, str] = {
    **dict.fromkeys(TEXT_STATS, "text prompts"),
    **dict.fromkeys(REPEAT_STATS, "repeated random tokens"),
}


def _bidirectional_note(fitted) -> list[str]:
    if fitted.causal_:
        return []
    return ["bidirectional model: the causal statistics (previous-token, induction, ...) are NaN"]


@register
class ClassicPatterns(Analyzer):
    """Six classic statistics of each head's attention pattern.

    score: which statistic is `scores_` (one of `STATISTICS`). threshold: the cut of `heads_` on it
    (None: its role's cut, 0.4, or a mean distance below 2 tokens; mass and entropy have none, so
    they need one). n_text_prompts: how many text prompts (None: all given). repeat_len,
    n_repeat_prompts, seed: the repeated-random-token probes (the length is cut to what the model's
    vocabulary and context allow, kept in `repeat_len_`).
    """

    name = "classic"
    description = (
        "Classic attention patterns: first-token mass, entropy, mean distance, previous-token score on "
        "text; duplicate-token and induction scores on repeated random tokens."
    )
    input_kind = "text prompts (None: the built-in report prompts); the repeated-token probes are built in"
    parameter_constraints = {
        "score": [Options(*STATISTICS)],
        "threshold": [None, Interval(float, None, None)],
        "n_text_prompts": [None, Interval(int, 1, None)],
        "repeat_len": [Interval(int, 2, None)],
        "n_repeat_prompts": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    example_params = {"n_text_prompts": 2, "repeat_len": 10, "n_repeat_prompts": 2}
    atlas = AtlasEntry(
        what=(
            "Six statistics of each head's attention pattern: first-token mass, entropy and mean "
            "distance on text; previous-token, duplicate-token and induction scores on repeated random "
            "tokens (where the right key is known)."
        ),
        docs="capture.md",
        title="Classic attention patterns",
        order=0,
        text_prompts=True,
        quick=PARAMS["quick"],
        full=PARAMS["full"],
        columns=lambda a: dict(a.statistics_),
        roles=ROLES,
        figures=lambda a: [s.mean_over_prompts().plot() for s in a.statistics_.values()],
        notes=_bidirectional_note,
    )

    def __init__(
        self,
        score: Statistic = "induction_score",
        threshold: float | None = None,
        n_text_prompts: int | None = None,
        repeat_len: int = 100,
        n_repeat_prompts: int = 8,
        seed: int = 0,
        batch_size: int = 4,
    ):
        self.score = score
        self.threshold = threshold
        self.n_text_prompts = n_text_prompts
        self.repeat_len = repeat_len
        self.n_repeat_prompts = n_repeat_prompts
        self.seed = seed
        self.batch_size = batch_size

    def _check_params(self, info) -> None:
        if self.threshold is None and self.score not in ROLE_CUTS:
            raise InputError(
                f"score={self.score!r} has no default cut: pass threshold= (roles define one for {sorted(ROLE_CUTS)})"
            )

    def prepare_data(self, model, data=None) -> list[list[int]]:
        """The text prompts as token ids, the first `n_text_prompts`, each cut to the model's context
        (a tiny testbed has 64 positions). Strings are encoded as the model reads them."""
        texts = load_prompts(None) if data is None else data
        if isinstance(texts, (str, bytes)):
            raise InputError("data is a single string: pass a list of prompts (strings or token id lists)")
        info = model_info(model)
        out = []
        for i, p in enumerate(list(texts)[: self.n_text_prompts]):
            if isinstance(p, str):
                out.append(encode_to_fit(model, p, info))
            elif isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p):
                out.append(list(p)[: info.n_ctx])
            else:
                raise InputError(f"prompt {i} is a {type(p).__name__}: pass strings or lists of token ids")
        if not out:
            raise InputError("no text prompts: pass at least one prompt")
        return out

    def _fit(self, model, data) -> None:
        info = model_info(model)
        reducers = {cls.name: cls for cls in DEFAULT_REDUCERS}
        text = capture(model, data, [reducers[n]() for n in TEXT_STATS], batch_size=self.batch_size, progress=False)
        # A tiny test vocabulary has few distinct tokens, a tiny context little room for two copies.
        self.repeat_len_ = min(self.repeat_len, probe_tokens(info), (info.n_ctx - 1) // 2)
        probes = repeated_random_tokens(
            model.cfg.d_vocab,
            seq_len=self.repeat_len_,
            n_prompts=self.n_repeat_prompts,
            seed=self.seed,
            first_token=info.bos_token_id,
        )
        repeats = capture(
            model, probes, [reducers[n]() for n in REPEAT_STATS], batch_size=self.batch_size, progress=False
        )
        self.causal_ = bool(info.causal)
        stats: dict[str, HeadScores] = {}
        for name in STATISTICS:
            raw = (text if name in TEXT_STATS else repeats)[name]
            stats[name] = self._own(raw, description=f"{raw.description} Read on {_LABEL[name]}.")
        self.statistics_ = stats
        self.scores_ = stats[self.score]
        cut = ROLE_CUTS[self.score] if self.threshold is None else self.threshold
        self.heads_ = select_heads(self.scores_, threshold=cut, better=BETTER.get(self.score))
