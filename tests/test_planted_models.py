"""headscope.testing: tiny random models and planted-head models behave exactly as documented.

Patterns are read straight from ``blocks.{l}.attn.hook_pattern`` with plain hooks (no headscope
capture code), and the planted kinds are checked against definitions written out here, independently
of ``PlantedHeads.expected_pattern`` (which gets its own comparison).
"""

import time

import pytest
import torch

from headscope.testing import KINDS, PlantedHeads, induction_tokens, planted_model, tiny_model, tiny_tokenizer

EXACT = 1e-5  # planted patterns must hold to this (actual leakage is ~1e-13)
SEQ = 30
TEXTS = ["t2 t3 t4 t2 t3 t9 t4 t2", "t5 t6 t5", "t7 t7 t7 t8 t7 t8 t30 t31 t7 t8 t40 t2 t3 t47 t2"]


def run_patterns(model, inputs, **kw):
    """(logits, [pattern of layer l: [batch, head, q, k]]) via run_with_hooks on hook_pattern."""
    store = {}

    def save(t, hook):
        store[hook.name] = t.detach().clone()

    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    logits = model.run_with_hooks(inputs, fwd_hooks=[(n, save) for n in names], **kw)
    return logits.detach(), [store[n] for n in names]


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def repeated(planted):
    model, _ = planted
    tokens = induction_tokens(model, seq_len=SEQ, n_repeats=2, batch=4, seed=1)
    return (tokens, *run_patterns(model, tokens))


def head(patterns, where):
    layer, h = where
    return patterns[layer][:, h]  # [batch, q, k]


def test_build_time():
    planted_model(), tiny_model()  # first calls pay the one-off imports
    for build in (planted_model, tiny_model):
        t0 = time.perf_counter()
        build()
        assert time.perf_counter() - t0 < 2.0, build.__name__


def test_default_layout(planted):
    model, truth = planted
    assert truth.kinds() == KINDS
    assert truth.heads() == {"sink": (0, 2), "previous_token": (0, 1), "induction": (1, 3), "local_window": (0, 3)}
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads) == (2, 4, 2)
    groups = [(l, truth.kv_group(h)) for l, h in truth.heads().values()]
    assert len(set(groups)) < len(groups), "two planted heads should share a KV group"
    assert any(h != 0 for _, h in truth.heads().values())
    assert set(truth.background()) == {(0, 0), (1, 0), (1, 1), (1, 2)}
    d = truth.as_dict()
    assert d["sink"] == (0, 2) and d["local_window_size"] == 4 and d["margin"] == 30.0
    assert isinstance(truth, PlantedHeads)


def test_planted_model_is_seeded():
    tokens = induction_tokens(48, seq_len=8, batch=2)
    (la, pa), (lb, pb) = (run_patterns(planted_model(seed=4)[0], tokens) for _ in range(2))
    lc, pc = run_patterns(planted_model(seed=5)[0], tokens)
    assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not torch.equal(pa[0][:, 0], pc[0][:, 0])  # background head (0, 0) is re-drawn
    assert torch.equal(pa[0][:, 1:], pc[0][:, 1:]) and torch.equal(la, lc)  # planted part is fixed


def test_sink_head(planted, repeated):
    _, truth = planted
    _, _, patterns = repeated
    assert head(patterns, truth.sink)[:, :, 0].min() >= 1 - EXACT


def test_previous_token_head(planted, repeated):
    _, truth = planted
    _, _, patterns = repeated
    A = head(patterns, truth.previous_token)
    assert A.diagonal(offset=-1, dim1=1, dim2=2).min() >= 1 - EXACT  # query i on key i-1, i >= 1
    assert A[:, 0, 0].min() >= 1 - EXACT


def test_local_window_head(planted, repeated):
    _, truth = planted
    _, _, patterns = repeated
    A, w = head(patterns, truth.local_window), truth.local_window_size
    i = torch.arange(A.shape[1])
    dist = i[:, None] - i[None, :]
    window = (dist >= 0) & (dist < w)
    assert (A * window).sum(-1).min() >= 1 - EXACT
    equal = window.float() / window.sum(-1, keepdim=True)  # 1/w, or 1/(i+1) near the start
    assert (A - equal).abs().max() < 1e-4
    # rows with a full window: prev-token mass 1/w, mean distance (w-1)/2 (1.5 vs a prev head's 1)
    prev = A.diagonal(offset=-1, dim1=1, dim2=2)[:, w - 1 :]
    assert (prev - 1 / w).abs().max() < 1e-4
    assert ((A[:, w:] * dist[w:]).sum(-1) - (w - 1) / 2).abs().max() < 1e-3


