"""The token view (headscope.viz.token_view): its numbers are capture(keep_patterns=True)'s (and plain HF's
output_attentions), its HTML needs nothing from outside, and hovering a token in a real browser lights
the keys it attends to by those numbers, in every head."""

import re

import numpy as np
import pytest
import torch

from headscope import token_view
from headscope.capture import capture
from headscope.capture.reducers import InductionScore
from headscope.capture.token_view import token_view_data
from headscope.errors import InputError
from headscope.testing import planted_model
from headscope.testing.browser import open_page
from headscope.testing.hf_reference import plain_hf_copy

TOKENS = [1, 5, 9, 12, 5, 9, 12, 30, 7, 5, 9]


@pytest.fixture(scope="module")
def planted():
    return planted_model()


def test_numbers_equal_the_captured_patterns(planted):
    model, truth = planted
    heads = [truth.induction, truth.previous_token, (0, 0)]
    data = token_view_data(model, TOKENS, heads)
    kept = capture(model, [TOKENS], [InductionScore()], keep_patterns=True, batch_size=1, progress=False).patterns[0]
    with torch.no_grad():
        hf = plain_hf_copy(model)(torch.tensor([TOKENS]), output_attentions=True).attentions
    assert [h["label"] for h in data["heads"]] == [f"L{a}H{b}" for a, b in heads]
    assert data["rows"] == list(range(len(TOKENS))) and len(data["tokens"]) == len(TOKENS)
    for (layer, head), shown in zip(heads, data["heads"]):
        values = np.array(shown["values"])
        np.testing.assert_allclose(values, kept[layer, head].numpy(), atol=5e-5)
        np.testing.assert_allclose(values, hf[layer][0, head].numpy(), atol=1e-4)


def test_bad_heads_and_long_prompts_say_the_fix(planted):
    model, _ = planted
    with pytest.raises(InputError, match="out of range"):
        token_view_data(model, TOKENS, [(99, 0)])
    with pytest.raises(InputError, match="heads is empty"):
        token_view_data(model, TOKENS, [])
    with pytest.raises(InputError, match="max_tokens"):
        token_view_data(model, TOKENS, [(0, 0)], max_tokens=5)


def test_html_is_self_contained_and_hover_highlights_the_keys(planted, tmp_path):
    model, truth = planted
    heads = [truth.induction, truth.previous_token]
    view = token_view(model, TOKENS, heads)
    html = view._repr_html_()
    assert "<script>" in html and "headscopeTokenView" in html
    assert not re.search(r"(src|href)\s*=|https?://", html)  # nothing loaded from anywhere
    path = view.save(tmp_path / "view.html")
    with open_page(path, width=1000, height=700) as (page, problems):
        panels = page.locator(".hs-tv-head")
        assert panels.count() == 2
        query = 9  # the third 5: an induction head attends to the tokens after the earlier 5s
        panels.nth(0).locator(".hs-tv-tok").nth(query).hover()
        alphas = [
            panels.nth(i)
            .locator(".hs-tv-tok")
            .evaluate_all(
                "ts => ts.map(t => { const m = getComputedStyle(t).backgroundColor.match(/[\\d.]+/g); "
                "return m && m.length === 4 ? parseFloat(m[3]) : (t.style.background ? 1 : 0); })"
            )
            for i in range(2)
        ]
        current = panels.nth(1).locator(".hs-tv-current").all_text_contents()
    assert problems == []
    for shown, got in zip(view.data["heads"], alphas):
        np.testing.assert_allclose(got, np.minimum(np.array(shown["values"][query]), 1), atol=2e-3)
    assert len(current) == 1  # the hovered token is marked in the other head too
    assert set(np.flatnonzero(np.array(alphas[0]) > 0.4)) == {2, 5}  # induction: the 9s after the earlier 5s
    assert int(np.argmax(alphas[1])) == query - 1  # previous token


def test_a_long_prompt_wraps_inside_each_heads_box(planted, tmp_path):
    model, truth = planted
    tokens = [1] + [2 + i % 40 for i in range(120)]
    path = token_view(model, tokens, [truth.induction, truth.sink, (0, 0)]).save(tmp_path / "long.html")
    with open_page(path, width=900, height=700) as (page, problems):
        outside = page.evaluate("""() => [...document.querySelectorAll('.hs-tv-head')].map((panel) => {
            const p = panel.getBoundingClientRect();
            return [...panel.querySelectorAll('.hs-tv-tok')].filter((t) => { const r = t.getBoundingClientRect();
                return r.left < p.left - 0.5 || r.right > p.right + 0.5; }).length; })""")
        page.locator(".hs-tv-head").nth(0).locator(".hs-tv-tok").nth(115).hover(timeout=5000)  # not covered
    assert problems == []
    assert outside == [0, 0, 0]
