"""Datasets of an experiment spec: inline prompts, a prompt file, or a named generator.

Parsing (`parse_data`) happens before the model is loaded and reads files; `materialize` runs
right after loading (generators need the tokenizer / vocabulary) and tokenizes everything, so a
prompt that is too long or an answer that is not one token fails before any forward pass.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HeadscopeError, InputError
from ._fields import Section, as_bool, as_list, as_str, fail, type_name

# name -> (module, function, argument headscope supplies from the model, kind of items produced)
GENERATORS = {
    "needle": ("headscope.inputs.needle", "make_needle_prompts", "tokenizer_or_model", "needle"),
    "repeat_samples": ("headscope.inputs.needle", "make_repeat_samples", "vocab_size", "needle"),
    "repeated_tokens": ("headscope.inputs.probes", "repeated_random_tokens", "vocab_size", "tokens"),
    "prompt_set": ("headscope.safety.prompts", "prompt_set", None, "text"),
    "shapes": ("headscope.vision.datasets", "shapes_set", None, "shapes"),  # shapes-vlm QAItems
}
_NOT_PARAMS = {"needles", "haystack"}  # python-only arguments (lists of dicts), not spec fields


@dataclass
class DataSpec:
    """A parsed dataset entry; `kind` is what it yields: "text", "tokens", "needle" (NeedleSample) or
    "shapes" (shapes-world QAItems, with images)."""

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


def _generator(name: str, path: str):
    if name not in GENERATORS:
        raise fail(path, f"unknown generator {name!r}; known: {', '.join(sorted(GENERATORS))}")
    module, func, _, _ = GENERATORS[name]
    try:
        return getattr(__import__(module, fromlist=[func]), func)
    except (ImportError, AttributeError) as e:
        raise fail(path, f"generator {name!r} is not available in this installation ({e})") from None


def check_call_params(params: dict, func, path: str, skip=()) -> None:
    """Names (and obvious types) of `params` against `func`'s signature; required ones must be given."""
    sig = inspect.signature(func)
    known = {n: p for n, p in sig.parameters.items()
             if n not in skip and n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = set(params) - set(known)
    if unknown:
        from ._fields import unknown_keys

        raise unknown_keys(path, unknown, known)
    missing = [n for n, p in known.items() if p.default is p.empty and n not in params]
    if missing:
        raise fail(path, f"missing required parameter(s) {missing}")
    for name, value in params.items():
        default = known[name].default
        where = f"{path}.{name}"
        if isinstance(default, bool) and not isinstance(value, bool):
            raise fail(where, f"must be true or false, got {type_name(value)} {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            ok = isinstance(value, int) if isinstance(default, int) else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok:
                want = "an integer" if isinstance(default, int) else "a number"
                raise fail(where, f"must be {want}, got {type_name(value)} {value!r}")
        if isinstance(default, str) and not isinstance(value, (str, list)):
            raise fail(where, f"must be a string, got {type_name(value)} {value!r}")


def _answers(value, path: str, n_prompts: int | None) -> list:
    as_list(value, path)
    out = []
    for i, pair in enumerate(value):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in pair)):
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
            raise fail(path, f"{file}: expected a JSON list of prompts, {{'prompts': [...], 'answers': [...]}} "
                             "or a list of {'prompt': ..., 'answers': [correct, wrong]}")
    else:  # plain text: one prompt per blank-line-separated block (as `headscope report --prompts`)
        prompts = [p.strip() for p in raw.decode("utf-8", errors="replace").split("\n\n") if p.strip()]
    prompts, kind = _prompts(prompts, f"{path} ({file.name})")
    if answers is not None:
        answers = _answers(answers, f"{path} ({file.name} answers)", len(prompts))
    return file, prompts, answers, hashlib.sha256(raw).hexdigest()