def test_induction_head(planted, repeated):
    _, truth = planted
    tokens, _, patterns = repeated
    A = head(patterns, truth.induction)
    for b in range(tokens.shape[0]):
        seq = tokens[b].tolist()
        for i in range(1, len(seq)):
            targets = [j + 1 for j in range(i) if seq[j] == seq[i]]
            if i > SEQ:  # second repeat: exactly one earlier occurrence
                assert len(targets) == 1
            mass = A[b, i, targets].sum() if targets else A[b, i, 0]  # no earlier copy -> BOS
            assert mass >= 1 - EXACT, (b, i)


def test_model_predicts_the_repeat(planted, repeated):
    tokens, logits, _ = repeated
    pred = logits.argmax(-1)[:, SEQ + 1 : -1]  # queries in the second repeat predict the next token
    assert (pred == tokens[:, SEQ + 2 :]).float().mean() >= 0.99
    top2 = logits[:, SEQ + 1 : -1].topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 10  # a confident copy, not a near-tie


def test_background_heads_are_not_planted_looking(planted, repeated):
    _, truth = planted
    tokens, _, patterns = repeated
    for where in truth.background():
        A = head(patterns, where)[:, 1:]  # skip query 0 (it can only see itself)
        prev = A.diagonal(offset=-1, dim1=1, dim2=2).mean()
        sink = A[..., 0].mean()
        # row r is query r + 1; query i in the second repeat has its induction target at i - SEQ + 1
        ind = torch.stack([A[:, i - 1, i - SEQ + 1] for i in range(SEQ + 1, tokens.shape[1])]).mean()
        assert max(prev, sink, ind) < 0.5, (where, prev, sink, ind)
        assert A.max(-1).values.mean() < 0.5, where  # diffuse, not one-hot


def test_rows_sum_to_one_and_are_causal(repeated):
    _, _, patterns = repeated
    for A in patterns:
        assert torch.allclose(A.sum(-1), torch.ones(()), atol=1e-5)
        assert A.triu(diagonal=1).abs().max() == 0


def test_gqa_heads_share_keys(planted):
    model, truth = planted
    tokens = induction_tokens(model, seq_len=10, seed=2)
    _, cache = model.run_with_cache(tokens)
    for layer in range(truth.n_layers):
        k = cache[f"blocks.{layer}.attn.hook_k"]
        assert k.shape[2] == truth.n_kv_heads
        # [batch, pos, head, d_head] / [batch, pos, kv_head, d_head] after RoPE
        q, rk = cache[f"blocks.{layer}.attn.hook_rot_q"], cache[f"blocks.{layer}.attn.hook_rot_k"]
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        lower = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        for h in range(truth.n_heads):  # each head's scores come from its group's rotated keys
            mine = q[:, :, h] @ rk[:, :, truth.kv_group(h)].transpose(-1, -2) / q.shape[-1] ** 0.5
            assert torch.allclose(mine[:, lower], scores[:, h][:, lower], atol=1e-3, rtol=1e-5)
    # the planted sink and local-window heads are in one group: one K serves two different patterns
    assert (
        truth.kv_group(truth.sink[1]) == truth.kv_group(truth.local_window[1])
        and truth.sink[0] == truth.local_window[0]
    )


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_varied_input(planted, side):
    model, truth = planted
    tokens = model.to_tokens(TEXTS, padding_side=side)
    mask = tokens != tiny_tokenizer().pad_token_id
    _, patterns = run_patterns(model, TEXTS, padding_side=side)
    bos_pos = mask.float().argmax(1)  # first real position holds BOS
    for b in range(len(TEXTS)):
        real = mask[b].nonzero().flatten()
        sink = head(patterns, truth.sink)[b]
        assert sink[real, bos_pos[b]].min() >= 1 - EXACT
        prev = head(patterns, truth.previous_token)[b]
        assert prev[real[1:], real[:-1]].min() >= 1 - EXACT
    for kind, where in truth.heads().items():
        expected = truth.expected_pattern(kind, tokens, mask)
        got = head(patterns, where)
        assert (got - expected)[mask].abs().max() < 1e-4, kind  # compare real query rows only


def test_expected_pattern_matches_model(planted, repeated):
    model, truth = planted
    tokens, _, patterns = repeated
    for kind, where in truth.heads().items():
        assert (head(patterns, where) - truth.expected_pattern(kind, tokens)).abs().max() < 1e-4, kind
    # No BOS: the sink is uniform; position 0 carries its own token as "previous", so the last t5
    # matches keys 0 (itself t5), 1 (after t5) and 3 (after t5).
    nobos = torch.tensor([[5, 6, 5, 7, 5]])
    assert torch.allclose(truth.expected_pattern("sink", nobos)[0, 2, :3], torch.full((3,), 1 / 3))
    third = torch.tensor([1, 1, 0, 1, 0]) / 3
    assert torch.allclose(truth.expected_pattern("induction", nobos)[0, 4], third)
    _, patterns = run_patterns(model, nobos)
    for kind, where in truth.heads().items():
        assert (head(patterns, where) - truth.expected_pattern(kind, nobos)).abs().max() < 1e-4, kind


