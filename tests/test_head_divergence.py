"""Head divergence (VHD) proved three ways: the planted context-reading head ranks first; every score
equals a plain-loop distance between o_proj inputs of two independent HF forwards; SmolLM2 end to end."""

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from headscope.analyzers import get_analyzer
from headscope.analyzers.head_divergence import HeadDivergence
from headscope.errors import InputError
from headscope.inputs.segments import build_variants, segment_prompts
from headscope.testing import plain_hf_copy, planted_model, tiny_model

BOS = 1


def planted_items(n_prompts=6, n_fill=40, seed=0):
    """[BOS] | 6 distinct tokens | n_fill other tokens + the segment's first 3 tokens again.

    Ground truth at the last token (a repeat of seg[2]): with the segment, the induction head (1,3)
    attends to the token after seg[2]'s first copy and outputs z = one-hot(seg[3]); without it there is
    no earlier copy, so it attends to BOS: z = one-hot(BOS). Euclidean VHD = sqrt(2) exactly. The
    previous-token, sink and local-window heads (w=4 < suffix) see the same keys in both: VHD = 0."""
    items = []
    for s in range(n_prompts):
        perm = (torch.randperm(46, generator=torch.Generator().manual_seed(seed + s)) + 2).tolist()
        seg, fill = perm[:6], perm[6 : 6 + n_fill]
        items.append(([BOS], seg, fill + seg[:3]))
    return items


def test_planted_context_reading_head_ranks_first():
    model, truth = planted_model()
    hd = HeadDivergence().fit(model, planted_items())
    v = hd.scores_.values  # [prompt, layer, head]
    np.testing.assert_allclose(v[:, 1, 3], math.sqrt(2), atol=1e-5)
    for kind in ("previous_token", "sink", "local_window"):
        l, h = truth.heads()[kind]
        assert np.abs(v[:, l, h]).max() < 1e-4, kind
    # Background heads write nothing (W_O = 0) but attend over every key, so their z moves when the
    # segment goes; with the segment a small share of the keys, they stay below sqrt(2) in every prompt.
    others = [(l, h) for l, h in truth.background()]
    assert max(v[:, l, h].max() for l, h in others) < math.sqrt(2) - 0.1
    assert hd.heads_[0] == (1, 3) and hd.scores_.top(1)["label"][0] == "L1H3"


def test_euclidean_is_scale_sensitive_cosine_is_not():
    """Gotcha, on purpose: with a 4-token suffix, the segment is a large share of the keys and a
    background head with big random values (layer 1, W_O = 0: it does nothing downstream) moves more
    than sqrt(2) in Euclidean distance. Cosine distance ignores the value scale: (1,3) is 1, first."""
    model, _ = planted_model()
    items = planted_items(n_fill=4)
    euc = HeadDivergence().fit(model, items).scores_.mean_over_prompts().values
    assert euc.max() > euc[1, 3]  # a do-nothing head outranks the context reader
    cos = HeadDivergence(distance="cosine").fit(model, items)
    np.testing.assert_allclose(cos.scores_.values[:, 1, 3], 1.0, atol=1e-6)
    assert cos.heads_[0] == (1, 3)
    sq = HeadDivergence(distance="sq_l2", positions=-1).fit(model, planted_items())
    np.testing.assert_allclose(sq.scores_.values[:, 1, 3], 2.0, atol=1e-5)


def test_planted_positions_and_replaced_variant():
    model, _ = planted_model()
    items = planted_items(n_prompts=2)
    hd = HeadDivergence(positions="after_segment").fit(model, items)
    d = hd.vhd_per_position_[0][1, :, 3]  # induction head over the 43 suffix positions
    expected = np.r_[np.zeros(40), np.full(3, math.sqrt(2))]  # only the repeats had a copy to read
    np.testing.assert_allclose(d, expected, atol=1e-5)
    assert hd.variants_.present_positions[0] == list(range(7, 50))
    assert hd.variants_.other_positions[0] == list(range(1, 44))
    # replaced by pad tokens (no content: the induction head finds no copy): same answer, same length
    rep = HeadDivergence(variant="replaced", filler=0, positions=[-3, -2, -1]).fit(model, items)
    assert rep.variants_.other[0] == [BOS, *[0] * 6, *items[0][2]]
    assert rep.variants_.other_positions == rep.variants_.present_positions == [[47, 48, 49]] * 2
    np.testing.assert_allclose(rep.scores_.values[:, 1, 3], math.sqrt(2), atol=1e-5)


# ---------------------------------------------------------------- reference: plain HF forwards + loops


