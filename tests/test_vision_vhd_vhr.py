"""The vision path on tiny LLaVA models built from config: image prompts through capture, VHD (planted
image head ranks first; every score equals a plain-HF reference), greedy generation with images, and
VHR's one-pass selection against a layer-by-layer reference."""

import numpy as np
import pytest
import torch

from headscope.analyzers.head_divergence import HeadDivergence
from headscope.capture import capture
from headscope.capture.reducers import default_reducers
from headscope.divergence import outlier_mask
from headscope.errors import InputError
from headscope.generation import greedy_generate
from headscope.inputs.images import ImagePrompt
from headscope.inputs.spans import image_span, image_spans, image_token_ids
from headscope.interventions import ScaleOutput, apply
from headscope.testing import plain_hf_copy
from headscope.testing.tiny_vlm import (
    IMAGE_TOKEN,
    planted_llava,
    tiny_llava,
    tiny_vlm_prompt,
)
from headscope.vision.vhr import default_layers, vhr_generate, vhr_select


@pytest.fixture(scope="module")
def planted():
    return planted_llava()


@pytest.fixture(scope="module")
def random_vlm():  # GQA, 4 layers: the architecture check for real LLaVA users
    return tiny_llava(n_layers=4, n_heads=4, n_kv_heads=2, seed=1)


def prompts(model, n=3, **kw):
    return [ImagePrompt(*tiny_vlm_prompt(model, seed=s, **kw)) for s in range(n)]


def test_image_span_comes_from_the_config_image_token(planted):
    model, truth = planted
    p = prompts(model, 1, n_before=3, n_after=2)[0]
    assert image_token_ids(model) == {IMAGE_TOKEN}
    assert image_span(model, p.ids) == (4, 4 + truth.n_image_tokens)
    two = ImagePrompt(*tiny_vlm_prompt(model, n_images=2))
    assert len(image_spans(model, two.ids)) == 1  # adjacent images form one block
    with pytest.raises(InputError, match="no image token"):
        image_spans(model, [1, 2, 3])


def test_planted_image_head_attends_only_to_the_image_and_ranks_first(planted):
    model, truth = planted
    items = prompts(model, 4)
    layer, head = truth.head
    res = capture(model, items, default_reducers(), keep_patterns=True, batch_size=3)
    for p, pattern in zip(items, res.patterns):
        start, end = image_span(model, p.ids)
        mass = pattern[layer, head, end:, start:end].sum(-1)
        assert bool((mass > 0.999).all())
    hd = HeadDivergence(batch_size=3).fit(model, items)
    assert hd.heads_[0] == truth.head
    top = hd.scores_.top(2)
    assert top["score"].iloc[0] > 5 * top["score"].iloc[1]


def _z_at(hf, layer, ids, pixels=None):
    """Head outputs before W_O at the last token, from a plain HF LLaVA (o_proj input)."""
    got = {}
    attn = hf.model.language_model.layers[layer].self_attn
    handle = attn.o_proj.register_forward_pre_hook(lambda mod, args: got.setdefault("z", args[0].detach()))
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([ids]), pixel_values=pixels)
    finally:
        handle.remove()
    return got["z"][0, -1].reshape(hf.config.text_config.num_attention_heads, -1)


