"""``maskdcpt model-summary``: parameter count, per-module parameters and FLOPs of a backbone preset."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``model-summary`` parser (``--arch``, ``--preset``, ``--size H W``, ``--batch``, ``--json``)."""
    p = sub.add_parser(
        "model-summary",
        help="parameters and FLOPs of a backbone preset",
        description="Print the parameter count, per-module parameters and forward FLOPs (FLOPs = 2 x MACs, "
        "torch FlopCounterMode) of a backbone preset. Presets: nafnet paper-5d (alias paper), cpu-default, tiny; "
        "restormer, promptir: paper (alias paper-5d), cpu-default, tiny; swinir: paper (alias paper-5d), official, "
        "cpu-default, tiny.",
    )
    p.add_argument("--arch", choices=["nafnet", "restormer", "promptir", "swinir"], default="nafnet")
    p.add_argument("--preset", default="paper-5d", help="preset name (default: paper-5d)")
    p.add_argument("--size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"),
                   help="input size in pixels (default: 256 256, the paper's pre-training crop)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the counted forward pass (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json
    import sys

    from maskdcpt.models.summary import format_summary, model_summary

    try:
        summary = model_summary(args.arch, args.preset, size=args.size, batch=args.batch)
    except ValueError as exc:
        print(f"model-summary: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
