"""The Prefect retraining flow: the stages of ``dvc.yaml``, in order, with the same code as ``dvc repro``.

``retrain`` (``maskdcpt pipeline run``):

1. ``scan-source``: fingerprints the photo source (the packaged photos' package versions, a folder listing, or an
   S3 listing) into ``data/source.json``, a dependency of the ``prepare`` stage. New photos change it, so the
   next run re-prepares and retrains; an unchanged source leaves it byte-identical, so DVC skips every stage.
2. one task per DVC stage (``dvc repro --single-item <stage>``, topological order from ``dvc.yaml``), retried on
   transient failures; DVC itself skips a stage whose deps, params and outs are unchanged, and the task reports
   ``ran`` or ``skipped`` with its timing.
3. ``record-versions``: ``dvc push`` to the configured remote (when one is configured) and the ``dvc.lock`` hashes.
4. artifacts in Prefect: the benchmark table and the promotion decision (Markdown, with the MLflow run links).

All stages nest under one MLflow parent run created by the flow (``MASKDCPT_PARENT_RUN_ID``), ended when the flow
ends. One retraining flow runs in a project at a time: a second one (an overlapping schedule, a manual run) waits
for the project's lock ``.cache/retrain.lock`` (an OS file lock, released even when its holder is killed) up to
``lock_timeout_s``, then fails saying which run holds it; it never interleaves its stages with the first's. The stage subprocesses run without their own Prefect flow (``MASKDCPT_PREFECT=0``): here each stage is a task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pipelines  # noqa: F401  (offline environment defaults before prefect is imported)
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact

from maskdcpt.config import find_root, flatten
from pipelines.params import load_params
from maskdcpt.atomic import atomic_write_text

SOURCE_FINGERPRINT = Path("data/source.json")
RETRAIN_LOCK = Path(".cache/retrain.lock")


def stage_order(root: Path) -> list[str]:
    """The DVC stage names in topological order (``dvc dag --dot`` parsed; foreach stages expanded)."""
    out = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=root,
                         capture_output=True, text=True, check=True).stdout.split()
    deps: dict[str, set[str]] = {name: set() for name in out}
    dot = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    for line in dot.splitlines():
        line = line.strip().rstrip(";")
        if "->" in line:
            a, b = (part.strip().strip('"') for part in line.split("->"))
            if a in deps and b in deps:
                deps[b].add(a)
    order: list[str] = []
    while deps:
        ready = sorted(n for n, d in deps.items() if not d - set(order))
        if not ready:
            raise RuntimeError(f"cycle in the DVC stage graph: {deps}")
        for n in ready:
            order.append(n)
            deps.pop(n)
    return order


def fingerprint_source(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """A JSON-able description of the photo source that changes exactly when its photos change.

    * ``packaged``: the installed versions of the packages that ship the photos;
    * ``folder``: every image file's relative path, size and mtime (ns);
    * ``s3``: every object's key, size and ETag under the prefix (credentials from the environment only).
    """
    p = params["prepare"]
    source = p["source"]
    if source == "packaged":
        from maskdcpt.data.photos import PACKAGED_PHOTOS, package_version

        packages = sorted({ph.package for ph in PACKAGED_PHOTOS})
        return {"source": "packaged", "packages": {pkg: package_version(pkg) for pkg in packages}}
    if source == "folder":
        folder = Path(p["folder"]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"prepare.folder does not exist: {folder}")
        files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        return {"source": "folder", "folder": str(folder),
                "files": [[f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns]
                          for f in files]}
    if source == "s3":
        from maskdcpt.data.sources import list_s3_objects, parse_s3_uri, s3_client

        bucket, prefix = parse_s3_uri(p["s3_uri"])
        objects = list_s3_objects(s3_client(p.get("s3_endpoint_url") or None), bucket, prefix)
        return {"source": "s3", "uri": p["s3_uri"],
                "objects": [[o["key"], o["size"], o["etag"]] for o in objects]}
    raise ValueError(f"prepare.source must be packaged, folder or s3, got {source!r}")


def write_fingerprint(root: Path, fingerprint: dict[str, Any]) -> bool:
    """Write ``data/source.json`` atomically when its content changed; return whether it changed."""
    path = root / SOURCE_FINGERPRINT
    text = json.dumps(fingerprint, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


@task(name="scan-source", retries=3, retry_delay_seconds=[2, 10, 30])
def scan_source(root: str) -> bool:
    """Fingerprint the photo source into ``data/source.json``; return whether it changed."""
    root_p = Path(root)
    changed = write_fingerprint(root_p, fingerprint_source(load_params(root_p / "params.yaml"), root_p))
    get_run_logger().info("photo source %s", "changed" if changed else "unchanged")
    return changed


@task(name="dvc-stage", task_run_name="{stage}", retries=2, retry_delay_seconds=[5, 30])
def run_dvc_stage(stage: str, root: str, parent_run_id: str) -> dict[str, Any]:
    """``dvc repro --single-item <stage>`` in ``root``; returns ``{"stage", "ran", "seconds"}``.

    A transient failure (object store, tracking server) is retried by Prefect; the stage itself resumes from its
    checkpoints, and DVC never records a failed stage as done.
    """
    env = dict(os.environ, MASKDCPT_PREFECT="0", MASKDCPT_PARENT_RUN_ID=parent_run_id)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=env,
                          capture_output=True, text=True)
    logger = get_run_logger()
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logger.error(output[-8000:])
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}): {output.strip().splitlines()[-1:]}")
    ran = f"Running stage '{stage}'" in output
    logger.info("%s: %s in %.1f s", stage, "ran" if ran else "skipped (unchanged)", time.perf_counter() - t0)
    return {"stage": stage, "ran": ran, "seconds": round(time.perf_counter() - t0, 2)}


@task(name="record-versions", retries=3, retry_delay_seconds=[5, 20, 60])
def record_versions(root: str) -> dict[str, Any]:
    """``dvc push`` to the default remote (if one is configured) and return the ``dvc.lock`` out hashes."""
    from pipelines.tracking import dvc_lock_hashes

    logger = get_run_logger()
    remote = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=root, capture_output=True,
                            text=True)
    pushed = None
    if remote.returncode == 0 and remote.stdout.strip():
        proc = subprocess.run([sys.executable, "-m", "dvc", "push"], cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            # DVC's own message names the failed operation, not where it was pushing to
            url = subprocess.run([sys.executable, "-m", "dvc", "remote", "list"], cwd=root, capture_output=True,
                                 text=True).stdout
            where = next((ln.split()[1] for ln in url.splitlines()
                          if len(ln.split()) > 1 and ln.split()[0] == remote.stdout.strip()), "?")
            raise RuntimeError(f"dvc push to remote {remote.stdout.strip()!r} ({where}) failed: "
                               f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
        pushed = remote.stdout.strip()
        logger.info("pushed to DVC remote %s", pushed)
    else:
        logger.info("no default DVC remote configured: nothing pushed")
    return {"remote": pushed, "lock": dvc_lock_hashes(Path(root))}


class RetrainBusy(RuntimeError):
    """Another retraining flow held the project's lock for longer than the flow was willing to wait."""


