"""The ``synthesize`` stage: seeded degraded/clean pairs in tar shards plus one Parquet manifest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.stages.common import PAIRS, atomic_dir, log, photos_frame, task_classes


def synthesize(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make the seeded degraded/clean pairs: training and validation crops from the training pool, benchmark
    pairs from the held-out photos at fixed seeds; shards plus one Parquet manifest."""
    import mlflow

    from maskdcpt.data.synthesize import synthesize_benchmark_pairs, synthesize_training_pairs

    s, seed, classes = params["synthesize"], int(params["seed"]), task_classes(params)
    photos = photos_frame(root)
    pool = photos[photos["split"] == "train"].reset_index(drop=True)
    held = photos[photos["split"] == "benchmark"].reset_index(drop=True)
    entries = [{k: v for k, v in e.items() if k != "unseen"} for e in s["benchmark"]]
    unknown = sorted({e["degradation"] for e in s["benchmark"] if not e["unseen"]} - set(classes))
    if unknown:
        raise ValueError(f"benchmark entries use degradations outside task.classes: {unknown} "
                         "(mark an entry `unseen: true` to test generalisation to a type not trained on)")
    # Shards are made (and resumed) in a staging folder, then linked into the atomic output: an interrupted
    # stage keeps its finished shards, and shards made by distributed workers (pipelines.flows.synthesize_shards)
    # are reused as they are.
    staging = synthesis_staging(params, root)
    workers = s["workers"]
    splits = {}
    real_sets = params.get("training_sets")  # an optional group: present only when a preset names the sets
    if real_sets and real_sets["root"]:
        # the paper's training sets as real pairs (a preset such as presets/paper-5d.yaml names them); the
        # validation crops for classification accuracy stay synthetic
        from maskdcpt.data.testsets import training_pairs

        splits["train"], rejected = training_pairs(params, staging)
        if len(rejected):
            rejected.to_csv(staging / "training_sets_rejections.csv", index=False)
            log.warning("%d training-set pairs rejected, see %s", len(rejected),
                        staging / "training_sets_rejections.csv")
    for split in ("train", "val"):
        if split in splits:
            continue
        args = training_split_args(params, root, split)
        splits[split] = synthesize_training_pairs(pool, classes=classes, crop=int(s["crop"]), out_dir=staging,
                                                  shard_size=int(s["shard_size"]), workers=workers, split=split,
                                                  pairs_per_class=args["pairs_per_class"], seed=args["seed"],
                                                  tone=args["tone"])
    bench = synthesize_benchmark_pairs(held, entries, seed=seed + 2, out_dir=staging,
                                       max_size=s["benchmark_max_size"], workers=workers)
    bench["class_index"] = [classes.index(d) if d in classes else -1 for d in bench["degradation"]]
    train, val = splits["train"], splits["val"]
    manifest = pd.concat([train, val, bench], ignore_index=True)
    with atomic_dir(root / PAIRS) as tmp:
        for shard in manifest["shard"].unique():
            _link_or_copy(staging / shard, tmp / shard)
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
    counts = manifest.groupby(["split", "degradation"]).size()
    band = manifest.groupby("degradation")["psnr_lq_gt"].agg(["min", "median", "max"]).round(2)
    mlflow.log_metrics({f"pairs_{sp}_{d}": float(n) for (sp, d), n in counts.items()})
    mlflow.log_dict(band.to_dict(orient="index"), "synthesize/psnr_lq_gt_band.json")
    mlflow.log_artifact(str(root / PAIRS / "manifest.parquet"), "synthesize")
    return {"pairs": int(len(manifest)), "train": int(len(train)), "val": int(len(val)),
            "benchmark": int(len(bench))}


def synthesis_staging(params: dict[str, Any], root: Path) -> Path:
    """The folder where synthesis shards are made and resumed (``synthesize.staging_dir``, default
    ``.cache/synthesis``; a shared folder when several machines make shards)."""
    staging = Path(params["synthesize"]["staging_dir"] or root / ".cache" / "synthesis")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def training_split_args(params: dict[str, Any], root: Path, split: str) -> dict[str, Any]:
    """The synthesis arguments of a training split: ``pairs_per_class``, its base ``seed`` (train: ``seed``,
    val: ``seed + 1``) and the clean crops' ``tone`` (train only: validation crops keep the photos' own tone)."""
    s, seed = params["synthesize"], int(params["seed"])
    if split == "train":
        return {"pairs_per_class": int(s["train_pairs_per_class"]), "seed": seed, "tone": dict(s["tone"])}
    if split == "val":
        return {"pairs_per_class": int(s["val_pairs_per_class"]), "seed": seed + 1, "tone": None}
    raise ValueError(f"training split must be train or val, got {split!r}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
