"""patch() and direct_logit_attribution() equal plain TransformerLens hook loops, find the planted
induction head, and refuse what they cannot do."""

import numpy as np
import pytest
import torch

from headscope.errors import InputError
from headscope.interventions import LogitAttribution, PatchScores, direct_logit_attribution, patch
from headscope.testing import planted_model
from headscope.testing.architectures import ARCHITECTURES, random_prompt, tiny_arch_model

FAMILIES = ["gpt2", "llama", "qwen2"]  # LayerNorm + learned positions; GQA RMSNorm; GQA with qkv biases
HOOK = {
    "z": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
    "resid_pre": "hook_resid_pre",
}


def _pairs(seed=0):
    """Three clean/corrupt pairs, ragged across pairs (7, 7, 5 tokens), corrupt = two tokens swapped out."""
    g = torch.Generator().manual_seed(seed)
    clean = [[1] + torch.randint(5, 60, (n - 1,), generator=g).tolist() for n in (7, 7, 5)]
    corrupt = [list(c) for c in clean]
    for c in corrupt:
        c[2], c[-2] = int(torch.randint(5, 60, (1,), generator=g)), int(torch.randint(5, 60, (1,), generator=g))
    return clean, corrupt, [(10, 20), (11, 21), (12, 22)]


def _logit_diff(logits, pair):
    return float(logits[0, -1, pair[0]] - logits[0, -1, pair[1]])


def plain_patch(model, clean, corrupt, answers, site, direction, per_position):
    """The plain way: one TransformerLens run_with_hooks per (prompt, layer, unit[, position])."""
    name = HOOK[site]
    rows = []
    for c, x, pair in zip(clean, corrupt, answers):
        base, source = (x, c) if direction == "denoising" else (c, x)
        _, cache = model.run_with_cache(torch.tensor([source]))
        per_layer = []
        for layer in range(model.cfg.n_layers):
            act = cache[f"blocks.{layer}.{name}"]
            units = [None] if site == "resid_pre" else range(act.shape[1 if site == "pattern" else 2])
            positions = range(len(c)) if per_position or site == "resid_pre" else [None]
            grid = np.full((len(units), 7), np.nan)
            for i, u in enumerate(units):
                for p in positions:
                    at = slice(None) if p is None else p

                    def hook(t, hook, u=u, at=at, act=act):
                        t = t.clone()
                        if site == "resid_pre":
                            t[:, at] = act[:, at]
                        elif site == "pattern":
                            t[:, u, at] = act[:, u, at]
                        else:
                            t[:, at, u] = act[:, at, u]
                        return t

                    with torch.no_grad():
                        logits = model.run_with_hooks(
                            torch.tensor([base]), fwd_hooks=[(f"blocks.{layer}.{name}", hook)]
                        )
                    grid[i, 0 if p is None else p] = _logit_diff(logits, pair)
            per_layer.append(grid[0] if site == "resid_pre" else grid if per_position else grid[:, 0])
        rows.append(per_layer)
    return np.array(rows)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("per_position", [False, True])
def test_patch_z_equals_a_plain_transformerlens_loop(family, direction, per_position):
    model = tiny_arch_model(family)
    clean, corrupt, answers = _pairs()
    got = patch(
        model,
        clean,
        corrupt,
        "logit_diff",
        "z",
        direction=direction,
        per_position=per_position,
        metric_kwargs={"answers": answers},
        batch_size=2,
        max_rows=4,
    )  # ragged batches, several chunks
    ref = plain_patch(model, clean, corrupt, answers, "z", direction, per_position)
    assert got.dims == ("prompt", "layer", "head") + (("position",) if per_position else ())
    assert np.isnan(got.values[2, ..., 5:]).all() if per_position else True  # past the short pair's end
    assert np.nanmax(np.abs(ref - np.nanmean(ref))) > 1e-2  # patching does something
    np.testing.assert_allclose(got.values, ref, atol=1e-5)
    # baselines are the unpatched runs' metric
    for i, (c, x, pair) in enumerate(zip(clean, corrupt, answers)):
        with torch.no_grad():
            assert got.clean_metric[i] == pytest.approx(_logit_diff(model(torch.tensor([c])), pair), abs=1e-5)
            assert got.corrupt_metric[i] == pytest.approx(_logit_diff(model(torch.tensor([x])), pair), abs=1e-5)


