"""Visual sinks (phi), image-centric rows and VAR: planted on a tiny model, and on the smollm2-visual-sinks testbed."""

import numpy as np
import pytest
import torch

from headscope.analyzers.visual_sink import FIRST_SINK_LAYER, VisualSink
from headscope.errors import InputError
from headscope.interventions import apply
from headscope.models.info import record_facts
from headscope.testing import tiny_model
from headscope.testing.hf_reference import plain_hf_copy

DIM, VALUE = 13, 1e4
SINK_IDS, IMAGE_IDS = (40, 41), tuple(range(30, 42))
# BOS, text, image (ids 30..41 with planted sinks 40 and 41 at positions 5 and 8), text after the image
PROMPTS = [
    [1, 5, 6, 30, 31, 40, 32, 33, 41, 34, 35, 7, 8, 9, 10, 11, 12],
    [1, 9, 30, 36, 37, 41, 38, 39, 33, 40, 30, 4, 3, 2, 14, 15],
]
PLANTED = [[5, 8], [5, 9]]
SPANS = [(3, 11), (2, 11)]


@pytest.fixture(scope="module")
def planted():
    """Tiny 4-layer model whose BOS and two image tokens carry VALUE in residual dim DIM from the embedding on."""
    model = tiny_model(n_layers=4, seed=3)
    with torch.no_grad():
        model.original_model.get_input_embeddings().weight[[1, *SINK_IDS], DIM] = VALUE
    record_facts(model, image_token_ids=frozenset(IMAGE_IDS))
    return model, plain_hf_copy(model)


def _phi(x, dims):
    """phi by hand from a [pos, d] hidden state: max over dims of |x_d| / sqrt(mean(x^2) + 1e-6)."""
    rms = torch.sqrt((x.double() ** 2).mean(-1) + 1e-6)
    return torch.stack([x[:, d].double().abs() / rms for d in dims]).amax(0)


def test_phi_selects_exactly_the_planted_tokens_and_matches_hf_hidden_states(planted):
    model, hf = planted
    # d_model = 64 bounds phi by 8, so tau = 20 would select nothing: calibrate tau = 5 (the gap is 3..8)
    vs = VisualSink(tau=5.0).fit(model, PROMPTS)
    assert vs.sink_dims_ == [DIM]  # found from the first token's massive activation
    for p, ids in enumerate(PROMPTS):
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in range(4):
            ref = _phi(hidden[layer][0], [DIM]).numpy()  # hidden_states[l] = input of layer l = hook_resid_pre
            np.testing.assert_allclose(vs.phi_[p, layer, : len(ids)], ref, rtol=1e-4)
        for layer in range(FIRST_SINK_LAYER, 4):
            assert vs.sinks_at(p, layer) == [0, *PLANTED[p]]
    assert vs.image_spans_ == SPANS
    got = vs.visual_sinks_.groupby(["prompt", "layer"])["position"].apply(list).to_dict()
    assert got == {(p, layer): PLANTED[p] for p in range(2) for layer in range(FIRST_SINK_LAYER, 4)}
    assert set(vs.sink_tokens_["layer"]) == {2, 3}  # layers 0 and 1 are never tested


def _image_centric_by_hand(A, sinks, span, rho, min_image):
    """[head, q] bool for the rows after the image, plain loops over the image keys."""
    s, e = span
    out = torch.zeros(A.shape[0], A.shape[1] - e, dtype=torch.bool)
    for h in range(A.shape[0]):
        for i in range(e, A.shape[1]):
            image = sum(float(A[h, i, j]) for j in range(s, e))
            on_sinks = sum(float(A[h, i, j]) for j in range(s, e) if j in sinks)
            out[h, i - e] = image >= min_image and (image - on_sinks) >= rho * image
    return out


def test_image_centric_fraction_matches_hf_attentions(planted):
    model, hf = planted
    vs = VisualSink(tau=5.0, min_image_attention=0.3, rho=0.6).fit(model, PROMPTS)
    for p, ids in enumerate(PROMPTS):
        with torch.no_grad():
            att = hf(torch.tensor([ids]), output_attentions=True).attentions
        for layer in range(FIRST_SINK_LAYER, 4):
            rows = _image_centric_by_hand(att[layer][0], vs.sinks_at(p, layer), SPANS[p], 0.6, 0.3)
            np.testing.assert_allclose(vs.scores_.values[p, layer], rows.float().mean(-1).numpy(), atol=1e-6)
    assert np.isnan(vs.scores_.values[:, :FIRST_SINK_LAYER]).all()
    assert np.nanmax(vs.scores_.values) > 0, "no image-centric row at all: the test would not exercise VAR"


def _pattern(model, ids, layer, specs=()):
    got = {}
    name = f"blocks.{layer}.attn.hook_pattern"
    with (
        torch.no_grad(),
        apply(model, specs),
        model.hooks(fwd_hooks=[(name, lambda t, hook: got.setdefault("p", t.clone()))]),
    ):
        model(torch.tensor([ids]))
    return got["p"][0]  # [head, q, k]