def hf_head_outputs(hf, ids):
    """Per layer, the o_proj input of one unpadded forward reshaped to [pos][head] d_head vectors."""
    got, handles = {}, []
    for l, layer in enumerate(hf.model.layers):

        def grab(module, args, l=l):
            got[l] = args[0][0].detach().double()

        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        for hdl in handles:
            hdl.remove()
    H, dh = hf.config.num_attention_heads, hf.config.head_dim
    return [got[l].reshape(len(ids), H, dh).tolist() for l in range(len(got))]


def plain_distance(a, b, kind):
    if kind == "cosine":
        dot = sum(x * y for x, y in zip(a, b))
        return 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    sq = sum((x - y) ** 2 for x, y in zip(a, b))
    return sq if kind == "sq_l2" else math.sqrt(sq)


def reference_vhd(hf, triples, other_of, positions_of, kind):
    """[prompt][layer][head] mean over positions of d(z_present, z_other), plain loops throughout."""
    out = []
    for pre, seg, suf in triples:
        present, other = pre + seg + suf, other_of(pre, seg, suf)
        zp, zo = hf_head_outputs(hf, present), hf_head_outputs(hf, other)
        pairs = positions_of(pre, seg, suf, len(present), len(other))
        out.append(
            [
                [
                    sum(plain_distance(zp[l][p][h], zo[l][q][h], kind) for p, q in pairs) / len(pairs)
                    for h in range(len(zp[0][0]))
                ]
                for l in range(len(zp))
            ]
        )
    return np.array(out)


def removed(pre, seg, suf):
    return pre + suf


def last(pre, seg, suf, n, m):
    return [(n - 1, m - 1)]


def after_segment(pre, seg, suf, n, m):
    return [(len(pre) + len(seg) + i, m - len(suf) + i) for i in range(len(suf))]


TINY_TRIPLES = [
    ([1, 5, 6], [9, 10, 11, 12], [13, 5, 6, 14]),
    ([1], [20, 21], [22, 23, 20]),
    ([1, 30, 31, 32, 33], [7, 7, 8, 9, 10, 11], [12]),
]  # ragged: padded batches


@pytest.mark.parametrize("kind", ["euclidean", "sq_l2", "cosine"])
def test_reference_tiny_model(kind):
    model = tiny_model(seed=3)
    hf = plain_hf_copy(model)
    hd = HeadDivergence(distance=kind, positions="after_segment", batch_size=2).fit(model, TINY_TRIPLES)
    ref = reference_vhd(hf, TINY_TRIPLES, removed, after_segment, kind)
    np.testing.assert_allclose(hd.scores_.values, ref, atol=1e-4, rtol=0)
    assert ref.min() >= 0 and ref.max() > 0.05  # something actually moved
    # T-VHD: top-4 of 4 heads = the whole layer; with k=1 the per-layer maximum
    np.testing.assert_allclose(hd.token_vhd_, ref.sum((1, 2)), atol=1e-4)
    k1 = HeadDivergence(distance=kind, positions="after_segment", top_k_per_layer=1).fit(model, TINY_TRIPLES)
    np.testing.assert_allclose(k1.token_vhd_, [sum(max(row) for row in p) for p in ref], atol=1e-4)


def test_reference_tiny_replaced_and_outlier_rule():
    model = tiny_model(seed=3, n_heads=8, n_kv_heads=2)
    hf = plain_hf_copy(model)
    filler = [40, 41]

    def replaced(pre, seg, suf):
        return pre + (filler * len(seg))[: len(seg)] + suf

    ref = reference_vhd(hf, TINY_TRIPLES, replaced, last, "euclidean")
    hd = HeadDivergence(variant="replaced", filler=filler).fit(model, TINY_TRIPLES)
    np.testing.assert_allclose(hd.scores_.values, ref, atol=1e-4, rtol=0)
    # VHR's rule by hand: TA = ||z without||^2 at the last token; flag VHD and TA both > mean + std
    ta = np.array(
        [
            [[sum(x * x for x in vec) for vec in zl[-1]] for zl in hf_head_outputs(hf, replaced(*t))]
            for t in TINY_TRIPLES
        ]
    )
    np.testing.assert_allclose(hd.ta_.values, ta, atol=1e-4)
    flagged = set()
    for p in range(len(ref)):
        for l in range(len(ref[p])):
            mv, sv = np.mean(ref[p][l]), np.std(ref[p][l])
            mt, st = np.mean(ta[p][l]), np.std(ta[p][l])
            flagged |= {(p, l, h) for h in range(8) if ref[p][l][h] > mv + sv and ta[p][l][h] > mt + st}
    assert flagged, "the check needs at least one outlier head"
    assert set(zip(hd.outliers_["prompt"], hd.outliers_["layer"], hd.outliers_["head"])) == flagged
    zeroed = HeadDivergence(variant="replaced", filler=filler, outlier_rule=True).fit(model, TINY_TRIPLES)
    mask = np.zeros(ref.shape, bool)
    mask[tuple(np.array(sorted(flagged)).T)] = True
    np.testing.assert_allclose(zeroed.scores_.values, np.where(mask, 0.0, ref), atol=1e-4)
    assert zeroed.outliers_["zeroed"].all() and not hd.outliers_["zeroed"].any()


