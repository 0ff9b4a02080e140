"""Faults of S3 itself, injected by a proxy on 127.0.0.1 in front of a real moto server (s3_fault_proxy.py):
503s, throttling and connection resets are retried with back-off (botocore's standard retry mode in prepare,
s3fs/aiobotocore's retries in ``dvc push`` / ``dvc pull``), a permanent 403 is reported naming the object."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pandas as pd
import pytest

from conftest import REPO, make_project, project_env, run_stage
from s3_fault_proxy import FaultProxy, every_other

pytestmark = pytest.mark.slow

BUCKET = "faulty"
TRANSIENT = ["503", "throttle", "reset"]


@pytest.fixture(scope="module")
def proxy(moto):
    p = FaultProxy(moto.url)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def bucket(moto):
    """The module's bucket on moto (each scenario may run alone)."""
    boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture(scope="module")
def photos(moto, bucket):
    """Four training and two benchmark photos from the installed packages, uploaded straight to moto (not
    through the proxy) under ``s3://faulty/clean/``; ``{key: sha256}`` and the benchmark stems."""
    from maskdcpt.data.photos import collect_packaged_photos

    s3 = boto3.client("s3", endpoint_url=moto.url)
    sources, _ = collect_packaged_photos()
    chosen = [s for s in sources if s.split == "train"][:4] + [s for s in sources if s.split == "benchmark"][:2]
    keys = {}
    for s in chosen:
        key = f"clean/{s.image_id}{Path(s.path).suffix}"
        s3.upload_file(s.path, BUCKET, key)
        keys[key] = hashlib.sha256(Path(s.path).read_bytes()).hexdigest()
    return keys, [s.image_id for s in chosen[4:]]


def _s3_project(path: Path, proxy: FaultProxy, stems: list[str]) -> Path:
    return make_project(path, {"prepare.source": "s3", "prepare.s3_uri": f"s3://{BUCKET}/clean/",
                               "prepare.s3_endpoint_url": proxy.url, "prepare.benchmark_fraction": 0.0,
                               "prepare.benchmark_stems": stems}, dvc=False)


@pytest.mark.fault(fault="S3 503, SlowDown and connection resets on every other one of the first 12 requests",
                   where="prepare (photos from s3://)", outcome="recovered: retried with back-off, all photos in")
def test_transient_s3_faults_are_retried_by_prepare(proxy, photos, tmp_path, record_property):
    keys, stems = photos
    project = _s3_project(tmp_path / "proj", proxy, stems)
    proxy.set_faults(every_other(TRANSIENT, first=12))
    run_stage(project, "prepare")
    injected = proxy.injected()
    assert injected == {"503": 2, "throttle": 2, "reset": 2}, proxy.log
    manifest = pd.read_parquet(project / "data" / "prepared" / "manifest.parquet")
    assert len(manifest) == len(keys) and sorted(manifest["split"].unique()) == ["benchmark", "train"]
    cache = project / ".cache" / "s3" / BUCKET
    assert {k: hashlib.sha256((cache / k).read_bytes()).hexdigest() for k in keys} == keys  # whole, unchanged
    assert not (project / "data" / "prepared" / "missing_packages.csv").exists()
    record_property("measured", f"{sum(injected.values())} faults injected, {len(proxy.log)} requests, "
                                f"{len(manifest)}/{len(keys)} photos prepared")


@pytest.mark.fault(fault="S3 permanent 403 AccessDenied on one photo, then on the listing",
                   where="prepare (photos from s3://)",
                   outcome="reported: the object's s3:// URI and the 403 recorded, not retried, the rest prepared; a "
                           "denied listing fails the stage naming s3://bucket/prefix")
