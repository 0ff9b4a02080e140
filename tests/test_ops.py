"""Operations with real processes on 127.0.0.1: MLflow server with S3 artifacts on moto, DVC push/pull on a moto
S3 remote, the Prefect retraining flow on a cron deployment (first run by a process worker, then a no-op rerun and
a retraining on new photos), and a training stage killed midway then resumed."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import boto3
import pytest

from conftest import CREDS, make_project, project_env, run_stage, use_store
from pipelines.services import start_mlflow, start_prefect

pytestmark = pytest.mark.slow



def _s3(moto):
    return boto3.client("s3", endpoint_url=moto.url, **{k.lower(): v for k, v in CREDS.items()
                                                        if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")


def _git(project, *args):
    subprocess.run(["git", *args], cwd=project, check=True, env=project_env(project), capture_output=True)


def _dvc(project, *args, env=None):
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env={**project_env(project),
                          **(env or {})}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"dvc {args}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _tree_md5(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mlflow_server_with_s3_artifacts_on_moto(moto, tmp_path):
    import mlflow
    import torch

    from maskdcpt.models import build_nafnet
    from pipelines.registry import log_restorer

    _s3(moto).create_bucket(Bucket="mlflow-art")
    server = start_mlflow(artifacts_destination="s3://mlflow-art/proxied", s3_endpoint=moto.url,
                          backend_uri=f"sqlite:///{tmp_path / 'srv.db'}", log_dir=tmp_path)
    try:
        mlflow.set_tracking_uri(server.url)
        mlflow.set_experiment("ops-test")
        with mlflow.start_run() as run:
            mlflow.log_params({"a": 1})
            mlflow.log_metric("psnr", 30.0, step=1)
            (tmp_path / "note.txt").write_text("hello")
            mlflow.log_artifact(str(tmp_path / "note.txt"))
            info = log_restorer(build_nafnet("tiny"), registered_name="ops-model")
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("ops-model", "champion", info.registered_model_version)
        net = mlflow.pytorch.load_model("models:/ops-model@champion")
        out = net(torch.rand(1, 3, 32, 32))
        assert out.shape == (1, 3, 32, 32)
        assert client.get_run(run.info.run_id).data.metrics["psnr"] == 30.0
        keys = [o["Key"] for o in _s3(moto).list_objects_v2(Bucket="mlflow-art").get("Contents", [])]
        assert any(k.endswith("note.txt") for k in keys) and any("MLmodel" in k for k in keys)
    finally:
        mlflow.set_tracking_uri(None)
        server.stop()


def test_dvc_push_pull_on_moto_s3_remote(moto, tmp_path):
    _s3(moto).create_bucket(Bucket="dvc-remote")
    project = make_project(tmp_path / "proj")
    _dvc(project, "repro", "synthesize")
    _dvc(project, "remote", "add", "-d", "s3store", "s3://dvc-remote/store")
    _dvc(project, "remote", "modify", "s3store", "endpointurl", moto.url)
    before = {d: _tree_md5(project / d) for d in ("data/prepared", "data/pairs")}
    _dvc(project, "push", env=CREDS)
    shutil.rmtree(project / ".dvc" / "cache")
    for d in before:
        shutil.rmtree(project / d)
    out = _dvc(project, "pull", "prepare", "synthesize", env=CREDS)
    assert "fetched" in out.lower() or "added" in out.lower()
    assert {d: _tree_md5(project / d) for d in before} == before
    status = _dvc(project, "status", "prepare", "synthesize")
    assert "up to date" in status.lower()


def _folder_project(tmp_path):
    """A tiny project whose photo source is a local folder of packaged photos (2 benchmark stems)."""
    from maskdcpt.data.photos import collect_packaged_photos

    src = tmp_path / "photos"
    src.mkdir()
    sources, _ = collect_packaged_photos()
    chosen = [s for s in sources if s.split == "train"][:5] + [s for s in sources if s.split == "benchmark"][:2]
    for s in chosen:
        shutil.copy(s.path, src / f"{s.image_id}{Path(s.path).suffix}")
    bench = [s.image_id for s in chosen if s.split == "benchmark"]
    project = make_project(tmp_path / "proj", {"prepare.source": "folder", "prepare.folder": str(src),
                                               "prepare.benchmark_fraction": 0.0, "prepare.benchmark_stems": bench})
    return project, src, [s for s in sources if s.split == "train"][5:]


def _retrain(project, extra_env=None):
    env = {**project_env(project), **(extra_env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "maskdcpt.cli", "pipeline", "run"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    text = proc.stdout
    summary = json.loads(text[text.index("{\n"):])
    return summary, time.perf_counter() - t0


def _scheduled_deployment(project, env) -> tuple[list[str], list[datetime]]:
    """The crons of deployment ``maskdcpt-retrain/weekly`` and the start times of its scheduled flow runs, read
    from a fresh process: Prefect fixes its settings when first imported, so an earlier test's import in this
    process would send a client here to its own ephemeral server instead of the test's server."""
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        "        deployment = await client.read_deployment_by_name('maskdcpt-retrain/weekly')\n"
        "        crons = [s.schedule.cron for s in deployment.schedules]\n"
        "        for _ in range(60):\n"
        "            runs = await client.read_flow_runs()\n"
        "            scheduled = [r.expected_start_time.isoformat() for r in runs\n"
        "                         if r.state_type.value == 'SCHEDULED']\n"
        "            if scheduled:\n"
        "                break\n"
        "            await asyncio.sleep(1)\n"
        "        print(json.dumps({'crons': crons, 'scheduled': scheduled}))\n"
        "asyncio.run(main())\n")
    probe = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                           timeout=300)
    assert probe.returncode == 0, probe.stdout[-3000:] + probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    return found["crons"], [datetime.fromisoformat(t) for t in found["scheduled"]]