@pytest.mark.parametrize("site", ["q", "k", "v", "pattern", "resid_pre"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_patch_other_sites_equal_the_plain_loop_on_gqa(site, direction):
    model = tiny_arch_model("llama")  # 4 query heads, 2 KV heads
    clean, corrupt, answers = _pairs(1)
    per_position = site in ("k", "resid_pre")
    got = patch(
        model,
        clean,
        corrupt,
        "logit_diff",
        [site],
        direction=direction,
        per_position=per_position,
        metric_kwargs={"answers": answers},
        batch_size=2,
    )[site]
    ref = plain_patch(model, clean, corrupt, answers, site, direction, per_position)
    if site in ("k", "v"):
        assert got.dims[2] == "kv_head" and got.values.shape[2] == 2  # one value per KV head, said so
    if site == "resid_pre":
        assert got.dims == ("prompt", "layer", "position")
    assert np.nanmax(ref) - np.nanmin(ref) > 1e-2  # the patched site reaches the output
    np.testing.assert_allclose(got.values, ref, atol=1e-5)


def _induction_pair(model, seed=0, n=10):
    g = torch.Generator().manual_seed(seed)
    seq = (torch.randperm(model.cfg.d_vocab - 2, generator=g)[:n] + 2).tolist()
    clean = [1] + seq + seq[:-1]  # the repeat predicts seq[-1]
    perm = torch.randperm(n - 1, generator=g).tolist()
    while perm[-1] == n - 2:  # the scrambled copy must end on another token, so it predicts another one
        perm = perm[1:] + perm[:1]
    corrupt = [1] + seq + [seq[i] for i in perm]
    return clean, corrupt, (seq[-1], seq[perm[-1] + 1])


def test_patching_the_planted_induction_head_restores_the_metric():
    model, truth = planted_model()
    pairs = [_induction_pair(model, s) for s in range(3)]
    clean, corrupt, answers = (list(x) for x in zip(*pairs))
    res = patch(model, clean, corrupt, "logit_diff", "z", metric_kwargs={"answers": answers})
    assert (res.clean_metric > 10).all() and (res.corrupt_metric < -10).all()
    norm = res.normalized()
    assert norm.dims == ("layer", "head") and norm.is_normalized
    layer, head = truth.induction
    assert norm.values[layer, head] > 0.9
    # the previous-token head feeds the induction head's keys (patching it restores part); no other head matters
    circuit = {truth.induction, truth.previous_token}
    others = [norm.values[l, h] for l in range(2) for h in range(4) if (l, h) not in circuit]
    assert np.abs(others).max() < 0.1 and norm.values[truth.previous_token] < norm.values[layer, head]
    # noising: removing the head's clean output breaks the clean prediction
    noised = patch(
        model, clean, corrupt, "logit_diff", "z", direction="noising", metric_kwargs={"answers": answers}
    ).normalized()
    assert noised.values[layer, head] > 0.9
    # per-prompt normalisation follows TransformerLens's (patched - corrupt) / (clean - corrupt)
    per = res.normalized(per_prompt=True)
    np.testing.assert_allclose(
        per.values,
        (res.values - res.corrupt_metric[:, None, None]) / (res.clean_metric - res.corrupt_metric)[:, None, None],
    )
    assert norm.heads().top(1)[["layer", "head"]].values.tolist() == [list(truth.induction)]
    assert res.heads().values.shape == (3, 2, 4) and res.heads().better == "higher"


def test_patch_results_save_load_and_tabulate(tmp_path):
    model, _truth = planted_model()
    clean, corrupt, answers = _induction_pair(model)
    res = patch(model, [clean], [corrupt], lambda logits, batch: logits[:, -1, answers[0]], "z", per_position=True)
    assert res.metric == "<lambda>" and res.values.shape == (1, 2, 4, len(clean))
    back = PatchScores.load(res.save(tmp_path / "p.json"))
    assert back == res
    df = res.to_dataframe()
    assert list(df.columns) == ["prompt", "layer", "head", "position", "score"] and len(df) == res.values.size
    assert df.attrs["direction"] == "denoising" and df.attrs["site"] == "z"
    assert res.plot().data[0].z.shape == (8, len(clean))


@pytest.mark.parametrize("family", FAMILIES)
def test_dla_equals_transformerlens_apply_ln_to_stack_and_sums_to_the_logit_difference(family):
    model = tiny_arch_model(family)
    norm = model.ln_final.original_component
    with torch.no_grad():  # a non-trivial final gain (and bias), so the convention's gain is tested
        g = torch.Generator().manual_seed(3)
        norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=g))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=g))
    clean, _, answers = _pairs(2)
    clean = [c[:5] for c in clean]  # TransformerLens's cache stacks a rectangular batch
    got = direct_logit_attribution(model, clean, answers)
    assert isinstance(got, LogitAttribution) and got.heads.values.shape == (3, 2, 4)
    tokens, ids = torch.tensor(clean), torch.tensor(answers)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [L*H, batch, d]
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * norm.weight
        direction = (model.W_U[:, ids[:, 0]] - model.W_U[:, ids[:, 1]]).T  # [batch, d]
        ref = (scaled * direction).sum(-1).T.reshape(3, 2, 4)
    np.testing.assert_allclose(got.heads.values, ref.numpy(), atol=1e-5)
    model_diff = (logits[:, -1].gather(-1, ids[:, :1]) - logits[:, -1].gather(-1, ids[:, 1:]))[:, 0].numpy()
    np.testing.assert_allclose(got.logit_diff, model_diff, atol=1e-5)
    np.testing.assert_allclose(got.total(), model_diff, atol=1e-5)  # heads + MLPs + embeddings + biases
    assert abs(got.components["mlp.L1"]).max() > 1e-3 and abs(got.components["embed"]).max() > 1e-3


