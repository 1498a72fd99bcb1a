"""A kind defined in this file plugs in end to end: defining one class registers it, and apply,
forward_with, scan (by name, class or template, with visited vs base heads) and a `headscope run`
spec all use it; numbers are checked against the same edit applied by hand with a plain hook."""

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from headscope.errors import InputError
from headscope.interventions import (
    KINDS,
    Intervention,
    ScaleOutput,
    UniformAttention,
    ZeroAblation,
    apply,
    forward_with,
    scan,
)
from headscope.registry import registered_from
from headscope.testing import planted_model, tiny_model

PROMPTS = [[3, 9, 4, 17, 8, 22, 5, 30], [7, 2, 40, 13, 9, 9, 21, 4], [15, 15, 2, 8, 33, 6, 1, 19]]
FACTOR = 3.0


@pytest.fixture(scope="module")
def toy():
    """The toy kind, defined (hence registered) here and unregistered when this module is done."""

    @dataclass(frozen=True)
    class TimesHead(Intervention):
        """Multiply the head's output by `factor` (a test-only kind)."""

        factor: float = 1.0
        kind: ClassVar[str] = "toy_times"
        site: ClassVar[str] = "z"

        def edit(self, sel, rows, ctx):
            out = sel.clone()
            out[:, rows] = sel[:, rows] * self.factor
            return out

    try:
        yield TimesHead
    finally:
        KINDS.unregister("toy_times")
    assert "toy_times" not in KINDS


def by_hand(model, tokens, heads, factor=FACTOR):
    """Logits with hook_z of `heads` scaled by a plain hook (no headscope intervention code)."""

    def scale(layer):
        def hook(z, hook):
            z = z.clone()
            for l, h in heads:
                if l == layer:
                    z[:, :, h] *= factor
            return z

        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", scale(l)) for l in sorted({l for l, _ in heads})]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(torch.as_tensor(tokens))


def kl_last(base, variant):
    p, q = F.log_softmax(base[:, -1].double(), -1), F.log_softmax(variant[:, -1].double(), -1)
    return (p.exp() * (p - q)).sum(-1).numpy()


def test_defining_the_class_registers_it_from_this_file(toy):
    assert KINDS["toy_times"] is toy
    assert registered_from(KINDS, "toy_times").startswith(f"{__name__}.")
    spec = Intervention.from_dict({"kind": "toy_times", "heads": [[1, 2]], "factor": 2})
    assert spec == toy(heads=[(1, 2)], factor=2)
    assert Intervention.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
    assert Intervention.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_apply_and_forward_with_equal_the_edit_by_hand(toy):
    model = tiny_model(seed=21)
    tokens = torch.tensor(PROMPTS)
    heads = [(0, 1), (1, 3)]
    spec = toy(heads=heads, factor=FACTOR)
    expected = by_hand(model, tokens, heads)
    assert torch.equal(forward_with(model, tokens, [spec]), expected)
    with torch.no_grad(), apply(model, [spec]):
        assert torch.equal(model(tokens), expected)
    # the built-in kind with the same edit agrees bit for bit
    assert torch.equal(forward_with(model, tokens, [ScaleOutput(heads=heads, alpha=FACTOR)]), expected)


def test_scan_with_the_toy_kind_equals_one_hand_edit_per_head(toy):
    model = tiny_model(seed=22)
    with torch.no_grad():
        clean = model(torch.tensor(PROMPTS))
    expected = np.zeros((len(PROMPTS), 2, 4))  # [prompt, layer, head]
    for l in range(2):
        for h in range(4):
            expected[:, l, h] = kl_last(clean, by_hand(model, PROMPTS, [(l, h)]))
    by_name = scan(model, PROMPTS, "toy_times", "kl_last", factor=FACTOR, max_rows=4)
    assert by_name.params["kind"] == "toy_times" and by_name.params["factor"] == FACTOR
    np.testing.assert_allclose(by_name.values, expected, atol=1e-5)
    assert np.abs(expected).max() > 1e-3  # the edit does something
    np.testing.assert_allclose(scan(model, PROMPTS, toy, "kl_last", factor=FACTOR).values, expected, atol=1e-5)
    template = toy(heads=[(0, 0)], factor=FACTOR)  # a template's heads are not what is visited
    np.testing.assert_allclose(scan(model, PROMPTS, template, "kl_last").values, expected, atol=1e-5)
    with pytest.raises(InputError, match=r"no parameter\(s\) \['factr'\]"):
        scan(model, PROMPTS, "toy_times", factr=2)


