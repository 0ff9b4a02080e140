"""MLflow tracking for the pipeline: one parent run per pipeline run, one nested run per stage.

Who owns the parent run (every stage is its own process under ``dvc repro``):

* the Prefect retraining flow creates it, passes it down in ``MASKDCPT_PARENT_RUN_ID`` and ends it;
* under ``dvc repro`` / ``dvc exp run`` the first stage of that DVC invocation creates it, tagged with the
  invocation (the DVC process's pid and start time, :func:`invocation_id`); later stages of the same invocation
  nest under it, the ``register`` stage ends it, and a stage of a *later* invocation never reuses it: a parent
  left ``RUNNING`` by an invocation whose DVC process is gone (e.g. a lone ``dvc repro evaluate``) is ended
  ``FINISHED`` when the next invocation starts;
* a stage run by hand (``python -m pipelines.stage NAME``) owns a parent of its own and ends it.

A failing stage ends its parent ``FAILED``. Default store: ``sqlite:///<project>/mlflow.db`` with artifacts under
``<project>/mlartifacts`` (override with ``MLFLOW_TRACKING_URI``; at scale an ``mlflow server``). SQLite takes
one writer at a time: concurrent pipeline runs should use a tracking server (README, "Scaling out").
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


INVOCATION_TAG = "maskdcpt.invocation"


def _process_key(proc) -> str:
    return f"{proc.pid}-{int(proc.create_time())}"


def invocation_id() -> tuple[str, bool]:
    """``(key, owned)``: the key of the DVC process (``dvc repro``, ``dvc exp run``) this stage runs under, found
    among the process's ancestors, with ``owned=False``; or this process's own key with ``owned=True``."""
    import psutil

    me = psutil.Process()
    with contextlib.suppress(psutil.Error):
        for proc in me.parents():
            cmd = " ".join(proc.cmdline()[:4])
            if re.search(r"(^|[/\s])dvc(\.exe)?\s+(repro|exp\s+run)\b", cmd) or re.search(
                    r"\bdvc(/__main__\.py)?\s+(repro|exp)\b", cmd):
                return _process_key(proc), False
    return _process_key(me), True


def _alive(key: str) -> bool:
    import psutil

    pid, _, started = key.partition("-")
    try:
        return _process_key(psutil.Process(int(pid))) == key
    except (psutil.Error, ValueError):
        return False


def _open_parent(client, experiment_id: str, params: dict[str, Any]) -> tuple[str, bool]:
    """``(run_id, owned)``: the parent run this stage nests under, and whether this stage must end it."""
    run_id = os.environ.get(PARENT_ENV)
    if run_id:
        return run_id, False
    key, owned = invocation_id()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'pipeline' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in running:
        other = run.data.tags.get(INVOCATION_TAG, "")
        if other == key:
            return run.info.run_id, owned
        if not _alive(other):  # left open by an invocation that is over (e.g. a lone `dvc repro evaluate`)
            client.set_terminated(run.info.run_id, "FINISHED")
    run = client.create_run(
        experiment_id,
        run_name=time.strftime("pipeline-%Y%m%d-%H%M%S"),
        tags={ROLE_TAG: "pipeline", INVOCATION_TAG: key, "git_commit": git_commit()},
    )
    log_params(client, run.info.run_id, flatten(params))
    return run.info.run_id, owned


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
def stage_run(stage: str, params: dict[str, Any], stage_params: dict[str, Any] | None = None,
              root: Path | None = None) -> Iterator[Any]:
    """Open the stage's nested MLflow run under the pipeline's parent run (see the module docstring).

    Args:
        stage: the DVC stage name (e.g. ``finetune@maskdcpt``), also the run name.
        params: the whole validated params; the parent run gets all of it.
        stage_params: the params the stage run logs (the groups dvc.yaml tracks for it; default: all).

    Yields:
        The active :class:`mlflow.ActiveRun`. A failure inside the block marks the stage run and the parent run
        ``FAILED`` and re-raises.
    """
    import mlflow

    root = Path(root or find_root())
    exp_id = setup(params["tracking"]["experiment"], root)
    client = mlflow.MlflowClient()
    parent, owned = _open_parent(client, exp_id, params)
    tags = {"git_commit": git_commit(root), "maskdcpt.stage": stage, **dvc_lock_hashes(root)}
    system = stage.split("@")[0] in SYSTEM_METRICS_STAGES
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent, tags=tags,
                          log_system_metrics=system) as run:
        log_params(client, run.info.run_id, flatten(params if stage_params is None else stage_params))
        try:
            yield run
        except BaseException:
            if not os.environ.get(PARENT_ENV):
                client.set_terminated(parent, "FAILED")
            raise
    if owned:
        client.set_terminated(parent, "FINISHED")
