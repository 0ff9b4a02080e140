"""``maskdcpt pipeline``: run the pipeline (``dvc repro``) from the command line."""

from __future__ import annotations

import argparse
import subprocess
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run or schedule the pipeline")
    psub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    run = psub.add_parser("repro", help="run `dvc repro` on params.yaml (the main job)")
    run.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    run.set_defaults(func=_repro)


def _repro(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "dvc", "repro", *args.targets])
