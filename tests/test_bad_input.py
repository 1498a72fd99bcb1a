"""Bad input gives a clear error naming the problem; no hooks survive any failure."""

import time

import pytest
import torch

import headscope
from headscope.capture import QueryMeanReducer, capture, default_reducers
from headscope.errors import InputError, ModelNotFoundError
from headscope.models import model_info
from headscope.testing import tiny_model


def hook_count(model) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in set(model.hook_dict.values()))


def test_unknown_model_name_is_clear():
    with pytest.raises(ModelNotFoundError, match="Unknown model 'no/such/model'.*bundled"):
        headscope.load_model("no/such/model")  # not a folder, not a hub id


def test_a_typo_of_a_bundled_name_suggests_it_and_lists_the_names():
    with pytest.raises(
        ModelNotFoundError, match=r"Did you mean 'smollm2'\?.*Bundled models and testbeds:.*testing:tiny"
    ):
        headscope.load_model("smolm2")  # a bare name: looked up in the HF cache, then the typo is named
    with pytest.raises(ModelNotFoundError) as err:
        headscope.load_model("someone/surely-not-cached-model-xyz")
    assert "Did you mean" not in str(err.value) and "smollm2" in str(err.value)  # the list, no false hint


def test_bare_hub_id_is_a_hub_id():
    """'gpt2' and 'bert-base-uncased' are real hub ids: a bare name is looked up in the HF cache."""
    start = time.monotonic()
    with pytest.raises(
        ModelNotFoundError, match="'surely-not-cached-xyz' is not in the local Hugging Face cache.*offline"
    ):
        headscope.load_model("surely-not-cached-xyz")
    assert time.monotonic() - start < 10


def test_uncached_hub_id_fails_fast_naming_offline():
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache.*offline"):
        headscope.load_model("someone/surely-not-cached-model-xyz")
    assert time.monotonic() - start < 10  # no minute of hub retries


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        headscope.load_model(tmp_path)


def test_empty_inputs_and_empty_prompt():
    model = tiny_model()
    with pytest.raises(InputError, match="no prompts"):
        capture(model, [])
    with pytest.raises(InputError, match="prompt 1 is empty"):
        capture(model, ["t2 t3", "   "])


def test_prompt_longer_than_context():
    model = tiny_model()
    n_ctx = model_info(model).n_ctx
    with pytest.raises(InputError, match=rf"prompt 0 has {n_ctx + 5} tokens .* context of {n_ctx}"):
        capture(model, torch.full((1, n_ctx + 5), 3))


def test_layer_and_head_out_of_range():
    model = tiny_model()
    info = model_info(model)
    with pytest.raises(InputError, match=rf"layer {info.n_layers} is out of range.*0..{info.n_layers - 1}"):
        capture(model, ["t2 t3"], layers=[info.n_layers])
    with pytest.raises(InputError, match=rf"head {info.n_heads} is out of range"):
        info.check_head(0, info.n_heads)
    with pytest.raises(InputError, match="not a headscope Reducer"):
        capture(model, ["t2 t3"], [QueryMeanReducer])


class Exploding(QueryMeanReducer):
    name = "exploding"

    def per_query(self, acts, ctx):
        raise RuntimeError("boom inside a hook")


def test_no_hooks_left_after_failure_and_model_unchanged():
    model = tiny_model()
    tokens = torch.tensor([[1, 5, 6, 7, 5, 6, 7]])
    before = model(tokens).detach()
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, tokens, default_reducers() + [Exploding()])
    assert hook_count(model) == 0
    assert torch.equal(model(tokens), before)
    capture(model, tokens)  # and a normal capture afterwards also leaves none
    assert hook_count(model) == 0


def test_loading_shows_no_weights_bar_and_keeps_the_users_setting(capfd):
    from transformers.utils import logging as hf_logging

    from headscope.models.loading import quiet_loading

    assert hf_logging.is_progress_bar_enabled()
    with quiet_loading():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    headscope.load_model()  # the bundled model (cached): no "Loading weights" bar on stderr
    assert "Loading weights" not in capfd.readouterr().err