@pytest.mark.parametrize(
    "kw",
    [
        dict(local_window_size=2),
        dict(local_window_size=3, n_kv_heads=4),
        dict(
            n_layers=3,
            n_heads=8,
            n_kv_heads=1,
            previous_token=(1, 5),
            induction=(2, 7),
            sink=(2, 0),
            local_window=(0, 6),
        ),
        dict(sink=None, induction=None, vocab_size=12, n_ctx=32),
    ],
)
def test_other_layouts_are_exact(kw):
    model, truth = planted_model(**kw)
    seq = min(model.cfg.d_vocab - 2, (model.cfg.n_ctx - 1) // 3)
    tokens = induction_tokens(model, seq_len=seq, n_repeats=3, batch=2, seed=3)
    logits, patterns = run_patterns(model, tokens)
    for kind, where in truth.heads().items():
        assert (head(patterns, where) - truth.expected_pattern(kind, tokens)).abs().max() < 1e-4, kind
    if truth.induction is not None:
        assert (logits.argmax(-1)[:, seq + 1 : -1] == tokens[:, seq + 2 :]).all()


@pytest.mark.parametrize(
    "kw",
    [
        dict(previous_token=None),  # induction without a previous-token head
        dict(previous_token=(1, 1)),  # previous-token head not before induction
        dict(sink=(0, 1)),  # two kinds on one head
        dict(local_window_size=7),
        dict(n_ctx=4096),
        dict(n_layers=3, sink=(2, 0)),  # planted head above the induction layer
        dict(induction=(2, 0)),  # outside the model
    ],
)
def test_invalid_layouts_raise(kw):
    with pytest.raises(ValueError):
        planted_model(**kw)


def test_checks_catch_a_broken_head():
    """The exactness thresholds above are not vacuous: a slightly detuned head fails them."""
    model, truth = planted_model()
    layer, h = truth.previous_token
    q = model.original_model.model.layers[layer].self_attn.q_proj.weight
    with torch.no_grad():
        q[h * model.cfg.d_head : (h + 1) * model.cfg.d_head] *= (
            0.3  # shrink the head's logits: still mostly on i-1, no longer exact
        )
    tokens = induction_tokens(model, seq_len=SEQ, seed=1)
    _, patterns = run_patterns(model, tokens)
    prev = head(patterns, truth.previous_token).diagonal(offset=-1, dim1=1, dim2=2)
    assert prev.min() < 1 - EXACT and prev.mean() > 0.5


def test_tiny_model_is_seeded_and_random():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_model(seed=0)
    assert torch.equal(torch.rand(3), before), "building must not consume the global RNG"
    b, c = tiny_model(seed=0), tiny_model(seed=1)
    tokens = induction_tokens(a, seq_len=12, batch=2)
    la, pa = run_patterns(a, tokens)
    lb, _ = run_patterns(b, tokens)
    lc, _ = run_patterns(c, tokens)
    assert torch.equal(la, lb) and not torch.allclose(la, lc)
    assert la.shape == (2, 25, 48) and (a.cfg.d_model, a.cfg.d_head, a.cfg.n_key_value_heads) == (64, 16, 2)
    uniform = torch.ones(25, 25).tril() / torch.arange(1, 26)[:, None]
    assert all((p - uniform).abs().max() > 0.1 for p in pa)  # random, not trivially uniform
    assert a.to_tokens("t2 t3 t4").tolist() == [[1, 2, 3, 4]]


def test_induction_tokens():
    t = induction_tokens(48, seq_len=46, n_repeats=3, batch=5, seed=7)
    assert t.shape == (5, 1 + 46 * 3) and t.dtype == torch.long
    assert (t[:, 0] == 1).all()
    seg = t[:, 1:47]
    assert (seg >= 2).all() and all(len(set(row.tolist())) == 46 for row in seg)
    assert torch.equal(t[:, 47:93], seg) and torch.equal(t[:, 93:], seg)
    assert torch.equal(t, induction_tokens(48, seq_len=46, n_repeats=3, batch=5, seed=7))
    assert not torch.equal(t, induction_tokens(48, seq_len=46, n_repeats=3, batch=5, seed=8))
    with pytest.raises(ValueError):
        induction_tokens(48, seq_len=47)