def test_head_selection():
    model = tiny_model(seed=3, n_heads=8, n_kv_heads=2)
    hd = HeadDivergence().fit(model, TINY_TRIPLES)
    mean = hd.scores_.mean_over_prompts().values
    expected = {
        (l, h)
        for l in range(2)
        for h in range(8)
        if mean[l, h] > sorted(mean[l])[3] + 0.5 * (sorted(mean[l])[4] - sorted(mean[l])[3])
    }  # above the per-layer median (8 heads: mean of 4th, 5th)
    assert set(hd.heads_) == expected and len(hd.heads_) == 8
    assert [mean[lh] for lh in hd.heads_] == sorted((mean[lh] for lh in hd.heads_), reverse=True)
    top3 = hd.set_params(select=("top_k", 3)).fit(model, TINY_TRIPLES).heads_
    assert top3 == [(int(i) // 8, int(i) % 8) for i in np.argsort(-mean.ravel())[:3]]


def test_segments_tokenise_parts_separately():
    model = tiny_model()
    (item,) = segment_prompts(model, [{"prefix": "t5 t6", "segment": "t7 t8", "suffix": "t9"}])
    assert item.present == [BOS, 5, 6, 7, 8, 9] and item.span == (3, 5) and item.text == "t5 t6t7 t8t9"
    (ids,) = segment_prompts(model, [([5], [7, 8], [9])])  # token ids are used exactly as given
    assert ids.present == [5, 7, 8, 9]
    pair = build_variants(model, [item], variant="replaced", filler="t40 t41 t42", positions=[-1, 5])
    assert pair.other == [[BOS, 5, 6, 40, 41, 9]] and pair.other_positions == [[5, 5]]


@pytest.mark.parametrize(
    "data, params, match",
    [
        ([("t5", "t6", "")], {}, "suffix is empty"),
        ([("t5", "", "t6")], {}, "segment is empty"),
        ([("t5", "t6 t7", "t8")], {"positions": [2]}, "not after the segment"),
        ([("t5", "t6", "t8")], {"distance": "manhattan"}, "distance"),
        ([("t5", "t6", "t8")], {"variant": "masked"}, "variant"),
        ([("t5", "t6", "t8")], {"filler": "t9"}, "only used with variant='replaced'"),
        ([("t5", "t6", "t8")], {"top_k_per_layer": 0}, "top_k_per_layer"),
        ([("t5", "t6", "t8")], {"select": "half"}, "above_median"),
        (["t5 t6 t8"], {}, "triple"),
        ([("t5", "t6", "t8")], {"positions": "first"}, "positions"),
    ],
)
def test_bad_input(data, params, match):
    with pytest.raises(InputError, match=match):
        HeadDivergence(**params).fit(tiny_model(), data)


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.real_model
def test_reference_smollm2(smol, smol_hf):
    tok = smol.tokenizer
    texts = [
        ("Notes:", " The vault code is 7316 and the door is blue.", "\nQ: What colour is the door?\nA: The door is"),
        ("System: answer briefly.", " Paris is the capital of France.", "\nUser: capital of France?\nAssistant:"),
    ]
    triples = [tuple(tok(t, add_special_tokens=False)["input_ids"] for t in tr) for tr in texts]
    hd = HeadDivergence(positions=[-2, -1]).fit(smol, texts)
    assert [it.present for it in hd.segments_] == [p + s + x for p, s, x in triples]
    ref = reference_vhd(
        smol_hf, triples, removed, lambda pre, seg, suf, n, m: [(n - 2, m - 2), (n - 1, m - 1)], "euclidean"
    )
    np.testing.assert_allclose(hd.scores_.values, ref, atol=1e-4, rtol=0)


@pytest.mark.real_model
def test_smollm2_default_end_to_end(smol):
    hd = get_analyzer("head-divergence").fit(smol)
    assert hd.scores_.values.shape == (6, 30, 9) and np.isfinite(hd.scores_.values).all()
    assert isinstance(hd.plot(), go.Figure) and isinstance(hd.plot_tokens(), go.Figure)
    mean = hd.scores_.mean_over_prompts().values
    assert mean[20:].mean() > 3 * mean[:5].mean()  # context is read mostly by late-layer heads here
    assert len(hd.heads_) == 30 * 4 and hd.token_vhd_.shape == (6,)
