"""Generalized Ships and Sahara (Zhou et al. 2024): dataset-level safety heads by subspace angle,
grown greedily into a head group."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..inputs.tokens import to_token_lists
from ..interventions import UniformAttention
from ..interventions.scan import clean_readout, variant_outputs
from ..models.info import model_info
from ..results import HeadScores
from ..safety.formats import PromptFormat, needs_chat_template, quick_harmful_prompts
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, example_prompts, register
from .params import Interval
from .ships import INPUT_KIND, REQUEST_CONSTRAINTS, Requests, as_prompt_ids


def leading_left_vector(M: torch.Tensor) -> torch.Tensor:
    """u1 of M = U S Vᵀ, M [n_prompts, d_model]: the leading left singular vector (in R^n_prompts)."""
    return torch.linalg.svd(M.double(), full_matrices=False)[0][:, 0]


def subspace_angle(u: torch.Tensor, v: torch.Tensor) -> float:
    """Principal angle (degrees) between span(u) and span(v) for unit vectors: arccos |<u, v>|,
    as the official `compute_subspace_similarity` with r = 1."""
    return float(torch.rad2deg(torch.arccos(torch.clamp((u @ v).abs(), 0.0, 1.0))))


@register
class Sahara(Analyzer):
    """Generalized Ships(h) = angle between the leading left singular vectors of M_base and
    M_ablated, M = the final-norm hidden states of every request's last token [n_prompts, d_model].
    Sahara grows a group G greedily: each step adds the head whose ablation together with G
    (Undifferentiated Attention, ε = 1e-5) gives the largest angle.

    Each step is one exact batched scan over the candidates with G kept ablated. `scores_` is the
    first step's single-head Generalized Ships [1, layer, head] (degrees; one dataset-level row); `heads_` the group in the
    order found; `steps_` a table of (step, head, angle); `step_scores_` each step's HeadScores.

    Example:
        >>> from headscope.testing import planted_model, induction_tokens
        >>> model, truth = planted_model()
        >>> sahara = Sahara(search_steps=1).fit(model, induction_tokens(model, 12, batch=4))
        >>> sahara.heads_[0] in (truth.previous_token, truth.induction)
        True
    """

    name = "sahara"
    input_kind = INPUT_KIND + ", at least 2"
    parameter_constraints = {**REQUEST_CONSTRAINTS, "search_steps": [Interval(int, 1, None)]}
    example_params = {"search_steps": 1}
    ci_refusal = (
        "Sahara's score is one subspace angle of the whole data set's hidden states (no per-prompt "
        "value to resample); an interval would need the model again for every resample. Fix: "
        "Ships (per-prompt KL) has .ci(), or rerun Sahara on random halves of the prompts"
    )
    description = "Dataset-level safety heads: subspace angle of last-token hidden states, greedy group search."
    atlas = AtlasEntry(
        what=(
            "Dataset-level safety heads: the angle by which ablating a head turns the subspace of last-token "
            "states of harmful requests (Generalized Ships), then a greedy search for the group that turns it "
            "most (Sahara)."
        ),
        docs="sahara.md",
        quick={"search_steps": 1},
        full={},
        data=quick_harmful_prompts,
        applies=needs_chat_template,
        columns=lambda a: {"sahara_angle": a.scores_},
        roles=(
            Role(
                "safety", "sahara_angle", selected=lambda a: a.heads_, rule="Sahara's greedy group (search_steps heads)"
            ),
        ),
    )

    def __init__(
        self,
        epsilon: float = 1e-5,
        search_steps: int = 3,
        prompt_format: PromptFormat | str = "chat",
        heads=None,
        batch_size: int = 8,
    ):
        self.epsilon = epsilon
        self.search_steps = search_steps
        self.prompt_format = prompt_format
        self.heads = heads
        self.batch_size = batch_size

    def _angles(self, model, ids, u_base, group, candidates) -> np.ndarray:
        info = model_info(model)
        n = len(ids)
        hidden = {h: torch.zeros(n, info.d_model) for h in candidates}
        spec = UniformAttention(heads=candidates, epsilon=self.epsilon)
        base_iv = [UniformAttention(heads=group, epsilon=self.epsilon)] if group else []
        outputs = variant_outputs(
            model,
            ids,
            spec,
            batch_size=self.batch_size,
            readout="final_hidden",
            base_interventions=base_iv,
            desc=f"{self.name} step {len(group) + 1}",
        )
        with contextlib.closing(outputs):
            for batch, _, layer, variants in outputs:
                for head, out in variants.items():
                    hidden[(layer, head)][batch.index] = out[:, 0].float()
        angles = np.full((info.n_layers, info.n_heads), np.nan)
        for (layer, head), M in hidden.items():
            angles[layer, head] = subspace_angle(u_base, leading_left_vector(M))
        return angles

    def _check_params(self, info) -> None:
        for l, h in self.heads or ():
            info.check_head(l, h)

    def prepare_data(self, model, data=None) -> Requests:
        """Requests as token id lists; at least 2 (Sahara compares subspaces of the dataset's states)."""
        req = as_prompt_ids(model, data, self.prompt_format)
        ids = to_token_lists(model, req.ids, model_info(model))
        if len(ids) < 2:
            raise InputError("Sahara compares subspaces of a dataset's hidden states: give at least 2 prompts")
        return Requests(ids, req.labels)

    @classmethod
    def example_data(cls, model):
        return example_prompts(model, seq_len=6, n_prompts=3)

    def _fit(self, model, data: Requests) -> None:
        info = model_info(model)
        ids = data.ids
        pool = sorted({(int(l), int(h)) for l, h in self.heads}) if self.heads is not None else [*info.heads()]
        u_base = leading_left_vector(clean_readout(model, ids, "final_hidden", batch_size=self.batch_size))
        group: list[tuple[int, int]] = []
        rows: list = []
        self.step_scores_ = []
        for step in range(min(self.search_steps, len(pool))):
            angles = self._angles(model, ids, u_base, group, [h for h in pool if h not in group])
            layer, head = np.unravel_index(np.nanargmax(angles), angles.shape)
            best = (int(layer), int(head))
            group.append(best)
            rows.append(
                {
                    "step": step + 1,
                    "head": f"L{best[0]}H{best[1]}",
                    "layer": best[0],
                    "head_index": best[1],
                    "angle_deg": float(angles[best]),
                }
            )
            # One angle per head for the whole dataset: the prompt axis has one entry.
            self.step_scores_.append(
                HeadScores(
                    angles[None],
                    name=f"sahara_step{step + 1}",
                    n_kv_heads=info.n_kv_heads,
                    layer_kinds=info.layer_kinds,
                    model=info.name,
                    analyzer=self.name,
                    params=self.get_params(),
                    prompts=[f"all {len(ids)} prompts"],
                    description=f"subspace angle (deg) with {group[:-1] or 'no heads'} already ablated",
                )
            )
        self.scores_ = self._own(
            self.step_scores_[0],
            name="generalized_ships",
            description="Generalized Ships: subspace angle (degrees), one head ablated",
        )
        self.heads_ = group
        self.steps_ = pd.DataFrame(rows)