def _acquire_project_lock(root: Path, timeout_s: float):
    """The project's retraining lock (a ``filelock.FileLock``, held), waiting up to ``timeout_s`` for it; its
    holder is recorded beside it (``retrain.lock.json``: pid, start time). Raises :class:`RetrainBusy`."""
    from filelock import FileLock, Timeout

    path = root / RETRAIN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = path.with_name(path.name + ".json")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder.read_text() if holder.is_file() else "unknown"
        # a warning: the console shows warnings and errors of a flow run (PREFECT_LOGGING_LEVEL), and so does the UI
        get_run_logger().warning("another retraining flow holds %s (%s); waiting up to %.0f s", path, who, timeout_s)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            who = holder.read_text() if holder.is_file() else "unknown"
            raise RetrainBusy(f"another retraining flow still holds {path} after {timeout_s:.0f} s ({who}); "
                              "nothing was run") from None
    atomic_write_text(holder, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return lock


@flow(name="maskdcpt-retrain", log_prints=True)
def retrain(project_dir: str | None = None, lock_timeout_s: float = 6 * 3600) -> dict[str, Any]:
    """Run the whole pipeline as the scheduled retraining flow (see the module docstring); waits up to
    ``lock_timeout_s`` for a retraining flow already running in the project. Raises :class:`RetrainBusy`."""
    root = Path(project_dir or find_root()).resolve()
    lock = _acquire_project_lock(root, lock_timeout_s)
    try:
        return _retrain_locked(root)
    finally:
        lock.release()


def _retrain_locked(root: Path) -> dict[str, Any]:
    import mlflow

    from pipelines import tracking

    params = load_params(root / "params.yaml")
    exp_id = tracking.setup(params["tracking"]["experiment"], root)
    client = mlflow.MlflowClient()
    parent = client.create_run(exp_id, run_name=time.strftime("retrain-%Y%m%d-%H%M%S"),
                               tags={tracking.ROLE_TAG: "pipeline", "git_commit": tracking.git_commit(root),
                                     "orchestrator": "prefect"})
    parent_id = parent.info.run_id
    tracking.log_params(client, parent_id, flatten(params))
    status = "FAILED"
    try:
        changed = scan_source(str(root))
        results = [run_dvc_stage(stage, str(root), parent_id) for stage in stage_order(root)]
        versions = record_versions(str(root))
        for k, v in versions["lock"].items():
            client.set_tag(parent_id, k, v)
        summary = {"source_changed": changed, "stages": results, "versions": versions,
                   "mlflow_parent_run": parent_id}
        _publish_artifacts(root, results, parent_id)
        status = "FINISHED"
        return summary
    finally:
        _end_orphaned_stage_runs(client, exp_id, parent_id)
        client.set_terminated(parent_id, status)


def _end_orphaned_stage_runs(client, exp_id: str, parent_id: str) -> None:
    """Mark FAILED the stage runs under ``parent_id`` still RUNNING: attempts that died without ending their run
    (killed, or the tracking server was away when they failed) and that a task retry replaced."""
    try:
        runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
    except Exception as exc:  # noqa: BLE001 - best effort: never mask the flow's own outcome
        get_run_logger().warning("could not look for unfinished stage runs: %s: %s", type(exc).__name__, exc)
        return
    for run in runs:
        client.set_terminated(run.info.run_id, "FAILED")
        client.set_tag(run.info.run_id, "maskdcpt.ended_by", "retraining flow: the attempt died without ending its run")


def _publish_artifacts(root: Path, results: list[dict[str, Any]], parent_id: str) -> None:
    from pipelines.tracking import tracking_uri

    uri = tracking_uri(root)
    link = f"MLflow parent run `{parent_id}` (tracking URI `{uri}`)"
    rows = "\n".join(f"| {r['stage']} | {'ran' if r['ran'] else 'skipped'} | {r['seconds']:.1f} |" for r in results)
    stages_md = f"| stage | state | seconds |\n|---|---|---|\n{rows}\n"
    table = root / "reports/evaluate/table.md"
    create_markdown_artifact(
        f"# Benchmark\n\n{table.read_text() if table.is_file() else '(no benchmark yet)'}\n\n"
        f"## Stages\n\n{stages_md}\n{link}\n", key="maskdcpt-benchmark", description="benchmark table")
    decision = root / "reports/register/decision.json"
    if decision.is_file():
        d = json.loads(decision.read_text())
        create_markdown_artifact(
            f"# Promotion decision\n\n* model: `{d['model_name']}` version {d['version']}\n"
            f"* decision: **{'promoted to champion' if d['promoted'] else 'kept as challenger'}**\n"
            f"* reason: {d['reason']}\n* champion now: version {d['champion_version']}\n\n{link}\n",
            key="maskdcpt-promotion", description="registry promotion decision")


@task(name="synthesize-shard", task_run_name="{split}-{k}", retries=2, retry_delay_seconds=[5, 30])
def make_shard(project_dir: str, split: str, k: int) -> int:
    """Make (or find finished) training shard ``k`` of ``split`` in the synthesis staging folder; return its
    number of pairs. Idempotent: a finished shard of the same plan and code is not redone."""
    from maskdcpt.data.synthesize import synthesize_training_shard
    from pipelines.stages.common import photos_frame, task_classes
    from pipelines.stages.synthesize import synthesis_staging, training_split_args

    root = Path(project_dir)
    params = load_params(root / "params.yaml")
    s = params["synthesize"]
    photos = photos_frame(root)
    pool = photos[photos["split"] == "train"].reset_index(drop=True)
    args = training_split_args(params, root, split)
    _, rows = synthesize_training_shard(pool, task_classes(params), args["pairs_per_class"], int(s["crop"]),
                                        args["seed"], synthesis_staging(params, root), int(k), split=split,
                                        shard_size=int(s["shard_size"]), tone=args["tone"])
    return len(rows)


@flow(name="maskdcpt-synthesize-shards", log_prints=True)
def synthesize_shards(project_dir: str | None = None, split: str = "train", start: int = 0,
                      stop: int | None = None) -> dict[str, Any]:
    """Make training shards ``[start, stop)`` of ``split`` as Prefect tasks (mapped; the task runner decides the
    concurrency). Across machines: deploy this flow to a work pool and run one flow run per index range, with
    ``synthesize.staging_dir`` on a shared folder; the ``synthesize`` stage then only assembles the manifest.
    Needs the ``prepare`` stage's output (``data/prepared``)."""
    import math

    from maskdcpt.data.synthesize import plan_training_pairs
    from pipelines.stages.common import photos_frame, task_classes
    from pipelines.stages.synthesize import training_split_args

    root = Path(project_dir or find_root()).resolve()
    params = load_params(root / "params.yaml")
    s = params["synthesize"]
    photos = photos_frame(root)
    pool = photos[photos["split"] == "train"].reset_index(drop=True)
    args = training_split_args(params, root, split)
    plan = plan_training_pairs(pool, task_classes(params), args["pairs_per_class"], int(s["crop"]), args["seed"],
                               split=split, tone=args["tone"])
    n_shards = math.ceil(len(plan) / int(s["shard_size"]))
    ks = list(range(max(start, 0), min(stop if stop is not None else n_shards, n_shards)))
    t0 = time.perf_counter()
    counts = make_shard.map(unmapped(str(root)), unmapped(split), ks).result()
    seconds = time.perf_counter() - t0
    pairs = int(sum(counts))
    return {"split": split, "shards": ks, "of": n_shards, "pairs": pairs, "seconds": round(seconds, 2),
            "pairs_per_second": round(pairs / seconds, 2) if seconds > 0 else None}
