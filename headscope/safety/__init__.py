"""Safety testbed tools: prompt sets, the refusal-phrase judge, attack success rate with interventions.

    >>> import headscope
    >>> from headscope.safety import attack_success_rate, prompt_set
    >>> model = headscope.load_model("smollm2-135m-safety")     # SmolLM2 + a safety LoRA (docs/safety-model.md)
    >>> attack_success_rate(model, prompt_set("harmful-heldout")).rate

A judge is any callable `(prompt, response) -> bool` (True = attack success, i.e. the model complied).
"""

from .evaluate import (
    AttackResult,
    attack_success_rate,
    chat_ids,
    chat_prompt_ids,
    generate_responses,
)
from .judge import REFUSAL_PHRASES, Judge, RefusalPhraseJudge, check_judge
from .prompts import PROMPT_SETS, prompt_set, training_pairs

__all__ = [
    "PROMPT_SETS",
    "REFUSAL_PHRASES",
    "AttackResult",
    "Judge",
    "RefusalPhraseJudge",
    "attack_success_rate",
    "chat_ids",
    "chat_prompt_ids",
    "check_judge",
    "generate_responses",
    "prompt_set",
    "training_pairs",
]