def test_permanent_403_is_reported_with_bucket_and_key(proxy, photos, tmp_path, record_property):
    keys, stems = photos
    denied = sorted(k for k in keys if Path(k).stem not in stems)[0]
    project = _s3_project(tmp_path / "proj", proxy, stems)
    proxy.set_faults(lambda i, method, path: "403" if path.split("?")[0].endswith(denied) else None)
    run_stage(project, "prepare")
    assert len(proxy.requests_for(denied)) == 1, proxy.requests_for(denied)  # permanent: no retry
    missing = pd.read_csv(project / "data" / "prepared" / "missing_packages.csv")
    row = missing[missing["src_path"] == f"s3://{BUCKET}/{denied}"]
    assert len(row) == 1 and row["reason"].iloc[0] == "download_failed", missing.to_dict("records")
    assert "403" in row["detail"].iloc[0]
    manifest = pd.read_parquet(project / "data" / "prepared" / "manifest.parquet")
    assert len(manifest) == len(keys) - 1
    # the listing itself denied: the stage fails naming the bucket and prefix, and writes no prepared folder
    project2 = _s3_project(tmp_path / "proj2", proxy, stems)
    proxy.set_faults(lambda i, method, path: "403")
    failed = run_stage(project2, "prepare", check=False)
    assert failed.returncode != 0
    assert f"cannot list s3://{BUCKET}/clean/: ClientError" in failed.stderr and "(403)" in failed.stderr, failed.stderr[-3000:]
    assert not (project2 / "data" / "prepared").exists()
    assert len(proxy.log) == 1  # a 403 is permanent: not retried
    record_property("measured", f"{row['src_path'].iloc[0]}: {row['detail'].iloc[0][:70]}; listing: "
                                + next(ln for ln in failed.stderr.splitlines() if ln.startswith("maskdcpt.data.sources.S3ListingError"))[38:150])


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=project_env(repo),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.fault(fault="S3 503, SlowDown and connection resets, then a permanent 403",
                   where="dvc push / dvc pull (S3 remote)",
                   outcome="recovered: push and pull complete, files identical; the 403 fails the push clearly")
def test_dvc_push_and_pull_survive_transient_faults_and_report_a_403(proxy, moto, bucket, tmp_path, record_property):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = project_env(repo)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    _dvc(repo, "remote", "add", "-d", "store", f"s3://{BUCKET}/dvcstore")
    _dvc(repo, "remote", "modify", "store", "endpointurl", proxy.url)
    data = repo / "data"
    data.mkdir()
    for i in range(4):
        (data / f"part{i}.bin").write_bytes(os.urandom(256 * 1024 + i))
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()}
    _dvc(repo, "add", "data")

    proxy.set_faults(every_other(TRANSIENT, first=12))
    _dvc(repo, "push")
    pushed = proxy.injected()
    assert sum(pushed.values()) == 6, proxy.log

    subprocess.run(["rm", "-rf", str(data), str(repo / ".dvc" / "cache")], check=True)
    proxy.set_faults(every_other(TRANSIENT, first=12))
    _dvc(repo, "pull")
    pulled = proxy.injected()
    assert sum(pulled.values()) == 6, proxy.log
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()} == want

    (data / "late.bin").write_bytes(os.urandom(1000))
    _dvc(repo, "add", "data")
    proxy.set_faults(lambda i, method, path: "403")
    denied = _dvc(repo, "push", check=False)
    out = denied.stdout + denied.stderr
    assert denied.returncode != 0
    assert "403" in out or "Forbidden" in out or "AccessDenied" in out or "Access Denied" in out, out[-3000:]
    # DVC's message names neither bucket nor key; the retraining flow's push names the remote and its URL
    flow = subprocess.run([sys.executable, "-c", (
        "from prefect import flow\n"
        "from pipelines.flows import record_versions\n"
        "@flow\n"
        "def push():\n"
        "    return record_versions.with_options(retries=0)('.')\n"
        "try:\n"
        "    push()\n"
        "except RuntimeError as e:\n"
        "    print('PUSH-ERROR', e)\n")], cwd=repo, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=600)
    assert f"PUSH-ERROR dvc push to remote 'store' (s3://{BUCKET}/dvcstore) failed" in flow.stdout, \
        flow.stdout[-2000:] + flow.stderr[-3000:]
    record_property("measured", f"push: {dict(pushed)}; pull: {dict(pulled)}; 403 push exit {denied.returncode}: "
                                + next((ln.strip() for ln in out.splitlines() if "ERROR" in ln), out.strip()[-120:])[:120]
                                + f"; in the flow: dvc push to remote 'store' (s3://{BUCKET}/dvcstore) failed")


