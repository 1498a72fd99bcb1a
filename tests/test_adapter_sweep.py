"""The adapter sweep (issue 24): every text class TransformerLens 4.3 supports that transformers 5.24
can build, tiny and random-init (`headscope.testing.sweep`), through every conformance check.

A family either boots and passes every check (a check may verify a clear refusal only where
EXPECTED_CHECK_REFUSALS says so), or headscope refuses it at boot with an InputError naming the family
and the reason (REFUSED), and then every check meets that refusal too: never a raw exception, never a
wrong number. Families other branches are fixing (PENDING) are xfail until their work is merged.

Marked `sweep` (~100 families x 15 checks): deselect locally with `-m "not sweep"`; CI runs it.
"""

from pathlib import Path

import pytest

from headscope.errors import InputError
from headscope.testing import conformance as C
from headscope.testing import sweep, sweep_table

pytestmark = pytest.mark.sweep

SWEPT = sweep.swept()

# HF class -> a phrase the boot refusal must contain (with the model_type; the family module says the rest).
REFUSED = {
    **{name: "no attention heads" for name in ("MambaForCausalLM", "Mamba2ForCausalLM", "FalconMambaForCausalLM",
                                               "RwkvForCausalLM")},
    "CodeGenForCausalLM": "embed_positions",
    "BitNetForCausalLM": "attn_sub_norm",
    "JetMoeForCausalLM": "hook_z",
    "Gemma4ForCausalLM": "different attention head shapes",
    "HrmTextForCausalLM": "recurrent cycles",
    "OpenAIGPTLMHeadModel": "without the causal mask",
    "BloomModel": "TransformerLens cannot bridge",  # no LM head: the adapter's own error, wrapped by boot
}

# Other branches fix these (issue 24): multi-head latent attention, hybrids of attention with SSM /
# linear-attention layers, learned sinks, GPT-J / OPT attention-level edits, encoder-decoders.
_HYBRIDS = {"qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "granitemoehybrid", "jamba", "bamba", "falcon_h1",
            "nemotron_h", "zamba2", "lfm2", "lfm2_moe", "olmo_hybrid", "recurrent_gemma"}


def pending(cls_name: str) -> str | None:
    """Why another branch owns this family's failures, or None."""
    cfg = sweep.tiny_config(cls_name)
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(cfg, "kv_lora_rank", None):
        return "multi-head latent attention"
    if cfg.model_type in _HYBRIDS:
        return "hybrid of attention and SSM / linear-attention layers"
    return {"deepseek_v4": "multi-head latent attention", "gpt_oss": "learned attention sinks",
            "gptj": "GPT-J attention-level edits", "opt": "OPT attention-level edits"}.get(cfg.model_type)


_ATTENTION_LEVEL = ("uniform_attention", "streaming_window", "act_var_rows", "analyzers")
# Families whose bridge reports patterns after Hugging Face computed them (as BERT and GPT-Neo in the
# curated matrix): the attention-level kinds, and the analyzers built on them, are refused.
POST_HOC = ("AfmoeForCausalLM", "BertLMHeadModel", "GPTJForCausalLM", "GPTNeoForCausalLM", "LagunaForCausalLM",
            "Llama4ForCausalLM", "ModernBertDecoderForCausalLM", "NanoChatForCausalLM", "OPTForCausalLM",
            "XGLMForCausalLM")
ENCODERS = ("BertForMaskedLM", "RobertaForMaskedLM")  # also: causal-only statistics NaN, no generation
EAGER_ONLY = ("XGLMForCausalLM",)  # HF attention computed inline: attention="blocked" refused

# (HF class, check) pairs whose check verifies a clear refusal instead of comparing a number.
EXPECTED_CHECK_REFUSALS = (
    {(n, c) for n in POST_HOC + ENCODERS for c in _ATTENTION_LEVEL}
    | {(n, c) for n in ENCODERS for c in ("reducers", "generation", "retrieval")}
    | {(n, "blocked") for n in EAGER_ONLY}
)


def _marks(cls_name):
    why = pending(cls_name)
    return [pytest.mark.xfail(reason=f"{why}: fixed on another branch (issue 24)", strict=False)] if why else []


def _seq2seq(cls_name) -> bool:
    return bool(getattr(sweep.tiny_config(cls_name), "is_encoder_decoder", False))


SEQ2SEQ = [name for name in SWEPT if _seq2seq(name)]
CASES = [pytest.param(name, check, marks=_marks(name), id=f"{name}-{check}")
         for name in SWEPT if name not in SEQ2SEQ for check in C.CHECKS]


@pytest.mark.parametrize("cls_name", SEQ2SEQ)
def test_sweep_encoder_decoders(cls_name):
    """An encoder-decoder boots; every one-stack engine refuses it naming capture_seq2seq, and
    capture_seq2seq reads its three stacks equal to plain HF's output_attentions."""
    import torch

    from headscope.capture.seq2seq import STACKS, capture_seq2seq

    model = C.bridged(cls_name)
    assert sweep_table.SEQ2SEQ_REFUSAL in sweep_table.seq2seq_refusal(model)
    hf = C.plain(cls_name)
    start = hf.config.decoder_start_token_id or 0
    src, tgt = [5, 6, 7, 8, 9, 10, 2], [start, 11, 12, 13]
    res = capture_seq2seq(model, [src], [tgt], keep_patterns=True)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([tgt]), output_attentions=True)
    refs = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
    for stack in STACKS:
        ref = torch.stack([a[0] for a in refs[stack]])
        torch.testing.assert_close(res.patterns[stack][0], ref.float(), rtol=0, atol=1e-5, msg=f"{cls_name} {stack}")


def _boot_refusal(cls_name) -> InputError | None:
    try:
        C.bridged(cls_name)
    except InputError as exc:
        return exc
    return None


@pytest.mark.parametrize("cls_name,check", CASES)
def test_sweep(cls_name, check):
    model_type = sweep.entry(cls_name).model_type
    refusal = _boot_refusal(cls_name)  # any other exception fails the test
    if cls_name in REFUSED:
        assert refusal is not None, f"{cls_name}: expected headscope to refuse the {model_type} family at boot"
        assert model_type in str(refusal) and REFUSED[cls_name] in str(refusal), str(refusal)
        with pytest.raises(InputError):  # the check meets the same refusal
            C.run_check(check, cls_name)
        return
    assert refusal is None, f"{cls_name} refused at boot: {refusal}"
    reason = C.run_check(check, cls_name)  # AssertionError on any mismatch with the reference
    assert (reason is not None) == ((cls_name, check) in EXPECTED_CHECK_REFUSALS), reason


def test_sweep_covers_every_supported_class():
    """Each class TransformerLens lists is swept or says why not."""
    entries = sweep.entries()
    assert [e.hf_class for e in entries] == sweep.supported_classes()
    for e in entries:
        assert e.outcome == "swept" or e.outcome.startswith(("not a text model: ", "not buildable here: ")), e
    assert set(REFUSED) <= set(sweep.swept())


def test_sweep_doc_is_generated():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
    assert sweep_table.markdown(sweep_table.run_sweep()) in doc, \
        "docs/architectures.md is stale: regenerate its sweep table with python -m headscope.testing.sweep_table"
