"""The `headscope` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import HeadscopeError
from .options import DTYPE_NAMES, EXECUTORS, SCAN_METHODS, torch_dtype


def _report(args) -> int:
    try:
        return _report_steps(args)
    except KeyboardInterrupt:  # every finished step is on disk: one line saying so, and how to resume
        import shlex
        from pathlib import Path

        out = Path(args.out or (args.from_dir if args.from_dir else "headscope-report"))
        done = len(list((out / "scores" / "steps").glob("*.json")))
        argv = [a for a in (args.argv or []) if a != "--fresh"]
        print(
            f"headscope: interrupted; {done} finished step(s) are saved in {out / 'scores' / 'steps'}. Resume with: "
            f"headscope {' '.join(shlex.quote(a) for a in argv)}",
            file=sys.stderr,
        )
        return 130


def _report_steps(args) -> int:
    from .atlas import build_atlas, plan, rebuild

    if args.list:
        model = _load(args)
        for step in plan(model):
            reason = step.skip_reason(model)
            print(f"{step.key:>16}: {'runs' if reason is None else 'skipped: ' + reason}")
        return 0
    if args.from_dir:
        path = rebuild(args.from_dir, args.out, static=not args.no_static, force=args.force)
    else:
        model = _load(args) if (args.device or args.dtype) else args.model
        path = build_atlas(
            model,
            args.out or "headscope-report",
            preset="full" if args.full else "quick",
            prompts_file=args.prompts,
            viewer_prompt=args.viewer_prompt,
            viewer_max_tokens=args.viewer_tokens,
            only=args.only,
            fresh=args.fresh,
            static=not args.no_static,
            force=args.force,
        )
    print(f"atlas written: {path}")
    print(f"figures: {path.parent / 'figures'}   scores (head table, every step): {path.parent / 'scores'}")
    return 0


def _view(args) -> int:
    from .atlas.serve import view

    view(args.model, args.report, args.port, device=args.device, dtype=torch_dtype(args.dtype))
    return 0


def _info(args) -> int:
    from .models import model_info

    info = model_info(_load(args))
    for key, value in info.__dict__.items():
        if key == "stop_token_ids":  # hundreds of ids on a byte-level vocabulary: the count says enough
            print(f"{key:>15}: {len(value)} ids (newline tokens and EOS)")
        elif key != "extra":
            print(f"{key:>15}: {sorted(value) if isinstance(value, frozenset) else value}")
    return 0


def _load(args):
    """The model of a verb, on its --device and --dtype."""
    from .models import load_model

    return load_model(args.model, device=args.device, dtype=torch_dtype(args.dtype))


def _answers(values: list[str], n_prompts: int) -> list[tuple[str, str]]:
    """--answers: a file (JSON list of [correct, wrong] pairs, or one `correct|wrong` per line) or inline
    `correct|wrong` pairs, one per prompt. Text is kept as typed (a leading space is part of a token)."""
    import json
    from pathlib import Path

    from .errors import InputError

    if len(values) == 1 and Path(values[0]).is_file():
        path = Path(values[0])
        text = path.read_text(encoding="utf-8")
        try:
            doc = json.loads(text) if path.suffix == ".json" else None
        except ValueError as err:
            raise InputError(f"--answers {path}: not valid JSON ({err}); expected [[correct, wrong], ...]") from None
        rows = doc if doc is not None else [line.split("|") for line in text.splitlines() if line.strip()]
    else:
        rows = [v.split("|") for v in values]
    pairs = []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 2:
            raise InputError(f"--answers: pair {i} is {row!r}; give 'correct|wrong' (or [correct, wrong] in JSON)")
        pairs.append((row[0], row[1]))
    if len(pairs) != n_prompts:
        raise InputError(
            f"--answers gives {len(pairs)} pairs for {n_prompts} prompts: give one correct|wrong pair "
            "per prompt (use --prompts to choose the prompts)"
        )
    return pairs


def _first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line (a --list description is never cut mid-sentence)."""
    text = (doc or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def _parse_param(text: str):
    """`key=value` with value read as YAML (numbers, booleans, lists) — never evaluated as code."""
    import yaml

    from .errors import InputError

    if "=" not in text:
        raise InputError(f"--param {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _analyze(args) -> int:
    from pathlib import Path

    from .analyzers import get_analyzer
    from .inputs.prompts import load_prompts
    from .viz.export import export_figure

    analyzer = get_analyzer(args.name, **dict(_parse_param(p) for p in args.param))
    data = load_prompts(args.prompts) if args.prompts else None  # None: the analyzer's own default data
    analyzer.fit(_load(args), data)
    out = Path(args.out or f"headscope-analyze-{args.name}")
    scores_path = analyzer.scores_.save(out / f"{args.name}.json")
    files = export_figure(
        analyzer.plot(), out, args.name, formats=("html",) if args.no_static else ("html", "png", "svg")
    )
    print(analyzer.scores_.top(args.top).to_string(index=False))
    print(f"selected heads ({len(analyzer.heads_)}): " + ", ".join(f"L{l}H{h}" for l, h in analyzer.heads_[:30]))
    print(f"scores: {scores_path}   figures: {', '.join(str(p) for p in files.values())}")
    return 0


def _analyze_or_list(args) -> int:
    if args.list or not args.name:
        from .analyzers import REGISTRY

        for name in sorted(REGISTRY):
            print(
                f"{name:<20} {' '.join(REGISTRY[name].description.split())}\n{'':<20} data: {REGISTRY[name].input_kind}"
            )
        return 0
    return _analyze(args)


def _scan(args) -> int:
    """The exact all-heads ablation scan: the metric's change with each head intervened on alone."""
    from pathlib import Path

    from .analyzers import REGISTRY
    from .interventions import KINDS, METRICS

    if args.list or not args.kind:
        for name in sorted(KINDS):
            print(f"{name:<20} {_first_paragraph(KINDS[name].__doc__)}")
        print("metrics:")
        for name in sorted(METRICS):
            metric: Any = METRICS[name]  # a metric class: description and important are class attributes
            print(
                f"  {name:<18} {metric.description} (important: {metric.important} first)"
                + ("; needs --answers" if name == "logit_diff" else "")
            )
        print("(analyzers: headscope analyze --list)")
        return 0
    from .errors import InputError
    from .inputs.prompts import load_prompts
    from .interventions import scan
    from .viz.export import export_figure

    if args.kind in REGISTRY and args.kind not in KINDS:  # an analyzer's name: say which command runs it
        raise InputError(
            f"{args.kind!r} is an analyzer, not an intervention kind: run it with `headscope analyze {args.kind}` "
            "(`headscope scan --list` lists the kinds)"
        )

    prompts = load_prompts(args.prompts)  # None: the built-in set
    extra = {"top_k": args.top_k} if args.top_k is not None else {}
    if args.metric == "logit_diff":
        if not args.answers:
            raise InputError(
                "--metric logit_diff needs the answer pairs: --answers FILE (JSON [[correct, wrong], ...] "
                "or one correct|wrong per line) or --answers 'correct|wrong' ..., one pair per prompt"
            )
        extra["metric_kwargs"] = {"answers": _answers(args.answers, len(prompts))}
    elif args.answers:
        raise InputError(f"--answers is for --metric logit_diff, not {args.metric}")
    scores = scan(
        _load(args),
        prompts,
        args.kind,
        args.metric,
        layers=args.layers,
        batch_size=args.batch_size,
        method=args.method,
        progress=True,
        **extra,
        **dict(_parse_param(p) for p in args.param),
    )
    method = "" if args.method == "exact" else "-" + args.method.replace("*", "star").replace("+", "-")
    out = Path(args.out or f"headscope-scan-{args.kind}-{args.metric}{method}")
    stem = f"scan-{args.kind}-{args.metric}{method}"
    scores_path = scores.save(out / f"{stem}.json")
    files = export_figure(scores.plot(), out, stem, formats=("html",) if args.no_static else ("html", "png", "svg"))
    if hasattr(scores, "combined"):  # screened: the verified heads' exact values over the estimate
        a = scores.agreement()
        print(
            f"verified exactly: {a['n_verified']} heads; Spearman(estimate, exact) on them = {a['spearman']:.3f}, "
            f"largest |estimate - exact| = {a['max_abs_error']:.4g}"
        )
    print(scores.top(args.top).to_string(index=False))
    print(f"scores: {scores_path}   figures: {', '.join(str(p) for p in files.values())}")
    return 0


def _run(args) -> int:
    from .experiments import run_experiment

    try:
        ray_options = {"address": args.address, "workers": args.workers, "gpus_per_worker": args.gpus_per_worker}
        if args.executor == "local" and any(v for v in ray_options.values()):
            given = ", ".join("--" + k.replace("_", "-") for k, v in ray_options.items() if v)
            print(f"headscope: {given} are options of --executor ray", file=sys.stderr)
            return 2
        extra = ray_options if args.executor == "ray" else {}
        out = run_experiment(args.spec, args.out, fresh=args.fresh, executor=args.executor, **extra)
    except KeyboardInterrupt:  # finished units are on disk; say how to continue instead of a traceback
        print("headscope: interrupted; finished units are saved; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"results: {out}   summary: {out / 'summary.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="headscope", description="Find, measure and edit attention heads.")
    parser.add_argument("--version", action="version", version=f"headscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser(
        "report",
        help="the head atlas of a model: every analyzer that applies, a role per head, "
        "one offline HTML page (+ PNG/SVG figures, scores/)",
    )
    rep.add_argument(
        "--model",
        default=None,
        help="bundled name, testbed, local HF folder or cached hub id (default: SmolLM2-135M-Instruct)",
    )
    rep.add_argument("--out", default=None, help="output folder (default: headscope-report; with --from: that folder)")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small inputs, minutes on a laptop CPU (the default)")
    size.add_argument("--full", action="store_true", help="each analyzer's own defaults (longer)")
    rep.add_argument(
        "--from",
        dest="from_dir",
        default=None,
        metavar="DIR",
        help="rebuild the page from a saved atlas (DIR or DIR/scores) without the model",
    )
    rep.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="STEP",
        help="run only these analyzers (and the classic statistics); see --list",
    )
    rep.add_argument("--list", action="store_true", help="list the atlas's steps and whether each applies to --model")
    rep.add_argument(
        "--prompts", default=None, help="JSON list of prompts or text file with blank-line-separated prompts"
    )
    rep.add_argument(
        "--viewer-prompt",
        default=None,
        help="prompt of the attention viewer (default: a short built-in text shown whole; with --prompts, its first prompt that fits --viewer-tokens)",
    )
    rep.add_argument(
        "--viewer-tokens",
        type=int,
        default=48,
        help="viewer size: longer prompts are windowed to this many tokens (default: %(default)s)",
    )
    rep.add_argument(
        "--fresh",
        action="store_true",
        help="recompute every step (default: reuse the finished steps of an interrupted run in the same folder)",
    )
    rep.add_argument("--no-static", action="store_true", help="skip PNG/SVG export (HTML only)")
    rep.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that holds files headscope did not write (only the report's own files are written)",
    )
    _model_options(rep)
    rep.set_defaults(func=_report)

    vw = sub.add_parser(
        "view",
        help="serve a report folder on this machine (127.0.0.1) with its model loaded: the "
        "page's attention viewer and token view take any prompt",
    )
    vw.add_argument("--report", default="headscope-report", help="the report folder (default: %(default)s)")
    vw.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: %(default)s; 0: any free port)")
    _model_options(vw)
    vw.set_defaults(func=_view)

    ana = sub.add_parser(
        "analyze", help="run one analyzer (see `headscope analyze --list`) and save its scores and figure"
    )
    ana.add_argument("name", nargs="?", help="analyzer name, e.g. head-importance")
    ana.add_argument("--list", action="store_true", help="list the analyzers and exit")
    ana.add_argument(
        "--prompts",
        default=None,
        help="JSON list of prompts or text file with blank-line-separated prompts (default: the analyzer's own data)",
    )
    ana.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="analyzer parameter (repeatable)"
    )
    ana.add_argument("--out", default=None, help="output folder (default: headscope-analyze-NAME)")
    ana.add_argument("--top", type=int, default=10, help="rows of the top-heads table to print")
    ana.add_argument("--no-static", action="store_true", help="HTML figure only")
    _model_options(ana)
    ana.set_defaults(func=_analyze_or_list)

    scan = sub.add_parser(
        "scan",
        help="exact all-heads scan: the metric's change with each head intervened on "
        "alone (see `headscope scan --list`)",
    )
    scan.add_argument("kind", nargs="?", help="intervention kind, e.g. zero, mean, uniform_attention")
    scan.add_argument("--metric", default="kl_last", help="kl_last (default), loss or logit_diff (needs --answers)")
    scan.add_argument(
        "--answers",
        nargs="+",
        default=None,
        metavar="PAIR",
        help="logit_diff's answers, one pair per prompt: a file (JSON [[correct, wrong], ...] or one "
        "correct|wrong per line) or inline 'correct|wrong' pairs",
    )
    scan.add_argument("--list", action="store_true", help="list the kinds and metrics and exit")
    scan.add_argument("--prompts", default=None, help="JSON list of prompts or a text file (default: built-in set)")
    scan.add_argument("--layers", type=int, nargs="+", default=None, help="visit only these layers' heads")
    scan.add_argument("--batch-size", type=int, default=8)
    scan.add_argument(
        "--method",
        default="exact",
        choices=SCAN_METHODS,
        help="exact (default), atp / atp* (attribution patching: one forward + one backward), or "
        "atp+exact / atp*+exact (estimate every head, verify the top k exactly)",
    )
    scan.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="heads verified exactly by the +exact methods (default: a tenth of the heads, at least 20)",
    )
    scan.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="kind parameter (repeatable)")
    scan.add_argument("--out", default=None, help="output folder (default: headscope-scan-KIND-METRIC)")
    scan.add_argument("--top", type=int, default=10, help="rows of the top-heads table to print")
    scan.add_argument("--no-static", action="store_true", help="HTML figure only")
    _model_options(scan)
    scan.set_defaults(func=_scan)

    run = sub.add_parser("run", help="run (or resume) an experiment spec, see docs/experiments.md")
    run.add_argument("spec", help="experiment spec (YAML)")
    run.add_argument("--out", default=None, help="results folder (default: headscope-run-NAME); re-running resumes")
    run.add_argument("--fresh", action="store_true", help="discard the folder's earlier results and start again")
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: this process, units in order; ray: a pool of Ray actors (docs/scale-out.md)",
    )
    run.add_argument(
        "--address",
        default=None,
        help="ray: cluster to join (auto, host:port, ray://host:port); default: a Ray instance on this machine",
    )
    run.add_argument(
        "--workers", type=int, default=None, help="ray: number of actors (default: one per GPU group or CPU)"
    )
    run.add_argument(
        "--gpus-per-worker", type=float, default=0, help="ray: GPUs per actor (0: CPU; >1: the model split over them)"
    )
    run.set_defaults(func=_run)

    inf = sub.add_parser("info", help="print a model's layers, heads, KV groups and context")
    _model_options(inf)
    inf.set_defaults(func=_info)
    return parser


def _model_options(parser) -> None:
    if not any(a.dest == "model" for a in parser._actions):
        parser.add_argument(
            "--model",
            default=None,
            help="bundled name, testbed, local HF folder or cached hub id (default: SmolLM2-135M-Instruct)",
        )
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_NAMES,
        help="model weights' dtype (default: float32)",
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except HeadscopeError as err:  # user errors: one clear line, no traceback
        print(f"headscope: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
