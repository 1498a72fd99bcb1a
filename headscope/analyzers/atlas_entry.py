"""What an analyzer contributes to the head atlas (`headscope report`), declared in its own module.

    class MyAnalyzer(Analyzer):
        atlas = AtlasEntry(
            what="One or two sentences a reader needs: what the score measures and on which input.",
            docs="my-analyzer.md",
            quick={"n_prompts": 2}, full={},                    # parameters per preset
            columns=lambda a: {"my_score": a.scores_},           # head-table columns (HeadScores)
            roles=(Role("my-role", "my_score", threshold=0.5, rule="my_score >= 0.5 (paper, Sec. 3)"),),
        )

The atlas (headscope.atlas) runs every registered analyzer that has an entry and applies to the model,
turns `columns` into the head table and `roles` into the role map. An analyzer without an entry is left
out of the atlas (it still works everywhere else). Nothing here imports the atlas: the dependency
points from the application to the analyzers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..inputs.probes import default_token_range


@dataclass(frozen=True)
class Role:
    """A role a head can take in the role map, read from one head-table column.

    A head has the role when its column value passes the cut: `threshold` (a fixed number, with its
    source in `rule`) or, when `selected` is given, the analyzer's own selection (the cut is then the
    weakest selected head's value). `below=True`: the role is for small values (a short attention
    distance), whatever the column's own direction. `specific` roles (induction, retrieval, safety, ...) outrank generic
    ones (sink, local, global); see headscope.atlas.roles for the whole rule.
    """

    name: str
    column: str
    rule: str
    threshold: float | None = None
    selected: Callable[[Any], list[tuple[int, int]]] | None = None
    specific: bool = True
    below: bool = False

    def __post_init__(self):
        if (self.threshold is None) == (self.selected is None):
            raise TypeError(f"Role {self.name!r}: give exactly one of threshold= or selected=")


def probe_tokens(info) -> int:
    """How many distinct tokens a random probe of this model can draw (a tiny test vocabulary has few)."""
    low, high = default_token_range(info.d_vocab)
    return high - low


def _main_column(analyzer) -> dict:
    return {analyzer.name.replace("-", "_"): analyzer.scores_}


def _main_figure(analyzer) -> list:
    return [analyzer.plot()]


@dataclass(frozen=True)
class AtlasEntry:
    """How the atlas runs an analyzer and reads its result (see the module docstring).

    what: two sentences for the page. docs: the analyzer's docs page (a file name in docs/).
    quick / full: parameters for `--quick` / `--full` (the analyzer's defaults otherwise), or a function
    of the ModelInfo returning them.
    data(model, preset): the data to fit on (None: the analyzer's built-in default).
    columns(fitted): {column name: HeadScores over the model's (layer, head) grid}.
    roles: Roles, or a function of the fitted analyzer returning them (roles that depend on the data).
    figures(fitted): the section's figures. notes(fitted): facts for the page (an accuracy, a rate).
    applies(model): a reason it does not apply, or None.
    grid: "model" (columns are the language model's heads) or another grid's name (e.g. "vision
    tower": the section is shown, its scores stay out of the head table and role map).
    title: the section's heading (None: the analyzer's registry name). order: sections run and show in
    this order, then registry order (the classic patterns, 0, come first). text_prompts: fit on the
    atlas's text prompts (`headscope report --prompts FILE`, else the built-in ones) instead of `data`.
    """

    what: str
    docs: str
    quick: dict | Callable[[Any], dict] = field(default_factory=dict)
    full: dict | Callable[[Any], dict] = field(default_factory=dict)
    data: Callable[[Any, str], Any] | None = None
    columns: Callable[[Any], dict] = _main_column
    roles: tuple[Role, ...] | Callable[[Any], tuple[Role, ...]] = ()
    figures: Callable[[Any], list] = _main_figure
    notes: Callable[[Any], list[str]] | None = None
    applies: Callable[[Any], str | None] | None = None
    grid: str = "model"
    title: str | None = None
    order: int = 1
    text_prompts: bool = False

    def params(self, preset: str, info) -> dict:
        """The preset's parameters; a callable preset is given the ModelInfo (sizes that depend on the
        model's vocabulary or context)."""
        chosen = self.quick if preset == "quick" else self.full
        return dict(chosen(info) if callable(chosen) else chosen)

    def roles_for(self, fitted) -> tuple[Role, ...]:
        return tuple(self.roles(fitted) if callable(self.roles) else self.roles)
