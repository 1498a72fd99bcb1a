"""Prompt formatting shared by the safety-head analyzers (Ships, Sahara)."""

from __future__ import annotations

from ..errors import InputError

# The official code's template for Generalized Ships / the Ships quick-start.
QUERY_TEMPLATE = "## Query: {query}\n## Answer:"


def safety_prompt_ids(model, prompts, prompt_format: str) -> list[list[int]]:
    """Token ids of each request under `prompt_format`.

    "chat": the model's chat template with the assistant turn opened (how the safety-tuned
    testbed was trained, so where its refusal lives); "raw": the text as is (Ships' get_ships);
    "query": the paper code's "## Query: ...\\n## Answer:"; or any template with a {query} field.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError("safety-head analyzers need a non-empty list of request strings (harmful prompts)")
    if prompt_format == "chat":
        from ..safety import chat_ids

        return [chat_ids(model, p) for p in prompts]
    template = {"raw": "{query}", "query": QUERY_TEMPLATE}.get(prompt_format, prompt_format)
    if "{query}" not in template:
        raise InputError(f"prompt_format must be 'chat', 'raw', 'query' or a template containing {{query}}, "
                         f"got {prompt_format!r}")
    return [model.tokenizer(template.replace("{query}", p), add_special_tokens=False)["input_ids"] for p in prompts]


def default_harmful_prompts() -> list[str]:
    """The held-out harmful requests written for headscope (data/safety)."""
    from ..safety import prompt_set

    return prompt_set("harmful-heldout")
