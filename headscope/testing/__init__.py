"""Test fixtures for headscope and its users: tiny Llama models built in code, offline, in ~0.1 s.

- ``tiny_model``: random weights (deterministic given ``seed``).
- ``planted_model``: hand-set sink / previous-token / induction / local-window heads, returned with
  their exact ground truth (``PlantedHeads``, incl. ``expected_pattern``).
- ``plain_hf_copy``: an un-bridged HF copy of a bridge's model, for independent reference checks.
- ``induction_tokens``: ``[BOS, s, s, ...]`` batches for induction / copying tests.

>>> from headscope.testing import planted_model, induction_tokens
>>> model, truth = planted_model()
>>> tokens = induction_tokens(model, seq_len=20)   # [1, 41]
"""

from headscope.testing.analyzer_check import analyzer_checks, check_analyzer, parametrize_with_checks
from headscope.testing.hf_reference import plain_hf_copy
from headscope.testing.planted import KINDS, PlantedHeads, planted_model
from headscope.testing.tiny import induction_tokens, tiny_model, tiny_tokenizer

__all__ = [
    "KINDS",
    "PlantedHeads",
    "analyzer_checks",
    "check_analyzer",
    "induction_tokens",
    "parametrize_with_checks",
    "plain_hf_copy",
    "planted_model",
    "tiny_model",
    "tiny_tokenizer",
]
