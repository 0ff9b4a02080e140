"""The ``validate`` stage: the Great Expectations contract on the pair manifest; a failure stops the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.stages.common import PAIRS, PREPARED, VALIDATE_REPORTS, StageFailed, task_classes, write_json


def validate(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Run the Great Expectations manifest contract; a failure writes the report and stops the pipeline."""
    import mlflow

    from pipelines.gx_suites import failure_summary, render_html, validate_manifest

    pairs = pd.read_parquet(root / PAIRS / "manifest.parquet")
    photos = pd.read_parquet(root / PREPARED / "manifest.parquet")
    rej_path = root / PREPARED / "rejections.csv"
    rejections = pd.read_csv(rej_path) if rej_path.stat().st_size > 1 else pd.DataFrame()
    v, syn = params["validate"], params["synthesize"]
    # with the paper's real training sets, the train counts follow their repeat ratios, not pairs_per_class
    real_training = bool(params.get("training_sets") and params["training_sets"]["root"])  # optional group
    report = validate_manifest(pairs, photos, rejections, task_classes(params), int(syn["crop"]),
                               float(v["max_rejection_rate"]), psnr_bands=v["psnr_lq_gt_bands"],
                               pairs_per_class={"val": int(syn["val_pairs_per_class"])} if real_training
                               else {"train": int(syn["train_pairs_per_class"]),
                                     "val": int(syn["val_pairs_per_class"])},
                               count_tolerance=v["count_tolerance"])
    out = root / VALIDATE_REPORTS
    write_json(out / "report.json", report)
    (out / "report.html").write_text(render_html(report, "maskdcpt: pair manifest validation"))
    mlflow.log_artifact(str(out / "report.json"), "validate")
    mlflow.log_artifact(str(out / "report.html"), "validate")
    n_fail = sum(not r["success"] for s in report["suites"] for r in s["results"])
    mlflow.log_metrics({"gx_success": float(report["success"]), "gx_failed_expectations": float(n_fail)})
    if not report["success"]:
        raise StageFailed(f"the pair manifest failed its data contract ({n_fail} expectation(s)); report: "
                          f"{out / 'report.html'}\n{failure_summary(report)}")
    return {"success": True, "expectations": sum(len(s["results"]) for s in report["suites"])}
