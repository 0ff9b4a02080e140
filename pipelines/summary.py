"""Print where to look after ``dvc repro``: the benchmark table, the registry decision, and the UI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from maskdcpt.config import find_root

STAGE_ORDER = ["prepare", "synthesize", "validate", "pretrain", "finetune@maskdcpt", "finetune@scratch",
               "evaluate", "register"]


def cpu_kind(info: dict[str, Any]) -> str:
    """A one-line CPU description from :func:`maskdcpt.provenance.cpu_info`: model, logical CPUs and the SIMD
    class that decides the speed of the CPU defaults (``AVX-512 with bf16``, ``AVX-512``, ``AVX2 only``, ...)."""
    flags = set(info.get("flags") or [])
    if "avx512f" in flags:
        bf16 = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16"))
        kind = "AVX-512 with bf16 (" + ", ".join(bf16) + ")" if bf16 else "AVX-512 (no bf16)"
    elif "avx2" in flags:
        kind = "AVX2 only (no AVX-512): about 3.5x slower than AVX-512 on the default run"
    elif flags:
        kind = "SIMD: " + ", ".join(sorted(flags))
    else:
        kind = "SIMD flags unknown"
    return f"{info.get('model', 'unknown')}, {info.get('logical_cpus')} logical CPUs, {kind}"


def stage_times(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """The stage runs (name, ``stage_seconds``) nested under the newest pipeline parent run in MLflow, in
    pipeline order; stages DVC skipped as up to date have no run there and are absent. ``[]`` when the store or
    the experiment does not exist."""
    import mlflow

    from pipelines.tracking import ROLE_TAG

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return []
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
                                  max_results=100)
    rows = [{"stage": r.data.tags.get("maskdcpt.stage", r.info.run_name),
             "seconds": r.data.metrics.get("stage_seconds"), "status": r.info.status} for r in children]
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r["stage"], len(order)), r["stage"]))


def print_timings(root: Path) -> None:
    """Print the CPU kind and the per-stage times of the newest pipeline run (best effort: a missing or
    unreadable MLflow store prints one line saying so instead of failing the summary)."""
    from maskdcpt.provenance import cpu_info

    print(f"Machine: {cpu_kind(cpu_info())}")
    try:
        import yaml

        from maskdcpt.config import tracking_uri

        params = yaml.safe_load((root / "params.yaml").read_text()) or {}
        rows = stage_times(tracking_uri(root), (params.get("tracking") or {}).get("experiment", "maskdcpt"))
    except Exception as exc:  # the summary must not fail over the timing table
        print(f"Per-stage times: not available ({type(exc).__name__}: {exc})")
        return
    if not rows:
        print("Per-stage times: no pipeline run recorded in MLflow")
        return
    ran = {r["stage"] for r in rows}
    print("Per-stage times (this pipeline run, MLflow `stage_seconds`; Prefect/interpreter start not included):")
    for r in rows:
        sec = "-" if r["seconds"] is None else f"{r['seconds']:7.1f} s"
        print(f"  {r['stage']:<20} {sec}  {r['status'].lower() if r['status'] != 'FINISHED' else ''}".rstrip())
    total = sum(r["seconds"] or 0.0 for r in rows)
    print(f"  {'total':<20} {total:7.1f} s ({total / 60:.1f} min)")
    skipped = [s for s in STAGE_ORDER if s not in ran]
    if skipped:
        print(f"  no run in this pipeline run (up to date in DVC, or not reached): {', '.join(skipped)}")


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
    print_timings(root)
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