def parse_data(raw: Any, name: str, path: str, base_dir: Path) -> DataSpec:
    """One dataset entry: exactly one of `prompts`, `file`, `generator` (+ its parameters)."""
    sec = Section(raw, path)
    sources = [k for k in ("prompts", "file", "generator") if k in sec.raw]
    if len(sources) != 1:
        raise fail(path, "needs exactly one of 'prompts' (inline list), 'file' (a .json/.txt path) or "
                         f"'generator' ({', '.join(sorted(GENERATORS))}); got {sources or 'none'}")
    template = sec.get("template", as_str, None)
    if template is not None and "{prompt}" not in template:
        raise fail(sec.at("template"), "must contain '{prompt}' where each prompt goes")
    spec = DataSpec(name=name, path=path, kind="text", template=template, chat=sec.get("chat", as_bool, False))
    if sources == ["generator"]:
        spec.generator = sec.get("generator", as_str)
        func = _generator(spec.generator, sec.at("generator"))
        _, _, supplied, spec.kind = GENERATORS[spec.generator]
        spec.params = {k: v for k, v in sec.raw.items() if k not in ("generator", "template", "chat")}
        check_call_params(spec.params, func, path, skip={supplied, *_NOT_PARAMS})
        sec.finish(extra_allowed=spec.params)
        if spec.generator == "prompt_set":  # no model needed: read it now, so a bad name fails at once
            try:
                func(**spec.params)
            except InputError as e:
                raise fail(path, str(e)) from None
    elif sources == ["prompts"]:
        spec.prompts, spec.kind = _prompts(sec.get("prompts"), sec.at("prompts"))
        spec.answers = sec.get("answers", lambda v, p: _answers(v, p, len(spec.prompts)), None)
        sec.finish()
    else:
        spec.file, spec.prompts, spec.answers, spec.file_sha256 = _read_file(
            sec.get("file", as_str), base_dir, sec.at("file"))
        spec.kind = "text" if all(isinstance(p, str) for p in spec.prompts) else "tokens"
        sec.finish()
    for key, used in (("template", template is not None), ("chat", spec.chat)):
        if used and spec.kind != "text":
            raise fail(sec.at(key), f"applies to text prompts only; this dataset yields {spec.kind}")
    return spec


def materialize(spec: DataSpec, model, info) -> Dataset:
    """Generate and tokenize (no forward pass). Errors name the dataset's field path."""
    from ..inputs.tokens import to_token_lists

    try:
        if spec.generator:
            func = _generator(spec.generator, spec.path)
            supplied = GENERATORS[spec.generator][2]
            extra = {}
            if supplied == "tokenizer_or_model":  # the model: its BOS default, not the bridge tokenizer's
                extra["tokenizer_or_model"] = model
            elif supplied == "vocab_size":
                extra["vocab_size"] = int(model.cfg.d_vocab)
            params = dict(spec.params)
            if spec.generator in ("repeat_samples", "repeated_tokens") and "first_token" not in params:
                params["first_token"] = info.bos_token_id  # the model's BOS opens every probe, as in capture
            items = func(**extra, **params)
            if spec.generator == "repeated_tokens":
                items = items.tolist()
        else:
            items = list(spec.prompts)
        if spec.template is not None:
            items = [spec.template.replace("{prompt}", p) for p in items]
        prompts = None
        if spec.kind == "needle":
            token_lists = [list(s.prompt_ids) for s in items]
        elif spec.kind == "shapes":
            from ..vision.shapes import item_prompt

            prompts = [item_prompt(it) for it in items]
            token_lists = to_token_lists(model, prompts, info)
        elif spec.chat:  # the same chat formatting as the safety evaluation's generation
            from ..safety.evaluate import chat_prompt_ids

            token_lists = to_token_lists(model, [chat_prompt_ids(model.tokenizer, p) for p in items], info)
        else:
            token_lists = to_token_lists(model, items, info)
    except HeadscopeError as e:
        raise fail(spec.path, str(e)) from None
    labels = list(items) if spec.kind == "text" else None
    return Dataset(spec.name, spec.kind, items, token_lists, spec.answers, labels, spec.chat, prompts)
