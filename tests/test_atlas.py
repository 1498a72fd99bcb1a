"""The head atlas (`headscope report`): planted heads get their roles, the numbers equal independent
computations, the role rule, save/--from, resume, the viewer's window, lean files, other families."""

import json

import numpy as np
import pytest
import torch

from headscope.analyzers.atlas_entry import Role
from headscope.atlas import NO_ROLE, Atlas, build_atlas, rebuild
from headscope.atlas import build as build_mod
from headscope.atlas.roles import ResolvedRole, assign
from headscope.atlas.viewer import VIEWER_PROMPT, decode, default_viewer_ids, viewer_data
from headscope.errors import InputError
from headscope.inputs.tokens import encode_to_fit, to_token_lists
from headscope.models import model_info
from headscope.testing import planted_model
from headscope.testing.architectures import random_prompt, supported, tiny_arch_model
from headscope.testing.hf_reference import plain_hf_copy
from headscope.testing.reference_loops import reference_stats


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def planted_atlas(planted, tmp_path_factory):
    model, _truth = planted
    out = tmp_path_factory.mktemp("atlas")
    build_atlas(model, out, static=False, progress=False)
    return Atlas.load(out), out


def test_planted_heads_get_their_roles(planted, planted_atlas):
    _, truth = planted
    atlas, _ = planted_atlas
    role = atlas.role_map().role
    assert role[truth.previous_token] == "previous-token"
    assert role[truth.induction] == "induction"
    assert role[truth.sink] == "sink"
    assert role[truth.local_window] == "local"  # window of 4: mean distance 1.5, previous-token mass 0.25


def test_every_applicable_analyzer_ran_and_the_others_say_why(planted_atlas):
    atlas, _ = planted_atlas
    status = {s.key: s for s in atlas.steps}
    for key in (
        "classic",
        "attention-sinks",
        "retrieval-heads",
        "streaming-heads",
        "preplan-anchor",
        "head-importance",
        "head-divergence",
    ):
        assert status[key].status == "ok", (key, status[key].reason)
        assert status[key].columns
        assert status[key].figures or any("left out" in n for n in status[key].notes)  # all-NaN: said so
    assert "chat" in status["ships"].reason and "image tokens" in status["visual-sink"].reason


def test_classic_columns_equal_the_plain_loop_on_plain_hf(planted, tmp_path):
    """The head table's classic scores on one prompt = the reference loop on un-bridged HF patterns."""
    model, _ = planted
    prompt = [1, 5, 9, 12, 5, 9, 12, 30, 7, 5, 9]
    out = tmp_path / "one"
    prompts = tmp_path / "p.json"
    ids = model.tokenizer.decode(prompt)
    prompts.write_text(json.dumps([ids]))
    build_atlas(model, out, prompts_file=prompts, only=[], static=False, progress=False)
    atlas = Atlas.load(out)
    tokens = to_token_lists(model, [ids], model_info(model))[0]
    with torch.no_grad():
        attn = plain_hf_copy(model)(torch.tensor([tokens]), output_attentions=True).attentions
    ref = reference_stats([a[0] for a in attn], tokens)
    for name in ("first_token_mass", "attention_entropy", "mean_attention_distance", "previous_token_score"):
        np.testing.assert_allclose(atlas.columns()[name].values, np.array(ref[name]), atol=1e-5, err_msg=name)


def test_analyzer_columns_equal_the_analyzer_fitted_alone(planted, planted_atlas):
    from headscope.analyzers import get_analyzer

    model, _ = planted
    atlas, _ = planted_atlas
    step = next(s for s in atlas.steps if s.key == "attention-sinks")
    alone = get_analyzer("attention-sinks", **step.params).fit(model)
    np.testing.assert_allclose(
        atlas.columns()["sink_score"].values, alone.scores_.mean_over_prompts().values, atol=1e-6
    )
    sink = next(r for r in atlas.roles() if r.name == "sink")
    assert sorted(sink.members) == sorted(alone.heads_)