def test_var_keeps_rows_stochastic_and_moves_exactly_the_freed_sink_mass(planted):
    model, _ = planted
    keep = 0.6
    vs = VisualSink(tau=5.0, min_image_attention=0.3, rho=0.6, keep_fraction=keep).fit(model, PROMPTS)
    n_edited = 0
    for p, ids in enumerate(PROMPTS):
        specs = vs.var_interventions(p)
        assert sorted(l for spec in specs for l, _ in spec.heads[:1]) == [2]  # layers 0, 1 and the last: never
        s, e = SPANS[p]
        for spec in specs:
            layer = spec.heads[0][0]
            A, P = _pattern(model, ids, layer), _pattern(model, ids, layer, [spec])
            sinks = vs.sinks_at(p, layer)
            assert list(spec.sinks) == sinks == [0, *PLANTED[p]]  # text sink (BOS) and the visual sinks
            torch.testing.assert_close(P.sum(-1), torch.ones(P.shape[:2]), atol=1e-6, rtol=0)
            edited = _image_centric_by_hand(A, sinks, (s, e), 0.6, 0.3)
            receivers = [j for j in range(s, e) if j not in sinks]
            others = [j for j in range(len(ids)) if j not in sinks and j not in receivers]
            for h in range(A.shape[0]):
                for i in range(len(ids)):
                    if i < e or not edited[h, i - e]:
                        assert torch.equal(P[h, i], A[h, i])
                        continue
                    n_edited += 1
                    freed = (1 - keep) * A[h, i, sinks].sum()
                    torch.testing.assert_close(P[h, i, sinks], keep * A[h, i, sinks])
                    torch.testing.assert_close(
                        P[h, i, receivers], A[h, i, receivers] * (1 + freed / A[h, i, receivers].sum())
                    )
                    assert torch.equal(P[h, i, others], A[h, i, others])
    assert n_edited > 0


def test_a_layer_with_only_text_sinks_is_left_untouched(planted):
    """The official code forks no head in a layer without a visual sink; here the image holds no planted
    sink, so BOS is the only (text) sink and VAR must edit nothing unless asked to."""
    model, _ = planted
    prompts = [[1, 5, 6, 30, 31, 32, 33, 34, 35, 7, 8, 9, 10, 11, 12]]
    vs = VisualSink(tau=5.0, min_image_attention=0.0, rho=0.0).fit(model, prompts)
    assert vs.sinks_at(0, 2) == [0] and vs.visual_sinks_.empty
    assert vs.var_interventions(0) == []
    loose = VisualSink(tau=5.0, min_image_attention=0.0, rho=0.0, require_visual_sink=False).fit(model, prompts)
    specs = loose.var_interventions(0)
    assert [spec.heads[0][0] for spec in specs] == [2] and list(specs[0].sinks) == [0]


def test_rho_conventions_are_one_threshold_read_two_ways(planted):
    model, _ = planted
    paper = VisualSink(tau=5.0, min_image_attention=0.3, rho=0.6).fit(model, PROMPTS)
    code = VisualSink(tau=5.0, min_image_attention=0.3, rho=0.4, rho_convention="code").fit(model, PROMPTS)
    np.testing.assert_array_equal(paper.scores_.values, code.scores_.values)
    assert paper.var_interventions(0) == code.var_interventions(0)
    assert paper.var_interventions(0)[0].max_sink_share == pytest.approx(0.4)
    other = VisualSink(tau=5.0, min_image_attention=0.3, rho=0.6, rho_convention="code").fit(model, PROMPTS)
    assert other.var_interventions(0)[0].max_sink_share == pytest.approx(0.6)
    with pytest.raises(InputError, match="rho_convention"):
        VisualSink(rho_convention="paperish").fit(model, PROMPTS)


def test_inputs_are_checked():
    model = tiny_model(n_layers=4, seed=3)
    with pytest.raises(InputError, match="smollm2-visual-sinks"):
        VisualSink().fit(model)
    with pytest.raises(InputError, match="image token"):
        VisualSink(sink_dims=[0]).fit(model, PROMPTS)
    with pytest.raises(InputError, match="rho"):
        VisualSink(rho=1.5).fit(model, PROMPTS)


# --- the smollm2-visual-sinks testbed ---------------------------------------------------------------------

MIDDLE = range(12, 29)  # where SmolLM2's first token carries its massive activation


@pytest.fixture(scope="module")
def testbed():
    import headscope
    from headscope.testbeds import visual_sinks

    model = headscope.load_model(visual_sinks.VISUAL_SINKS_NAME)
    prompts = visual_sinks.default_prompts(model, n_prompts=4)
    return model, prompts, VisualSink().fit(model, prompts)


