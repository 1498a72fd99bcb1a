"""Every engine on every family of the architecture matrix, against plain Hugging Face (see
`headscope.testing.conformance`). A check either agrees with its reference, or verifies that
headscope refuses the family with a clear error; which (family, check) pairs may refuse is fixed
here, so a check cannot quietly become "not applicable"."""

from pathlib import Path

import pytest

from headscope.testing.architectures import ARCHITECTURES
from headscope.testing.conformance import CHECKS, markdown, run_matrix

# Families whose TransformerLens bridge reports attention patterns only after HF computed them.
POST_HOC_PATTERNS = {"bert", "gpt-neo"}
EXPECTED_REFUSALS = (
    {(a, c) for a in POST_HOC_PATTERNS for c in ("uniform_attention", "streaming_window", "act_var_rows", "analyzers")}
    | {("bert", "generation"), ("bert", "retrieval"), ("bert", "reducers")}
)


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_conformance(arch, check):
    reason = CHECKS[check](arch)  # AssertionError on any mismatch with the reference
    assert (reason is not None) == ((arch, check) in EXPECTED_REFUSALS), reason


def test_architectures_doc_is_generated_from_the_checks():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
    table = markdown(run_matrix())
    assert "FAIL" not in table
    assert table in doc, "docs/architectures.md is stale: regenerate with python -m headscope.testing.conformance"