def test_role_rule_specific_before_generic_then_strongest():
    cols = {"a": np.array([[0.5, 0.9, 0.1]]), "b": np.array([[0.9, 0.45, 0.2]]), "d": np.array([[9.0, 1.0, 1.5]])}
    roles = [
        ResolvedRole("A", "a", "", 0.4, True, True, [(0, 0), (0, 1)]),
        ResolvedRole("B", "b", "", 0.4, True, True, [(0, 0), (0, 1)]),
        ResolvedRole("sink", "b", "", 0.1, True, False, [(0, 0), (0, 1), (0, 2)]),
        ResolvedRole("local", "d", "", 2.0, False, False, [(0, 1), (0, 2)]),
    ]
    rm = assign(roles, cols, (1, 3))
    # Strength = score / the role's best score. Head 0: A 0.5/0.9 vs B 1.0 -> B (sink is as strong but
    # generic). Head 1: A 1.0 vs B 0.5 -> A. Head 2: no specific role; sink 0.2/0.9 vs local 1/1.5 -> local.
    assert list(rm.role[0]) == ["B", "A", "local"]
    assert rm.has[0][2] == ["sink", "local"]
    assert list(assign([], cols, (1, 3)).role[0]) == [NO_ROLE] * 3


def test_role_needs_one_cut():
    with pytest.raises(TypeError):
        Role("x", "c", rule="", threshold=0.1, selected=lambda a: [])


def test_from_rebuilds_the_same_page_without_the_model(planted_atlas, tmp_path):
    atlas, out = planted_atlas
    page = rebuild(out, tmp_path / "again", static=False)
    again = Atlas.load(tmp_path / "again")
    pd_equal = atlas.to_dataframe().equals(again.to_dataframe())
    assert pd_equal
    assert page.read_text() == (out / "report.html").read_text()
    with pytest.raises(InputError, match="no saved atlas"):
        Atlas.load(tmp_path / "nothing")


def test_an_interrupted_atlas_resumes_with_finished_steps_kept(planted, tmp_path, monkeypatch):
    model, _ = planted
    out = tmp_path / "run"
    build_atlas(model, out, only=["attention-sinks"], static=False, progress=False)
    steps = sorted((out / "scores" / "steps").iterdir())
    kept = {p.name: p.read_bytes() for p in steps}
    steps[-1].unlink()  # the run "died" before its last step
    ran = []
    real = build_mod.run_step
    monkeypatch.setattr(build_mod, "run_step", lambda step, *a, **k: ran.append(step.key) or real(step, *a, **k))
    build_atlas(model, out, only=["attention-sinks"], static=False, progress=False)
    assert ran == [steps[-1].name.split("-", 1)[1].removesuffix(".json")]
    assert {p.name: p.read_bytes() for p in sorted((out / "scores" / "steps").iterdir())}[steps[0].name] == kept[
        steps[0].name
    ]
    ran.clear()
    build_atlas(model, out, only=["attention-sinks"], static=False, progress=False, fresh=True)
    assert len(ran) == 2


def test_viewer_window_keeps_rows_summing_to_one_and_equals_the_pattern(planted):
    model, _ = planted
    tokens = [1] + list(range(2, 40)) * 2
    whole = decode(viewer_data(model, tokens, max_tokens=200))
    small = viewer_data(model, tokens, max_tokens=20, sink_keys=3)
    win = decode(small)
    assert small["windowed"] and win.shape[2] == 17 and small["keys"][3] is None
    np.testing.assert_allclose(win.sum(-1), 1.0, atol=win.shape[-1] / 255)
    with torch.no_grad():
        attn = plain_hf_copy(model)(torch.tensor([tokens]), output_attentions=True).attentions
    ref = torch.stack([a[0] for a in attn]).numpy()  # [layer, head, q, k]
    q = small["queries"]
    np.testing.assert_allclose(win[..., :3], ref[:, :, q][..., :3], atol=1 / 255)
    np.testing.assert_allclose(win[..., 4:], ref[:, :, q][..., q], atol=1 / 255)
    np.testing.assert_allclose(whole, ref, atol=1 / 255)


def _no_fold(doc) -> bool:
    return not doc["windowed"] and None not in doc["keys"] and doc["keys"] == list(range(doc["n_tokens"]))


