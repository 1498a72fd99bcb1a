"""The classic-patterns analyzer (`headscope analyze classic`, the atlas's first step): planted heads are
found, every statistic equals the reference loop on un-bridged HF patterns (text prompts and the
repeated-token probes alike), bad options are InputErrors, the CLI runs it, the atlas shows its numbers."""

import json

import numpy as np
import pytest
import torch

from headscope.analyzers import get_analyzer
from headscope.analyzers.classic import REPEAT_STATS, STATISTICS, TEXT_STATS, ClassicPatterns
from headscope.errors import InputError
from headscope.inputs.probes import repeated_random_tokens
from headscope.models import model_info
from headscope.testing import planted_model
from headscope.testing.hf_reference import plain_hf_copy
from headscope.testing.reference_loops import reference_stats

SMALL = {"n_text_prompts": 2, "repeat_len": 12, "n_repeat_prompts": 2}


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def fitted(planted):
    model, _ = planted
    prompts = [[1, 5, 9, 12, 5, 9, 12, 30, 7, 5, 9], [1, 8, 3, 8, 3, 40, 41]]
    return ClassicPatterns(**SMALL).fit(model, prompts), prompts


def _reference(model, tokens):
    with torch.no_grad():
        attn = plain_hf_copy(model)(torch.tensor([tokens]), output_attentions=True).attentions
    return reference_stats([a[0] for a in attn], tokens)


def test_every_statistic_equals_the_plain_loop_on_plain_hf(planted, fitted):
    model, _ = planted
    cp, prompts = fitted
    info = model_info(model)
    assert list(cp.statistics_) == list(STATISTICS)
    for i, tokens in enumerate(prompts):
        ref = _reference(model, tokens)
        for name in TEXT_STATS:
            np.testing.assert_allclose(cp.statistics_[name].values[i], np.array(ref[name]), atol=1e-5, err_msg=name)
    # The repeat statistics are read on the probes the analyzer builds from its own parameters.
    probes = repeated_random_tokens(
        model.cfg.d_vocab, seq_len=cp.repeat_len_, n_prompts=2, seed=0, first_token=info.bos_token_id
    )
    for i, tokens in enumerate(probes.tolist()):
        ref = _reference(model, tokens)
        for name in REPEAT_STATS:
            np.testing.assert_allclose(cp.statistics_[name].values[i], np.array(ref[name]), atol=1e-5, err_msg=name)


def test_planted_heads_are_selected(planted, fitted):
    model, truth = planted
    cp, prompts = fitted
    assert cp.scores_ is cp.statistics_["induction_score"]
    assert cp.heads_ == [truth.induction]
    prev = ClassicPatterns(score="previous_token_score", **SMALL).fit(model, prompts)
    assert truth.previous_token in prev.heads_
    local = ClassicPatterns(score="mean_attention_distance", **SMALL).fit(model, prompts)
    assert truth.local_window in local.heads_ and truth.induction not in local.heads_


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"score": "induction"}, "score"),
        ({"score": "attention_entropy"}, "threshold"),  # no role, so no default cut
        ({"repeat_len": 1}, "repeat_len"),
        ({"n_text_prompts": 0}, "n_text_prompts"),
    ],
)
def test_bad_options_are_input_errors(planted, params, needle):
    model, _ = planted
    with pytest.raises(InputError, match=needle):
        ClassicPatterns(**params).fit(model, ["a b c"])


def test_bad_data_is_an_input_error(planted):
    model, _ = planted
    with pytest.raises(InputError, match="single string"):
        ClassicPatterns(**SMALL).fit(model, "a b c")
    with pytest.raises(InputError, match="prompt 0"):
        ClassicPatterns(**SMALL).fit(model, [3.5])


def test_the_cli_runs_classic(planted, tmp_path):
    from headscope.cli import main

    _, truth = planted
    out = tmp_path / "cli"
    args = ["analyze", "classic", "--model", "testing:planted", "--out", str(out), "--no-static"]
    assert main([*args, "--param", "n_text_prompts=2", "--param", "repeat_len=12"]) == 0
    saved = json.loads((out / "classic.json").read_text())
    assert saved["provenance"]["analyzer"] == "classic"
    values = np.array(saved["values"], dtype=float).mean(0)
    assert np.unravel_index(np.nanargmax(values), values.shape) == truth.induction


def test_the_atlas_step_is_the_analyzer_fitted_alone(planted, tmp_path):
    from headscope.atlas import Atlas, build_atlas

    model, _ = planted
    build_atlas(model, tmp_path, only=[], static=False, progress=False)
    atlas = Atlas.load(tmp_path)
    step = next(s for s in atlas.steps if s.key == "classic")
    assert atlas.steps[0].key == "classic" and step.title == "Classic attention patterns"
    alone = get_analyzer("classic", **step.params).fit(model)
    for name in STATISTICS:
        np.testing.assert_allclose(
            atlas.columns()[name].values, alone.statistics_[name].mean_over_prompts().values, atol=1e-6, err_msg=name
        )
