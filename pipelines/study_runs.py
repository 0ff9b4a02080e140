"""One seed x variant of ``maskdcpt study`` (:mod:`pipelines.study`): the real stages as subprocesses in the run's
own working folder, recorded atomically when finished; as a Prefect task or as its own flow run (the work-pool
fan-out's entrypoint)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pipelines  # noqa: F401  (offline environment defaults before prefect/mlflow import)
from prefect import flow, task

from maskdcpt.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger("maskdcpt.study")

from pipelines.study_config import (RUN_FLOW, WORK, StudyError, base_params, main_labels,
                                    read_record, record_path, run_params)



# ----------------------------------------------------------------------------------------------------------------
# one run


def _stage_env(root: Path, parent_run_id: str | None) -> dict[str, str]:
    from maskdcpt.config import tracking_uri

    env = dict(os.environ)
    env["MASKDCPT_PREFECT"] = "0"  # the run is the Prefect unit; its stages are plain subprocesses
    env["MLFLOW_TRACKING_URI"] = tracking_uri(root)
    env.pop("MLFLOW_RUN_ID", None)
    if parent_run_id:
        env["MASKDCPT_PARENT_RUN_ID"] = parent_run_id
    else:
        env.pop("MASKDCPT_PARENT_RUN_ID", None)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(root / ".cache" / "torch_extensions"))
    return env


def _launcher(params: dict[str, Any], stage: str) -> list[str]:
    words = shlex.split(params["deepspeed"]["launcher"]) if stage in ("pretrain", "finetune") else ["python", "-m"]
    if words and words[0] in ("python", "python3"):
        words[0] = sys.executable
    return words


#: runs stages one after the other in one interpreter (argv: STAGE[@VARIANT]...), printing each one's seconds
_IN_PROCESS = """
import sys, time
from pipelines.stage import main
for item in sys.argv[1:]:
    stage, _, variant = item.partition("@")
    t0 = time.perf_counter()
    rc = main([stage, *(["--variant", variant] if variant else [])])
    if rc:
        raise SystemExit(rc)
    print(f"[study] {stage} seconds {time.perf_counter() - t0:.2f}", flush=True)
"""


def _run_stages(work: Path, params: dict[str, Any], env: dict[str, str],
                stages: list[tuple[str, str | None]]) -> dict[str, float]:
    """Run ``stages`` (``(name, variant)``) in ``work``; return each one's seconds. With the plain one-process
    launcher (``python -m``) consecutive stages share one interpreter, with at most one training stage per
    interpreter (DeepSpeed keeps process-wide groups that a second engine cannot reuse); with a distributed
    launcher each stage is its own launch. Raises ``StudyError`` with the output tail."""
    seconds: dict[str, float] = {}
    plain = all(_launcher(params, s) == [sys.executable, "-m"] for s, _ in stages)
    groups: list[list[tuple[str, str | None]]] = []
    for item in stages:
        training = item[0] in ("pretrain", "finetune")
        if not plain or not groups or (training and any(s in ("pretrain", "finetune") for s, _ in groups[-1])):
            groups.append([item])
        else:
            groups[-1].append(item)
    for group in groups:
        names = [f"{s}@{v}" if v else s for s, v in group]
        if plain:
            cmd = [sys.executable, "-c", _IN_PROCESS, *names]
        else:
            (stage, variant), = group
            cmd = [*_launcher(params, stage), "pipelines.stage", stage, *(["--variant", variant] if variant else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StudyError(f"stages {names} failed in {work} (exit {proc.returncode}):"
                             f"\n{(proc.stdout + proc.stderr)[-4000:]}")
        if plain:
            for line in proc.stdout.splitlines():
                if line.startswith("[study] ") and " seconds " in line:
                    name, _, value = line[len("[study] "):].partition(" seconds ")
                    seconds[name] = round(float(value), 2)
        else:
            seconds[group[0][0]] = round(time.perf_counter() - t0, 2)
    return seconds


def _link_project(root: Path, work: Path) -> None:
    """Link the project's ``data/`` (the shared pairs, read only) and ``dvc.yaml`` (the params each stage logs)
    into the run's working folder."""
    for name in ("data", "dvc.yaml"):
        link, target = work / name, (root / name).resolve()
        if link.is_symlink() or link.exists():
            if link.resolve() != target:
                raise StudyError(f"{link} exists and is not a link to {target}")
            continue
        link.symlink_to(target, target_is_directory=target.is_dir())


