"""kill -9 at seeded random points of every stage, then one `dvc repro`: the results equal an uninterrupted run's.

Two tiny projects from the same code and params: the reference (the session's `reference_repro`, shared with the
end-to-end test) ran `dvc repro` once, timing each stage; the other
runs the stages one by one (`dvc repro <stage>`), each killed (SIGKILL to its whole process group: DVC, the stage,
its DeepSpeed and DataLoader children) after a seeded random fraction of that stage's reference time, and is then
finished by a plain `dvc repro`. Nothing partial may be taken as done: every cached out (DVC hash) and the
benchmark scores must equal the reference's, and the registry must hold only complete versions.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from conftest import benchmark_scores, cached_out_hashes, make_project, project_env, use_store

pytestmark = pytest.mark.slow

SEED = 20261201
STAGES = ["prepare", "synthesize", "validate", "pretrain", "finetune@maskdcpt", "finetune@scratch", "evaluate",
          "register"]


def dvc(project: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=project_env(project),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"dvc {args} exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def kill_stage_after(project: Path, stage: str, delay: float, log: Path) -> dict:
    """Run `dvc repro <stage>`, SIGKILL its process group ``delay`` s after DVC starts the stage's command."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", stage], cwd=project, env=project_env(project),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while f"Running stage '{stage}'" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() - started < delay:
            time.sleep(0.02)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"stage": stage, "killed_after_s": round(delay, 2), "finished_first": finished, "rc": proc.returncode}


@pytest.mark.fault(fault="kill -9 at a seeded random point of every stage", where="dvc repro, every stage",
                   outcome="recovered: a plain dvc repro finishes; outs and scores equal an uninterrupted run's")
def test_kill_9_in_every_stage_then_repro_gives_the_uninterrupted_results(tmp_path, record_property, reference_repro):
    took = reference_repro["stage_times"]
    assert sorted(took) == sorted(STAGES), took

    project = make_project(tmp_path / "killed")
    rng = random.Random(SEED)
    kills = []
    for stage in STAGES:
        # a point inside the stage's own work: after DVC starts its command, before the reference finished it
        delay = rng.uniform(0.15, 0.9) * took[stage]
        kills.append(kill_stage_after(project, stage, delay, tmp_path / f"kill-{stage}.log"))
    # a kill never leaves a stage recorded as done with a partial out: whatever dvc.lock holds now is complete
    partial = cached_out_hashes(project) if (project / "dvc.lock").is_file() else {}
    ref_outs = reference_repro["outs"]
    for stage, outs in partial.items():
        assert outs == ref_outs[stage], f"{stage} was recorded with outs that differ from the reference: {outs}"

    final = dvc(project, "repro")
    assert "Running stage" in final.stdout + final.stderr
    assert cached_out_hashes(project) == ref_outs
    assert benchmark_scores(project) == reference_repro["scores"]
    assert dvc(project, "status").stdout.strip() in ("", "Data and pipelines are up to date.")

    # the registry keeps complete versions only, and its champion is the final run's model
    from pipelines.registry import STATE_TAG

    use_store(project / "mlflow.db")
    client = mlflow.MlflowClient()
    name = json.loads((project / "reports/register/decision.json").read_text())["model_name"]
    versions = client.search_model_versions(f"name = '{name}'")
    assert versions and all(v.tags.get(STATE_TAG) == "registered" for v in versions), [
        (v.version, v.tags.get(STATE_TAG)) for v in versions]
    killed = [k for k in kills if not k["finished_first"]]
    record_property("measured", f"{len(killed)}/{len(kills)} stages killed mid-run ("
                    + ", ".join(f"{k['stage']}@{k['killed_after_s']}s" for k in kills)
                    + "); final outs and scores equal the reference's")
    assert len(killed) >= len(STAGES) // 2, kills   # most kills must land inside the stage, or this tests nothing
