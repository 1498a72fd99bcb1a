"""The experiment spec: YAML -> validated `Spec`, every error naming its field path.

Validation runs in two steps, both before any forward pass:
1. `load_spec(path)` / `parse_spec(text)`: structure, types, unknown keys, analyzer names and
   parameters, intervention kinds and parameters, evaluator and generator names, parameters and
   needs (from their registries), references between units and data, data files.
2. `check_model(spec, info)` right after the model is loaded: head and layer ranges, K against
   the number of heads. (Needs only the model answers, such as a chat template:
   `evaluate.check_needs`; generators and tokenization: `data.materialize`.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ..analyzers import REGISTRY as ANALYZERS  # the analyzers' own registry (a layer below)
from ..errors import InputError
from ..interventions import METRICS
from ..models.catalog import TESTBEDS
from ..options import DTYPE_NAMES, SCAN_METHODS, DtypeName, ScanMethod
from ..viz.export import FORMATS, ExportFormat
from ._fields import (
    Section,
    as_bool,
    as_int_list,
    as_list,
    as_mapping,
    as_name,
    as_str,
    check_call_params,
    fail,
    int_at_least,
)
from .conditions import Condition, check_intervention, parse_conditions
from .data import DataSpec, parse_data
from .evaluate import check_conditions, check_evaluator

UnitType = Literal["analyze", "scan", "evaluate"]  # what a unit does (its one key of these)
UNIT_TYPES: tuple[UnitType, ...] = get_args(UnitType)
COMMON = {"name", "data"}


@dataclass
class Unit:
    index: int
    name: str
    type: UnitType
    path: str
    target: str  # analyzer name, intervention kind, or evaluate metric
    data: DataSpec | None = None
    params: dict = field(default_factory=dict)
    metric: str | None = None  # scan metric
    layers: list[int] | None = None
    layers_per_unit: int = 1
    batch_size: int = 8
    method: ScanMethod = "exact"  # scan units only
    top_k: int | None = None  # scan "+exact" methods: heads verified exactly
    graddrop: bool = False  # scan "atp" methods: AtP*'s GradDrop
    intervention: dict | None = None  # evaluate: template, heads filled by each condition
    conditions: list[Condition] = field(default_factory=list)


@dataclass
class Spec:
    name: str
    model: str
    model_params: dict
    data: dict[str, DataSpec]
    units: list[Unit]
    figures: tuple[ExportFormat, ...]
    description: str = ""
    text: str = ""
    base_dir: Path = Path(".")
    hash: str = ""
    model_dtype: DtypeName | None = None  # None = load_model's default

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)


def load_spec(path) -> Spec:
    """Read and validate a spec file (relative data files are read from its folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec file {str(path)!r} does not exist")
    return parse_spec(path.read_text(encoding="utf-8"), base_dir=path.parent, default_name=path.stem)


def parse_spec(text: str, *, base_dir=".", default_name: str = "experiment") -> Spec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"the spec is not valid YAML: {e}") from None
    top = Section(raw, "")
    base_dir = Path(base_dir)
    model, model_params, model_dtype = _model(top.get("model", default="smollm2"), "model")
    data = {n: parse_data(d, n, f"data.{n}", base_dir) for n, d in top.get("data", as_mapping, {}).items()}
    units_raw = top.get("units", as_list)
    if not units_raw:
        raise fail("units", "is empty: list at least one unit (analyze, scan or evaluate)")
    units: list[Unit] = []
    for i, u in enumerate(units_raw):
        units.append(_unit(u, i, data, units, base_dir))
    figures = tuple(top.get("figures", _formats, ["html", "png", "svg"]))
    spec = Spec(
        name=top.get("name", as_name, default_name),
        model=model,
        model_params=model_params,
        data=data,
        units=units,
        figures=figures,
        description=top.get("description", as_str, ""),
        text=text,
        base_dir=base_dir,
        model_dtype=model_dtype,
    )
    top.finish()
    files = sorted({d.file_sha256 for d in [*data.values(), *(u.data for u in units if u.data)] if d.file_sha256})
    canonical = json.dumps({"spec": raw, "files": files}, sort_keys=True, default=str)
    spec.hash = hashlib.sha256(canonical.encode()).hexdigest()
    return spec


