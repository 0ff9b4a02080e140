"""MLflow tracking for the pipeline: one parent run per pipeline run, one nested run per stage.

How runs are grouped when every stage is its own process (``dvc repro`` runs each stage command separately):

* ``MASKDCPT_PARENT_RUN_ID`` set (the Prefect retraining flow sets it): stages nest under that run.
* otherwise the newest parent run of the experiment that is still ``RUNNING`` (tag ``maskdcpt.role=pipeline``)
  is reused, or a new one is created. The ``register`` stage, the last one, ends it ``FINISHED``; a failing
  stage ends it ``FAILED``. So each ``dvc repro`` that runs at least one stage makes exactly one parent run.

Default store: ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlartifacts`` (override with
``MLFLOW_TRACKING_URI``; at scale an ``mlflow server``). SQLite takes one writer at a time: concurrent
pipeline runs should use a tracking server, which handles concurrency (README, "Scaling out").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from maskdcpt.config import find_root, flatten, tracking_uri

log = logging.getLogger(__name__)

PARENT_ENV = "MASKDCPT_PARENT_RUN_ID"
ROLE_TAG = "maskdcpt.role"
SYSTEM_METRICS_STAGES = {"pretrain", "finetune", "evaluate"}  # long stages: CPU/memory sampled by MLflow


def setup(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the project's store and make sure ``experiment`` exists; return its id.

    With the default SQLite store the artifacts go to ``<root>/mlartifacts`` (absolute, so they do not
    depend on the working directory).
    """
    import mlflow

    root = Path(root or find_root())
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (root / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(root: Path | None = None) -> str:
    """The git commit of the working tree (``unknown`` outside git), with ``-dirty`` when it has changes."""
    root = Path(root or find_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_lock_hashes(root: Path | None = None) -> dict[str, str]:
    """``{"dvc.<stage>.<path>": md5}`` for every out recorded in ``dvc.lock`` (empty when there is none)."""
    import yaml

    lock = Path(root or find_root()) / "dvc.lock"
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    tags = {}
    for stage, body in (data.get("stages") or {}).items():
        for out in body.get("outs", []) or []:
            digest = out.get("md5") or out.get("hash") or ""
            # MLflow tag keys allow alphanumerics, _ - . space : / only (foreach stages are named like x@y)
            key = re.sub(r"[^A-Za-z0-9_\-. :/]", "_", f"dvc.{stage}.{out.get('path')}")
            tags[key] = str(digest)
    return tags


def _open_parent(client, experiment_id: str, params: dict[str, Any]) -> str:
    run_id = os.environ.get(PARENT_ENV)
    if run_id:
        return run_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'pipeline' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=time.strftime("pipeline-%Y%m%d-%H%M%S"),
        tags={ROLE_TAG: "pipeline", "git_commit": git_commit()},
    )
    log_params(client, run.info.run_id, flatten(params))
    return run.info.run_id


def log_params(client, run_id: str, flat: dict[str, Any]) -> None:
    """Log flattened params to ``run_id`` in batches of 100 (lists/dicts as JSON, values cut at 6000 chars)."""
    from mlflow.entities import Param

    items = [Param(k, (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def end_pipeline(status: str = "FINISHED") -> None:
    """End the open parent run (the one the current stage nests under) with ``status``."""
    import mlflow

    run = mlflow.active_run()
    parent = run.data.tags.get("mlflow.parentRunId") if run else None
    if parent and not os.environ.get(PARENT_ENV):
        mlflow.MlflowClient().set_terminated(parent, status)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], sections: list[str] | None = None,
              root: Path | None = None) -> Iterator[Any]:
    """Open the stage's nested MLflow run under the pipeline's parent run.

    Args:
        stage: the DVC stage name (e.g. ``finetune@maskdcpt``), also the run name.
        params: the whole ``params.yaml``; the parent run gets all of it, the stage run the ``sections``.
        sections: top-level params groups this stage reads (default: all).

    Yields:
        The active :class:`mlflow.ActiveRun`. A failure inside the block marks the stage run and the parent run
        ``FAILED`` and re-raises.
    """
    import mlflow

    root = Path(root or find_root())
    exp_id = setup(params.get("tracking", {}).get("experiment", "maskdcpt"), root)
    client = mlflow.MlflowClient()
    parent = _open_parent(client, exp_id, params)
    tags = {"git_commit": git_commit(root), "maskdcpt.stage": stage, **dvc_lock_hashes(root)}
    chosen = {k: params[k] for k in (sections or params) if k in params}
    system = stage.split("@")[0] in SYSTEM_METRICS_STAGES
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent, tags=tags,
                          log_system_metrics=system) as run:
        log_params(client, run.info.run_id, flatten(chosen))
        try:
            yield run
        except BaseException:
            if not os.environ.get(PARENT_ENV):
                client.set_terminated(parent, "FAILED")
            raise