def test_cron_deployment_then_retraining_flow_runs_skips_and_retrains_on_new_photos(tmp_path):
    """The retraining flow deployed on a weekly cron: scheduled on a real Prefect server and its first run
    executed by a process worker (the full pipeline, pushed to the DVC remote); then run again by hand: a no-op
    while the photos are unchanged, a retraining when a photo is added. One MLflow parent run per flow run."""
    project, src, spare = _folder_project(tmp_path)
    _dvc(project, "remote", "add", "-d", "local", "dvc-storage")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "remote")
    server = start_prefect(home=tmp_path / "prefect-home", log_dir=tmp_path)
    prefect = str(Path(sys.executable).parent / "prefect")
    try:
        env = {**project_env(project), **server.env, "PREFECT_HOME": str(tmp_path / "prefect-client")}
        proc = subprocess.run([sys.executable, "-m", "maskdcpt.cli", "pipeline", "schedule", "--cron", "0 3 * * 0",
                               "--name", "weekly"], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        crons, scheduled = _scheduled_deployment(project, env)
        assert crons == ["0 3 * * 0"]
        assert scheduled and all(t.weekday() == 6 and t.hour == 3 for t in scheduled)
        # run it now through a process worker: the first, full retraining
        t0 = time.perf_counter()
        run = subprocess.run([prefect, "deployment", "run", "maskdcpt-retrain/weekly"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        worker = subprocess.run([prefect, "worker", "start", "--pool", "maskdcpt-process", "--run-once"],
                                cwd=project, env=env, capture_output=True, text=True, timeout=1200)
        first = time.perf_counter() - t0
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    finally:
        server.stop()
    assert json.loads((project / "reports/register/decision.json").read_text())["version"] == "1"
    assert any((project / "dvc-storage").rglob("*")), "dvc push stored nothing"
    assert "up to date" in _dvc(project, "status").lower()

    summary, noop = _retrain(project)
    assert summary["versions"]["remote"] == "local"
    assert not any(s["ran"] for s in summary["stages"]) and not summary["source_changed"]
    print(f"retraining flow: full run by the worker {first:.1f} s, no-op run {noop:.1f} s")

    shutil.copy(spare[0].path, src / f"new-{spare[0].image_id}{Path(spare[0].path).suffix}")
    summary, _ = _retrain(project)
    assert summary["source_changed"]
    ran = {s["stage"] for s in summary["stages"] if s["ran"]}
    assert {"prepare", "synthesize", "pretrain", "register"} <= ran
    assert json.loads((project / "reports/register/decision.json").read_text())["version"] == "2"

    import mlflow

    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("maskdcpt")
    parents = client.search_runs([exp.experiment_id], "tags.`maskdcpt.role` = 'pipeline'")
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)
    mlflow.set_tracking_uri(None)


def _complete_checkpoint_step(ckroot: Path) -> int:
    """The step of the newest *complete* DeepSpeed checkpoint under ``ckroot`` (0 when none): DeepSpeed writes
    ``latest`` (naming the tag) only after every file of that tag is saved, so a ``step*`` folder alone is not
    enough (it exists while its files are still being written)."""
    best = 0
    for latest in ckroot.glob("*/latest"):
        tag = latest.read_text().strip()
        if tag.startswith("step") and tag[4:].isdigit() and (latest.parent / tag).is_dir():
            best = max(best, int(tag[4:]))
    return best


def test_training_stage_killed_midway_resumes(tmp_path):
    """A fine-tune killed (SIGKILL) after a complete checkpoint resumes from it, and ends with the same weights as
    an uninterrupted run of the same stage."""
    import torch

    steps = 100
    project = make_project(tmp_path / "proj", {"finetune.steps": steps, "finetune.checkpoint_every": 20},
                           dvc=False)
    for stage in ("prepare", "synthesize", "validate"):
        run_stage(project, stage)
    env = {**project_env(project), "MASKDCPT_PREFECT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.stage", "finetune", "--variant", "scratch"],
                            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckroot = project / ".cache" / "checkpoints" / "finetune-scratch"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and _complete_checkpoint_step(ckroot) < 40:
            assert proc.poll() is None, "stage ended before it could be interrupted"
            time.sleep(0.1)
        at_kill = _complete_checkpoint_step(ckroot)
        assert at_kill >= 40, "no complete checkpoint at step 40 within 600 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert at_kill < steps
    # nothing that DVC would take as done
    assert not (project / "models/finetune/scratch").exists()
    run_stage(project, "finetune", "--variant", "scratch")
    summary = json.loads((project / "metrics/finetune-scratch.json").read_text())
    # resumed from the checkpoint that was complete when it was killed (or a later one it completed meanwhile)
    assert at_kill <= summary["resumed_from"] < steps and summary["steps"] == steps
    assert not ckroot.exists() or not any(ckroot.iterdir())
    resumed = torch.load(project / "models/finetune/scratch/model.pt", weights_only=True)

    # the same stage uninterrupted (no checkpoint left to resume from) gives the same weights
    shutil.rmtree(project / "models/finetune/scratch")
    run_stage(project, "finetune", "--variant", "scratch")
    assert json.loads((project / "metrics/finetune-scratch.json").read_text())["resumed_from"] == 0
    whole = torch.load(project / "models/finetune/scratch/model.pt", weights_only=True)
    for key in ("params", "params_ema"):
        assert set(resumed[key]) == set(whole[key])
        diff = {k: float((resumed[key][k] - whole[key][k]).abs().max()) for k in whole[key]}
        assert max(diff.values()) <= 1e-6, (key, {k: v for k, v in diff.items() if v > 1e-6})


def test_distributed_shard_flow_then_stage_reuses_shards(tmp_path):
    """Shards made by the `maskdcpt-synthesize-shards` flow (as workers on many machines would, in two index
    ranges) are reused as they are by the synthesize stage, which only assembles the manifest."""
    project = make_project(tmp_path / "proj", {"synthesize.shard_size": 8}, dvc=False)
    run_stage(project, "prepare")
    env = project_env(project)
    code = ("import json, sys\n"
            "from pipelines.flows import synthesize_shards\n"
            "a = synthesize_shards(project_dir=sys.argv[1], split='train', start=0, stop=2)\n"
            "b = synthesize_shards(project_dir=sys.argv[1], split='train', start=2)\n"
            "print(json.dumps([a, b]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(project)], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = json.loads(proc.stdout.strip().splitlines()[-1])
    assert a["shards"] == [0, 1] and b["shards"] == list(range(2, a["of"])) and a["pairs"] + b["pairs"] == 30
    staging = project / ".cache" / "synthesis"
    made = {p.name: p.stat().st_mtime_ns for p in staging.glob("train-*.tar")}
    assert len(made) == a["of"]
    run_stage(project, "synthesize")
    assert {p.name: p.stat().st_mtime_ns for p in staging.glob("train-*.tar")} == made  # not redone
    import pandas as pd

    manifest = pd.read_parquet(project / "data/pairs/manifest.parquet")
    assert (manifest["split"] == "train").sum() == 30
    for shard in made:
        assert (project / "data/pairs" / shard).stat().st_ino == (staging / shard).stat().st_ino