def _formats(value, path):
    items = as_list(value, path)
    bad = [f for f in items if f not in FORMATS]
    if bad:
        raise fail(path, f"unsupported format(s) {bad}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(items))


def _model(value, path) -> tuple[str, dict, DtypeName | None]:
    dtype = None
    if isinstance(value, str):
        name, params = value, {}
    else:
        sec = Section(value, path)
        name = sec.get("name", as_str)
        dtype = sec.get("dtype", as_str, None)
        if dtype is not None and dtype not in DTYPE_NAMES:
            raise fail(sec.at("dtype"), f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        params = {k: v for k, v in sec.raw.items() if k not in ("name", "dtype")}
        sec.finish(extra_allowed=params)
    testbed = TESTBEDS.get(name.lower()) if isinstance(name, str) else None
    if name.startswith("testing:") and testbed is None:
        raise fail(
            path, f"unknown test model {name!r}; known: {', '.join(t for t in TESTBEDS if t.startswith('testing:'))}"
        )
    if params and (testbed is None or testbed.accepts is None):
        raise fail(
            path,
            f"parameters {sorted(params)} are only for testbeds that take them (the testing: "
            "models); give the model as a plain name or folder",
        )
    if params:
        check_call_params(params, testbed.accepts, path)
    return as_str(name, path), params, dtype


def _unit_data(sec: Section, data: dict, base_dir: Path, required: bool) -> DataSpec | None:
    value = sec.get("data", default=None)
    if value is None:
        if required:
            raise fail(
                sec.at("data"),
                "required field is missing: name a dataset from the top-level 'data' section or give one inline",
            )
        return None
    if isinstance(value, str):
        if value not in data:
            raise fail(sec.at("data"), f"no dataset named {value!r}; defined: {', '.join(sorted(data)) or 'none'}")
        return data[value]
    return parse_data(value, f"{sec.raw.get('name', sec.path)}.data", sec.at("data"), base_dir)


def _unit(raw: Any, i: int, data: dict, earlier: list[Unit], base_dir: Path) -> Unit:
    path = f"units[{i}]"
    sec = Section(raw, path)
    types = [t for t in UNIT_TYPES if t in sec.raw]
    if len(types) != 1:
        raise fail(path, f"needs exactly one of {', '.join(UNIT_TYPES)} (what the unit does); got {types or 'none'}")
    utype = types[0]
    name = sec.get("name", as_name)
    if any(u.name == name for u in earlier):
        raise fail(sec.at("name"), f"{name!r} is already used by another unit: unit names must be unique")
    scan_options = None
    if utype == "scan" and isinstance(sec.raw.get("scan"), dict):  # scan: {kind: zero, method: atp*+exact, ...}
        scan_options = Section(sec.get("scan"), sec.at("scan"))
        target = scan_options.get("kind", as_str)
    else:
        target = sec.get(utype, as_str)
    unit = Unit(index=i, name=name, type=utype, path=path, target=target, params=sec.get("params", as_mapping, {}))
    unit.data = _unit_data(sec, data, base_dir, required=utype != "analyze")
    if utype == "analyze":
        _analyze(unit, sec)
    elif utype == "scan":
        _scan(unit, sec, scan_options)
    else:
        _evaluate(unit, sec, earlier)
    sec.finish()
    return unit


def _analyze(unit: Unit, sec: Section) -> None:
    try:
        cls = ANALYZERS[unit.target]  # unknown names list the known ones
    except InputError as e:
        raise fail(sec.at("analyze"), str(e)) from None
    check_call_params(unit.params, cls.__init__, sec.at("params"))


def _scan(unit: Unit, sec: Section, options: Section | None) -> None:
    kind_path = sec.at("scan.kind") if options is not None else sec.at("scan")
    check_intervention({"kind": unit.target, **unit.params}, sec.at("params"), kind_path=kind_path)
    if options is not None:
        unit.method = options.get("method", as_str, "exact")
        if unit.method not in SCAN_METHODS:
            raise fail(options.at("method"), f"unknown scan method {unit.method!r}; known: {', '.join(SCAN_METHODS)}")
        unit.top_k = options.get("top_k", int_at_least(1), None)
        if unit.top_k is not None and not unit.method.endswith("+exact"):
            raise fail(
                options.at("top_k"), "top_k is the number of heads verified exactly: only for the '+exact' methods"
            )
        unit.graddrop = options.get("graddrop", as_bool, False)
        if unit.graddrop and unit.method == "exact":
            raise fail(options.at("graddrop"), "graddrop is an attribution-patching option: use method atp or atp*")
        options.finish()
    if unit.params.get("positions") == "decode":
        raise fail(
            sec.at("params.positions"),
            "'decode' needs a decode start, which a scan of whole prompts does "
            "not have: use 'all' or a [start, end) span",
        )
    unit.metric = sec.get("metric", as_str)
    if unit.metric not in METRICS:
        raise fail(sec.at("metric"), f"unknown scan metric {unit.metric!r}; known: {', '.join(sorted(METRICS))}")
    if unit.data is None:  # _unit_data requires a dataset of every scan unit
        raise fail(sec.at("data"), "a scan unit needs a dataset")
    if unit.metric == "logit_diff" and not unit.data.answers:
        raise fail(
            sec.at("data"),
            f"metric logit_diff needs answers: give dataset {unit.data.name!r} an "
            "'answers' list of [correct, wrong] pairs, one per prompt",
        )
    unit.layers = sec.get("layers", as_int_list(0), None)
    unit.layers_per_unit = sec.get("layers_per_unit", int_at_least(1), 1)
    unit.batch_size = sec.get("batch_size", int_at_least(1), 8)


def _evaluate(unit: Unit, sec: Section, earlier: list[Unit]) -> None:
    check_evaluator(unit, sec)
    tpl = sec.get("intervention", as_mapping, None)
    if tpl is not None:
        if "heads" in tpl:
            raise fail(sec.at("intervention.heads"), "leave heads out of the template: each condition chooses them")
        check_intervention(tpl, sec.at("intervention"))
    unit.intervention = tpl
    unit.batch_size = sec.get("batch_size", int_at_least(1), 8)
    unit.conditions = parse_conditions(sec.get("conditions"), sec.at("conditions"), earlier, tpl is not None)
    check_conditions(unit, sec.at("intervention.positions"))


def check_model(spec: Spec, info) -> None:
    """Ranges that need the loaded model: heads, layers, K. Runs before any forward pass."""
    total = info.n_layers * info.n_heads

    def head_ok(l, h, path):
        try:
            info.check_head(l, h)
        except InputError as e:
            raise fail(path, f"head ({l}, {h}) out of range: {e}") from None

    for unit in spec.units:
        for j, layer in enumerate(unit.layers or []):
            if not 0 <= layer < info.n_layers:
                raise fail(
                    f"{unit.path}.layers[{j}]",
                    f"layer {layer} out of range: {info.name} has layers 0..{info.n_layers - 1}",
                )
        for cond in unit.conditions:
            for path, heads in cond.head_lists():
                for k, (l, h) in enumerate(heads):
                    head_ok(l, h, f"{path}[{k}]")
            biggest = max(cond.ks or [0]) + (cond.exclude_top or 0)
            if biggest > total:
                raise fail(cond.path, f"needs {biggest} heads (K plus exclude_top) but {info.name} has {total}")


__all__ = ["Spec", "Unit", "check_model", "load_spec", "parse_spec"]
