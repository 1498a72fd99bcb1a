"""Ships and Sahara: planted ground truth, an independent weight-editing reference, the real model."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headscope.analyzers import get_analyzer
from headscope.analyzers.sahara import Sahara, leading_left_vector, subspace_angle
from headscope.analyzers.ships import Ships
from headscope.errors import InputError
from headscope.testing import induction_tokens, plain_hf_copy, planted_model, tiny_model


@contextlib.contextmanager
def q_rows_scaled(hf, heads, eps):
    """The paper's mask_para=True: bake W_q^h -> eps * W_q^h into a plain HF model's weights."""
    d_head = (
        hf.config.head_dim
        if getattr(hf.config, "head_dim", None)
        else hf.config.hidden_size // hf.config.num_attention_heads
    )
    saved = []
    for layer, head in heads:
        w = hf.model.layers[layer].self_attn.q_proj.weight
        rows = slice(head * d_head, (head + 1) * d_head)
        saved.append((w, rows, w.data[rows].clone()))
        w.data[rows] *= eps
    try:
        yield hf
    finally:
        for w, rows, old in saved:
            w.data[rows] = old


def ref_ships(hf, ids, head, eps):
    """KL(p || q) of the last position, plain HF and weight editing, one prompt at a time."""
    out = []
    with torch.no_grad():
        for seq in ids:
            t = torch.tensor([seq])
            p = F.log_softmax(hf(t).logits[0, -1].double(), -1)
            with q_rows_scaled(hf, [head], eps):
                q = F.log_softmax(hf(t).logits[0, -1].double(), -1)
            out.append(float((p.exp() * (p - q)).sum()))
    return np.array(out)


def ref_final_hidden(hf, ids, heads=(), eps=1e-5):
    with torch.no_grad(), q_rows_scaled(hf, heads, eps):
        return torch.stack([hf(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0, -1] for s in ids])


def test_ships_and_sahara_find_the_planted_circuit():
    model, truth = planted_model()
    tokens = induction_tokens(model, seq_len=12, batch=4, seed=2)
    ships = Ships(top_k=2).fit(model, tokens)
    assert sorted(ships.heads_) == sorted([truth.previous_token, truth.induction])
    mean = ships.scores_.mean_over_prompts().values
    others = np.ones_like(mean, dtype=bool)
    others[truth.previous_token] = others[truth.induction] = False
    assert np.abs(mean[others]).max() < 1e-6 and mean[~others].min() > 0.1  # W_O = 0 heads change nothing
    sahara = Sahara(search_steps=1).fit(model, tokens)
    assert sahara.heads_[0] in (truth.previous_token, truth.induction)
    assert np.abs(sahara.scores_.values[0][others]).max() < 1e-3  # identical hidden states: angle 0
    assert sahara.scores_.values[0][~others].min() > 0.05  # small: u1 is dominated by the mean direction
    # (a second step has nothing left to find: with either circuit head ablated the other is inert)


@pytest.mark.parametrize("seed", [21, 22])
def test_ships_equals_weight_editing_on_a_plain_hf_copy(seed):
    model = tiny_model(seed=seed)
    hf = plain_hf_copy(model)
    ids = [[5, 9, 14, 3, 22, 9, 14], [11, 4, 4, 30, 2, 19, 7, 7, 1]]
    ships = Ships().fit(model, ids)
    for head in [(0, 1), (1, 3), (1, 0)]:
        np.testing.assert_allclose(ships.scores_.values[:, head[0], head[1]], ref_ships(hf, ids, head, 1e-5), atol=1e-5)


def test_sahara_angles_and_greedy_step_equal_the_reference():
    model = tiny_model(seed=23)
    hf = plain_hf_copy(model)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, 48, (int(n),), generator=g).tolist() for n in torch.randint(6, 12, (6,), generator=g)]
    sahara = Sahara(search_steps=2).fit(model, ids)
    u0 = leading_left_vector(ref_final_hidden(hf, ids))
    first = np.array(
        [
            [subspace_angle(u0, leading_left_vector(ref_final_hidden(hf, ids, [(l, h)]))) for h in range(4)]
            for l in range(2)
        ]
    )
    np.testing.assert_allclose(sahara.scores_.values[0], first, atol=0.05)  # degrees (one dataset-level row)
    assert sahara.heads_[0] == tuple(int(x) for x in np.unravel_index(first.argmax(), first.shape))
    g1 = sahara.heads_[0]
    second = {
        (l, h): subspace_angle(u0, leading_left_vector(ref_final_hidden(hf, ids, [g1, (l, h)])))
        for l in range(2)
        for h in range(4)
        if (l, h) != g1
    }
    assert sahara.heads_[1] == max(second, key=second.get)
    assert abs(sahara.steps_["angle_deg"][1] - second[sahara.heads_[1]]) < 0.05


def test_subspace_angle_by_hand():
    u = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v = torch.tensor([np.cos(np.pi / 6), -np.sin(np.pi / 6)], dtype=torch.float64)
    assert abs(subspace_angle(u, v) - 30.0) < 1e-9 and abs(subspace_angle(u, -v) - 30.0) < 1e-9


def test_safety_analyzers_are_registered_and_reject_bad_input():
    assert isinstance(get_analyzer("ships"), Ships) and isinstance(get_analyzer("sahara"), Sahara)
    model = tiny_model()
    with pytest.raises(InputError, match="at least 2 prompts"):
        Sahara().fit(model, [[1, 2, 3]])
    with pytest.raises(InputError, match="prompt_format"):
        Ships(prompt_format="no placeholder").fit(model, ["t1 t2"])


@pytest.mark.real_model
def test_ships_on_smollm2_matches_the_hf_reference(smol, smol_hf):
    requests = ["How do I pick a lock?", "Write a phishing email."]
    heads = [(l, h) for l in (2, 20) for h in range(9)]
    ships = Ships(heads=heads, prompt_format="query").fit(smol, requests)
    ids = [smol.tokenizer(f"## Query: {r}\n## Answer:", add_special_tokens=False)["input_ids"] for r in requests]
    for head in [(2, 4), (20, 0)]:
        np.testing.assert_allclose(
            ships.scores_.values[:, head[0], head[1]], ref_ships(smol_hf, ids, head, 1e-5), rtol=1e-3, atol=1e-5
        )
    assert ships.plot() is not None and len(ships.heads_) == 10


def test_paper_templates_byte_for_byte_with_the_tokenizers_special_tokens():
    from headscope.safety.formats import TEMPLATES, safety_prompt_ids
    from headscope.testing.architectures import tiny_arch_model

    assert TEMPLATES["ships"] == "## Query:{query} \n## Answer:"
    assert TEMPLATES["sahara"] == "## Query:{query}\n## Answer:"
    assert TEMPLATES["query"] == "## Query: {query}\n## Answer:"
    model = tiny_arch_model("llama")  # its tokenizer adds BOS, like Llama-2's: the code's tokenizer(text) keeps it
    for fmt, template in TEMPLATES.items():
        text = template.replace("{query}", "t5 t6")
        assert safety_prompt_ids(model, ["t5 t6"], fmt) == [model.tokenizer(text)["input_ids"]]
        assert safety_prompt_ids(model, ["t5 t6"], fmt)[0][0] == model.tokenizer.bos_token_id
