"""Gradient head importance: planted heads, an independent autograd reference, and the real model."""

import numpy as np
import pytest
import torch

from headscope.analyzers.head_importance import HeadImportance
from headscope.testing import induction_tokens, plain_hf_copy, planted_model, tiny_model


def reference_importance(hf, examples, n_layers, n_heads, d_head):
    """|dL/dξ| summed over examples via pre-hooks on each o_proj of a plain HF model (no headscope code)."""
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    n_tokens = 0
    for ids in examples:
        gates = torch.ones(n_layers, n_heads, requires_grad=True)
        handles = []
        for layer in range(n_layers):

            def pre(module, args, layer=layer, gates=gates):
                (x,) = args  # [batch, pos, n_heads * d_head]
                gated = x.view(*x.shape[:-1], n_heads, d_head) * gates[layer][:, None]
                return (gated.view(x.shape),)

            handles.append(hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre))
        try:
            tokens = torch.tensor([ids])
            logits = hf(tokens).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="sum")
            (grad,) = torch.autograd.grad(loss, gates)
        finally:
            for h in handles:
                h.remove()
        total += grad.abs().double()
        n_tokens += len(ids) - 1
    return (total / n_tokens).numpy()


def test_planted_copy_circuit_is_ranked_first():
    model, truth = planted_model()
    imp = HeadImportance().fit(model, induction_tokens(model, 20, batch=3, seed=1))
    assert set(imp.heads_[:2]) == {truth.previous_token, truth.induction}
    others = list(truth.background() + [truth.sink, truth.local_window])
    assert max(imp.scores_.values[0, l, h] for l, h in others) < 1e-6  # heads that write nothing get no gradient


@pytest.mark.parametrize("builder", ["tiny", "planted"])
def test_raw_importance_matches_independent_autograd(builder):
    model = tiny_model(n_layers=2, seed=5) if builder == "tiny" else planted_model()[0]
    examples = [[1, 5, 9, 12, 5, 9, 12, 7], [1, 20, 21, 22, 20, 21]]
    imp = HeadImportance(normalize_layers=False).fit(model, examples)
    cfg = model.cfg
    ref = reference_importance(plain_hf_copy(model), examples, cfg.n_layers, cfg.n_heads, cfg.d_head)
    np.testing.assert_allclose(imp.raw_importance_, ref, rtol=1e-4, atol=1e-7)
    # per-layer normalisation: each layer's vector has unit l2 norm
    normed = HeadImportance().fit(model, examples).scores_.values[0]  # one dataset-level row
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)


@pytest.mark.real_model
def test_real_model_matches_reference_and_plots(smol, smol_hf):
    examples = [smol.tokenizer("The capital of France is Paris.")["input_ids"]]
    imp = HeadImportance(normalize_layers=False).fit(smol, examples)
    ref = reference_importance(smol_hf, examples, 30, 9, 64)
    np.testing.assert_allclose(imp.raw_importance_, ref, rtol=1e-3, atol=1e-6)
    assert imp.plot().data[0].z is not None and len(imp.heads_) == 10