def test_scan_keeps_visited_heads_apart_from_heads_edited_together(toy):
    model = tiny_model(seed=23)
    group = [(0, 0), (0, 2)]  # edited together, underneath every variant
    visit = [(1, 1), (1, 3), (0, 3)]  # visited one at a time
    base_iv = [ZeroAblation(heads=group)]
    got = scan(model, PROMPTS, "toy_times", "kl_last", visit=visit, base_interventions=base_iv, factor=FACTOR)
    with torch.no_grad(), apply(model, base_iv):
        base = model(torch.tensor(PROMPTS))
        for l, h in visit:
            np.testing.assert_allclose(
                got.values[:, l, h], kl_last(base, by_hand(model, PROMPTS, [(l, h)])), atol=1e-5, err_msg=f"L{l}H{h}"
            )
    assert np.isnan(got.values[:, 0, 0]).all() and np.isnan(got.values[:, 1, 0]).all()  # not visited
    assert got.params["base_interventions"] == [s.to_dict() for s in base_iv]
    with pytest.raises(InputError, match=r"heads= is not a scan option.*visit=.*base_interventions="):
        scan(model, PROMPTS, "toy_times", heads=visit, factor=FACTOR)


SPEC = """
name: toy-kind
model: testing:planted
figures: []
data:
  rep: {generator: repeated_tokens, seq_len: 8, n_prompts: 3, seed: 0}
units:
  - name: scan_toy
    scan: toy_times
    params: {factor: -1}
    metric: kl_last
    data: rep
  - name: eval_toy
    evaluate: kl_last
    data: rep
    intervention: {kind: toy_times, factor: -1}
    conditions:
      - {name: induction, heads: [[1, 3]]}
      - {name: spelled, interventions: [{kind: toy_times, factor: -1, heads: [[1, 3]]}]}
"""


def test_a_headscope_run_spec_names_the_toy_kind(toy, tmp_path):
    import pandas as pd

    from headscope.experiments import run_experiment
    from headscope.inputs import repeated_random_tokens
    from headscope.results import HeadScores

    model, truth = planted_model()
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    out = run_experiment(path, tmp_path / "out", model=model, progress=False)

    probes = repeated_random_tokens(model.cfg.d_vocab, 8, n_prompts=3, seed=0, token_range=None, first_token=1)
    with torch.no_grad():
        clean = model(probes)
    scanned = HeadScores.load(out / "results" / "scan_toy.parquet")
    for l, h in (truth.previous_token, truth.induction):  # flipping either head's output breaks copying
        head = kl_last(clean, by_hand(model, probes, [(l, h)], factor=-1))
        assert head.mean() > 1.0
        np.testing.assert_allclose(scanned.values[:, l, h], head, rtol=1e-5)
    expected = kl_last(clean, by_hand(model, probes, [truth.induction], factor=-1))
    table = pd.read_parquet(out / "results" / "eval_toy.parquet")
    for name in ("induction", "spelled"):
        assert table[table.condition == name].value.item() == pytest.approx(expected.mean(), rel=1e-5)


def test_a_kind_class_is_checked_when_defined():
    with pytest.raises(TypeError, match="site 'hook_z'"):

        @dataclass(frozen=True)
        class BadSite(Intervention):
            kind: ClassVar[str] = "toy_bad_site"
            site: ClassVar[str] = "hook_z"

            def edit(self, sel, rows, ctx):
                return sel

    with pytest.raises(TypeError, match="must define edit"):

        @dataclass(frozen=True)
        class NoEdit(Intervention):
            kind: ClassVar[str] = "toy_no_edit"
            site: ClassVar[str] = "z"

    with pytest.raises(TypeError, match="'zero' is taken"):

        @dataclass(frozen=True)
        class Clash(Intervention):
            kind: ClassVar[str] = "zero"
            site: ClassVar[str] = "z"

            def edit(self, sel, rows, ctx):
                return sel

    with pytest.raises(TypeError, match=r"kind: ClassVar"):

        @dataclass(frozen=True)
        class FieldNotClassVar(Intervention):
            kind: str = "toy_field"
            site: ClassVar[str] = "z"

            def edit(self, sel, rows, ctx):
                return sel

    assert not {"toy_bad_site", "toy_no_edit", "toy_field"} & set(KINDS)
    assert KINDS["zero"] is ZeroAblation


