"""Print where to look after ``dvc repro``: the benchmark table, the registry decision, and the UI commands."""

from __future__ import annotations

import json
import sys

from maskdcpt.config import find_root


def main() -> int:
    root = find_root()
    table = root / "reports/evaluate/table.md"
    decision = root / "reports/register/decision.json"
    print("\n=== maskdcpt: pipeline finished ===")
    if table.is_file():
        print(table.read_text())
    if decision.is_file():
        d = json.loads(decision.read_text())
        print(f"Registry: {d['model_name']} version {d['version']} -> "
              f"{'champion' if d['promoted'] else 'challenger only'} ({d['reason']})")
    print("Where to look:")
    print(f"  metrics file:   {root / 'metrics/benchmark.json'}   (dvc metrics show)")
    print(f"  per-image CSV, plots, grids: {root / 'reports/evaluate'}")
    print(f"  data contract report: {root / 'reports/validate/report.html'}")
    print(f"  MLflow UI:      .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'} "
          "--port 5000   (then open http://127.0.0.1:5000)")
    print("  champion model: models:/maskdcpt-nafnet-5d@champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