@pytest.mark.real_model
def test_testbed_planted_sinks_are_the_visual_sinks_phi_finds(testbed):
    _model, prompts, vs = testbed
    assert 507 in vs.sink_dims_
    for p, prompt in enumerate(prompts):
        assert vs.image_spans_[p] == prompt.image_span
        found = vs.visual_sinks_[vs.visual_sinks_["prompt"] == p]
        for layer in MIDDLE:
            assert list(found.loc[found["layer"] == layer, "position"]) == list(prompt.sink_positions)
            assert 0 in vs.sinks_at(p, layer)  # the first token is a (text) sink there too


@pytest.mark.real_model
def test_testbed_sinks_draw_far_more_attention_in_plain_hf(testbed):
    from headscope.testbeds import visual_sinks

    _model, prompts, _ = testbed
    hf, _, _codes = visual_sinks.visual_sinks_hf()
    assert hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()
    on_sink, on_plain, on_control = [], [], []
    for prompt in prompts:
        (s, e), sinks = prompt.image_span, list(prompt.sink_positions)
        plain = [j for j in range(s, e) if j not in sinks]
        with torch.no_grad():
            att = torch.stack(hf(torch.tensor([prompt.ids]), output_attentions=True).attentions)[:, 0, :, e:]
            ctl = torch.stack(hf(torch.tensor([prompt.control_ids]), output_attentions=True).attentions)[:, 0, :, e:]
        on_sink.append(att[..., sinks].mean().item())  # per token, text queries after the image
        on_plain.append(att[..., plain].mean().item())
        on_control.append(ctl[..., sinks].mean().item())  # the same positions holding ordinary codes
    assert np.mean(on_sink) > 5 * np.mean(on_plain)
    assert np.mean(on_sink) > 5 * np.mean(on_control)


@pytest.mark.real_model
def test_testbed_var_moves_attention_from_the_planted_sinks_to_the_other_visual_tokens(testbed):
    model, prompts, vs = testbed
    prompt = prompts[0]
    (s, e), sinks = prompt.image_span, list(prompt.sink_positions)
    plain = [j for j in range(s, e) if j not in sinks]
    specs = vs.var_interventions(0)
    assert specs and all(spec.targets == (s, e) and spec.keep_fraction == 0.6 for spec in specs)
    names = [f"blocks.{spec.heads[0][0]}.attn.hook_pattern" for spec in specs]

    def masses(interventions):
        got = []
        hooks = [
            (n, lambda t, hook: got.append((t[0, :, e:, sinks].sum().item(), t[0, :, e:, plain].sum().item())))
            for n in names
        ]
        with torch.no_grad(), apply(model, interventions), model.hooks(fwd_hooks=hooks):
            logits = model(torch.tensor([prompt.ids]))
        return np.array(got).sum(0), logits[0, -1]

    (sink0, plain0), logits0 = masses([])
    (sink1, plain1), logits1 = masses(specs)
    # only image-centric rows (sinks hold <= 1 - rho of the image mass) are edited, so the planted sinks lose
    # (1 - keep) of a minority share (measured ~8%); the other visual tokens also gain the text sinks' mass
    assert sink1 < sink0 - 10  # summed over layers x heads x rows: > 10 rows' worth of attention moved
    assert plain1 - plain0 > sink0 - sink1
    kl = torch.nn.functional.kl_div(logits1.log_softmax(-1), logits0.log_softmax(-1), log_target=True, reduction="sum")
    assert kl.item() > 0


@pytest.mark.real_model
def test_testbed_manifest_matches_a_fresh_measurement():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headscope.models import bundled
    from headscope.testbeds import visual_sinks

    folder = bundled.smollm2_fp32_dir()
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    measured = visual_sinks.measure_first_token_massive(hf, AutoTokenizer.from_pretrained(folder))
    manifest = visual_sinks.read_manifest()
    assert measured["sink_dims"] == manifest["sink_dims"] and measured["layer"] == manifest["measured"]["layer"]
    np.testing.assert_allclose(measured["sink_values"], manifest["sink_values"], rtol=1e-4)
    # text logits are SmolLM2's, codes get logit 0 (untied lm_head with zero rows)
    vhf, tok, codes = visual_sinks.visual_sinks_hf()
    ids = torch.tensor([tok("The cat sat on the mat.")["input_ids"]])
    with torch.no_grad():
        a, b = vhf(ids).logits[0], hf(ids).logits[0]
    # Same weights, but the untied lm_head has extra rows, so the matmul may block differently on
    # another CPU: equal up to fp32 accumulation order (measured 3.4e-5 on logits of size ~20).
    torch.testing.assert_close(a[:, : b.shape[-1]], b, rtol=1e-5, atol=1e-4)
    assert torch.equal(a[:, list(codes.ids)], torch.zeros(a.shape[0], len(codes.ids)))