@pytest.fixture(scope="module")
def training_sets(moto, bucket):
    """A rain set (Rain100L layout, 2 matched pairs) and a low-light set (LOL layout, 2 pairs) uploaded straight
    to moto under ``s3://faulty/sets/``; ``{key: sha256}``."""
    import tempfile

    from test_test_sets import make_lol, make_rain100l

    s3 = boto3.client("s3", endpoint_url=moto.url)
    keys = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_rain100l(root / "Rain200L")
        make_lol(root / "LOL")
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            key = f"sets/{f.relative_to(root).as_posix()}"
            s3.upload_file(str(f), BUCKET, key)
            keys[key] = hashlib.sha256(f.read_bytes()).hexdigest()
    return keys


def _sets_project(path: Path) -> Path:
    sets = {"rain200l": {"layout": "rain100l", "path": "Rain200L", "class": "rain", "repeat": 3},
            "lol": {"layout": "lol_v1", "path": "LOL", "class": "low_light", "repeat": 2}}
    return make_project(path, {"training_sets": {"root": f"s3://{BUCKET}/sets", "mode": "crop", "crop": 32,
                                                 "sets": sets}}, dvc=False)


@pytest.mark.fault(fault="S3 503, SlowDown and connection resets on every other one of the first 12 requests",
                   where="synthesize (training sets from s3://)", outcome="recovered: retried with back-off, "
                                                                          "every pair in, files identical")
def test_transient_s3_faults_are_retried_by_synthesize(proxy, photos, training_sets, tmp_path, record_property):
    project = _sets_project(tmp_path / "proj")
    run_stage(project, "prepare")
    env = {"AWS_ENDPOINT_URL": proxy.url}
    proxy.set_faults(every_other(TRANSIENT, first=12))
    run_stage(project, "synthesize", env=env)
    injected = proxy.injected()
    assert injected == {"503": 2, "throttle": 2, "reset": 2}, proxy.log
    manifest = pd.read_parquet(project / "data" / "pairs" / "manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    assert train.groupby("dataset").size().to_dict() == {"rain200l": 6, "lol": 4}
    cache = project / ".cache" / "training_sets" / BUCKET
    assert {k: hashlib.sha256((cache / k).read_bytes()).hexdigest() for k in training_sets} == training_sets
    record_property("measured", f"{sum(injected.values())} faults injected, {len(proxy.log)} requests, "
                                f"{len(training_sets)}/{len(training_sets)} objects mirrored, {len(train)} pairs")


@pytest.mark.fault(fault="S3 permanent 403 AccessDenied on one training-set image",
                   where="synthesize (training sets from s3://)",
                   outcome="reported: the object's s3:// URI and the 403 recorded as a rejection, not retried, the "
                           "rest synthesized")
def test_permanent_403_in_a_training_set_is_reported_with_bucket_and_key(proxy, photos, training_sets, tmp_path,
                                                                         record_property):
    denied = "sets/Rain200L/rainy/rain-001.png"
    assert denied in training_sets
    project = _sets_project(tmp_path / "proj")
    run_stage(project, "prepare")
    proxy.set_faults(lambda i, method, path: "403" if path.split("?")[0].endswith(denied) else None)
    done = run_stage(project, "synthesize", env={"AWS_ENDPOINT_URL": proxy.url})
    assert len(proxy.requests_for(denied)) == 1, proxy.requests_for(denied)  # permanent: no retry
    rejections = pd.read_csv(project / ".cache" / "synthesis" / "training_sets_rejections.csv")
    row = rejections[rejections["reason"] == "download_failed"]
    assert len(row) == 1 and f"s3://{BUCKET}/{denied}" in row["detail"].iloc[0] and "403" in row["detail"].iloc[0], \
        rejections.to_dict("records")
    assert "training-set pairs rejected" in done.stderr
    manifest = pd.read_parquet(project / "data" / "pairs" / "manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    assert train.groupby("dataset").size().to_dict() == {"rain200l": 3, "lol": 4}   # one rain pair lost, recorded
    record_property("measured", f"{row['detail'].iloc[0][:110]}; rain200l 3 of 6 crops kept (the pair whose LQ "
                                "was denied is a rejection)")
