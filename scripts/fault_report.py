"""Run the fault-injection suite (``tests/faults``) and print one table: fault, where, outcome, data lost, seconds.

usage: python scripts/fault_report.py [--json FILE] [-k EXPR] [--rows FILE]

``--rows FILE`` prints the table of an earlier run instead of running the suite: the JSON-lines file that
``MASKDCPT_FAULT_REPORT=FILE python -m pytest ...`` (e.g. the whole ``make test``) wrote.

Each scenario is a pytest test marked ``@pytest.mark.fault(fault=..., where=..., outcome=...)``; a passing test
has checked its outcome and that nothing was lost (its assertions), so "data lost" is "none" for a pass and
"see test" for a failure. Parametrised scenarios are one row per case; "measured" is what the test recorded (``record_property``) and
"seconds" includes the scenario's fixtures (a module-scoped one counts on its first test).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="also write the rows as JSON to FILE")
    ap.add_argument("-k", default=None, help="pytest -k expression (a subset of the scenarios)")
    ap.add_argument("--rows", default=None, help="print the rows of this JSON-lines file; run nothing")
    args = ap.parse_args()
    if args.rows:
        rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
        _print(rows, args.json)
        return 0 if all(r["passed"] for r in rows) else 1
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        env = dict(os.environ, MASKDCPT_FAULT_REPORT=str(rows_file))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "faults")]
        if args.k:
            cmd += ["-k", args.k]
        proc = subprocess.run(cmd, cwd=ROOT, env=env)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    _print(rows, args.json)
    return proc.returncode


def _print(rows: list[dict], json_out: str | None) -> None:
    print("\n| fault | where | outcome | result | data lost | measured | seconds |\n|---|---|---|---|---|---|---|")
    for r in rows:
        case = r["test"].split("[", 1)[1].rstrip("]") if "[" in r["test"] else ""
        fault = r.get("fault", r["test"]) + (f" ({case})" if case else "")
        print(f"| {fault} | {r.get('where', '')} | {r.get('outcome', '')} | {'pass' if r['passed'] else 'FAIL'} | "
              f"{'none' if r['passed'] else 'see test'} | {r.get('measured', '')} | {r['seconds']:.1f} |")
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