def test_kinds_declare_what_generation_and_scans_need():
    """The flags the safety/generation code and the scan read from each class."""
    flags = {
        name: (cls.site, cls.reference_field, cls.whole_query)
        for name, cls in KINDS.items()
        if not name.startswith("toy_")
    }
    assert flags == {
        "zero": ("z", None, False),
        "scale": ("z", None, False),
        "mean": ("z", "reference", False),
        "resample": ("z", "source", False),
        "uniform_attention": ("attn_scores", None, False),
        "streaming_window": ("attn_scores", None, False),
        "act": ("pattern", None, True),
        "var": ("pattern", None, False),
    }
    assert KINDS["resample"].scan_template().shift == 1  # resampling a prompt from itself would be a no-op
    assert KINDS["resample"].scan_template(source=[[1, 2]]).shift == 0
    own = ((1, 2, 3),)
    assert KINDS["mean"](heads=[(0, 0)]).with_default_reference(own).reference == own
    assert KINDS["resample"](heads=[(0, 0)]).with_default_reference(own).shift == 1
    assert UniformAttention(heads=[(0, 0)]).with_default_reference(own) == UniformAttention(heads=[(0, 0)])


def test_the_pre_release_aliases_are_gone():
    """0.1.0 was never released, so its renames keep no alias (CHANGELOG.md lists each replacement)."""
    import headscope
    import headscope.models
    import headscope.testing
    from headscope import interventions
    from headscope.interventions import prepare as prepare_module
    from headscope.results import HeadScores, select_heads

    assert not hasattr(headscope, "run") and "run" not in dir(headscope)
    assert not hasattr(interventions, "run") and not hasattr(prepare_module, "prepare")
    assert not hasattr(headscope.models, "BUNDLED") and not hasattr(headscope.testing, "repeated_random_tokens")
    scores = HeadScores(np.array([[0.5, 0.1]]), name="x")
    with pytest.raises(TypeError, match="largest"):
        scores.top(1, largest=False)
    with pytest.raises(TypeError, match="largest"):
        select_heads(scores, top_k=1, largest=False)
    assert headscope.forward_with is interventions.forward_with


def test_a_whole_query_kind_makes_chat_generation_recompute_every_step():
    """safety.generate_responses reads `whole_query` from the class: such a kind sees every query row
    at every step (no KV cache), any other kind sees one new query per decode step."""
    from headscope.safety import generate_responses

    seen = []

    @dataclass(frozen=True)
    class CountRows(Intervention):
        kind: ClassVar[str] = "toy_count_rows"
        site: ClassVar[str] = "z"

        def edit(self, sel, rows, ctx):
            seen.append(sel.shape[1])
            return sel.clone()

    @dataclass(frozen=True)
    class CountAllRows(CountRows):
        kind: ClassVar[str] = "toy_count_all_rows"
        whole_query: ClassVar[bool] = True

    try:
        model, truth = planted_model()
        model.tokenizer.chat_template = "{% for m in messages %}<s> {{ m['content'] }}{% endfor %}"
        generate_responses(model, ["t5 t6 t7 t5"], interventions=[CountRows(heads=[truth.induction])], max_new_tokens=3)
        assert seen[0] > 1 and seen[1:] == [1] * (len(seen) - 1), seen  # prefill, then one query a step
        seen.clear()
        generate_responses(
            model, ["t5 t6 t7 t5"], interventions=[CountAllRows(heads=[truth.induction])], max_new_tokens=3
        )
        assert seen == list(range(5, 5 + len(seen))) and len(seen) == 3, seen  # the whole sequence, each step
    finally:
        KINDS.unregister("toy_count_rows")
        KINDS.unregister("toy_count_all_rows")
