"""Datasets of an experiment spec: inline prompts, a prompt file, or a named generator.

Parsing (`parse_data`) happens before the model is loaded and reads files; `materialize` runs
right after loading (generators need the tokenizer / vocabulary) and tokenizes everything, so a
prompt that is too long or an answer that is not one token fails before any forward pass.
Generators are looked up by name in `GENERATORS` (headscope.experiment_registry), where the module
that owns each one registers it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HeadscopeError, InputError
from ..experiment_registry import GENERATORS, PROMPT_FORMATS, Generator
from ..inputs.tokens import to_token_lists
from ._fields import Section, as_bool, as_list, as_str, check_params, fail, resolve_params


@dataclass
class DataSpec:
    """A parsed dataset entry; `kind` is what it yields: "text" or "tokens" (prompts, a file), or its
    generator's kind ("needle": NeedleSamples, "shapes": shapes-world QAItems with images, ...)."""

    name: str
    path: str
    kind: str
    generator: str | None = None
    params: dict = field(default_factory=dict)
    prompts: list | None = None
    answers: list | None = None
    template: str | None = None
    chat: bool = False
    file: Path | None = None
    file_sha256: str | None = None


@dataclass
class Dataset:
    """A materialized dataset: `items` as analyzers take them, `token_lists` as scans take them."""

    name: str
    kind: str
    items: list
    token_lists: list[list[int]]
    answers: list | None
    labels: list[str] | None  # prompt texts for result provenance (None for token inputs)
    chat: bool = False
    prompts: list | None = None  # model inputs when they are not the items (ImagePrompts of shapes items)

    @property
    def analyzer_input(self):
        """What `Analyzer.fit` gets: the items, the chat-formatted token ids when chat: true, or the
        ImagePrompts of image items."""
        if self.prompts is not None:
            return self.prompts
        return self.token_lists if self.chat else self.items


def _generator(name: str, path: str) -> Generator:
    try:
        return GENERATORS[name]
    except InputError as e:
        raise fail(path, str(e)) from None


def _answers(value, path: str, n_prompts: int | None) -> list:
    as_list(value, path)
    out = []
    for i, pair in enumerate(value):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in pair)
        ):
            raise fail(f"{path}[{i}]", f"must be a [correct, wrong] pair of strings (or token ids), got {pair!r}")
        out.append(tuple(pair))
    if n_prompts is not None and len(out) != n_prompts:
        raise fail(path, f"has {len(out)} answer pairs for {n_prompts} prompts: give one pair per prompt")
    return out


def _prompts(value, path: str) -> tuple[list, str]:
    items = [value] if isinstance(value, str) else as_list(value, path)
    if not items:
        raise fail(path, "is empty: give at least one prompt")
    for i, p in enumerate(items):
        is_ids = isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
        if not (isinstance(p, str) and p.strip()) and not is_ids:
            raise fail(f"{path}[{i}]", f"must be a non-empty string or a list of token ids, got {p!r}")
    return list(items), ("text" if all(isinstance(p, str) for p in items) else "tokens")


def _read_file(path_text: str, base_dir: Path, path: str) -> tuple[Path, list, list | None, str]:
    file = Path(path_text).expanduser()
    file = file if file.is_absolute() else base_dir / file
    if not file.is_file():
        raise fail(path, f"file {str(file)!r} does not exist (relative paths are read from the spec's folder)")
    raw = file.read_bytes()
    answers = None
    if file.suffix == ".json":
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(path, f"{file} is not valid JSON: {e}") from None
        if isinstance(doc, dict):
            prompts, answers = doc.get("prompts"), doc.get("answers")
        elif isinstance(doc, list) and doc and all(isinstance(d, dict) for d in doc):
            prompts = [d.get("prompt") for d in doc]
            answers = [d.get("answers") for d in doc] if any("answers" in d for d in doc) else None
        else:
            prompts = doc
        if prompts is None:
            raise fail(
                path,
                f"{file}: expected a JSON list of prompts, {{'prompts': [...], 'answers': [...]}} "
                "or a list of {'prompt': ..., 'answers': [correct, wrong]}",
            )
    else:  # plain text: one prompt per blank-line-separated block (as `headscope report --prompts`)
        prompts = [p.strip() for p in raw.decode("utf-8", errors="replace").split("\n\n") if p.strip()]
    prompts, _kind = _prompts(prompts, f"{path} ({file.name})")
    if answers is not None:
        answers = _answers(answers, f"{path} ({file.name} answers)", len(prompts))
    return file, prompts, answers, hashlib.sha256(raw).hexdigest()


