"""The adapter sweep's outcomes and its table in docs/architectures.md: every swept family
(`headscope.testing.sweep`) through every conformance check (`headscope.testing.conformance`).

    python -m headscope.testing.sweep_table      # prints the table (minutes: every check on ~90 families)
"""

from __future__ import annotations

from headscope.capture import capture
from headscope.errors import InputError
from headscope.models.info import is_encoder_decoder
from headscope.testing import conformance as C
from headscope.testing.sweep import entries

SEQ2SEQ_REFUSAL = "capture_seq2seq"  # what the one-stack engines' refusal of an encoder-decoder names


def seq2seq_refusal(model) -> str:
    """An encoder-decoder boots, and every one-stack engine refuses it with an InputError naming
    capture_seq2seq (its three stacks of heads are read there, tests/test_seq2seq.py); returns that error."""
    try:
        capture(model, [[5, 6, 7, 8]])
    except InputError as exc:
        assert SEQ2SEQ_REFUSAL in str(exc), str(exc)
        return _first_line(exc)
    raise AssertionError("an encoder-decoder was accepted by capture()")


def outcome(cls_name: str, checks=None) -> str:
    """For a swept class: "pass" (every check agrees with its reference or verifies a clear refusal),
    "refused: <the InputError>" (headscope refuses the family at boot, or, for an encoder-decoder, its
    one-stack engines do), or "FAIL: <check>: <error>"."""
    try:
        model = C.bridged(cls_name)
    except InputError as exc:
        return f"refused: {_first_line(exc)}"
    except Exception as exc:
        return f"FAIL: boot: {_first_line(exc)}"
    if is_encoder_decoder(model):
        try:
            return f"refused: encoder-decoder: InputError: {seq2seq_refusal(model).split(': ', 1)[1]}"
        except Exception as exc:
            return f"FAIL: encoder-decoder: {_first_line(exc)}"
    for check in checks or C.CHECKS:
        try:
            C.run_check(check, cls_name)
        except Exception as exc:
            return f"FAIL: {check}: {_first_line(exc)}"
    return "pass"


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= limit else text[:limit] + " …"


def run_sweep(names=None) -> dict[str, str]:
    """{HF class: outcome} for every class TransformerLens supports (swept ones run every check)."""
    out = {}
    for e in entries():
        if names is not None and e.hf_class not in names:
            continue
        out[e.hf_class] = outcome(e.hf_class) if e.outcome == "swept" else e.outcome
    return out


def _cell(text: str) -> str:
    """An outcome as the table shows it: a refusal by its reason alone (the family's, or the adapter's
    error boot wrapped), shortened."""
    if text.startswith("refused: encoder-decoder"):
        text = "refused by the one-stack engines: an encoder-decoder; its heads: capture_seq2seq"
    elif text.startswith("refused: "):
        reason = text.split(" is refused: ", 1)[1] if " is refused: " in text else text.split("InputError: ", 1)[-1]
        text = "refused: " + reason.replace("headscope/tiny-", "")
    text = text.rstrip(" …")
    return (text if len(text) <= 140 else text[:140].rsplit(" ", 1)[0] + " …").replace("|", "/")


def _kind(text: str) -> str:
    return text.split(":", 1)[0]


def markdown(results: dict[str, str]) -> str:
    """The sweep's table (HF class, model_type, outcome) and its counts."""
    types = {e.hf_class: e.model_type for e in entries()}
    lines = ["| HF class | model_type | outcome |", "|---|---|---|"]
    for cls_name, text in results.items():
        model_type = types[cls_name]
        lines.append(f"| `{cls_name}` | {('`' + model_type + '`') if model_type else '—'} | {_cell(text)} |")
    counts: dict[str, int] = {}
    for text in results.values():
        counts[_kind(text)] = counts.get(_kind(text), 0) + 1
    # (a class that passes was built, so transformers has it and its model_type)
    families = sorted({m for c, t in results.items() if t == "pass" and (m := types[c]) is not None})
    lines += [
        "",
        "Classes: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (of {len(results)}).",
        f"Families (model_type) passing every check: {len(families)}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(run_sweep()))
