"""bf16 models (on the CPU): capture, scan and generation run, statistics are accumulated in fp32,
and the numbers agree with the fp32 model up to bf16's precision. (CUDA: see docs/architectures.md.)"""

import numpy as np
import pytest
import torch

from headscope.capture import capture
from headscope.capture.engine import for_reducers
from headscope.generation import greedy_generate
from headscope.interventions import scan
from headscope.testing.architectures import random_prompt, tiny_arch_model

FAMILIES = ["llama", "gemma2", "gpt2"]


def _prompts(name):
    a = random_prompt(name, 20, seed=1).tolist()
    return [a[:1] + a[1:10] + a[1:10], random_prompt(name, 13, seed=2).tolist()]


def test_reducers_see_fp32_cpu_copies():
    t = torch.ones(2, 3, dtype=torch.bfloat16)
    assert for_reducers(t).dtype == torch.float32 and for_reducers(t).device.type == "cpu"
    f = torch.ones(2, dtype=torch.float32)
    assert for_reducers(f).dtype == torch.float32
    ids = torch.ones(2, dtype=torch.long)
    assert for_reducers(ids).dtype == torch.long


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_capture_scan_and_generation_match_fp32(name):
    fp32, bf16 = tiny_arch_model(name), tiny_arch_model(name, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    ps = _prompts(name)
    a, b = capture(fp32, ps), capture(bf16, ps)
    for stat in ("first_token_mass", "attention_entropy", "previous_token_score", "induction_score"):
        assert b[stat].values.dtype == np.float64 and np.isfinite(b[stat].values).all()
        np.testing.assert_allclose(b[stat].values, a[stat].values, atol=5e-2, err_msg=stat)
    sa, sb = scan(fp32, ps, "zero", "kl_last"), scan(bf16, ps, "zero", "kl_last")
    assert np.isfinite(sb.values).all()
    # KL is sensitive to bf16 logits (measured up to 12% of the largest value on Gemma 2's soft-caps)
    np.testing.assert_allclose(sb.values, sa.values, atol=0.2 * np.abs(sa.values).max() + 1e-3)
    assert np.corrcoef(sa.values.ravel(), sb.values.ravel())[0, 1] > 0.95
    out = greedy_generate(bf16, ps[0], 4)
    assert len(out) == 4 and all(0 <= t < bf16.cfg.d_vocab for t in out)
