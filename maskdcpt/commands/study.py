"""``maskdcpt study``: S seeds x {maskdcpt, scratch, scratch_matched} with bootstrap intervals.

The command lives in the orchestration layer (:mod:`pipelines.study`, Prefect + MLflow); it is looked up by name
when the command runs, so ``maskdcpt`` never imports ``pipelines`` (nor Prefect) to build its parser. Every
argument after ``study`` goes to :func:`pipelines.study.main` (``maskdcpt study --help`` prints its options).
"""

from __future__ import annotations

import argparse
import importlib
import sys

ENTRY = "pipelines.study"


def register(sub: argparse._SubParsersAction) -> None:
    # prefix_chars without "-": every option after `study` is passed through untouched to pipelines.study.main
    p = sub.add_parser("study", help="seeds x variants study: does MaskDCPT help? (bootstrap intervals)",
                       add_help=False, prefix_chars="\x00")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(ENTRY)
    except ModuleNotFoundError as exc:
        if exc.name and ENTRY.startswith(exc.name):
            print("maskdcpt study needs the project's orchestration package `pipelines` (run it from a maskdcpt "
                  "checkout, e.g. `cd maskdcpt && maskdcpt study`)", file=sys.stderr)
            return 2
        raise
    return int(module.main(list(args.argv)) or 0)
