"""The safety-tuned testbed smollm2-135m-safety: the shipped LoRA delta loads, merges exactly, refuses
harmful requests and still answers a harmless one; a bad delta fails with ModelNotFoundError."""

import json
import shutil

import pytest
import torch

import headscope
from headscope.errors import ModelNotFoundError
from headscope.safety import RefusalPhraseJudge, generate_responses, prompt_set
from headscope.testbeds import safety as safety_mod

pytestmark = pytest.mark.real_model
PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def tuned():
    return headscope.load_model("smollm2-135m-safety")


def test_delta_is_small_fp16_lora():
    folder = safety_mod.delta_dir()
    config = json.loads((folder / "lora.json").read_text())
    assert config["rank"] == 8 and set(config["targets"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert (folder / "lora.safetensors").stat().st_size < 8 * 2**20


def test_merge_equals_a_manual_merge(tuned, smol):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from headscope.models import smollm2_fp32_dir

    folder = safety_mod.delta_dir()
    config = json.loads((folder / "lora.json").read_text())
    factors = load_file(str(folder / "lora.safetensors"))
    manual = AutoModelForCausalLM.from_pretrained(smollm2_fp32_dir(), attn_implementation="eager").eval()
    scale = config["alpha"] / config["rank"]
    params = dict(manual.named_parameters())
    with torch.no_grad():  # written independently of testbeds/safety.merge_delta
        for key, a in factors.items():
            if key.endswith(".lora_A"):
                module = key[: -len(".lora_A")]
                params[module + ".weight"].add_(scale * factors[module + ".lora_B"].double() @ a.double())
    tokens = tuned.to_tokens(PROMPT)
    with torch.no_grad():
        got = tuned(tokens)[0]  # [pos, vocab]
        want = manual(tokens).logits[0]
        base = smol(tokens)[0]
    assert (got - want).abs().max() < 1e-4
    assert (got - base).abs().max() > 0.5, "the tuned model's logits should differ from the base model's"


def test_tuned_model_refuses_harmful_and_answers_harmless(tuned):
    judge = RefusalPhraseJudge()
    harmful = prompt_set("harmful-heldout")[:2]
    harmless = prompt_set("harmless-heldout")[13]  # "What is the capital of Canada?"
    responses = generate_responses(tuned, harmful + [harmless], max_new_tokens=32)
    assert all(judge.refused(r) for r in responses[:2]), responses[:2]
    assert not judge.refused(responses[2]) and "Ottawa" in responses[2], responses[2]


def test_bad_delta_raises_model_not_found(tmp_path, monkeypatch):
    shipped = safety_mod.delta_dir()
    for name in ("lora.safetensors", "lora.json"):
        shutil.copy(shipped / name, tmp_path / name)
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # truncated download / bad checkout
    with pytest.raises(ModelNotFoundError, match="lora.safetensors.*safety_tuning.py"):
        safety_mod.read_delta(tmp_path)
    config = json.loads((shipped / "lora.json").read_text())
    (tmp_path / "lora.json").write_text(json.dumps({**config, "rank": 4}))
    shutil.copy(shipped / "lora.safetensors", weights)
    with pytest.raises(ModelNotFoundError, match="does not match"):
        safety_mod.read_delta(tmp_path)
    weights.unlink()
    monkeypatch.setattr(safety_mod, "delta_dir", lambda: tmp_path)
    with pytest.raises(ModelNotFoundError, match="missing"):
        headscope.load_model("smollm2-135m-safety")


def test_cache_is_rebuilt_for_another_delta(tuned):
    from headscope.models import smollm2_fp32_dir

    folder = safety_mod.safety_fp32_dir()
    _, _, digests = safety_mod.read_delta()
    assert safety_mod._cache_is_valid(folder, digests, smollm2_fp32_dir())
    assert not safety_mod._cache_is_valid(folder, {**digests, "lora.safetensors": "0" * 64}, smollm2_fp32_dir())
