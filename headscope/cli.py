"""The `headscope` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import sys

from .errors import HeadscopeError


def _report(args) -> int:
    from .reporting import run_report

    path = run_report(args.model, args.out, prompts_file=args.prompts, batch_size=args.batch_size,
                      static=not args.no_static, seed=args.seed)
    print(f"report written: {path}")
    print(f"figures: {path.parent / 'figures'}   per-head scores: {path.parent / 'scores'}")
    return 0


def _info(args) -> int:
    from .models import load_model, model_info

    info = model_info(load_model(args.model))
    for key, value in info.__dict__.items():
        if key != "extra":
            print(f"{key:>13}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headscope", description="Find, measure and edit attention heads.")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("report", help="per-head statistics of a model as an HTML report with PNG/SVG figures")
    rep.add_argument("--model", default=None, help="bundled name, local HF folder or cached hub id (default: SmolLM2-135M-Instruct)")
    rep.add_argument("--out", default="headscope-report", help="output folder (default: %(default)s)")
    rep.add_argument("--prompts", default=None, help="JSON list of prompts or text file with blank-line-separated prompts")
    rep.add_argument("--batch-size", type=int, default=4)
    rep.add_argument("--seed", type=int, default=0, help="seed of the repeated random-token probes")
    rep.add_argument("--no-static", action="store_true", help="skip PNG/SVG export (HTML only)")
    rep.set_defaults(func=_report)

    inf = sub.add_parser("info", help="print a model's layers, heads, KV groups and context")
    inf.add_argument("--model", default=None)
    inf.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HeadscopeError as err:  # user errors: one clear line, no traceback
        print(f"headscope: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
