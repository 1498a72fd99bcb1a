"""What a scan visits and records, shared by the exact scan and attribution patching: the one-head template
of a kind, the heads visited one at a time, the prompt labels and the metric's name."""

from __future__ import annotations

from ..errors import InputError
from .kind import KINDS, Intervention


def template(kind, positions, kind_params) -> Intervention:
    """The one-head template a scan visits heads with: from a kind name, a kind class or a spec."""
    if isinstance(kind, Intervention):
        if kind_params:
            raise InputError("pass kind parameters either in the Intervention or as keywords, not both")
        return kind
    cls = kind if isinstance(kind, type) and issubclass(kind, Intervention) else KINDS[kind]
    names = cls.param_names()
    unknown = set(kind_params) - set(names)
    if unknown:
        raise InputError(
            f"intervention {cls.kind!r} has no parameter(s) {sorted(unknown)}; parameters: {sorted(names)}"
        )
    return cls.scan_template(positions=positions, **kind_params)


def check_reach(template: Intervention, token_lists, decode_start: int | None = None) -> None:
    """Positions that start past every prompt's end would edit no query: the scan would report exactly
    0 for every head, a result that looks like "no head matters". Refused instead."""
    positions = template.positions
    start = positions[0] if isinstance(positions, tuple) else decode_start if positions == "decode" else None
    longest = max((len(t) for t in token_lists), default=0)
    if start is not None and start >= longest:
        what = f"positions {list(positions)}" if isinstance(positions, tuple) else f"decode_start={start}"
        raise InputError(
            f"{what} start past the end of every prompt (the longest has {longest} tokens): the scan "
            "would edit no query and report 0 for every head. Fix: a [start, end) span inside the "
            "prompts (absolute token positions, BOS included)"
        )


def visited_heads(info, visit, layers) -> list[tuple[int, int]]:
    """The heads a scan visits one at a time: `visit` if given, else every head of `layers`."""
    if visit is not None:
        out = sorted({(int(l), int(h)) for l, h in visit})
        for l, h in out:
            info.check_head(l, h)
        if not out:
            raise InputError("visit is empty: name at least one (layer, head), or pass visit=None for all")
        return out
    return [(l, h) for l in info.check_layers(layers) for h in range(info.n_heads)]


def prompt_labels(inputs) -> list[str] | None:
    """The prompts a result is labelled with: the inputs when they are strings, else None."""
    return list(inputs) if isinstance(inputs, (list, tuple)) and all(isinstance(p, str) for p in inputs) else None


def metric_name(score, metric) -> str:
    """A resolved metric's name (a callable's __name__)."""
    return getattr(score, "name", getattr(metric, "__name__", "metric"))