def test_dla_results_round_trip(tmp_path):
    model, truth = planted_model()
    clean, _, (right, wrong) = _induction_pair(model)
    got = direct_logit_attribution(model, [clean], [(right, wrong)])
    layer, head = truth.induction
    assert got.heads.values[0, layer, head] == pytest.approx(float(np.abs(got.heads.values).max()))
    back = LogitAttribution.load(got.save(tmp_path / "dla.json"))
    assert back.heads == got.heads and back.components.keys() == got.components.keys()
    np.testing.assert_array_equal(back.total(), got.total())
    df = got.to_dataframe()
    assert set(df["component"]) >= {"L1H3", "embed", "mlp.L0", "unembed.bias"}


# Families whose heads have no additive direct path (post-sublayer norms; BERT's non-linear masked-LM readout).
DLA_REFUSED = {
    "gemma2": "post-attention norm",
    "gemma3": "post-attention norm",
    "olmo2": "post-attention norm",
    "olmo3": "post-attention norm",
    "exaone4": "post-attention norm",
    "bert": "own transform",
    **dict.fromkeys(("deepseek-v3", "deepseek-v2"), "multi-head latent attention"),
    **dict.fromkeys(("qwen3-next", "granite-moe-hybrid", "jamba"), "is a hybrid"),
}


@pytest.mark.parametrize("family", list(ARCHITECTURES))
def test_dla_sums_to_the_model_logit_difference_or_refuses_on_every_family(family):
    model = tiny_arch_model(family)
    prompts = [random_prompt(family, 8, seed=s).tolist() for s in range(2)]
    answers = [(10, 20), (11, 21)]
    if family in DLA_REFUSED:
        with pytest.raises(InputError, match=DLA_REFUSED[family]):
            direct_logit_attribution(model, prompts, answers)
        return
    got = direct_logit_attribution(model, prompts, answers)
    with torch.no_grad():
        last = model(torch.tensor(prompts))[:, -1]
    model_diff = np.array([float(last[i, a] - last[i, b]) for i, (a, b) in enumerate(answers)])
    np.testing.assert_allclose(got.logit_diff, model_diff, atol=1e-5)
    np.testing.assert_allclose(got.total(), model_diff, atol=1e-5)


