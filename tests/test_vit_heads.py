"""vit-heads: attention distance and pruning importance of the vision-tower heads of a tiny LLaVA.

Ground truth is planted (a uniform head, a head attending to its own patch, a head that writes
nothing) or recomputed independently on a plain Hugging Face copy of the same weights: attention
distance from CLIP's `output_attentions`, pruning by zeroing the head's columns of `out_proj`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from headscope.analyzers.base import get_analyzer
from headscope.analyzers.vit_heads import AnswerItem, ViTHeads, vision_tower
from headscope.errors import InputError
from headscope.testing.tiny_vlm import _boot, _hf_llava, tiny_vlm_prompt

SHAPE = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_model": 64, "image_size": 32, "patch": 8}
GRID, PATCH, D_HEAD = 4, 8, 16  # the tiny tower: 4x4 patches of 8 px, 2 heads of 16 dims, 2 layers
SELF_HEAD, UNIFORM_HEAD, DEAD_HEAD = (0, 0), (1, 1), (0, 1)


def _layers(hf):
    return hf.model.vision_tower.encoder.layers


def _pair(edit=None):
    """(bridge, plain HF copy) with identical weights, `edit(hf)` applied before the copy."""
    hf = _hf_llava(0, **SHAPE)
    if edit is not None:
        with torch.no_grad():
            edit(hf)
    plain = copy.deepcopy(hf)
    return _boot(hf), plain


def _rows(head):
    return slice(head * D_HEAD, (head + 1) * D_HEAD)


def _plant(hf):
    """SELF_HEAD attends to its own patch; UNIFORM_HEAD attends uniformly (q and k weights zero).

    Image content is switched off (patch conv and CLS embedding zero) and patch p's position embedding
    is the one-hot e_{p-1}, so after LayerNorm x_p = a e_{p-1} - b 1 (CLS: 0). SELF_HEAD's q and k read
    those 16 dims with gain 3: its score is ~70 logits higher on the query's own patch than anywhere else.
    """
    emb = hf.model.vision_tower.embeddings
    emb.patch_embedding.weight.zero_()
    emb.class_embedding.zero_()
    emb.position_embedding.weight.zero_()
    emb.position_embedding.weight[1:, : GRID * GRID] = torch.eye(GRID * GRID)
    layer, head = SELF_HEAD
    attn = _layers(hf)[layer].self_attn
    for proj in (attn.q_proj, attn.k_proj):
        proj.weight[_rows(head)] = 3.0 * torch.eye(D_HEAD, proj.weight.shape[1])
        proj.bias[_rows(head)] = 0.0
    layer, head = UNIFORM_HEAD
    attn = _layers(hf)[layer].self_attn
    attn.q_proj.weight[_rows(head)] = 0.0  # q and k constant over tokens -> equal scores
    attn.k_proj.weight[_rows(head)] = 0.0


def _kill(hf):
    layer, head = DEAD_HEAD
    _layers(hf)[layer].self_attn.out_proj.weight[:, _rows(head)] = 0.0


def _items(model, n=3):
    """Prompts of different lengths (so right padding is exercised), the last 3 text tokens the answer."""
    out = []
    for seed in range(n):
        ids, px = tiny_vlm_prompt(model, n_before=2, n_after=3 + seed, seed=seed)
        out.append(AnswerItem(ids[0], px, tuple(range(ids.shape[1] - 3, ids.shape[1]))))
    return out


@pytest.fixture(scope="module")
def planted():
    model, plain = _pair(_plant)
    return model, plain, ViTHeads(prune_curve=False).fit(model, _items(model, 2))


@pytest.fixture(scope="module")
def random_pair():
    model, plain = _pair(_kill)
    items = _items(model)
    # batch_size 12 = 3 items x 4 variants: the single-head variants share one forward
    return model, plain, items, ViTHeads(batch_size=12).fit(model, items)


def _centres():
    return np.array([((i % GRID + 0.5) * PATCH, (i // GRID + 0.5) * PATCH) for i in range(GRID * GRID)])


def test_uniform_head_distance_is_mean_pairwise_distance(planted):
    _, _, vit = planted
    c = _centres()
    pairwise = np.mean([np.hypot(*(a - b)) for a in c for b in c])  # 16 x 16 pairs, self-pairs included
    d = vit.attention_distance_.values[:, UNIFORM_HEAD[0], UNIFORM_HEAD[1]]
    np.testing.assert_allclose(d, pairwise, atol=1e-5)
    np.testing.assert_allclose(vit.cls_attention_.values[:, UNIFORM_HEAD[0], UNIFORM_HEAD[1]], 1 / 17, atol=1e-6)


def test_self_attending_head_has_distance_zero(planted):
    _, _, vit = planted
    d = vit.attention_distance_.values[:, SELF_HEAD[0], SELF_HEAD[1]]
    np.testing.assert_allclose(d, 0.0, atol=1e-4)
    assert vit.attention_distance_.values.min() >= 0.0
    assert vit.attention_distance_.values[:, 0, 1].mean() > 1.0  # the untouched head in that layer is not local


def _hf_attention_distance(plain, items) -> np.ndarray:
    """[images, layer, head] recomputed with loops from CLIP's own attention weights."""
    c = _centres()
    out = []
    for it in items:
        with torch.no_grad():
            att = plain.model.vision_tower(it.pixel_values, output_attentions=True).attentions
        for img in range(it.pixel_values.shape[0]):
            per_layer = []
            for a in att:
                heads = []
                for h in range(a.shape[1]):
                    w = a[img, h, 1:, 1:].double().numpy()  # patch queries x patch keys
                    w = w / w.sum(1, keepdims=True)
                    heads.append(
                        np.mean([sum(w[q, k] * np.hypot(*(c[q] - c[k])) for k in range(len(c))) for q in range(len(c))])
                    )
                per_layer.append(heads)
            out.append(per_layer)
    return np.array(out)


