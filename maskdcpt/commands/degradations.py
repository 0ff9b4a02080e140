"""``maskdcpt degradations``: list the degradation registry (name, kind, parameter ranges, levels)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("degradations", help="list the degradation types (registry) as a table or JSON")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {name, kind, params, levels} objects instead of a table")
    p.add_argument("--task", choices=["5d", "12d", "all"], default=None,
                   help="only the classes of this task, in class-index order (default: the whole registry)")
    p.set_defaults(func=_run)


def rows(task: str | None = None) -> list[dict]:
    """The registry as ``[{"name", "kind", "params", "levels"}]``: ``kind`` ∈ {single, mixed, real},
    ``params`` the parameter ranges (notation in :mod:`maskdcpt.degradations`), ``levels`` an int.
    With ``task`` the task's classes in class-index order, else every entry sorted by name."""
    from maskdcpt.degradations import REGISTRY, get_degradation, task_classes

    names = task_classes(task) if task else sorted(REGISTRY)
    out = []
    for n in names:
        d = get_degradation(n).describe()
        out.append({"name": d["name"], "kind": d["kind"], "params": d["param_ranges"], "levels": int(d["levels"])})
    return out


def _fmt_params(params: dict, width: int = 90) -> str:
    text = json.dumps(params, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


def _run(args: argparse.Namespace) -> int:
    from maskdcpt.degradations import level_summary

    table = rows(args.task)
    if args.json:
        json.dump(table, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    w = max(len(r["name"]) for r in table)
    print(f"{'#':>2}  {'name':<{w}}  {'kind':<6}  {'levels':>8}  params")
    for i, r in enumerate(table):
        lv = str(r["levels"]) if r["levels"] < 10 ** 8 else f"{r['levels']:.2e}"
        print(f"{i:>2}  {r['name']:<{w}}  {r['kind']:<6}  {lv:>8}  {_fmt_params(r['params'])}")
    summary = level_summary([r["name"] for r in table])
    print(f"\n{len(table)} types; single synthetic levels: {summary['single_total']} "
          "(counting rule: maskdcpt.degradations docstring; mixtures count combinations, listed separately)")
    return 0
