"""The ``register`` stage: log and register the MaskDCPT model, gate the ``champion`` alias on the benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.stages.common import (BENCHMARK_METRICS, EVAL_REPORTS, FINETUNED, PAIRS, REGISTER_REPORT, file_digest,
                                    task_classes, write_json)


def results_contract(root: Path, labels: list[str]) -> dict[str, Any]:
    """The Great Expectations contract on the per-image benchmark results of the MaskDCPT variant: finite PSNR and
    SSIM in range, every degradation present (``{"success", "suites": [...]}``)."""
    from pipelines.gx_suites import results_expectations, run_suite

    frame = pd.read_csv(root / EVAL_REPORTS / "per_image.csv")
    frame = frame[frame["variant"] == "maskdcpt"]
    report = run_suite("results", frame, results_expectations(labels))
    return {"success": report["success"], "suites": [report]}


def register(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Log the fine-tuned MaskDCPT model, register a version (alias ``challenger``), gate ``champion``."""
    import mlflow

    from maskdcpt.eval.benchmark import evaluate_variants, summarize
    from pipelines.gx_suites import failure_summary
    from maskdcpt.serving import log_pyfunc_model
    from pipelines.registry import (champion_version, decide, finish_version, load_registered_network,
                                    record_weights, register_version, remove_abandoned_versions)
    from pipelines.tracking import end_pipeline

    r = params["register"]
    name = r["model_name"]
    result = json.loads((root / BENCHMARK_METRICS).read_text())
    main = [entry["label"] for entry in params["synthesize"]["benchmark"] if entry["label"] in task_classes(params)]
    challenger = {lab: result["maskdcpt"][lab]["psnr"] for lab in [*main, "mean"]}
    bench_id = file_digest(root / PAIRS / "manifest.parquet")
    client = mlflow.MlflowClient()
    abandoned = remove_abandoned_versions(client, name)
    if abandoned:
        print(f"[maskdcpt] register: deleted version(s) {', '.join(abandoned)} of {name}, left half-registered by "
              "an interrupted register stage (no alias pointed at them)")
    previous = champion_version(client, name)
    champion = None
    if previous is not None:
        champ_net = load_registered_network(f"models:/{name}@champion")
        from maskdcpt.data.stream import SplitPairs

        manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
        pairs = SplitPairs(manifest, root / PAIRS, "benchmark", params["data"])  # streamed, one pair at a time
        champ_eval = summarize(evaluate_variants({"champion": champ_net}, pairs), main)
        champion = {lab: champ_eval["champion"][lab]["psnr"] for lab in [*main, "mean"]}
    checkpoint = root / FINETUNED / "maskdcpt" / "model.pt"
    info = log_pyfunc_model(checkpoint)
    version = register_version(client, info.model_uri, name)
    weights = record_weights(client, name, version, source=checkpoint)  # before any alias points at it
    client.set_registered_model_alias(name, "challenger", version)
    promote, reason = decide(challenger, champion, float(r["min_gain_db"]), float(r["max_drop_db"]))
    contract = results_contract(root, main)
    write_json(root / REGISTER_REPORT.parent / "results_contract.json", contract)
    mlflow.log_dict(contract, "register/results_contract.json")
    if not contract["success"]:
        promote, reason = False, "benchmark results failed their data contract: " + failure_summary(contract)[:500]
    tags = {"decision": "promoted" if promote else "rejected", "reason": reason, "benchmark_id": bench_id,
            "benchmark_mean_psnr": f"{challenger['mean']:.4f}",
            "champion_version_before": str(previous.version) if previous is not None else "none"}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    if promote:
        client.set_registered_model_alias(name, "champion", version)
    finish_version(client, name, version)
    decision = {"model_name": name, "version": version, "promoted": promote, "reason": reason,
                "challenger_psnr": challenger, "champion_psnr_before": champion,
                "champion_version_before": tags["champion_version_before"],
                "champion_version": version if promote else (str(previous.version) if previous is not None else None),
                "model_uri": f"models:/{name}@champion", "benchmark_id": bench_id, "weights_sha256": weights,
                "removed_abandoned_versions": abandoned}
    write_json(root / REGISTER_REPORT, decision)
    mlflow.log_dict(decision, "register/decision.json")
    mlflow.set_tags({"decision": tags["decision"], "registered_version": version})
    end_pipeline("FINISHED")
    return decision
