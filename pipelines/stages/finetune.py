"""The ``finetune`` stage: one variant, from the pre-trained backbone or from random initialisation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.stages.common import (FINETUNE_METRICS, FINETUNED, PAIRS, PRETRAINED, checkpoint_dir, file_digest, log_dataset, metrics_logger,
                                    rank, rank_output, task_classes, write_json)

FINETUNE_REPORTS = Path("reports/finetune")   # diagnostics: per-class training L1 / validation PSNR per variant


def finetune(params: dict[str, Any], root: Path, variant: str) -> dict[str, Any]:
    """Fine-tune one variant (``maskdcpt`` from the pre-trained backbone, ``scratch`` from random init)."""
    import mlflow

    from maskdcpt.data.stream import split_index, train_loader
    from maskdcpt.train.distributed import shutdown_distributed
    from maskdcpt.train.finetune import run_finetune

    variants = params["finetune"]["variants"]
    if variant not in variants:
        raise ValueError(f"unknown fine-tune variant {variant!r}; params.yaml declares {sorted(variants)}")
    init = variants[variant]["init"]
    cfg = dict(params["finetune"])
    if variants[variant]["compute_matched"]:
        # the compute-matched baseline: as many steps as pre-training + fine-tuning together (issue #4)
        cfg["steps"] = int(cfg["steps"]) + int(params["pretrain"]["steps"])
    manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
    data = params["data"]  # streamed from the shards: nothing holds the whole set in memory
    train = train_loader(manifest, root / PAIRS, data, batch_size=int(params["finetune"]["batch_size"]),
                         seed=int(params["seed"]), crop=int(params["synthesize"]["crop"]))
    val = split_index(manifest, root / PAIRS, data, "val") if (manifest["split"] == "val").any() else None
    classes = task_classes(params)
    pretrained = root / PRETRAINED / "backbone.pt"
    key = {"model": params["model"], "finetune": params["finetune"], "deepspeed": params["deepspeed"],
           "seed": params["seed"], "variant": variant, "data": file_digest(root / PAIRS / "manifest.parquet"),
           "stream": {k: data[k] for k in ("num_workers", "shuffle_buffer")},
           "init": file_digest(pretrained) if init == "pretrained" else "random"}
    lead = rank() == 0
    if lead:
        log_dataset(root, manifest, "training")
    ckpt = checkpoint_dir(root, f"finetune-{variant}", key)
    with rank_output(root / FINETUNED / variant) as tmp:
        summary = run_finetune(train, model_cfg=params["model"], cfg=cfg,
                               ds_params=params["deepspeed"], seed=int(params["seed"]), out_dir=tmp, init=init,
                               pretrained=pretrained if init == "pretrained" else None, checkpoint_dir=ckpt,
                               on_log=metrics_logger() if lead else None, val_set=val, class_names=classes)
        # deterministic facts only inside the cached out; timings go to the uncached metrics file
        write_json(tmp / "init_report.json", summary["init_report"])
    shutdown_distributed()
    if not lead:
        return summary
    write_json(root / FINETUNE_METRICS.format(variant=variant),
               {k: v for k, v in summary.items() if k not in ("init_report", "diagnostics")})
    mlflow.log_dict(summary["init_report"], "finetune/init_report.json")
    history = summary.pop("diagnostics", [])
    (root / FINETUNE_REPORTS / variant).mkdir(parents=True, exist_ok=True)  # a DVC out, present even when empty
    if history:
        from maskdcpt.atomic import atomic_write_json
        from maskdcpt.train.diagnostics import plot_curves

        out = root / FINETUNE_REPORTS / variant
        atomic_write_json(out / "per_class.json", {"classes": classes, "history": history})
        plot_curves(history, classes, out / "per_class.png", title=f"fine-tuning {variant}: per-class L1 and PSNR")
        mlflow.log_artifacts(str(out), "finetune")
    mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary
