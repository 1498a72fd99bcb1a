"""Pattern reducers fed a block of query rows at a time (what long-context capture will do) give exactly
what they give on the whole pattern (to float32 rounding), padded batches included, on six families."""

import numpy as np
import pytest
import torch

from headscope.analyzers._group_pattern import ResponseDistance
from headscope.analyzers.sink_reducers import TokenImportance
from headscope.capture import capture
from headscope.capture.context import BatchContext
from headscope.capture.reducers import Reducer, default_reducers
from headscope.inputs.tokens import iter_batches
from headscope.models.info import model_info
from headscope.testing import planted_model
from headscope.testing.architectures import random_prompt, tiny_arch_model


class FullPatterns(Reducer):
    """Keeps each batch's padded pattern and context, to replay them block by block."""

    name = "full_patterns"
    result_type = list

    def start(self, info, n_prompts):
        self.seen = []

    def update_rows(self, layer, acts, rows):  # eager capture: the block of every row, `rows.ctx` the batch's
        self.seen.append((layer, acts["pattern"].clone(), rows.ctx))

    def result(self, info, prompts=None):
        return self.seen


def _reducers(prompts):
    late = TokenImportance(2, 64)
    late.name = "sink_importance_k2"  # two instances in one capture need two names
    return default_reducers() + [TokenImportance(0, 8), late, ResponseDistance([max(1, len(p) // 2) for p in prompts])]


def _blocked(model, prompts, block: int, batch_size: int):
    info = model_info(model)
    keeper = FullPatterns()
    capture(model, prompts, [keeper], batch_size=batch_size, progress=False)
    reducers = _reducers(prompts)
    for r in reducers:
        r.start(info, len(prompts))
    for layer, pattern, ctx in keeper.result(info):
        T = pattern.shape[-1]
        for start in range(0, T, block):
            rows = ctx.rows(start, min(T, start + block))
            for r in reducers:
                r.update_rows(layer, {"pattern": pattern[:, :, rows.start : rows.stop]}, rows)
        for r in reducers:  # the contract: end_layer after a layer's last block
            r.end_layer(layer, ctx)
    return {r.name: r.result(info).values for r in reducers}


def _whole(model, prompts, batch_size: int):
    reducers = _reducers(prompts)
    res = capture(model, prompts, reducers, batch_size=batch_size, progress=False)
    return {r.name: res[r.name].values for r in reducers}


@pytest.mark.parametrize("name", ["planted", "gpt2", "qwen2", "gemma2", "mistral", "bert"])
@pytest.mark.parametrize("block", [1, 3, 7])
def test_blocks_of_rows_give_the_whole_pattern_statistics(name, block):
    if name == "planted":
        model = planted_model()[0]
        prompts = [[1, 5, 6, 7, 5, 6, 7, 8, 5], [1, 9, 10, 9, 10]]
    else:
        model = tiny_arch_model(name, 0)
        a, b = random_prompt(name, 14, seed=1).tolist(), random_prompt(name, 9, seed=2).tolist()
        prompts = [a[:1] + a[1:7] + a[1:7], b]  # repeats for duplicate / induction; ragged: padded batch
    whole = _whole(model, prompts, batch_size=2)
    blocked = _blocked(model, prompts, block, batch_size=2)
    for key in whole:
        # float32 matmuls over a block may round differently from the whole: 1e-6, far inside 1e-5
        np.testing.assert_allclose(blocked[key], whole[key], rtol=0, atol=1e-6, err_msg=key)
    assert np.isfinite(whole["induction_score"]).any() or name == "bert"


def test_row_block_masks_are_the_rows_of_the_whole_masks():
    batch = next(iter_batches([[1, 5, 6, 5, 6, 7], [1, 8, 8]], 2, 0))
    ctx = BatchContext(batch, model_info(planted_model()[0]))
    for start, stop in ((0, 2), (2, 5), (5, 6)):
        rows = ctx.rows(start, stop)
        for name in ("earlier_same_token", "after_earlier_same_token"):
            assert torch.equal(getattr(rows, name), getattr(ctx, name)[:, start:stop]), name
        for name in ("queries_after_first", "queries_with_earlier_copy", "valid_queries"):
            assert torch.equal(getattr(rows, name), getattr(ctx, name)[:, start:stop]), name


def test_earlier_copies_from_token_groups_equal_the_dense_comparison():
    """`earlier_copies` (read from the sorted token groups, no [rows, keys] tensor) lists exactly the True
    entries of the dense `earlier_same_token`, in the same order, on random padded batches and blocks."""
    info = model_info(planted_model()[0])
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, 50, (3,), generator=g).tolist()
        prompts = [torch.randint(2, 8, (n,), generator=g).tolist() for n in lengths]  # few ids: many copies
        ctx = BatchContext(next(iter_batches(prompts, 3, 0)), info)
        T = ctx.tokens.shape[1]
        for start in range(0, T, 6):
            rows = ctx.rows(start, min(T, start + 6), min(T, start + 6))
            dense = rows.earlier_same_token.nonzero(as_tuple=True)
            assert all(torch.equal(a, b) for a, b in zip(rows.earlier_copies, dense)), (seed, start)
        assert len(ctx.earlier_copies[0]) == int(ctx.earlier_same_token.sum())
