"""Retrieval heads (Wu et al.): greedy generation, needle prompts, the copy-paste score.

Proofs: planted (the induction head (1,3) of the planted model copies every repeat: score 1, ranked
first), reference (plain per-step loops over HF output_attentions, written here, equal the
teacher-forced reducer), agreement (the paper's step-by-step mode == teacher-forced), real model.
"""

import json
import re

import numpy as np
import pytest
import torch

from headscope.analyzers.retrieval import (
    RetrievalHeads,
    count_copy_events,
    generate_copy_scores,
    needle_accuracy,
    rouge1_recall,
)
from headscope.errors import InputError
from headscope.generation import greedy_generate, greedy_reproduces, stop_token_ids
from headscope.inputs.needle import (
    NeedleSample,
    load_haystack,
    load_needles,
    make_needle_prompts,
    make_repeat_samples,
)
from headscope.interventions import UniformAttention
from headscope.paths import data_dir
from headscope.testing import plain_hf_copy, planted_model, tiny_model


@pytest.fixture(scope="module")
def planted():
    return planted_model()


def reference_copy_scores(hf, prompt, span, max_new_tokens, stops=()):
    """The paper's `decode` + `retrieval_calculate` as plain loops over a plain HF model: prefill
    prompt[:-1], feed one token per step with HF's own KV cache, take topk(1) of each head's row."""
    out = []
    n_layers, n_heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    score = [[0.0] * n_heads for _ in range(n_layers)]
    with torch.no_grad():
        past = hf(torch.tensor([prompt[:-1]]), use_cache=True).past_key_values
        current = prompt[-1]
        for _ in range(max_new_tokens):
            o = hf(torch.tensor([[current]]), past_key_values=past, use_cache=True, output_attentions=True)
            past, token = o.past_key_values, int(o.logits[0, -1].argmax())
            for layer in range(n_layers):
                for head in range(n_heads):
                    i = int(o.attentions[layer][0, head, -1].topk(1).indices[0])
                    if span[0] <= i < span[1] and prompt[i] == token:
                        score[layer][head] += 1 / (span[1] - span[0])
            out.append(token)
            current = token
            if token in stops:
                break
    return out, np.array(score)


def whole_prompt_sample(prompt):
    """A 'needle' covering the whole prompt, so any copy from the prompt counts (many events on random models)."""
    P = len(prompt)
    return NeedleSample(tuple(prompt), (0, P), (0, P), tuple(prompt), "", P, 0.0, "repeat", "all", "repeats", False)


# ---------------------------------------------------------------- generation


def test_cached_generation_equals_full_recompute_and_observes_the_same_rows():
    model = tiny_model(seed=3)
    prompt = [1, 5, 9, 13, 5, 9, 20, 7]
    rows = {True: [], False: []}
    for cache in (True, False):
        out = greedy_generate(
            model,
            prompt,
            8,
            observe=("pattern", "z"),
            use_cache=cache,
            on_step=lambda s, t, a, c=cache: rows[c].append((s.query_pos, t, a)),
        )
        rows[cache].insert(0, out)
    assert rows[True][0] == rows[False][0] and len(rows[True][0]) == 8
    for (qa, ta, a), (qb, tb, b) in zip(rows[True][1:], rows[False][1:]):
        assert qa == qb and ta == tb
        assert a["pattern"].shape == (2, 4, qa + 1)  # [layer, head, key] of the current query only
        torch.testing.assert_close(a["pattern"], b["pattern"], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["z"], b["z"], atol=1e-5, rtol=0)


def test_stop_token_is_included_and_ends_generation(planted):
    model, _ = planted
    assert greedy_generate(model, [1, 5, 6, 7, 8, 5], 5) == [6, 7, 8, 5, 6]
    assert greedy_generate(model, [1, 5, 6, 7, 8, 5], 5, stop_ids=[7]) == [6, 7]


