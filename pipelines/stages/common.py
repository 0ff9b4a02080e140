"""What the stage modules share: output paths, the stage-failure exception, rank handling, task classes and the
MLflow logging helpers. Writes go through :mod:`maskdcpt.atomic`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from maskdcpt.atomic import atomic_dir, atomic_write_json as write_json  # noqa: F401  (the stages' writers)

log = logging.getLogger("maskdcpt.stages")

PREPARED = Path("data/prepared")
PAIRS = Path("data/pairs")
PRETRAINED = Path("models/pretrain")
FINETUNED = Path("models/finetune")
BENCHMARK_METRICS = Path("metrics/benchmark.json")
PRETRAIN_METRICS = Path("metrics/pretrain.json")
FINETUNE_METRICS = "metrics/finetune-{variant}.json"
EVAL_REPORTS = Path("reports/evaluate")
VALIDATE_REPORTS = Path("reports/validate")
REGISTER_REPORT = Path("reports/register/decision.json")


class StageFailed(RuntimeError):
    """A stage stopped the pipeline on purpose (e.g. a failed data contract); the message says why."""


def file_digest(*paths: Path) -> str:
    """sha256 (first 16 hex) over the bytes of ``paths`` (identifies a data version in checkpoint keys)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def rank() -> int:
    """This process's rank under a distributed launcher (``RANK``), 0 without one."""
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def rank_output(target: Path) -> Iterator[Path]:
    """Rank 0 writes ``target`` atomically; other ranks write into a throw-away folder."""
    if rank() == 0:
        with atomic_dir(target) as tmp:
            yield tmp
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f"rank{rank()}-") as tmp:
            yield Path(tmp)


def task_classes(params: dict[str, Any]) -> list[str]:
    """The task's ordered class list: ``task.classes`` when given, else the registry's list for ``task.name``."""
    from maskdcpt.degradations import task_classes

    classes = list(params["task"]["classes"] or task_classes(params["task"]["name"]))
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"task.classes must be a non-empty list of distinct names, got {classes}")
    return classes


def metrics_logger(prefix: str = ""):
    import mlflow

    def on_log(step: int, values: dict[str, float]) -> None:
        clean = {f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(clean, step=step)
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in clean.items()))

    return on_log


def log_dataset(root: Path, manifest: pd.DataFrame, context: str) -> None:
    """Log the pair manifest as an MLflow dataset input whose digest is the DVC hash of ``data/pairs``."""
    import mlflow
    import yaml

    digest = "unknown"
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("synthesize", {}).get("outs", []):
            if out.get("path") == str(PAIRS):
                digest = str(out.get("md5", "unknown"))
    dataset = mlflow.data.from_pandas(manifest.drop(columns=["params"], errors="ignore"),
                                      source=str(root / PAIRS / "manifest.parquet"), name="pairs", digest=digest[:36])
    mlflow.log_input(dataset, context=context, tags={"dvc_md5": digest})


def photos_frame(root: Path) -> pd.DataFrame:
    photos = pd.read_parquet(root / PREPARED / "manifest.parquet")
    photos["path"] = [str(root / PREPARED / "images" / f"{i}.png") for i in photos["image_id"]]
    return photos


def checkpoint_dir(root: Path, stage: str, key: Any) -> Path:
    """``.cache/checkpoints/<stage>/<12 hex digits>``: keyed by a stable hash of the JSON-able training
    configuration ``key``, so a changed configuration never resumes stale state."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return root / ".cache" / "checkpoints" / stage / digest
