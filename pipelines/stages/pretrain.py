"""The ``pretrain`` stage: MaskDCPT pre-training through DeepSpeed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.stages.common import (PAIRS, PRETRAIN_METRICS, PRETRAINED, checkpoint_dir, file_digest, log_dataset,
                                    metrics_logger, rank, rank_output, task_classes, write_json)

PRETRAIN_REPORTS = Path("reports/pretrain")   # diagnostics: the classifier's validation confusion matrix


def pretrain(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """MaskDCPT pre-training through DeepSpeed; writes ``models/pretrain/{model,backbone}.pt``."""
    import mlflow

    from maskdcpt.data.stream import split_index, train_loader
    from maskdcpt.train.distributed import shutdown_distributed
    from maskdcpt.train.pretrain import run_pretrain

    manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
    data = params["data"]  # streamed from the shards: nothing holds the whole set in memory
    train = train_loader(manifest, root / PAIRS, data, batch_size=int(params["pretrain"]["batch_size"]),
                         seed=int(params["seed"]), crop=int(params["synthesize"]["crop"]))
    val = split_index(manifest, root / PAIRS, data, "val") if (manifest["split"] == "val").any() else None
    classes = task_classes(params)
    key = {"model": params["model"], "pretrain": params["pretrain"], "deepspeed": params["deepspeed"],
           "seed": params["seed"], "data": file_digest(root / PAIRS / "manifest.parquet"),
           "stream": {k: data[k] for k in ("num_workers", "shuffle_buffer")}}
    lead = rank() == 0
    if lead:
        log_dataset(root, manifest, "training")
    ckpt = checkpoint_dir(root, "pretrain", key)
    with rank_output(root / PRETRAINED) as tmp:
        summary = run_pretrain(train, val, num_classes=len(classes), model_cfg=params["model"],
                               cfg=params["pretrain"], ds_params=params["deepspeed"], seed=int(params["seed"]),
                               out_dir=tmp, checkpoint_dir=ckpt, on_log=metrics_logger() if lead else None,
                               class_names=classes)
        write_json(tmp / "classes.json", classes)
    shutdown_distributed()
    summary["classes"] = classes
    confusion = summary.pop("confusion", None)
    if not lead:
        return summary
    (root / PRETRAIN_REPORTS).mkdir(parents=True, exist_ok=True)  # a DVC out, present even without a val split
    if confusion is not None:
        from maskdcpt.atomic import atomic_write_json
        from maskdcpt.train.diagnostics import confusion_report, plot_confusion

        report = confusion_report(confusion, classes)
        atomic_write_json(root / PRETRAIN_REPORTS / "confusion.json", report)
        plot_confusion(confusion, classes, root / PRETRAIN_REPORTS / "confusion.png",
                       title=f"validation confusion, step {summary['steps']} (acc {report['accuracy']:.2f})")
        mlflow.log_dict(report, "pretrain/confusion.json")
        mlflow.log_artifact(str(root / PRETRAIN_REPORTS / "confusion.png"), "pretrain")
    import torch

    from maskdcpt.provenance import provenance

    origin = provenance(device="cuda" if torch.cuda.is_available() else "cpu", weights_key=None, inference=None,
                        padding=None, bf16=bool(params["deepspeed"]["bf16"]),
                        channels_last=bool(params["deepspeed"]["channels_last"]))
    write_json(root / PRETRAIN_METRICS, {**{k: v for k, v in summary.items() if k != "classes"}, "provenance": origin})
    mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary
