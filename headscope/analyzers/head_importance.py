"""Head importance by gradient (Michel, Levy, Neubig 2019): I_h = E_x |∂L(x)/∂ξ_h| with a head gate ξ."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..confidence import CIMethod, check_ci_args, check_units, ci_result
from ..inputs.prompts import load_prompts
from ..inputs.tokens import to_token_lists
from ..interventions.hooks import head_gate_hooks
from ..models.info import model_info
from ..results import HeadScores
from .atlas_entry import AtlasEntry
from .base import Analyzer, example_prompts, prompts_or_default, register, select_heads
from .params import Boolean, Interval


@register
class HeadImportance(Analyzer):
    """Cheap all-heads ranking: one forward and one backward pass per example.

    Each head's output (hook_z) is multiplied by a gate ξ_h = 1; the importance of h is the mean
    over examples of |∂L/∂ξ_h| (absolute value per example, as the reference implementation with
    batch size 1), L = next-token cross-entropy summed over the example's tokens. Then divided by
    the number of tokens and, per layer, by the ℓ_exponent norm over that layer's heads
    (`normalize_layers`, on by default as in the paper's code); `min_max` rescales globally to [0, 1].

    Example:
        >>> from headscope.testing import planted_model, induction_tokens
        >>> model, truth = planted_model()
        >>> imp = HeadImportance().fit(model, induction_tokens(model, 20, batch=2))
        >>> sorted(imp.heads_[:2]) == sorted([truth.previous_token, truth.induction])
        True
    """

    name = "head-importance"
    description = "Gradient head importance |dL/d xi_h| (Michel et al. 2019), per-layer normalised."
    atlas = AtlasEntry(
        what=(
            "How much the loss on the built-in text depends on each head: |dL/d gate| of a gate on its output "
            "(Michel et al. 2019), normalised per layer. A score, not a role: every head gets one."
        ),
        docs="head-importance.md",
        columns=lambda a: {"importance": a.scores_},
    )
    input_kind = "prompts: strings or token id lists (None: the built-in prompt set)"
    parameter_constraints = {
        "normalize_layers": [Boolean()],
        "exponent": [Interval(float, 0, None, "neither")],
        "min_max": [Boolean()],
        "top_k": [Interval(int, 1, None)],
        "prepend_bos": [None, Boolean()],
    }
    example_params = {"top_k": 5}

    def __init__(
        self,
        normalize_layers: bool = True,
        exponent: float = 2.0,
        min_max: bool = False,
        top_k: int = 10,
        prepend_bos: bool | None = None,
    ):
        self.normalize_layers = normalize_layers
        self.exponent = exponent
        self.min_max = min_max
        self.top_k = top_k
        self.prepend_bos = prepend_bos

    def _check_params(self, info) -> None:
        info.require_causal("head-importance", "differentiates the next-token loss")

    def prepare_data(self, model, data=None) -> list[list[int]]:
        """Token id lists (strings encoded with the model's specials); None = the built-in prompt set."""
        return to_token_lists(model, prompts_or_default(data, load_prompts), model_info(model), self.prepend_bos)

    @classmethod
    def example_data(cls, model):
        return example_prompts(model)

    def _fit(self, model, examples) -> None:
        info = model_info(model)
        # Per prompt: its |dL/d gate| and token count (the importance is their sums' ratio, so ci() can
        # resample prompts); a one-token prompt predicts nothing and adds zeros.
        grads = np.zeros((len(examples), info.n_layers, info.n_heads))
        n_tok = np.zeros(len(examples))
        for i, ids in enumerate(tqdm(examples, desc=self.name, disable=len(examples) < 4)):
            if len(ids) < 2:
                continue
            gates = torch.ones(info.n_layers, info.n_heads, requires_grad=True)
            tokens = torch.tensor([ids])
            with model.hooks(fwd_hooks=head_gate_hooks(gates, info.attention_layers)):
                logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="sum")
            (grad,) = torch.autograd.grad(loss, gates)
            grads[i] = grad.abs().double().numpy()
            n_tok[i] = len(ids) - 1
        self.prompt_grads_, self.prompt_tokens_ = grads, n_tok
        n_tokens = int(n_tok.sum())
        self.raw_importance_ = grads.sum(0) / max(n_tokens, 1)
        # One importance for the whole dataset (a sum over its tokens, as the paper defines it): the
        # prompt axis of scores_ has one entry.
        self.scores_ = HeadScores(
            self._normalise(self.raw_importance_[None])[0][None],
            name="head_importance",
            n_kv_heads=info.n_kv_heads,
            layer_kinds=info.layer_kinds,
            model=info.name,
            analyzer=self.name,
            params=self.get_params(),
            prompts=[f"all {len(examples)} prompts"],
            description=self.description,
        )
        self.heads_ = select_heads(self.scores_, top_k=self.top_k)
        self.n_tokens_ = n_tokens

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        """raw [n, layer, head] -> the importance: per layer / its l_exponent norm, then min-max if asked."""
        values = raw
        if self.normalize_layers:
            norms = (values**self.exponent).sum(-1, keepdims=True) ** (1 / self.exponent)
            values = values / (norms + 1e-20)
        if self.min_max:
            lo, hi = values.min(axis=(1, 2), keepdims=True), values.max(axis=(1, 2), keepdims=True)
            values = (values - lo) / (hi - lo + 1e-20)
        return values

    def ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0, method: CIMethod = "percentile"):
        """Bootstrap CI per head, resampling prompts: a resample's importance is its prompts' summed
        |dL/d gate| over their summed tokens, normalised as the fit's (a ratio, not a prompt mean)."""
        self._check_fitted()
        grads, tokens = self.prompt_grads_, self.prompt_tokens_
        check_ci_args(level, n_boot, seed, method)
        check_units(grads, "HeadImportance.ci")
        L, H = grads.shape[1:]
        flat = grads.reshape(len(grads), -1)

        def stat(w):
            raw = (w @ flat) / np.maximum(w @ tokens, 1)[:, None]
            return self._normalise(raw.reshape(-1, L, H)).reshape(len(w), -1)

        return ci_result(
            stat,
            len(grads),
            (L, H),
            name="head_importance",
            level=level,
            n_boot=n_boot,
            seed=seed,
            method=method,
            statistic="importance (summed |dL/d gate| per token, normalised)",
            attrs=self.scores_.provenance,
        )
