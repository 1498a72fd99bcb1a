"""Prompt formatting shared by the safety-head analyzers (Ships, Sahara)."""

from __future__ import annotations

from typing import Literal, get_args

from ..errors import InputError
from ..inputs.tokens import encode
from ..models.info import model_info
from .evaluate import chat_ids
from .prompts import prompt_set

# The official code's templates (Zhou et al. 2024), byte for byte:
QUERY_TEMPLATE = "## Query: {query}\n## Answer:"  # `ships_test` (generation) and the quick-start
Template = Literal["raw", "query", "ships", "sahara"]
# "chat", a named template, or any template string with a {query} field (hence `| str` where taken).
PromptFormat = Literal["chat", Template]
TEMPLATES: dict[Template, str] = {
    "raw": "{query}",  # `get_ships` without a template (use_tem=False)
    "query": QUERY_TEMPLATE,
    "ships": "## Query:{query} \n## Answer:",  # `SHIPS.main` scoring with use_tem=True
    "sahara": "## Query:{query}\n## Answer:",  # Generalized Ships / Sahara
}

_BY_NAME: dict[str, str] = dict(TEMPLATES.items())  # looked up by any string: a template given verbatim is no key


def safety_prompt_ids(model, prompts, prompt_format: PromptFormat | str) -> list[list[int]]:
    """Token ids of each request under `prompt_format`.

    "chat": the model's chat template with the assistant turn opened (how the safety-tuned
    testbed was trained, so where its refusal lives); "raw": the text as is (Ships' get_ships);
    "query", "ships", "sahara": the paper code's templates (`TEMPLATES`); or any template with a
    {query} field. Non-chat formats are encoded as the code's `tokenizer(text)` does: with the
    tokenizer's own special tokens (BOS on Llama-2 / Mistral, none on SmolLM2).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError("safety-head analyzers need a non-empty list of request strings (harmful prompts)")
    if prompt_format == "chat":
        return [chat_ids(model, p) for p in prompts]
    template = _BY_NAME.get(prompt_format, prompt_format)  # a named template, or the template itself
    if "{query}" not in template:
        raise InputError(
            f"prompt_format must be 'chat', one of {sorted(get_args(Template))} or a template containing "
            f"{{query}}, got {prompt_format!r}"
        )
    info = model_info(model)
    return [
        encode(model.tokenizer, template.replace("{query}", p), info.prepend_bos, info.bos_token_id) for p in prompts
    ]


def default_harmful_prompts() -> list[str]:
    """The held-out harmful requests written for headscope (data/safety)."""
    return prompt_set("harmful-heldout")


def needs_chat_template(model) -> str | None:
    """Why the atlas skips the safety analyzers on `model` (None: it has a chat template)."""
    if getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return None
    return (
        "needs a chat model (a tokenizer with a chat template): safety heads are read on harmful requests "
        "in the model's chat format"
    )


def quick_harmful_prompts(model, preset: str) -> list[str] | None:
    """The atlas's requests: 4 held-out harmful prompts for --quick, all of them (the default) for --full."""
    return default_harmful_prompts()[:4] if preset == "quick" else None