def parse_data(raw: Any, name: str, path: str, base_dir: Path) -> DataSpec:
    """One dataset entry: exactly one of `prompts`, `file`, `generator` (+ its parameters)."""
    sec = Section(raw, path)
    sources = [k for k in ("prompts", "file", "generator") if k in sec.raw]
    if len(sources) != 1:
        raise fail(
            path,
            "needs exactly one of 'prompts' (inline list), 'file' (a .json/.txt path) or "
            f"'generator' ({', '.join(sorted(GENERATORS))}); got {sources or 'none'}",
        )
    template = sec.get("template", as_str, None)
    if template is not None and "{prompt}" not in template:
        raise fail(sec.at("template"), "must contain '{prompt}' where each prompt goes")
    spec = DataSpec(name=name, path=path, kind="text", template=template, chat=sec.get("chat", as_bool, False))
    if sources == ["generator"]:
        spec.generator = sec.get("generator", as_str)
        gen = _generator(spec.generator, sec.at("generator"))
        spec.kind = gen.yields
        spec.params = {k: v for k, v in sec.raw.items() if k not in ("generator", "template", "chat")}
        check_params(spec.params, gen.params, path)  # the parameters sit next to `generator:`
        sec.finish(extra_allowed=spec.params)
    elif sources == ["prompts"]:
        prompts, spec.kind = _prompts(sec.get("prompts"), sec.at("prompts"))
        spec.prompts = prompts
        spec.answers = sec.get("answers", lambda v, p: _answers(v, p, len(prompts)), None)
        sec.finish()
    else:
        spec.file, spec.prompts, spec.answers, spec.file_sha256 = _read_file(
            sec.get("file", as_str), base_dir, sec.at("file")
        )
        spec.kind = "text" if all(isinstance(p, str) for p in spec.prompts) else "tokens"
        sec.finish()
    for key, used in (("template", template is not None), ("chat", spec.chat)):
        if used and spec.kind != "text":
            raise fail(sec.at(key), f"applies to text prompts only; this dataset yields {spec.kind}")
    return spec


def materialize(spec: DataSpec, model, info) -> Dataset:
    """Generate and tokenize (no forward pass). Errors name the dataset's field path."""
    gen = _generator(spec.generator, spec.path) if spec.generator else None
    try:
        if gen is not None:
            items = gen.make(model, info, **resolve_params(spec.params, gen.params, spec.path))
        elif spec.prompts is not None:
            items = list(spec.prompts)
        else:  # parse_data gives every spec prompts (inline or from its file) or a generator
            raise fail(spec.path, "has no prompts: give prompts, a file or a generator")
        if spec.template is not None:
            items = [spec.template.replace("{prompt}", p) for p in items]
        prompts = None
        if gen is not None and gen.token_ids is not None:  # items that carry their tokens (NeedleSamples)
            token_lists = [list(t) for t in gen.token_ids(items)]
        elif gen is not None and gen.model_inputs is not None:  # e.g. shapes items -> ImagePrompts
            prompts = gen.model_inputs(items)
            token_lists = to_token_lists(model, prompts, info)
        elif spec.chat:  # the same chat formatting as the safety evaluation's generation
            chat = PROMPT_FORMATS["chat"]
            token_lists = to_token_lists(model, [chat(model.tokenizer, p) for p in items], info)
        else:
            token_lists = to_token_lists(model, items, info)
    except HeadscopeError as e:
        raise fail(spec.path, str(e)) from None
    labels = list(items) if spec.kind == "text" else None
    return Dataset(spec.name, spec.kind, items, token_lists, spec.answers, labels, spec.chat, prompts)