def execute_run(project_dir: str, cfg: dict[str, Any], seed: int, variant: str,
                parent_run_id: str | None = None) -> dict[str, Any]:
    """Run one seed x variant (module docstring) unless it is recorded; return ``{"seed", "variant", "skipped",
    "seconds"}``. The record is written atomically last, so a killed run leaves no record.

    Raises:
        StudyError: a stage failed (its output tail is in the message).
    """
    import mlflow
    import pandas as pd

    from pipelines import tracking

    root = Path(project_dir).resolve()
    if read_record(root, cfg, seed, variant) is not None:
        return {"seed": seed, "variant": variant, "skipped": True, "seconds": 0.0}
    base = base_params(root, cfg)
    params = run_params(base, seed, variant)
    work = root / WORK / cfg["key"] / f"seed-{seed}" / variant
    work.mkdir(parents=True, exist_ok=True)
    _link_project(root, work)
    import yaml

    atomic_write_text(work / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    exp_id = tracking.setup(params["tracking"]["experiment"], root)
    client = mlflow.MlflowClient()
    tags = {tracking.ROLE_TAG: "study-run", "study.key": cfg["key"], "study.seed": str(seed),
            "study.variant": variant, "git_commit": tracking.git_commit(root)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    child = client.create_run(exp_id, run_name=f"seed-{seed}-{variant}", tags=tags)
    client.log_param(child.info.run_id, "seed", seed)
    client.log_param(child.info.run_id, "variant", variant)
    env = _stage_env(root, child.info.run_id)
    # a stage whose (atomically written) output is there is not redone; evaluate always runs (it is cheap)
    todo: list[tuple[str, str | None]] = []
    if variant == "maskdcpt" and not ((work / "models/pretrain/backbone.pt").is_file()
                                      and (work / "metrics/pretrain.json").is_file()):
        todo.append(("pretrain", None))
    if not (work / "models/finetune" / variant / "model.pt").is_file():
        todo.append(("finetune", variant))
    todo.append(("evaluate", None))
    t0 = time.perf_counter()
    try:
        seconds = _run_stages(work, params, env, todo)
    except BaseException:
        client.set_terminated(child.info.run_id, "FAILED")
        raise
    per_image = pd.read_csv(work / "reports/evaluate/per_image.csv")
    per_image = per_image[per_image["variant"].isin([variant, "lq"])]
    bench = json.loads((work / "metrics/benchmark.json").read_text())
    pre = work / "metrics/pretrain.json"
    record = {"status": "finished", "key": cfg["key"], "seed": seed, "variant": variant,
              "labels": main_labels(params),
              "per_image": per_image[["label", "image_id", "variant", "psnr", "ssim"]].to_dict("records"),
              "benchmark": {k: bench[k] for k in (variant, "convention") if k in bench},
              "provenance": bench.get("provenance"),
              "pretrain": json.loads(pre.read_text()) if pre.is_file() else None,
              "seconds": seconds, "total_seconds": round(time.perf_counter() - t0, 2),
              "mlflow_run_id": child.info.run_id, "work_dir": str(work)}
    mean = bench.get(variant, {}).get("mean", {})
    client.log_batch(child.info.run_id, metrics=[
        mlflow.entities.Metric(f"{m}.mean", float(mean[m]), int(time.time() * 1000), 0) for m in ("psnr", "ssim")
        if m in mean])
    atomic_write_json(record_path(root, cfg, seed, variant), record)
    client.set_terminated(child.info.run_id, "FINISHED")
    return {"seed": seed, "variant": variant, "skipped": False, "seconds": record["total_seconds"]}


@task(name="study-run", task_run_name="seed-{seed}-{variant}", retries=0)
def run_task(project_dir: str, cfg: dict[str, Any], seed: int, variant: str, parent_run_id: str | None) -> dict:
    """One seed x variant as a task of the study flow (local fan-out)."""
    return execute_run(project_dir, cfg, seed, variant, parent_run_id)


@flow(name=RUN_FLOW, log_prints=True, validate_parameters=False)
def study_run(project_dir: str, cfg: dict[str, Any], seed: int, variant: str,
              parent_run_id: str | None = None) -> dict:
    """One seed x variant as its own flow run (the work-pool fan-out: the deployment's entrypoint)."""
    return execute_run(project_dir, cfg, seed, variant, parent_run_id)