def test_vhd_equals_plain_hf_reference(random_vlm):
    model = random_vlm
    items = prompts(model, 2, n_after=3)
    hd = HeadDivergence(batch_size=2).fit(model, items)
    hf = plain_hf_copy(model)
    for i, p in enumerate(items):
        ids = list(p.ids)
        no_img = [t for t in ids if t != IMAGE_TOKEN]
        for layer in range(model.cfg.n_layers):
            ref = (_z_at(hf, layer, ids, p.pixel_values) - _z_at(hf, layer, no_img)).norm(dim=-1)
            np.testing.assert_allclose(hd.scores_.values[i, layer], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_mixed_batch_equals_separate_runs(random_vlm):
    model = random_vlm
    img = prompts(model, 2)
    text = [[1, 5, 6, 7, 8], [1, 9, 10]]
    mixed = capture(model, [img[0], text[0], img[1], text[1]], batch_size=4)
    alone = [capture(model, [x], batch_size=1) for x in (img[0], text[0], img[1], text[1])]
    for name in mixed:
        for row, res in enumerate(alone):
            np.testing.assert_allclose(mixed[name].values[row], res[name].values[0], rtol=1e-4, atol=1e-6)


def test_wrong_number_of_image_tokens_is_a_clear_error(random_vlm):
    _, px = tiny_vlm_prompt(random_vlm)
    short = ImagePrompt([1, 5, 6] + [IMAGE_TOKEN] * 3 + [4, 5], px)
    with pytest.raises(InputError, match="image tokens"):
        capture(random_vlm, [short])


def test_greedy_generation_with_images_matches_hf_generate(random_vlm):
    ids, px = tiny_vlm_prompt(random_vlm, seed=3)
    got = greedy_generate(random_vlm, ids, 6, pixel_values=px)
    assert got == greedy_generate(random_vlm, ids, 6, pixel_values=px, use_cache=False)
    hf = plain_hf_copy(random_vlm)
    ref = hf.generate(input_ids=ids, pixel_values=px, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert got == ref[0, ids.shape[1] :].tolist()


def _reference_selection(model, prompt, layers, alpha):
    """VHR layer by layer with separate forwards: heads of earlier layers scaled via ScaleOutput."""
    chosen = []
    ids = list(prompt.ids)
    no_img = [t for t in ids if t != IMAGE_TOKEN]
    hf_like = []
    for layer in layers:
        specs = [ScaleOutput(heads=chosen, alpha=alpha)] if chosen else []
        zs = []
        for tokens, px in ((ids, prompt.pixel_values), (no_img, None)):
            got = {}
            hook = (
                f"blocks.{layer}.attn.hook_z",
                lambda z, hook, got=got: got.update(z=z[0, -1].clone()),
            )  # observe only
            with torch.no_grad(), apply(model, specs), model.hooks(fwd_hooks=[hook]):
                model(torch.tensor([tokens]), pixel_values=px)
            zs.append(got["z"].double())
        d = (zs[0] - zs[1]).norm(dim=-1).numpy()
        ta = (zs[1] ** 2).sum(-1).numpy()
        d = np.where(outlier_mask(d[None], ta[None])[0], 0.0, d)
        chosen += [(layer, int(h)) for h in np.flatnonzero(d > np.median(d))]
        hf_like.append(d)
    return chosen, hf_like


def test_vhr_selection_equals_layer_by_layer_reference(random_vlm):
    model = random_vlm
    for p in prompts(model, 2, n_after=5):
        sel = vhr_select(model, p, layers=[1, 2, 3])
        ref_heads, ref_vhd = _reference_selection(model, p, [1, 2, 3], 2.0)
        assert sel.heads == ref_heads
        np.testing.assert_allclose(sel.vhd.values[0, 1:], np.stack(ref_vhd), rtol=1e-4, atol=1e-5)
        assert sum(sel.to_dataframe()["reinforced"]) == len(sel.heads)


def test_vhr_generation_is_consistent_and_alpha_one_is_a_no_op(random_vlm):
    model = random_vlm
    p = prompts(model, 1)[0]
    out = vhr_generate(model, p, 5, layers=[1, 2, 3])
    assert out.tokens[0] == out.selection.first_token  # t=0 of generation is the selection pass
    plain = greedy_generate(model, list(p.ids), 5, pixel_values=p.pixel_values)
    assert vhr_generate(model, p, 5, layers=[1, 2, 3], alpha=1.0).tokens == plain
    assert default_layers(32) == [1, *range(18, 32)]  # the paper's L_r for LLaVA-1.5-7B


def test_vhr_bad_input_and_hooks_removed(random_vlm):
    model = random_vlm
    ids, px = tiny_vlm_prompt(model)
    with pytest.raises(InputError, match="ImagePrompt"):
        vhr_select(model, ids)
    with pytest.raises(InputError, match="layers"):
        vhr_select(model, ImagePrompt(ids, px), layers=[9])
    with pytest.raises(RuntimeError):
        vhr_select(model, ImagePrompt(ids, px[:, :2]))  # wrong channel count fails inside the model
    assert not any(h for hp in model.hook_dict.values() for h in hp.fwd_hooks)


def test_a_saved_llava_folder_loads_like_a_real_checkpoint(random_vlm, tmp_path):
    """What a real LLaVA user does: load_model(folder) -> the bridge finds the image token in the config."""
    from headscope import load_model

    plain_hf_copy(random_vlm).save_pretrained(tmp_path)
    random_vlm.tokenizer.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert image_token_ids(model) == {IMAGE_TOKEN}
    items = prompts(model, 2)
    np.testing.assert_allclose(
        HeadDivergence().fit(model, items).scores_.values,
        HeadDivergence().fit(random_vlm, items).scores_.values,
        rtol=1e-5,
        atol=1e-6,
    )


def test_generation_vhd_measures_each_step_teacher_forced(random_vlm):
    from headscope.analyzers.head_divergence import generation_vhd

    p = prompts(random_vlm, 1, n_after=3)[0]
    hd, tokens = generation_vhd(random_vlm, p, max_new_tokens=4)
    assert tokens == greedy_generate(random_vlm, list(p.ids), 4, pixel_values=p.pixel_values)
    per_step = hd.vhd_per_position_[0]  # [layer, step, head]
    assert per_step.shape[1] == len(tokens)
    first = HeadDivergence().fit(random_vlm, [p]).scores_.values[0]  # positions="last" = step 0
    np.testing.assert_allclose(per_step[:, 0], first, rtol=1e-5, atol=1e-6)
    for t in range(1, len(tokens)):  # step t = the prompt + t generated tokens, last position
        grown = ImagePrompt((*p.ids, *tokens[:t]), p.pixel_values)
        np.testing.assert_allclose(
            per_step[:, t], HeadDivergence().fit(random_vlm, [grown]).scores_.values[0], rtol=1e-5, atol=1e-6
        )
    tvhd = hd.token_vhd_positions_.values[0]
    assert np.isfinite(tvhd[len(p.ids) - 1 :]).all() and np.isnan(tvhd[: len(p.ids) - 1]).all()


def test_visual_sink_phi_runs_on_a_llava_with_pixel_values(random_vlm):
    """The visual-sink analyzer on a real LLaVA architecture: phi uses the image features (pixel values
    reach the model), equal to a recomputation from plain-HF hidden states."""
    from headscope.analyzers.visual_sink import VisualSink

    items = prompts(random_vlm, 2)
    vs = VisualSink(sink_dims=[3, 7], tau=1.0).fit(random_vlm, items)
    hf = plain_hf_copy(random_vlm)
    for i, p in enumerate(items):
        with torch.no_grad():
            hidden = hf(
                input_ids=torch.tensor([p.ids]), pixel_values=p.pixel_values, output_hidden_states=True
            ).hidden_states
        for layer in range(2, random_vlm.cfg.n_layers):
            h = hidden[layer][0].double()
            ref = (h[:, [3, 7]].abs() / (h.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()).max(-1).values
            np.testing.assert_allclose(vs.phi_[i, layer, : len(p.ids)], ref.numpy(), rtol=1e-4)


def test_var_generation_edits_decode_queries_like_a_full_recompute():
    """KV-cached VAR generation (prefill span + every decode query) equals recomputing the whole sequence
    with the span specs at each step; prefill-only VAR and no VAR give other tokens."""
    from headscope.interventions import VARRedistribution
    from headscope.testing import tiny_model
    from headscope.vision.var import var_generate

    ids = [1, *range(5, 25)]
    specs = [
        VARRedistribution(
            heads=[(l, h) for h in range(4)], positions=(12, None), sinks=(0, 6), targets=(4, 12), keep_fraction=0.2
        )
        for l in (1, 2)
    ]
    for seed in range(3):
        model = tiny_model(n_layers=3, seed=seed)
        got = var_generate(model, ids, specs, 8)
        with apply(model, specs):
            ref = greedy_generate(model, ids, 8, use_cache=False)
            prefill_only = greedy_generate(model, ids, 8)
        assert got == ref
        assert prefill_only != ref and greedy_generate(model, ids, 8) != ref
    with pytest.raises(InputError, match="VARRedistribution"):
        var_generate(model, ids, [ScaleOutput(heads=[(0, 0)])], 2)
