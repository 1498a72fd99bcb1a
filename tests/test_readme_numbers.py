"""The numbers the README states about the bundled model are what its own snippet computes."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.real_model
def test_readme_induction_heads(smol):
    from headscope.capture import capture
    from headscope.inputs import repeated_random_tokens

    text = README.read_text(encoding="utf-8")
    sentence = text[text.index("the induction heads stand out") :].split("\n\n")[0]
    stated = [(f"L{l}H{h}", float(v)) for l, h, v in re.findall(r"L(\d+)H(\d+) (\d\.\d+)", sentence)]
    assert len(stated) == 4, sentence
    probes = repeated_random_tokens(smol.cfg.d_vocab, seq_len=50, n_prompts=4, first_token=1)
    top = capture(smol, probes)["induction_score"].top(4)
    assert sorted(top.label) == sorted(label for label, _ in stated)
    for label, value in stated:
        assert top.loc[top.label == label, "score"].item() == pytest.approx(value, abs=0.005), label
