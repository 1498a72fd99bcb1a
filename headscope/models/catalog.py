"""The catalog of named models `load_model` accepts: the bundled SmolLM2 and headscope's testbeds.

Each entry is registered by the module that builds the model (`headscope/models/loading.py` for the
bundled SmolLM2, `headscope/testbeds/*.py` for the testbeds), so adding a testbed is one file:

    register_testbed(Testbed("my-testbed", load=load_my_testbed, summary="what it plants",
                             image_prompts=None))

`load(cache_dir, device, dtype, **params)` returns a booted TransformerBridge (build it with
`headscope.models.loading.boot`); `load_model` records the testbed's name in the model's `ModelInfo`
(`model_info(model).testbed`), which is how methods recognise a testbed. `image_prompts(model, n)`,
when given, returns `n` (None: its default number of) built-in prompts with an image (what image analyzers use when called without data).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..registry import Registry
from .info import model_info


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # not a pytest test class, although its name starts with "Test"

    name: str
    load: Callable[[Any, Any, Any], Any]  # (cache_dir, device, dtype) -> TransformerBridge
    summary: str = ""
    image_prompts: Callable[[Any, int | None], list] | None = None  # (model, n or None = its default)
    # A function whose keyword parameters `load` also takes (the in-code test models: n_layers, seed...);
    # None = the testbed takes no parameters. Specs and load_model check parameters against it.
    accepts: Callable | None = None


TESTBEDS: Registry[Testbed] = Registry("bundled model or testbed", fix="see docs/contributing.md to add a testbed")


def register_testbed(testbed: Testbed) -> Testbed:
    """Make `testbed` loadable by name (`headscope.load_model(testbed.name)`)."""
    if testbed.name != testbed.name.lower():
        raise TypeError(f"testbed names are lower case (load_model lower-cases its argument): {testbed.name!r}")
    return TESTBEDS.register(testbed.name, testbed)


def testbed_params(name: str, params: dict) -> dict:
    """`params` checked against what testbed `name` accepts (InputError naming the valid ones)."""
    testbed = TESTBEDS[name]
    if not params:
        return {}
    if testbed.accepts is None:
        raise InputError(f"{name} takes no parameters, got {sorted(params)}. Fix: load it by name alone.")
    sig = inspect.signature(testbed.accepts)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = set(params) - set(sig.parameters)
        if unknown:
            raise InputError(f"{name} has no parameter(s) {sorted(unknown)}; valid: {sorted(sig.parameters)}")
    return dict(params)


def default_image_prompts(model, n: int | None = None) -> list:
    """Built-in prompts with an image for `model`'s testbed (shapes-vlm: ImagePrompts; the visual-sink
    testbed: (prefix, image, suffix) id triples); `n` None = the testbed's own default count. Models without built-in image prompts: InputError."""
    testbed = TESTBEDS.get(model_info(model).testbed or "")
    if testbed is None or testbed.image_prompts is None:
        raise InputError(
            "no built-in image prompts for this model. Fix: pass ImagePrompts, e.g. "
            "ImagePrompt.from_processor(processor, text, image) for a LLaVA-family model."
        )
    return testbed.image_prompts(model, n)
