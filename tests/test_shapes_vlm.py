"""The shapes world (rendering, answers, tokenizer, POPE probes, CHAIR) and the shipped shapes-vlm checkpoint."""

import numpy as np
import pytest
import torch

from headscope.errors import InputError, ModelNotFoundError
from headscope.models import model_info
from headscope.vision import shapes as W
from headscope.vision import shapes_eval as E

MIN_IMAGE_QA = 0.85  # what docs/shapes-vlm.md promises, whatever the shipped log says


def _cell_pixels(img, cell):
    row, col = divmod(W.CELLS.index(cell), 2)
    return img[:, row * W.CELL : (row + 1) * W.CELL, col * W.CELL : (col + 1) * W.CELL]


def _colour_of(rgb) -> str | None:
    """The world colour nearest to an RGB pixel (None for black), from the pixel alone."""
    if float(np.abs(rgb).sum()) == 0:
        return None
    return min(W.COLOURS, key=lambda c: float(np.abs(np.array(W.COLOURS[c]) - rgb).sum()))


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [W.sample_scene(rng) for _ in range(n)]


# ----------------------------------------------------------------------------- world


def test_render_puts_each_colour_at_its_cell_and_nothing_elsewhere():
    for scene in _scenes(60):
        img = W.render(scene).numpy()
        assert img.shape == (3, W.IMAGE_SIZE, W.IMAGE_SIZE) and img.min() >= 0 and img.max() <= 1
        for cell in W.CELLS:
            px = _cell_pixels(img, cell)
            o = scene.at(cell)
            if o is None:
                assert px.max() == 0, f"empty cell {cell} is not black"
            else:
                centre = px[:, W.CELL // 2, W.CELL // 2]
                assert np.allclose(centre, W.COLOURS[o.colour])
                lit = px.max(0) > 0
                assert {_colour_of(px[:, y, x]) for y, x in zip(*np.nonzero(lit))} == {o.colour}


def _lit(shape, dx=0, dy=0):
    scene = W.Scene((W.Obj(shape, "white", "top-left", dx, dy),))
    return _cell_pixels(W.render(scene).numpy(), "top-left").max(0) > 0


def test_render_draws_the_named_shape():
    for dx, dy in [(0, 0), (1, -1), (-1, 1)]:
        sq, ci, tr, cr = (_lit(s, dx, dy) for s in ("square", "circle", "triangle", "cross"))
        ys, xs = np.nonzero(sq)
        assert sq[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a square fills its bounding box
        ys, xs = np.nonzero(ci)
        corners = ci[[ys.min(), ys.min(), ys.max(), ys.max()], [xs.min(), xs.max(), xs.min(), xs.max()]]
        assert not corners.any() and ci[(ys.min() + ys.max()) // 2].sum() == xs.max() - xs.min() + 1
        widths = tr.sum(1)[tr.any(1)]
        assert widths[0] < widths[-1] and np.all(np.diff(widths) >= 0)  # apex up, widening downwards
        ys, xs = np.nonzero(cr)
        assert not cr[ys.min(), xs.min()] and cr.sum() < 0.6 * (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        assert len({sq.sum(), ci.sum(), tr.sum(), cr.sum()}) == 4


def _answer_from_pixels(item) -> tuple:
    """Recompute an image item's answer from the rendered image (and the question words) only."""
    img = W.render(item.scene).numpy()
    cells = {}
    for cell in W.CELLS:
        px = _cell_pixels(img, cell)
        colour = _colour_of(px[:, W.CELL // 2, W.CELL // 2])
        if colour is not None:
            mask = px.max(0) > 0
            shape = next(
                s
                for s in W.SHAPES
                if any(np.array_equal(mask, _lit(s, dx, dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
            )
            cells[cell] = (colour, shape)
    q = item.question
    if item.kind == "count":
        return (W.NUMBERS[len(cells)],)
    if item.kind == "shape_at":
        return (cells[q[4]][1] if q[4] in cells else "nothing",)
    if item.kind == "colour_at":
        return (cells[q[4]][0],)
    if item.kind == "colour_of_shape":
        (colour,) = [c for c, s in cells.values() if s == q[4]]
        return (colour,)
    if item.kind == "where":
        (cell,) = [k for k, v in cells.items() if v == (q[3], q[4])]
        return (cell,)
    if item.kind == "pope":
        return ("yes" if (q[3], q[4]) in cells.values() else "no",)
    if item.kind == "describe":
        words = []
        for cell in W.CELLS:
            if cell in cells:
                words += ([","] if words else []) + [*cells[cell], cell]
        return tuple(words + ["."])
    raise AssertionError(item.kind)


def test_answers_agree_with_the_rendered_image():
    rng = np.random.default_rng(1)
    for i in range(140):
        kind = W.IMAGE_KINDS[i % len(W.IMAGE_KINDS)]
        item = W.sample_image_item(rng, W.sample_scene(rng), kind)
        assert item.answer == _answer_from_pixels(item), item


def test_text_items_are_right():
    for it in W.text_items():
        if it.kind == "plus":
            assert W.NUMBERS.index(it.question[2]) + W.NUMBERS.index(it.question[4]) == W.NUMBERS.index(it.answer[0])
        if it.kind == "minus":
            assert W.NUMBERS.index(it.question[2]) - W.NUMBERS.index(it.question[4]) == W.NUMBERS.index(it.answer[0])
        if it.kind == "opposite":
            assert W.OPPOSITES[it.answer[0]] == it.question[2]  # the relation is symmetric


def test_tokenizer_round_trips_and_matches_item_encoding():
    tok = W.shapes_tokenizer()
    assert len(tok) == len(W.vocabulary()) and tok.convert_tokens_to_ids("<image>") == W.IMAGE_TOKEN_ID
    for it in W.sample_items(3, 60):
        ids, n_prompt = W.encode_item(it)
        text = " ".join(it.question + it.answer)
        enc = tok(text)["input_ids"]
        assert enc[0] == W.BOS_ID and enc[1:] == ids[1 + (W.N_IMAGE_TOKENS if it.has_image else 0) :]
        assert tok.decode(enc[1:]) == text
        assert ids[:n_prompt].count(W.IMAGE_TOKEN_ID) == (W.N_IMAGE_TOKENS if it.has_image else 0)
        if it.has_image:  # one contiguous image block right after BOS
            assert ids[1 : 1 + W.N_IMAGE_TOKENS] == [W.IMAGE_TOKEN_ID] * W.N_IMAGE_TOKENS
    with pytest.raises(ValueError, match="not in the shapes vocabulary"):
        W.encode_item(W.QAItem("x", ("what", "is", "purple", "?"), ("no",)))


def test_pope_probes_are_balanced_and_correct():
    items = W.pope_items(5, 90)
    labels = [it.meta["label"] for it in items]
    assert len(items) == 180 and sum(labels) == 90
    assert {it.meta["probe"] for it in items} == {"present", "random", "adversarial", "companion"}
    for it in items:
        colour, shape = it.question[3], it.question[4]
        assert it.scene.has(colour, shape) == it.meta["label"] and it.answer == (
            ("yes",) if it.meta["label"] else ("no",)
        )
        if it.meta["probe"] == "adversarial":
            assert any(o.colour == colour or o.shape == shape for o in it.scene.objects)
        if it.meta["probe"] == "companion":
            assert (colour, shape) in {W.COMPANION[o.kind] for o in it.scene.objects}


def test_chair_on_hand_made_texts():
    red_c = W.Obj("circle", "red", "top-left")
    blue_s = W.Obj("square", "blue", "bottom-right")
    scenes = [W.Scene((red_c, blue_s)), W.Scene((red_c,)), W.Scene((blue_s,))]
    texts = [
        "red circle top-left , green cross bottom-right .",  # 1 right, 1 hallucinated
        "red circle bottom-left , red circle top-left .",  # one object (cells not scored), right
        "white triangle top-left .",
    ]  # hallucinated, true object missed
    out = E.chair(scenes, texts)
    # mentions: {red circle, green cross}, {red circle}, {white triangle} -> 4; hallucinated 2
    assert out["chair_i"] == pytest.approx(2 / 4) and out["chair_s"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 4)  # true: 2 + 1 + 1 objects, mentioned: red circle twice
    assert E.chair(scenes[:1], ["."])["chair_i"] == 0 and E.chair(scenes[:1], ["."])["recall"] == 0
    m = E.pope_metrics([True, True, False, False], [True, False, True, True])
    assert m == pytest.approx({"accuracy": 0.25, "precision": 1 / 3, "recall": 0.5, "f1": 0.4, "yes_ratio": 0.75})
    with pytest.raises(InputError):
        E.chair(scenes, texts[:2])


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def vlm():
    import headscope

    return headscope.load_model("shapes-vlm")


@pytest.fixture(scope="module")
def vlm_hf():
    from headscope.testbeds.shapes_vlm import shapes_vlm_hf

    return shapes_vlm_hf()


@pytest.fixture(scope="module")
def log():
    from headscope.testbeds.shapes_vlm import train_log

    return train_log()


def test_missing_checkpoint_names_the_fix(tmp_path):
    from headscope.testbeds.shapes_vlm import shapes_vlm_hf

    with pytest.raises(ModelNotFoundError, match="train_shapes_vlm.py"):
        shapes_vlm_hf(tmp_path)


def test_bridge_matches_plain_hf(vlm, vlm_hf):
    from headscope.inputs.spans import image_spans

    items = W.sample_items(11, 6, text_fraction=0.0)[:3]
    ids = torch.tensor([W.prompt_ids(it) for it in items if len(W.prompt_ids(it)) == len(W.prompt_ids(items[0]))])
    px = W.render_batch([it.scene for it in items[: len(ids)]])
    with torch.no_grad():
        diff = (vlm(ids, pixel_values=px) - vlm_hf(input_ids=ids, pixel_values=px).logits).abs().max()
        text = torch.tensor([W.prompt_ids(W.text_items()[0])])
        diff_text = (vlm(text) - vlm_hf(input_ids=text).logits).abs().max()
    assert diff < 1e-4 and diff_text < 1e-4
    assert image_spans(vlm, ids[0]) == [(1, 1 + W.N_IMAGE_TOKENS)]
    assert vlm.cfg.n_layers >= 4 and vlm.cfg.n_heads == 8 and vlm.cfg.d_head == 16
    assert vlm.cfg.default_prepend_bos is False
    assert model_info(vlm).name == "shapes-vlm" and model_info(vlm).testbed == "shapes-vlm"


@pytest.fixture(scope="module")
def small(log):
    """The leading part of the held-out sets; train_log.json records the shipped model's metrics on it."""
    return E.default_eval_sets(**log["heldout"]["small_sets"]["sets"])


def test_shipped_accuracy_and_the_image_matters(vlm, log, small):
    shipped = log["heldout"]
    res = E.image_qa_accuracy(vlm, small["image_qa"])
    # Same items as the training script measured (on the HF model): equal up to argmax ties.
    assert res.accuracy >= shipped["small_sets"]["image_qa"] - 0.02, (res.accuracy, res.per_kind)
    assert res.accuracy >= MIN_IMAGE_QA
    text = E.text_qa_accuracy(vlm, small["text_qa"])
    assert text.accuracy >= shipped["text_qa"] - 0.02
    # Without the image the same questions are answered from priors only: far worse.
    blind = [W.QAItem(it.kind, it.question, it.answer) for it in small["image_qa"]]
    assert E.text_qa_accuracy(vlm, blind).accuracy < res.accuracy - 0.3
    # The hooks= path really runs: zeroing every head's output destroys the answers.
    zero = [(f"blocks.{l}.attn.hook_z", lambda z, hook: z * 0) for l in range(vlm.cfg.n_layers)]
    assert E.image_qa_accuracy(vlm, small["image_qa"][:40], hooks=zero).accuracy < res.accuracy - 0.3
    # interventions= and the equivalent raw hook give the same answers (here: layer 1's heads zeroed).
    from headscope.interventions import ZeroAblation

    layer1 = ZeroAblation(heads=[(1, h) for h in range(vlm.cfg.n_heads)])
    by_spec = E.image_qa_accuracy(vlm, small["image_qa"][:40], interventions=[layer1])
    by_hook = E.image_qa_accuracy(vlm, small["image_qa"][:40], hooks=zero[1:2])
    assert by_spec.predictions == by_hook.predictions


def test_pope_and_chair_from_real_generations(vlm, vlm_hf, log, small):
    shipped = log["heldout"]["small_sets"]
    p = E.pope(vlm, small["pope"])
    for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "invalid"):
        assert 0 <= getattr(p, k) <= 1
    assert p.n == 2 * log["heldout"]["small_sets"]["sets"]["n_pope_scenes"]  # one present + one absent per scene
    assert p.accuracy >= shipped["pope"]["accuracy"] - 0.04 and p.accuracy > 0.6
    scenes = small["describe"]
    texts = E.describe(vlm, scenes)
    assert texts == E.describe(vlm_hf, scenes)  # bridge and HF generate the same words
    assert all(t.endswith(".") or len(t.split()) == 13 for t in texts)
    c = E.chair(scenes, texts)
    assert all(0 <= c[k] <= 1 for k in ("chair_i", "chair_s", "recall")) and c["n_mentions"] > 0
    assert c["recall"] >= shipped["chair"]["recall"] - 0.1 and c["recall"] > 0.5


def test_noisy_images_make_it_hallucinate(vlm, small):
    """Pixel noise (the documented knob) lowers accuracy and produces hallucinated objects."""
    scenes = small["describe"]
    noisy = E.chair(scenes, E.describe(vlm, scenes, noise=0.3))
    clean = E.chair(scenes, E.describe(vlm, scenes))
    assert noisy["chair_s"] > clean["chair_s"] and noisy["chair_i"] > 0
    a = W.render(scenes[0], noise=0.3, noise_seed=1)
    assert torch.equal(a, W.render(scenes[0], noise=0.3, noise_seed=1))  # same scene, same noise
    assert not torch.equal(a, W.render(scenes[0], noise=0.3, noise_seed=2))
    assert (
        E.image_qa_accuracy(vlm, small["image_qa"], noise=0.3).accuracy
        < E.image_qa_accuracy(vlm, small["image_qa"]).accuracy
    )