def test_decode_hooks_hit_only_decode_queries(planted):
    model, truth = planted
    seen = []
    greedy_generate(
        model, [1, 5, 6, 7, 8, 5], 3, hooks=[("blocks.1.attn.hook_pattern", lambda t, hook: seen.append(t.shape[2]))]
    )
    assert seen == [1, 1, 1]  # no prefill call; one query per cached decode step
    layer, head = truth.induction

    def uniform_induction(step):  # the paper's mask: zero the query -> uniform attention, decode only
        def hook(q, hook):
            q[:, step.decode_start :, head] = 0
            return q

        return [(f"blocks.{layer}.attn.hook_q", hook)]

    for cache in (True, False):
        out = greedy_generate(model, [1, 5, 6, 7, 8, 5], 3, hooks=uniform_induction, use_cache=cache)
        assert out[0] != 6  # copying is gone once the induction head is masked
    assert greedy_generate(model, [1, 5, 6, 7, 8, 5], 3) == [6, 7, 8]


def test_decode_masking_by_spec_equals_the_raw_hook_and_the_scores_follow(planted):
    """UniformAttention(positions="decode") through greedy_generate(interventions=) is the raw decode-hook
    mask above; needle accuracy and the copy score under it agree with what generation does."""
    model, truth = planted
    layer, head = truth.induction

    def uniform_induction(step):
        def hook(q, hook):
            q[:, step.decode_start :, head] = 0
            return q

        return [(f"blocks.{layer}.attn.hook_q", hook)]

    mask = UniformAttention(heads=[truth.induction], positions="decode")
    for cache in (True, False):
        assert greedy_generate(model, [1, 5, 6, 7, 8, 5], 3, interventions=[mask], use_cache=cache) == greedy_generate(
            model, [1, 5, 6, 7, 8, 5], 3, hooks=uniform_induction, use_cache=cache
        )
    samples = make_repeat_samples(int(model.cfg.d_vocab), 3, seed=0, first_token=1)
    assert needle_accuracy(model, samples) == 1.0 and needle_accuracy(model, samples, [mask]) == 0.0
    for s in samples:
        n = len(s.answer_ids)
        out = greedy_generate(model, list(s.prompt_ids), n, interventions=[mask])
        assert greedy_reproduces(model, list(s.prompt_ids), list(s.answer_ids), interventions=[mask]) == (
            out == list(s.answer_ids)
        )
        clean_out, clean = generate_copy_scores(model, s, n)
        masked_out, masked = generate_copy_scores(model, s, n, interventions=[mask])
        assert masked_out == out and clean_out == list(s.answer_ids)
        assert clean[truth.induction] == pytest.approx(1.0) and masked[truth.induction] < 0.5


def test_generation_rejects_bad_input(planted):
    model, _ = planted
    for _what, args in [
        ("empty", ([], 3)),
        ("vocab", ([1, 999], 3)),
        ("max_new", ([1, 5], 0)),
        ("context", ([1] * 120, 20)),
    ]:
        with pytest.raises(InputError):
            greedy_generate(model, *args)
    with pytest.raises(InputError, match="unknown site"):
        greedy_generate(model, [1, 5], 1, observe=("attn_weights",))


# ---------------------------------------------------------------- the score


def test_count_copy_events_steps_vs_distinct():
    seq = torch.tensor([1, 7, 8, 7, 9, 0, 7, 7])  # prompt of 6 (needle 1..5), then generated 7, 7
    argmax = torch.tensor([[1, 1], [1, 2], [4, 4]])  # [head, Q]: copies 7 twice / once / never
    assert count_copy_events(argmax, seq, (1, 5)).tolist() == [2, 1, 0]
    assert count_copy_events(argmax, seq, (1, 5), count="distinct").tolist() == [1, 1, 0]
    assert count_copy_events(argmax, seq, (2, 5)).tolist() == [0, 0, 0]  # position 1 outside the span


def test_rouge1_recall():
    assert rouge1_recall("plum cake", "a recipe for Plum cake.") == 1.0
    assert rouge1_recall("seventeen lanterns", "seventeen candles") == 0.5
    assert rouge1_recall("4821", "number 4820") == 0.0


