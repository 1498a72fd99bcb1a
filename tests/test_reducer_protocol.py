"""The one reducer protocol: a reducer written with only `update_rows` (+ `end_layer`) gives the same numbers
through the eager path (every row as one block) and blocked attention (a few rows at a time), equal to a
plain loop over a never-bridged HF model's `output_attentions`; a reducer that declares it cannot fold
blocks is refused by blocked attention; batches carry their images; blocked attention's per-model state
goes with its model."""

import gc
import weakref

import numpy as np
import pytest
import torch

from headscope.capture import blocked as blk
from headscope.capture import capture
from headscope.capture.batch import CaptureBatch, PromptImages, capture_batches
from headscope.capture.reducers import Reducer
from headscope.errors import InputError
from headscope.inputs.images import ImagePrompt
from headscope.models.compat import hf_module_of
from headscope.results import HeadScores
from headscope.testing import plain_hf_copy
from headscope.testing.architectures import random_prompt, tiny_arch_model


class ColumnPeak(Reducer):
    """Per (prompt, layer, head): the largest mass one key receives, summed over the real queries, divided
    by the number of real queries; and the mean attention on the query itself (a row statistic). The
    column sum is only finished after the layer's last block: it needs `end_layer`."""

    name = "column_peak"
    needs = ("pattern",)
    fed_by_blocks = True

    def start(self, info, n_prompts):
        self.peak = np.full((n_prompts, info.n_layers, info.n_heads), np.nan)
        self.self_mass = np.zeros((n_prompts, info.n_layers, info.n_heads))
        self.widest_block = 0
        self._col = None

    def update_rows(self, layer, acts, rows):
        pattern = rows.whole_keys(acts["pattern"]).double()  # [batch, head, rows, T]
        self.widest_block = max(self.widest_block, rows.stop - rows.start)
        valid = rows.valid_queries.double()  # [batch, rows]
        col = torch.einsum("bhqk,bq->bhk", pattern, valid)
        self._col = col if self._col is None else self._col + col
        q = rows.query_positions  # the diagonal A[q, q] of this block's queries
        diag = pattern[:, :, torch.arange(len(q)), q]  # [batch, head, rows]
        per_prompt = (diag * valid[:, None, :]).sum(-1) / rows.valid.sum(-1)[:, None].double()
        self.self_mass[rows.index, layer] += per_prompt.numpy()

    def end_layer(self, layer, ctx):
        n = ctx.valid.sum(-1).double()[:, None]  # [batch, 1]
        self.peak[ctx.index, layer] = (self._col.amax(-1) / n).numpy()
        self._col = None

    def result(self, info, prompts=None):
        return HeadScores(self.peak + self.self_mass, name=self.name, model=info.name)


class WholeOnly(ColumnPeak):
    name = "whole_only"
    fed_by_blocks = False  # declared once: blocked attention refuses it


def _plain_loop(model, prompts) -> np.ndarray:
    """The same statistic, prompt by prompt, unpadded, from a plain HF model's attentions."""
    hf = plain_hf_copy(model)
    out = []
    for ids in prompts:
        with torch.no_grad():
            atts = hf(torch.tensor([ids]), output_attentions=True).attentions
        per_layer = []
        for a in atts:  # [1, head, T, T]
            a = a[0].double()
            n = a.shape[-1]
            peak = a.sum(1).amax(-1) / n  # column sums over every query, largest per head
            self_mass = torch.diagonal(a, dim1=-2, dim2=-1).mean(-1)
            per_layer.append((peak + self_mass).numpy())
        out.append(np.stack(per_layer))
    return np.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_entry_point_gives_the_same_numbers_eager_blocked_and_plain(arch):
    model = tiny_arch_model(arch, 0)
    prompts = [random_prompt(arch, 13, seed=1).tolist(), random_prompt(arch, 8, seed=2).tolist()]  # padded batch
    eager_r, blocked_r = ColumnPeak(), ColumnPeak()
    eager = capture(model, prompts, [eager_r], batch_size=2, attention="eager", progress=False)
    blocked = capture(model, prompts, [blocked_r], batch_size=2, attention="blocked", block_size=3, progress=False)
    assert eager_r.widest_block == 13 and blocked_r.widest_block == 3  # one block vs blocks of 3 rows
    reference = _plain_loop(model, prompts)
    np.testing.assert_allclose(eager["column_peak"].values, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(blocked["column_peak"].values, eager["column_peak"].values, rtol=0, atol=1e-6)


def test_a_reducer_that_cannot_fold_blocks_runs_eager_and_is_refused_blocked():
    model = tiny_arch_model("llama", 0)
    prompts = [random_prompt("llama", 9, seed=1).tolist()]
    eager = capture(model, prompts, [WholeOnly()], attention="eager", progress=False)
    np.testing.assert_allclose(eager["whole_only"].values, _plain_loop(model, prompts), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match=r"WholeOnly\) needs the whole pattern \(fed_by_blocks = False\)"):
        capture(model, prompts, [WholeOnly()], attention="blocked", progress=False)


def test_a_batch_carries_its_rows_images_and_forward_kwargs():
    px = [torch.randn(2, 3, 4, 4), None, torch.randn(1, 3, 4, 4), torch.randn(3, 3, 4, 4)]
    inputs = [ImagePrompt([1, 2, 3], p) if p is not None else [1, 2] for p in px]
    images = PromptImages.of(inputs)
    assert images is not None and images.count == 6
    batches = list(capture_batches([[1, 2, 3], [1, 2], [1, 2, 3], [1, 2, 3]], 2, 0, images))
    first, second = batches
    assert isinstance(first, CaptureBatch)
    # row order: prompt 0's two images, none for prompt 1; then prompt 2's one and prompt 3's three
    assert torch.equal(first.forward_kwargs()["pixel_values"], px[0])
    assert torch.equal(second.forward_kwargs()["pixel_values"], torch.cat([px[2], px[3]]))
    assert first.image_index.tolist() == [0, 1] and second.image_index.tolist() == [2, 3, 4, 5]
    assert torch.equal(first.forward_kwargs()["attention_mask"], first.attention_mask)
    text = next(capture_batches([[1, 2]], 1, 0, PromptImages.of([[1, 2]])))
    assert set(text.forward_kwargs()) == {"attention_mask"} and text.image_index is None


def test_blocked_sessions_go_with_their_model():
    model = tiny_arch_model("llama", 0)
    modules = [hf_module_of(c) for _, c in blk._attention_components(model)]
    with blk.blocked_attention(model) as session:
        assert blk._SESSIONS[model] == (session, 1)
        assert all(blk._LAYER_OF[m] == (session, layer) for layer, m in enumerate(modules))
    assert model not in blk._SESSIONS and not any(m in blk._LAYER_OF for m in modules)
    # An entry left behind (as by a context never closed) must not outlive its model: a later model that
    # reuses the collected one's memory, and so its id(), would otherwise be handed a stale session.
    blk._SESSIONS[model] = (session, 1)
    blk._LAYER_OF[modules[0]] = (session, 0)
    gone = weakref.ref(model)
    del model, modules
    gc.collect()
    assert gone() is None
    assert len(blk._SESSIONS) == 0 and len(blk._LAYER_OF) == 0
