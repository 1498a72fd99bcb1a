"""Direct logit attribution: `direct_logit_attribution(model, prompts, answers)`.

Convention (TransformerLens's `ActivationCache.apply_ln_to_stack` with the cached final scale, then
`@ (W_U[:, correct] − W_U[:, wrong])`): the residual entering the final norm at the answer position is
the sum of the embeddings, every head's output z_h · W_O_h, every layer's attention output bias and
every MLP's output. The final norm is made linear by freezing its scale at the value computed on the
real residual: a component c maps to (c − mean(c)) / scale · w for a LayerNorm, c / scale · w for an
RMSNorm (w the norm's gain; Gemma's (1 + w) is detected). Each component's direct contribution is that
vector dotted with W_U[:, correct] − W_U[:, wrong]; the norm's bias and the unembedding's bias are
components too. With the scale frozen, the contributions sum exactly to the model's logit difference.

What it does not cover, and how it says so:
- a readout that is not final norm → unembedding (BERT's dense + GELU + LayerNorm masked-LM transform,
  `headscope.families.bert`): refused, the transform is not linear in the residual;
- blocks whose sublayer outputs pass through a norm before the residual add (Gemma 2/3's post-attention
  and post-feed-forward norms, BERT's post-LN): the residual is then not the sum of the heads' outputs;
  found at run time (the decomposition is checked on every batch) and refused;
- a final logit transform (Gemma 2's soft-cap, `Family.logits`): the attribution is of the logit
  difference before it, stated in the result's params ("logits": "before the final soft-cap").
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..inputs.tokens import iter_batches, to_token_lists
from ..models.family import family_of
from ..models.info import model_device, model_info
from ..results import HeadScores
from .metrics import _answer_ids
from .patch_results import LogitAttribution
from .targets import prompt_labels

_RTOL = 1e-4  # of the residual's scale: float32 sums of a dozen components agree to ~1e-6


def _positions(position, lengths: list[int]) -> list[int]:
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise InputError(
            f"position must be an integer token position (-1 = each prompt's last token), got {position!r}"
        )
    out = []
    for i, n in enumerate(lengths):
        p = n + int(position) if position < 0 else int(position)
        if not 0 <= p < n:
            raise InputError(
                f"position={position} is outside prompt {i} ({n} tokens); use -1 for each prompt's last "
                "token or a position every prompt reaches"
            )
        out.append(p)
    return out


def _frozen_norm(model, x: torch.Tensor, y: torch.Tensor):
    """(center, scale [B, 1], gain [d], bias [d]) such that ln_final(x) = center?(x)/scale · gain + bias on
    this residual; found among LayerNorm / RMSNorm with gain w or 1 + w and checked against the output."""
    mod = getattr(model.ln_final, "original_component", model.ln_final)
    eps = next((float(getattr(mod, a)) for a in ("eps", "variance_epsilon", "epsilon") if hasattr(mod, a)), None)
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    d = x.shape[-1]
    gains = [torch.ones(d, dtype=x.dtype)] if w is None else [w.detach().to(x), 1 + w.detach().to(x)]
    bias = torch.zeros(d, dtype=x.dtype) if b is None else b.detach().to(x)
    for center in (True, False):
        xc = x - x.mean(-1, keepdim=True) if center else x
        scale = (xc.pow(2).mean(-1, keepdim=True) + (eps or 0.0)).sqrt()
        for gain in gains:
            if torch.allclose(xc / scale * gain + bias, y, rtol=_RTOL, atol=_RTOL * float(y.abs().max())):
                return center, scale, gain, bias
    raise InputError(
        f"direct_logit_attribution: the final norm ({type(mod).__name__}) is not a LayerNorm or RMSNorm "
        "whose scale headscope can freeze, so no linear per-component attribution exists on this model; "
        "use patch() (exact activation patching) instead"
    )


def direct_logit_attribution(
    model, prompts, answers, *, position: int = -1, batch_size: int = 8, prepend_bos: bool | None = None
) -> LogitAttribution:
    """Each head's direct effect on logit(correct) − logit(wrong) at `position`, and everything else's.

    Args:
        prompts: strings, id lists or a token tensor.
        answers: one (correct, wrong) pair per prompt: single-token strings (mind the leading space) or ids.
        position: the position read (-1: each prompt's last real token; another negative counts from each
            prompt's end; a non-negative one is absolute, BOS included).

    Returns:
        LogitAttribution: `.heads` HeadScores [prompt, layer, head] (each head's z·W_O through the frozen
        final norm onto W_U[correct] − W_U[wrong]), `.components` the embeddings, attention biases, MLPs
        and biases, `.logit_diff` the model's own difference; `.total()` equals it (see the module
        docstring for the convention and the families it refuses).
    """
    fam = family_of(model)
    if fam is not None and fam.readout is not None:
        raise InputError(
            f"direct_logit_attribution: {fam.name} reads out through its own transform (not final norm → "
            "unembedding), which is not linear in the residual stream, so heads have no direct logit "
            "contribution. Use patch() (activation patching) on this model"
        )
    info = model_info(model)
    if info.layer_kinds is not None:
        raise InputError(
            f"direct_logit_attribution: {info.name} is a hybrid ({info.kinds_note()}): the outputs of its "
            "layers without attention are not among the components this decomposition names yet. "
            "Use patch() (activation patching) on this model"
        )
    if info.d_head != int(model.cfg.d_head):
        raise InputError(
            f"direct_logit_attribution: {info.name}'s heads output {info.d_head} dimensions but the "
            f"bridge splits W_O into heads of {model.cfg.d_head} (multi-head latent attention), so a "
            "head's z·W_O is not defined from the bridge's weights. Use patch() on this model"
        )
    ids = to_token_lists(model, prompts, info, prepend_bos)
    answer_ids = _answer_ids(model, answers, len(ids))
    where = _positions(position, [len(t) for t in ids])
    L, H = info.n_layers, info.n_heads
    W_U = model.W_U.detach().double().cpu()  # [d, vocab]
    b_U = getattr(model, "b_U", None)
    b_U = torch.zeros(W_U.shape[1], dtype=torch.float64) if b_U is None else b_U.detach().double().cpu()
    W_O = torch.stack([model.blocks[l].attn.W_O.detach().double().cpu() for l in range(L)])  # [L, H, dh, d]
    heads = np.zeros((len(ids), L, H))
    names = (
        ["embed"] + [f"{k}.L{l}" for l in range(L) for k in ("attn_bias", "mlp")] + ["ln_final.bias", "unembed.bias"]
    )
    comps = {k: np.zeros(len(ids)) for k in names}
    diff = np.zeros(len(ids))
    pad = info.pad_token_id if info.pad_token_id is not None else 0
    sites = ["blocks.0.hook_resid_pre", "ln_final.hook_in", "ln_final.hook_out"] + [
        f"blocks.{l}.{s}" for l in range(L) for s in ("attn.hook_z", "hook_attn_out", "hook_mlp_out")
    ]
    for batch in iter_batches(ids, batch_size, pad):
        got: dict[str, torch.Tensor] = {}

        def keep(name, got=got):  # by the name asked for: a hook point's own name may be an alias's
            def hook(t, hook):
                got[name] = t.detach().double().cpu()

            return hook

        device = model_device(model)
        with torch.no_grad(), model.hooks(fwd_hooks=[(s, keep(s)) for s in sites]):
            model(batch.tokens.to(device), attention_mask=batch.attention_mask.to(device))
        rows, pos = torch.arange(len(batch.index)), torch.tensor([where[i] for i in batch.index])
        valid = batch.valid
        x, y = got["ln_final.hook_in"][rows, pos], got["ln_final.hook_out"][rows, pos]
        # The decomposition this convention rests on, checked on every real position of the batch.
        full = got["blocks.0.hook_resid_pre"] + sum(
            got[f"blocks.{l}.hook_attn_out"] + got[f"blocks.{l}.hook_mlp_out"] for l in range(L)
        )
        scale = float(got["ln_final.hook_in"][valid].abs().max())
        if not torch.allclose(full[valid], got["ln_final.hook_in"][valid], rtol=0, atol=_RTOL * scale):
            raise InputError(
                "direct_logit_attribution: on this model the residual entering the final norm is not the "
                "embeddings plus every attention and MLP output (its blocks normalise a sublayer's output "
                "before adding it, e.g. Gemma 2/3's post-attention norms), so heads have no additive "
                "direct contribution. Use patch() (activation patching) on this model"
            )
        head_out = {l: torch.einsum("bphd,hde->bphe", got[f"blocks.{l}.attn.hook_z"], W_O[l]) for l in range(L)}
        for l in range(L):  # what attn_out adds beyond its heads must be one bias vector, everywhere
            rest = (got[f"blocks.{l}.hook_attn_out"] - head_out[l].sum(2))[valid]
            if not torch.allclose(rest, rest[:1].expand_as(rest), rtol=0, atol=_RTOL * scale):
                raise InputError(
                    f"direct_logit_attribution: layer {l}'s attention output is not its heads' z·W_O plus "
                    "a bias on this model (a norm or gate between the heads and the residual, e.g. the post-attention "
                    "norm of Gemma 2/3 and OLMo 2), so per-head contributions are not defined. Use patch() on this model"
                )
        center, s, gain, bias = _frozen_norm(model, x, y)
        pair = answer_ids[torch.as_tensor(batch.index)]
        direction = (W_U[:, pair[:, 0]] - W_U[:, pair[:, 1]]).T  # [B, d]

        def project(
            c, center=center, s=s, gain=gain, direction=direction
        ):  # c [B, ..., d] at the read position -> [B, ...]
            c = c - c.mean(-1, keepdim=True) if center else c
            sc = s.view(-1, *([1] * (c.ndim - 1)))
            dv = direction.view(direction.shape[0], *([1] * (c.ndim - 2)), -1)
            return ((c / sc * gain) * dv).sum(-1)

        idx = batch.index
        for l in range(L):
            heads[idx, l] = project(head_out[l][rows, pos]).numpy()
            comps[f"attn_bias.L{l}"][idx] = project(
                (got[f"blocks.{l}.hook_attn_out"] - head_out[l].sum(2))[rows, pos]
            ).numpy()
            comps[f"mlp.L{l}"][idx] = project(got[f"blocks.{l}.hook_mlp_out"][rows, pos]).numpy()
        comps["embed"][idx] = project(got["blocks.0.hook_resid_pre"][rows, pos]).numpy()
        comps["ln_final.bias"][idx] = (direction @ bias).numpy()
        comps["unembed.bias"][idx] = (b_U[pair[:, 0]] - b_U[pair[:, 1]]).numpy()
        raw = y @ W_U + b_U  # the unembedding as a linear map (before any family logit transform)
        diff[idx] = (raw.gather(-1, pair[:, :1]) - raw.gather(-1, pair[:, 1:]))[:, 0].numpy()
    params = {
        "position": int(position),
        "answers": answer_ids.tolist(),
        "convention": "final norm scale frozen at the clean residual (TransformerLens apply_ln_to_stack)",
    }
    if fam is not None and fam.logits is not None:
        params["logits"] = "before the final soft-cap (the family's logit transform): the attributed difference"
    result = HeadScores(
        heads,
        name="direct_logit_attribution",
        n_kv_heads=info.n_kv_heads,
        model=info.name,
        analyzer="direct_logit_attribution",
        params=params,
        prompts=prompt_labels(prompts),
        better="higher",
        description="each head's direct contribution to logit(correct) − logit(wrong)",
    )
    return LogitAttribution(result, comps, diff, params=params)