@pytest.mark.parametrize("mode", ["teacher_forced", "generate"])
def test_planted_induction_head_is_the_retrieval_head(planted, mode):
    model, truth = planted
    fit = RetrievalHeads(mode=mode, n_samples=4).fit(model, "repeats")
    assert fit.accuracy_ == 1.0  # the planted model predicts every repeat
    assert fit.heads_ == [truth.induction]
    assert fit.scores_.score(*truth.induction) == pytest.approx(1.0, abs=1e-12)
    others = np.delete(fit.scores_.values.ravel(), truth.induction[0] * 4 + truth.induction[1])
    assert others.max() < 0.1
    assert fit.per_sample_.best_head.eq("L1H3").all() and fit.plot() is not None


@pytest.mark.parametrize("build", ["planted", "tiny"])
def test_teacher_forced_equals_plain_hf_loop_and_generate_mode(planted, build):
    if build == "planted":
        model = planted[0]
        samples = make_repeat_samples(48, 3, seq_len=30, answer_len=8, seed=5, first_token=1, token_range=(2, 48))
    else:  # random weights; the prompt holds the model's own favourite tokens and the needle is the
        # whole prompt, so random heads produce copy events too
        model = tiny_model(seed=1)
        gen = torch.Generator().manual_seed(0)
        starts = [[1] + torch.randint(2, 48, (12,), generator=gen).tolist() for _ in range(3)]
        samples = [whole_prompt_sample(p + greedy_generate(model, p, 12)) for p in starts]
    hf = plain_hf_copy(model)
    tf = RetrievalHeads(span="needle", success_rouge=-1).fit(model, samples)
    gen_fit = RetrievalHeads(span="needle", success_rouge=-1, mode="generate").fit(model, samples)
    total_events = 0.0
    for i, s in enumerate(samples):
        out, ref = reference_copy_scores(hf, list(s.prompt_ids), s.needle_span, len(s.answer_ids))
        assert fit_output(tf, i) == out
        np.testing.assert_allclose(tf.sample_scores_.values[i], ref, atol=1e-4, rtol=0)
        total_events += ref.sum() * (s.needle_span[1] - s.needle_span[0])
    assert total_events >= 3  # the comparison is not 0 == 0
    np.testing.assert_array_equal(tf.sample_scores_.values, gen_fit.sample_scores_.values)


def fit_output(fit, i):
    return [int(t) for t in fit.per_sample_.output[i].split()]


def test_bad_parameters_and_data(planted):
    model, _ = planted
    for params in [
        dict(mode="beam"),
        dict(span="sentence"),
        dict(count="set"),
        dict(prompt_form="xml"),
        dict(max_new_tokens=0),
        dict(n_samples=0),
    ]:
        with pytest.raises(InputError):
            RetrievalHeads(**params).fit(model, "repeats")
    for data in ["needles", [1, 2, 3], []]:
        with pytest.raises(InputError):
            RetrievalHeads().fit(model, data)


# ---------------------------------------------------------------- data and needle prompts


def test_answers_never_occur_in_the_haystack():
    words = set(re.findall(r"[a-z0-9]+", " ".join(load_haystack()).lower()))
    needles = load_needles()
    assert len(needles) >= 10 and sum(len(t.split()) for t in load_haystack()) > 4000
    for n in needles:
        assert not set(re.findall(r"[a-z0-9]+", n["answer"].lower())) & words, n["id"]
    assert json.loads((data_dir() / "needle" / "needles.json").read_text())["needles"] == needles


@pytest.mark.real_model
@pytest.mark.parametrize("form", ["completion", "question", "chat"])
def test_needle_prompts_locate_the_needle_exactly(smol, form):
    tok = smol.tokenizer
    samples = make_needle_prompts(smol, 10, [250, 600], seed=3, form=form)
    assert samples == make_needle_prompts(smol, 10, [250, 600], seed=3, form=form)  # seeded
    assert samples != make_needle_prompts(smol, 10, [250, 600], seed=4, form=form)
    needles = {n["id"]: n for n in load_needles()}
    assert sorted({s.depth for s in samples[:10]}) == pytest.approx(list(np.linspace(0, 100, 10)))
    for s in samples:
        ids, (a, b), (c, d) = list(s.prompt_ids), s.needle_span, s.answer_span
        n = needles[s.needle_id]
        assert tok.decode(ids[a:b]).strip() == f"{n['prefix']} {n['answer']}{n['suffix']}"
        assert ids[c:d] == list(s.answer_ids) and tok.decode(ids[c:d]).strip() == n["answer"]
        assert a < c < d < b and s.context_length == len(ids) <= (250 if len(ids) < 400 else 600)
        assert a == 0 or tok.decode(ids[:a]).rstrip().endswith((".", "<book>", "?", "!"))  # a sentence boundary
        assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids  # a natural tokenization
    early = [s for s in samples if s.depth == 0 and s.context_length > 400]
    late = [s for s in samples if s.depth == 100 and s.context_length > 400]
    assert early[0].needle_span[0] < 70 and late[0].needle_span[0] > 400  # depth places the needle


