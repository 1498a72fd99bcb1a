"""Every engine on every family of the architecture matrix, against plain Hugging Face (see
`headscope.testing.conformance`). A check either agrees with its reference, or verifies that
headscope refuses the family with a clear error; which (family, check) pairs may refuse is fixed
here, so a check cannot quietly become "not applicable"."""

from pathlib import Path

import pytest

from headscope.testing.architectures import ARCHITECTURES
from headscope.testing.conformance import CHECKS, markdown, run_check, run_matrix

# Families whose TransformerLens bridge reports attention patterns only after HF computed them
# (Jamba's adapter keeps HF's attention forward: maintain_native_attention).
POST_HOC_PATTERNS = {"bert", "gpt-neo", "jamba"}
EXPECTED_REFUSALS = (
    {(a, c) for a in POST_HOC_PATTERNS for c in ("uniform_attention", "streaming_window", "act_var_rows", "analyzers")}
    | {("bert", "generation"), ("bert", "retrieval"), ("bert", "reducers")}
)


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_conformance(arch, check):
    reason = run_check(check, arch)  # AssertionError on any mismatch with the reference
    assert (reason is not None) == ((arch, check) in EXPECTED_REFUSALS), reason


def test_architectures_doc_is_generated_from_the_checks():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
    table = markdown(run_matrix())
    assert "FAIL" not in table
    assert table in doc, "docs/architectures.md is stale: regenerate with python -m headscope.testing.conformance"


def test_a_string_that_begins_with_the_bos_text_keeps_it():
    """Only a BOS the tokenizer adds is forced on or off; a chat string's own opening token stays."""
    from headscope.inputs.tokens import encode
    from headscope.testing.tiny import tiny_tokenizer

    tok = tiny_tokenizer(48)  # adds <s> (id 1) by default
    assert encode(tok, "t5 t6", bos=False, bos_id=1) == [5, 6]
    assert encode(tok, "t5 t6", bos=True, bos_id=1) == [1, 5, 6]
    assert encode(tok, "<s> t5", bos=False, bos_id=1) == [1, 5]  # the text's own <s> survives