@pytest.mark.parametrize("max_tokens", [48, 12])
def test_default_viewer_prompt_shows_no_fold_column(max_tokens, planted_atlas):
    """The default prompt is shown whole (no '…' column) on any model: chosen or cut to the window; the
    report's own viewer (planted model) too. A prompt the user gives is still windowed."""
    from headscope.testing import tiny_model

    model = tiny_model()
    info = model_info(model)
    long, short = " ".join(f"t{2 + i % 9}" for i in range(60)), "t2 t3 t4 t2 t3"
    ids, cut = default_viewer_ids(model, [long, long + " t5"], max_tokens)  # none fits whole: the first, cut
    assert (ids, cut) == (encode_to_fit(model, long, info)[:max_tokens], True)
    assert _no_fold(viewer_data(model, ids, max_tokens=max_tokens))
    assert default_viewer_ids(model, [long, short], max_tokens) == (encode_to_fit(model, short, info), False)
    ids, _ = default_viewer_ids(model, [VIEWER_PROMPT], max_tokens)
    assert _no_fold(viewer_data(model, ids, max_tokens=max_tokens))
    assert viewer_data(model, long, max_tokens=max_tokens)["windowed"]  # the user's long prompt
    atlas, _ = planted_atlas
    assert _no_fold(atlas.viewer)


@pytest.mark.real_model
def test_default_viewer_prompt_fits_smollm2_and_shows_the_copy():
    """On the bundled SmolLM2 the default prompt is shown whole and its second ' spiral' (query) reaches
    the first ' stairs' (key) on the induction heads the atlas names (L17H3-H5)."""
    from headscope.models import load_model

    model = load_model(None)
    ids, cut = default_viewer_ids(model, [VIEWER_PROMPT])
    doc = viewer_data(model, ids)
    assert not cut and _no_fold(doc)
    spiral = [i for i, t in enumerate(doc["tokens"]) if t == " spiral"]
    stairs = [i for i, t in enumerate(doc["tokens"]) if t == " stairs"]
    assert len(spiral) == len(stairs) == 2
    pattern = decode(doc)
    for head in (3, 4, 5):
        assert pattern[17, head, spiral[1]].argmax() == stairs[0]


def test_text_longer_than_the_context_is_cut_to_fit(planted):
    model, _ = planted
    doc = viewer_data(model, "word " * 400, max_tokens=16)
    assert doc["n_tokens"] == model_info(model).n_ctx and doc["windowed"]


def test_report_folder_is_lean(planted_atlas):
    _, out = planted_atlas
    js = list(out.rglob("plotly*.js"))
    assert [p.name for p in js] == ["plotly.min.js"]
    html = (out / "report.html").read_text()
    assert len(html.encode()) < 6e6 and "<script src='plotly.min.js'>" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://cdn" not in html
    for fig in (out / "figures").glob("*.html"):
        text = fig.read_text()
        assert 'src="../plotly.min.js"' in text and len(text) < 500_000


@pytest.mark.parametrize("name", ["gpt2", "gpt-neox", "qwen2", "gemma2", "falcon-alibi", "bert"])
def test_atlas_runs_on_other_families(name, tmp_path):
    if name not in supported():
        pytest.fail(f"{name} does not boot here")
    model = tiny_arch_model(name)
    build_atlas(model, tmp_path, only=["attention-sinks"], static=False, progress=False)
    atlas = Atlas.load(tmp_path)
    df = atlas.to_dataframe()
    info = model_info(model)
    assert len(df) == info.n_layers * info.n_heads
    sinks = next(s for s in atlas.steps if s.key == "attention-sinks")
    assert sinks.status == "ok", sinks.reason
    assert np.isfinite(atlas.columns()["first_token_mass"].values).all()
    if not info.causal:  # BERT: the causal statistics are NaN and said so
        assert np.isnan(atlas.columns()["induction_score"].values).all()
    # The viewer's patterns on this family equal plain HF's output_attentions (independent of the bridge).
    tokens = random_prompt(name, 20).tolist()
    tokens = tokens[0] if isinstance(tokens[0], list) else tokens
    with torch.no_grad():
        attn = plain_hf_copy(model)(torch.tensor([tokens]), output_attentions=True).attentions
    ref = torch.stack([a[0] for a in attn]).float().numpy()
    np.testing.assert_allclose(decode(viewer_data(model, tokens)), ref, atol=1 / 255 + 1e-6)


def test_role_map_hover_states_the_legends_rule(planted_atlas):
    """The hover of a head with a role quotes the same rule the legend lists (a selection's weakest member
    is not shown as if it were the rule), and --list says what the run does for the vision-tower step."""
    atlas, _ = planted_atlas
    fig = atlas.plot()
    hover = "\n".join(str(t) for row in fig.data[0].text for t in row)
    for r in atlas.roles():
        if r.members:
            assert f"{r.name}: {r.column}" in hover and f"({r.rule})" in hover, r.name
    status = {s.key: s for s in atlas.steps}
    assert "vision tower" in status["vit-heads"].reason