@pytest.mark.real_model
def test_needle_prompts_fill_the_bundled_context_or_refuse(smol):
    """The bundled haystack fills SmolLM2's whole context (8192); a corpus too short for the asked length
    is an error, never a silently shorter prompt."""
    for s in make_needle_prompts(smol, 3, [8192], seed=0):
        assert 8192 - 40 <= s.context_length <= 8193
    with pytest.raises(InputError, match="haystack has only"):
        make_needle_prompts(smol, 1, [4000], haystack=load_haystack()[:2])


@pytest.mark.real_model
def test_smol_teacher_forced_equals_hf_loop_and_generate_mode(smol, smol_hf):
    samples = make_needle_prompts(smol, 2, [150], seed=0, form="completion")
    stops = stop_token_ids(smol.tokenizer)
    tf = RetrievalHeads(max_new_tokens=6, success_rouge=-1).fit(smol, samples)
    gen = RetrievalHeads(max_new_tokens=6, success_rouge=-1, mode="generate").fit(smol, samples)
    np.testing.assert_array_equal(tf.sample_scores_.values, gen.sample_scores_.values)
    for i, s in enumerate(samples):
        out, ref = reference_copy_scores(smol_hf, list(s.prompt_ids), s.answer_span, 6, stops)
        assert tf.per_sample_.n_steps[i] == len(out)
        assert tf.per_sample_.output[i] == smol.tokenizer.decode([t for t in out if t not in stops])
        np.testing.assert_allclose(tf.sample_scores_.values[i], ref, atol=1e-4, rtol=0)
    assert tf.sample_scores_.values.max() > 0  # some head copied the answer


@pytest.mark.real_model
def test_smol_end_to_end(smol):
    fit = RetrievalHeads(n_samples=3, context_lengths=(150,)).fit(smol)
    assert fit.scores_.values.shape == (1, 30, 9) and len(fit.per_sample_) == 3
    assert fit.accuracy_ >= 2 / 3
    assert all(fit.scores_.score(l, h) > 0.1 for l, h in fit.heads_)
    fig = fit.plot()
    assert fig.data and "retrieval" in fig.layout.title.text


def test_needle_prompts_take_bos_from_the_tokenizer_and_paper_forms_are_byte_for_byte():
    from headscope.testing.tiny import tiny_tokenizer

    tok = tiny_tokenizer(48)  # adds BOS by default, like Llama-2's (the paper code's self.enc(text))
    for form in ("completion", "question", "paper"):
        for s in make_needle_prompts(tok, 2, [80], form=form, seed=1):
            assert s.prompt_ids[0] == tok.bos_token_id
            assert list(s.prompt_ids[slice(*s.answer_span)]) == list(s.answer_ids)
        s = make_needle_prompts(tok, 1, [80], form=form, seed=1, prepend_bos=False)[0]
        assert s.prompt_ids[0] != tok.bos_token_id
    needle = load_needles()[0]
    s = make_needle_prompts(tok, 1, [80], form="paper", needles=[needle])[0]
    tail = tok(
        "Based on the content of the book, Question: " + needle["question"] + "\nAnswer:", add_special_tokens=False
    )["input_ids"]
    assert list(s.prompt_ids[-len(tail) :]) == tail


def test_an_encoder_is_refused_with_the_fix():
    from headscope.testing.architectures import tiny_arch_model

    with pytest.raises(InputError, match="bidirectional encoder. Fix: use a decoder"):
        RetrievalHeads(n_samples=1).fit(tiny_arch_model("bert"), "repeats")
