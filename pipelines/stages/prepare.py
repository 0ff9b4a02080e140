"""The ``prepare`` stage: collect the clean photos, convert them to RGB PNG, record the manifest and split it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.stages.common import PREPARED, StageFailed, atomic_dir


def prepare(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Collect the clean photos, convert them to RGB PNG, record the manifest and split train / benchmark."""
    import mlflow

    from maskdcpt.data.photos import collect_folder, collect_packaged_photos, prepare_photos

    p = params["prepare"]
    missing: list[dict] = []
    if p["source"] == "packaged":
        sources, missing = collect_packaged_photos()
    elif p["source"] == "s3":
        from maskdcpt.data.sources import collect_s3

        sources, s3_rejections = collect_s3(p["s3_uri"], root / ".cache" / "s3",
                                            endpoint_url=p["s3_endpoint_url"] or None,
                                            benchmark_stems=p["benchmark_stems"],
                                            benchmark_fraction=p["benchmark_fraction"])
        missing = s3_rejections.to_dict("records")
    elif p["source"] == "folder":
        sources = collect_folder(p["folder"], benchmark_stems=p["benchmark_stems"],
                                 benchmark_fraction=p["benchmark_fraction"])
    else:
        raise ValueError(f"prepare.source must be 'packaged', 'folder' or 's3', got {p['source']!r}")
    with atomic_dir(root / PREPARED) as tmp:
        manifest, rejections = prepare_photos(sources, tmp, min_size=int(p["min_size"]),
                                              max_pixels=int(p["max_pixels"]))
        if manifest.empty:
            raise StageFailed("no usable photo was found; see the rejections: "
                              + "; ".join(f"{r.get('src_path')}: {r.get('reason')}"
                                          for r in rejections.head(5).to_dict("records")))
        for split in ("train", "benchmark"):
            if not (manifest["split"] == split).any():
                raise StageFailed(f"no photo landed in the {split} split; need at least one of each")
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
        rejections.to_csv(tmp / "rejections.csv", index=False)
        if missing:
            pd.DataFrame(missing).to_csv(tmp / "missing_packages.csv", index=False)
    summary = {"photos": int(len(manifest)), "train_photos": int((manifest["split"] == "train").sum()),
               "benchmark_photos": int((manifest["split"] == "benchmark").sum()),
               "rejected": int(len(rejections)), "missing": int(len(missing))}
    mlflow.log_metrics({k: float(v) for k, v in summary.items()})
    mlflow.log_artifact(str(root / PREPARED / "manifest.parquet"), "prepare")
    mlflow.log_artifact(str(root / PREPARED / "rejections.csv"), "prepare")
    return summary