def test_attention_distance_matches_hf_output_attentions(random_pair):
    _, plain, items, vit = random_pair
    ref = _hf_attention_distance(plain, items)
    assert vit.attention_distance_.values.shape == ref.shape == (3, 2, 2)
    np.testing.assert_allclose(vit.attention_distance_.values, ref, atol=1e-5)


def _hf_answer_loss(plain, items, pruned=()) -> float:
    """Token-weighted answer cross-entropy of the plain model, heads pruned by zeroing out_proj columns."""
    hf = copy.deepcopy(plain)
    with torch.no_grad():
        for layer, head in pruned:
            _layers(hf)[layer].self_attn.out_proj.weight[:, _rows(head)] = 0.0
        total, count = 0.0, 0
        for it in items:  # one item per forward: no padding, no stacking
            ids = torch.tensor([it.ids])
            logits = hf(input_ids=ids, pixel_values=it.pixel_values).logits[0].double()
            pos = torch.tensor(it.answer_positions)
            total += torch.nn.functional.cross_entropy(logits[pos - 1], ids[0, pos], reduction="sum").item()
            count += len(pos)
    return total / count


def test_pruning_importance_matches_hf_weight_edit(random_pair):
    _, plain, items, vit = random_pair
    clean = _hf_answer_loss(plain, items)
    assert vit.metric_clean_ == pytest.approx(clean, abs=1e-5)
    ref = np.array([[_hf_answer_loss(plain, items, [(l, h)]) - clean for h in range(2)] for l in range(2)])
    np.testing.assert_allclose(vit.importance_.values[0], ref, atol=1e-5)
    assert vit.scores_ is vit.importance_
    order = [(l, h) for l, h in vit.ranking_]
    assert [ref[l, h] for l, h in order] == sorted(ref.ravel(), reverse=True)


def test_head_that_writes_nothing_has_zero_importance(random_pair):
    _, _, _, vit = random_pair
    imp = vit.importance_.values[0]
    assert abs(imp[DEAD_HEAD]) < 1e-6
    others = np.delete(imp.ravel(), DEAD_HEAD[0] * 2 + DEAD_HEAD[1])
    assert np.all(np.abs(others) > 1e-4)  # the live heads do matter, so zero is not a fluke of the metric


