"""What a scan is asked to do, validated once: `ScanRequest`, and its binding to a model and inputs.

A request holds only model-independent options (the kind and its parameters, the metric, which heads to
visit, the method, batching). The model and the inputs are passed beside it, to `scan()`, `estimate()` and
`verify()`: so one request is built and checked before any model is loaded (the experiments runner builds
it from a spec), reused across models, and `verify()` runs with exactly the options `estimate()` ran with.
What needs the model (heads in range, tokenising, the metric's answer ids) is checked by `bind()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..errors import InputError
from ..inputs.tokens import to_token_lists
from ..models.info import ModelInfo, model_info
from ..options import REPLAYS, SCAN_METHODS, Replay, ScanMethod
from .hooks import check_specs
from .kind import Intervention
from .metrics import METRICS, resolve_metric
from .targets import check_reach, template, visited_heads

# The method and replay words live in headscope.options (the CLI offers the same ones without torch).
Method = ScanMethod
METHODS: tuple[Method, ...] = SCAN_METHODS
Estimator = Literal["atp", "atp*"]
Readout = Literal["logits", "final_hidden"]
ESTIMATORS: tuple[Estimator, ...] = get_args(Estimator)
READOUTS: tuple[Readout, ...] = get_args(Readout)
DEFAULT_KL_TOKENS = 16


def _positive_int(name: str, value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer ({what}), got {value!r}")


def check_top_k(top_k) -> None:
    """The number of heads verified exactly: a positive integer."""
    _positive_int("top_k", top_k, "heads verified exactly")


@dataclass(frozen=True)
class ScanRequest:
    """A scan's options, checked once when built (an `InputError` names the problem and the fix).

    kind: a key of KINDS, a kind class, or an Intervention used as a template (its heads are ignored);
        `params` are the kind's parameters (e.g. {"epsilon": 1e-5}), `positions` the query span edited.
    metric: "kl_last", "logit_diff" (metric_kwargs={"answers": [(correct, wrong), ...]}), "loss", or a
        callable metric(base_logits, variant_logits, batch) -> [batch].
    method: "exact" (every visited head's variant run), "atp" / "atp*" (attribution patching, see
        `headscope.interventions.atp`), "atp+exact" / "atp*+exact" (the estimate, then the exact scan of
        the `top_k` heads it ranks first: `verify()`).
    visit: the (layer, head) pairs visited one at a time (default: every head of `layers`, default all).
    base_interventions: specs kept applied underneath every variant (method "exact" only).
    batch_size, max_rows: prompts per batch; most rows per variant forward.
    replay: "auto" (replay blocks from the stored clean residual once checked), "off", "force".
    top_k: heads verified exactly ("+exact" methods; default: a tenth of the heads screened, at least 20).
    graddrop, kl_tokens: attribution patching options (AtP*'s GradDrop; the kl_last Fisher form's tokens).

    Build it with keywords, or with `ScanRequest.build(kind, metric, **keywords)`, which sorts the
    keywords that are not fields into the kind's `params`. `template` is the validated one-head spec.
    """

    kind: str | type[Intervention] | Intervention = "uniform_attention"
    metric: str | Callable = "kl_last"
    method: Method = "exact"
    visit: tuple[tuple[int, int], ...] | None = None
    layers: tuple[int, ...] | None = None
    base_interventions: tuple[Intervention, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    positions: Any = "all"
    batch_size: int = 8
    max_rows: int = 64
    metric_kwargs: Mapping[str, Any] | None = None
    decode_start: int | None = None
    prepend_bos: bool | None = None
    progress: bool | None = None
    replay: Replay = "auto"
    top_k: int | None = None
    graddrop: bool = False
    kl_tokens: int = DEFAULT_KL_TOKENS
    template: Intervention = field(init=False, repr=False, compare=False)

    @classmethod
    def build(cls, kind="uniform_attention", metric="kl_last", **keywords) -> ScanRequest:
        """A request from a scan's keywords: the fields by name, every other keyword a kind parameter."""
        if "heads" in keywords:  # every kind has a `heads` field: say which of the two head sets is meant
            raise InputError(
                "heads= is not a scan option: pass the heads visited one at a time as visit=[(layer, head), ...], "
                "and heads edited together underneath every variant as base_interventions=[spec, ...]"
            )
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        options = {k: v for k, v in keywords.items() if k in names}
        params = {k: v for k, v in keywords.items() if k not in names}
        if params and "params" in options:
            raise InputError(f"pass kind parameters either in params= or as keywords, not both (got {sorted(params)})")
        return cls(kind, metric, **{"params": params, **options})

    def __post_init__(self) -> None:

        def set_(name: str, value) -> None:  # frozen: the normalised values are set once, here
            object.__setattr__(self, name, value)

        if self.method not in METHODS:
            raise InputError(f"method={self.method!r}: use one of {', '.join(METHODS)}")
        if self.replay not in REPLAYS:
            raise InputError(f"replay must be {', '.join(map(repr, REPLAYS))}, got {self.replay!r}")
        _positive_int("batch_size", self.batch_size, "prompts per forward")
        _positive_int("max_rows", self.max_rows, "most rows per variant forward")
        _positive_int("kl_tokens", self.kl_tokens, "tokens of the kl_last Fisher form")
        if self.top_k is not None:
            check_top_k(self.top_k)
            if not self.method.endswith("+exact"):
                raise InputError(
                    f"top_k is the number of heads verified exactly: only for the '+exact' methods "
                    f"(method='atp+exact' or 'atp*+exact'), not method={self.method!r}"
                )
        if not isinstance(self.graddrop, bool):
            raise InputError(f"graddrop must be True or False, got {self.graddrop!r}")
        if self.graddrop and self.method == "exact":
            raise InputError("graddrop is an attribution-patching option: use method='atp' or 'atp*' (or '+exact')")
        if self.decode_start is not None and (
            isinstance(self.decode_start, bool) or not isinstance(self.decode_start, int) or self.decode_start < 0
        ):
            raise InputError(
                f"decode_start must be a token position (an integer >= 0) or None, got {self.decode_start!r}"
            )
        if isinstance(self.metric, str) and self.metric not in METRICS:
            resolve_metric(self.metric, None, 0, None)  # the one "unknown metric" message
        if not isinstance(self.metric, str) and not callable(self.metric):
            raise InputError(f"metric must be a metric name or a callable, got {type(self.metric).__name__}")
        if self.metric_kwargs is not None and not isinstance(self.metric_kwargs, Mapping):
            raise InputError(f"metric_kwargs must be a dict, e.g. {{'answers': [...]}}, got {self.metric_kwargs!r}")
        base = tuple(self.base_interventions)
        for spec in base:
            if not isinstance(spec, Intervention):
                raise InputError(f"{spec!r} is not an Intervention (build one, or use Intervention.from_dict)")
        if base and self.method != "exact":
            raise InputError(
                "attribution patching estimates single heads on the clean model; base_interventions need method='exact'"
            )
        set_("base_interventions", base)
        if self.visit is not None:
            try:
                visit = tuple(sorted({(int(l), int(h)) for l, h in self.visit}))
            except (TypeError, ValueError):
                raise InputError(f"visit must be (layer, head) pairs, got {self.visit!r}") from None
            if not visit:
                raise InputError("visit is empty: name at least one (layer, head), or pass visit=None for all")
            set_("visit", visit)
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, int) else self.layers
            try:
                set_("layers", tuple(int(l) for l in layers))
            except (TypeError, ValueError):
                raise InputError(f"layers must be layer indices, got {self.layers!r}") from None
        set_("params", dict(self.params))
        set_("template", template(self.kind, self.positions, self.params))

    @property
    def estimator(self) -> Estimator:
        """The attribution patching estimator of an attribution method ("atp" or "atp*")."""
        est = self.method.removesuffix("+exact")
        if est not in ESTIMATORS:
            raise InputError(
                f"method={self.method!r} has no attribution estimate: use method='atp', 'atp*', 'atp+exact' "
                "or 'atp*+exact' for estimate() and verify()"
            )
        return est

    def replace(self, **changes) -> ScanRequest:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Bound:
    """A request bound to a model and inputs: what only the model can check, resolved once."""

    info: ModelInfo
    token_lists: list
    score: Callable
    visited: list[tuple[int, int]]
    base_interventions: list[Intervention]


def bind(request: ScanRequest, model, inputs) -> Bound:
    """Check the request against the model and tokenise the inputs (heads in range, a span inside the
    prompts, the metric's answers)."""
    info = model_info(model)
    base = check_specs(request.base_interventions, info)
    token_lists = to_token_lists(model, inputs, info, request.prepend_bos)
    check_reach(request.template, token_lists, request.decode_start)
    score = resolve_metric(request.metric, model, len(token_lists), dict(request.metric_kwargs or {}))
    visited = visited_heads(info, request.visit, request.layers)
    return Bound(info, token_lists, score, visited, base)
