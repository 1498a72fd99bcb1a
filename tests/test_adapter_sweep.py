"""The adapter sweep (issue 24): every text class TransformerLens 4.3 supports that transformers 5.24
can build, tiny and random-init (`headscope.testing.sweep`), through every conformance check.

A family either boots and passes every check (a check may verify a clear refusal only where
EXPECTED_CHECK_REFUSALS says so), or headscope refuses it at boot with an InputError naming the family
and the reason (REFUSED), and then every check meets that refusal too: never a raw exception, never a
wrong number. Encoder-decoders boot, and every one-stack engine refuses them naming capture_seq2seq,
which reads their three stacks (checked against plain HF here too).

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
    **dict.fromkeys(
        ("MambaForCausalLM", "Mamba2ForCausalLM", "FalconMambaForCausalLM", "RwkvForCausalLM"), "no attention heads"
    ),
    "CodeGenForCausalLM": "embed_positions",
    "BitNetForCausalLM": "attn_sub_norm",
    "JetMoeForCausalLM": "hook_z",
    "Gemma4ForCausalLM": "different attention head shapes",
    "HrmTextForCausalLM": "recurrent cycles",
    "OpenAIGPTLMHeadModel": "without the causal mask",
    "BloomModel": "TransformerLens cannot bridge",  # no LM head: the adapter's own error, wrapped by boot
    "DeepseekV4ForCausalLM": "compressed into blocks",
    "GlmMoeDsaForCausalLM": "indexer selects",
    # hybrids whose bridge maps their attention under another name than `attn`
    **dict.fromkeys(
        ("NemotronHForCausalLM", "Zamba2ForCausalLM", "RecurrentGemmaForCausalLM"),
        "no layer whose attention the TransformerLens bridge maps",
    ),
}

_ATTENTION_LEVEL = ("uniform_attention", "streaming_window", "act_var_rows", "analyzers")
# Families whose bridge reports patterns after Hugging Face computed them and that no family module
# routes through headscope's attention forward (the routed ones, BERT, RoBERTa, GPT-Neo, GPT-J, OPT,
# Llama 4, Jamba, run them): the attention-level kinds, and the analyzers built on them, are refused.
POST_HOC = (
    "AfmoeForCausalLM",
    "LagunaForCausalLM",
    "ModernBertDecoderForCausalLM",
    "NanoChatForCausalLM",
    "OlmoHybridForCausalLM",
    "XGLMForCausalLM",
)
ENCODERS = ("BertForMaskedLM", "RobertaForMaskedLM")  # causal-only statistics NaN, no generation, no ACT
EAGER_ONLY = ("XGLMForCausalLM",)  # HF attention computed inline: attention="blocked" refused
HF_CACHE_BROKEN = ("BambaForCausalLM",)  # plain HF's own cached decode != its forward: headscope recomputes

# (HF class, check) pairs whose check verifies a clear refusal instead of comparing a number.
EXPECTED_CHECK_REFUSALS = (
    {(n, c) for n in POST_HOC for c in _ATTENTION_LEVEL}
    | {(n, c) for n in ENCODERS for c in ("reducers", "generation", "retrieval", "act_var_rows", "analyzers")}
    | {(n, "blocked") for n in EAGER_ONLY}
    | {(n, "generation") for n in HF_CACHE_BROKEN}
)


def _seq2seq(cls_name) -> bool:
    return bool(getattr(sweep.tiny_config(cls_name), "is_encoder_decoder", False))


SEQ2SEQ = [name for name in SWEPT if _seq2seq(name)]
# Encoder-decoders whose bridge reports no pattern for a stack (LED's encoder runs Longformer-style local
# attention that TransformerLens 4.3 bridges without a live hook_pattern): capture_seq2seq refuses them.
SEQ2SEQ_UNREAD = {
    "LEDForConditionalGeneration": "reports no attention pattern for encoder layer 0",
    "LongT5ForConditionalGeneration": "reports no attention pattern for encoder layer 0",
    # its bridge's hook_pattern is not the softmax HF applies (rows do not sum to one)
    "SwitchTransformersForConditionalGeneration": "rows are not probabilities",
}
CASES = [pytest.param(name, check, id=f"{name}-{check}") for name in SWEPT if name not in SEQ2SEQ for check in C.CHECKS]


@pytest.mark.parametrize("cls_name", SEQ2SEQ)
def test_sweep_encoder_decoders(cls_name):
    """An encoder-decoder boots; every one-stack engine refuses it naming capture_seq2seq, and
    capture_seq2seq reads its three stacks equal to plain HF's output_attentions."""
    import torch

    from headscope.capture.seq2seq import STACKS, capture_seq2seq

    model = C.bridged(cls_name)
    assert sweep_table.SEQ2SEQ_REFUSAL in sweep_table.seq2seq_refusal(model)
    hf = C.plain(cls_name)
    start = getattr(hf.config, "decoder_start_token_id", None)
    start = start if start is not None and start < hf.config.vocab_size else 0  # generic tiny vocab
    src, tgt = [5, 6, 7, 8, 9, 10, 2], [start, 11, 12, 13]
    if cls_name in SEQ2SEQ_UNREAD:  # the bridge fires no pattern hook on some stack: a clear refusal
        with pytest.raises(InputError, match=SEQ2SEQ_UNREAD[cls_name]):
            capture_seq2seq(model, [src], [tgt], keep_patterns=True)
        return
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
    assert sweep_table.markdown(sweep_table.run_sweep()) in doc, (
        "docs/architectures.md is stale: regenerate its sweep table with python -m headscope.testing.sweep_table"
    )