def test_bad_inputs_are_input_errors_naming_the_fix():
    model, _ = planted_model()
    ok = {"metric_kwargs": {"answers": [(5, 6)]}}
    with pytest.raises(InputError, match="pair 0 .* 5 tokens .* 4 tokens"):
        patch(model, [[1, 5, 6, 7, 8]], [[1, 5, 6, 7]], **ok)
    with pytest.raises(InputError, match="2 clean prompts but 1 corrupt"):
        patch(model, [[1, 5, 6], [1, 5, 6]], [[1, 5, 7]], **ok)
    with pytest.raises(InputError, match="unknown patching site 'attn_out'"):
        patch(model, [[1, 5, 6]], [[1, 5, 7]], sites="attn_out", **ok)
    with pytest.raises(InputError, match="direction='denoise'"):
        patch(model, [[1, 5, 6]], [[1, 5, 7]], direction="denoise", **ok)
    with pytest.raises(InputError, match="answers"):
        patch(model, [[1, 5, 6]], [[1, 5, 7]], "logit_diff")
    with pytest.raises(InputError, match="unknown patching metric 'kl_last'"):
        patch(model, [[1, 5, 6]], [[1, 5, 7]], "kl_last")
    with pytest.raises(InputError, match="position=9 is outside prompt 0"):
        direct_logit_attribution(model, [[1, 5, 6]], [(5, 6)], position=9)
    import headscope.testing.sweep  # noqa: F401  (its families, e.g. XGLM: patterns reported after HF, unrouted)

    with pytest.raises(InputError, match="patch 'z' or 'v'"):
        patch(tiny_arch_model("XGLMForCausalLM"), [[1, 5, 6]], [[1, 5, 7]], sites="pattern", **ok)


def test_dla_on_ragged_prompts_equals_each_prompt_alone():
    model = tiny_arch_model("llama")
    clean, _, answers = _pairs(4)  # 7, 7 and 5 tokens: the batch is right-padded
    for position in (-1, -2, 3):
        together = direct_logit_attribution(model, clean, answers, position=position, batch_size=3)
        for i, (prompt, pair) in enumerate(zip(clean, answers)):
            alone = direct_logit_attribution(model, [prompt], [pair], position=position)
            np.testing.assert_allclose(
                together.heads.values[i], alone.heads.values[0], atol=1e-5
            )  # float32: a padded batch vs one prompt alone
            np.testing.assert_allclose(together.logit_diff[i], alone.logit_diff[0], atol=1e-5)
    with torch.no_grad():  # position 3 reads the logits there, not at the end
        logits = model(torch.tensor([clean[0]]))
    at3 = direct_logit_attribution(model, [clean[0]], [answers[0]], position=3)
    assert at3.logit_diff[0] == pytest.approx(float(logits[0, 3, 10] - logits[0, 3, 20]), abs=1e-5)


def test_the_full_forward_fallback_gives_the_replayed_numbers():
    model = tiny_arch_model("qwen2")
    clean, corrupt, answers = _pairs(5)
    kw = {"metric_kwargs": {"answers": answers}, "per_position": True, "direction": "noising"}
    replayed = patch(model, clean, corrupt, "logit_diff", ["z", "resid_pre"], **kw)
    full = patch(model, clean, corrupt, "logit_diff", ["z", "resid_pre"], replay="off", **kw)
    for site in ("z", "resid_pre"):
        np.testing.assert_allclose(replayed[site].values, full[site].values, atol=1e-5)
    norm = full["z"].normalized(per_prompt=True)  # noising: (patched - clean) / (corrupt - clean)
    np.testing.assert_allclose(
        norm.values,
        (full["z"].values - full["z"].clean_metric[:, None, None, None])
        / (full["z"].corrupt_metric - full["z"].clean_metric)[:, None, None, None],
    )
