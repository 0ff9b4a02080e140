"""Faults around one whole tiny pipeline run whose photos come from a real moto S3 server on 127.0.0.1 with
distinctive fake credentials: a second ``dvc repro`` started while the first runs, then every file the run
left behind (logs, reports, MLflow store and artifacts, Prefect's database, DVC cache) scanned for the secret."""
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from conftest import make_project, project_env

pytestmark = pytest.mark.slow

KEY_ID = "AKIAMASKDCPTCANARY42"
SECRET = "maskdcpt-canary-secret-7f3e9b1c5d"


@pytest.fixture(scope="module")
def s3_run(moto, tmp_path_factory):
    """Upload 7 packaged photos to ``s3://photos/clean/``, then run ``dvc repro`` (all stages) with the canary
    credentials, and start a second ``dvc repro`` once the first is synthesising."""
    from maskdcpt.data.photos import collect_packaged_photos

    tmp = tmp_path_factory.mktemp("s3run")
    s3 = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                      region_name="us-east-1")
    s3.create_bucket(Bucket="photos")
    sources, _ = collect_packaged_photos()
    chosen = [s for s in sources if s.split == "train"][:5] + [s for s in sources if s.split == "benchmark"][:2]
    for s in chosen:
        s3.upload_file(s.path, "photos", f"clean/{s.image_id}{Path(s.path).suffix}")
    project = make_project(tmp / "proj", {"prepare.source": "s3", "prepare.s3_uri": "s3://photos/clean/",
                                          "prepare.s3_endpoint_url": moto.url, "prepare.benchmark_fraction": 0.0,
                                          "prepare.benchmark_stems": [s.image_id for s in chosen[5:]]})
    env = {**project_env(project), "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    log = tmp / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, stdout=fh,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "Running stage 'synthesize'" not in log.read_text():
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first repro did not reach synthesize"
            time.sleep(0.2)
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True,
                                text=True, timeout=300)
        refused_after = time.monotonic() - t0
        first_running = first.poll() is None
        rc = first.wait(timeout=1500)
    finally:
        if first.poll() is None:
            first.kill()
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    return {"project": project, "log": log, "rc": rc, "second": second, "first_running": first_running,
            "refused_after": refused_after, "status": status}


@pytest.mark.fault(fault="two dvc repro at once", where="dvc repro (repository lock)",
                   outcome="clear failure of the second; the first completes, outputs intact")
def test_second_dvc_repro_fails_on_the_lock_and_the_first_completes(s3_run, record_property):
    second = s3_run["second"]
    assert s3_run["first_running"], "the first repro ended before the second did: the test proves nothing"
    assert second.returncode != 0
    assert "lock" in (second.stdout + second.stderr).lower(), second.stdout[-2000:] + second.stderr[-2000:]
    assert s3_run["rc"] == 0, s3_run["log"].read_text()[-4000:]
    assert "up to date" in s3_run["status"].stdout.lower(), s3_run["status"].stdout + s3_run["status"].stderr
    project = s3_run["project"]
    assert (project / "reports/register/decision.json").is_file()
    assert (project / "models/finetune/maskdcpt/sha256.json").is_file()
    record_property("measured", f"second repro refused after {s3_run['refused_after']:.1f} s")


@pytest.mark.fault(fault="credentials in outputs", where="S3 photo source (prepare) through the whole pipeline",
                   outcome="recovered: the secret appears in no log, param, tag, artifact, report or database")
def test_no_trace_of_the_s3_credentials_anywhere(s3_run, moto, record_property):
    assert s3_run["rc"] == 0, s3_run["log"].read_text()[-4000:]
    project = s3_run["project"]
    assert (project / "data/prepared/manifest.parquet").is_file()
    files = [p for p in project.rglob("*") if p.is_file() and not p.is_symlink()]
    files += [s3_run["log"]]
    mlflow_db, prefect_dbs = project / "mlflow.db", list((project / ".cache" / "prefect").rglob("*.db"))
    assert mlflow_db.is_file() and prefect_dbs, "the MLflow store and Prefect's database should be scanned"
    hits = []
    for p in files:
        data = p.read_bytes()
        for needle in (SECRET, KEY_ID):
            if needle.encode() in data:
                hits.append((str(p.relative_to(project)) if p.is_relative_to(project) else str(p), needle))
    assert not hits, hits
    record_property("measured", f"{len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB "
                                "scanned, 0 hits")