def test_pruning_curve_is_cumulative_in_order_of_importance(random_pair):
    _, plain, items, vit = random_pair
    df = vit.pruning_curve_
    imp = vit.importance_.values[0]
    assert list(df["n_pruned"]) == [0, 1, 2, 3, 4] and df["metric"].iloc[0] == pytest.approx(vit.metric_clean_)
    pruned = [(int(s[1]), int(s[3])) for s in df["last_pruned"].iloc[1:]]
    assert [imp[p] for p in pruned] == sorted(imp.ravel())  # least important first
    for k in (1, 2, 4):  # each step prunes all earlier heads too
        assert df["metric"].iloc[k] == pytest.approx(_hf_answer_loss(plain, items, pruned[:k]), abs=1e-5)
    np.testing.assert_allclose(df["drop"], df["metric"] - vit.metric_clean_)


def test_stacking_does_not_change_numbers(random_pair):
    model, _, items, vit = random_pair
    one = ViTHeads(batch_size=1).fit(model, items)  # one row per forward
    assert one.importance_.allclose(vit.importance_, atol=1e-6)
    assert one.attention_distance_.allclose(vit.attention_distance_, atol=1e-6)
    np.testing.assert_allclose(one.pruning_curve_["metric"], vit.pruning_curve_["metric"], atol=1e-6)


def test_callable_metric_and_accuracy(random_pair):
    model, _, items, vit = random_pair

    def answer_loss(m, its):  # the built-in loss, recomputed through the model under the pruning hooks
        total, count = 0.0, 0
        with torch.no_grad():
            for it in its:
                ids = torch.tensor([it.ids])
                logits = m(ids, pixel_values=it.pixel_values)[0].double()
                pos = torch.tensor(it.answer_positions)
                total += torch.nn.functional.cross_entropy(logits[pos - 1], ids[0, pos], reduction="sum").item()
                count += len(pos)
        return total / count

    custom = ViTHeads(metric=answer_loss, greater_is_better=False, prune_curve=False).fit(model, items)
    assert custom.importance_.allclose(vit.importance_, atol=1e-5)
    acc = ViTHeads(metric="accuracy", prune_curve=False).fit(model, items)
    assert 0.0 <= acc.metric_clean_ <= 1.0
    assert np.all(np.abs(acc.importance_.values) <= 1.0)


def test_hooks_removed_after_an_exception(random_pair):
    model, _, items, _ = random_pair
    calls = []

    def failing(m, its):
        calls.append(1)
        if len(calls) == 3:  # inside the per-head loop, with a gate hook attached
            raise RuntimeError("boom in the metric")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        ViTHeads(metric=failing, greater_is_better=True).fit(model, items)
    assert len(calls) == 3
    assert sum(len(hp._forward_hooks) for hp in set(model.hook_dict.values())) == 0


def test_bad_input_names_the_fix(random_pair):
    model, _, items, _ = random_pair
    with pytest.raises(InputError, match="data="):
        ViTHeads().fit(model)  # no built-in data for a model other than shapes-vlm
    with pytest.raises(InputError, match="greater_is_better"):
        ViTHeads(metric=lambda m, its: 0.0).fit(model, items)
    with pytest.raises(InputError, match="metric="):
        ViTHeads(metric="bleu").fit(model, items)
    with pytest.raises(InputError, match="answer_positions"):
        ViTHeads().fit(model, [{"ids": items[0].ids, "pixel_values": items[0].pixel_values}])
    with pytest.raises(InputError, match="vision"):
        from headscope.testing import tiny_model

        vision_tower(tiny_model())


def test_registered_and_figures(random_pair):
    _, _, _, vit = random_pair
    assert type(get_analyzer("vit-heads", batch_size=4)) is ViTHeads
    fig = vit.plot()
    np.testing.assert_allclose(np.asarray(fig.data[0].y), vit.attention_distance_.values.mean(0).ravel())
    np.testing.assert_allclose(np.asarray(fig.data[0].marker.color), vit.importance_.values[0].ravel())
    assert list(vit.plot_pruning().data[0].y) == list(vit.pruning_curve_["metric"])
