"""Shared fixtures: a throw-away copy of the project (a real git + DVC repo) with tiny parameters."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A few photos, a few steps: the whole chain in a couple of minutes on 2 cores.
TINY = {
    "synthesize.crop": 32,
    "synthesize.train_pairs_per_class": 6,
    "synthesize.val_pairs_per_class": 2,
    "synthesize.benchmark_max_size": 48,
    "model.preset": "tiny",
    "model.recon_blocks": 1,
    "pretrain.steps": 3,
    "pretrain.batch_size": 2,
    "pretrain.eval_every": 3,
    "pretrain.checkpoint_every": 2,
    "finetune.steps": 3,
    "finetune.batch_size": 2,
    "finetune.checkpoint_every": 2,
    "evaluate.grid_max_images": 1,
}


def tiny_params(overrides: dict | None = None) -> dict:
    from pipelines.params import load_params

    return load_params(REPO / "params.yaml", {**TINY, **(overrides or {})})


def project_env(project: Path) -> dict[str, str]:
    """Environment for running stages/DVC in ``project``: the venv first on PATH, an isolated MLflow store
    and Prefect home, the shared DeepSpeed op cache (built once)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(project / ".cache" / "prefect")
    env["TORCH_EXTENSIONS_DIR"] = str(REPO / ".cache" / "torch_extensions")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)  # set_tracking_uri()/set_registry_uri() in this process export them
    env.pop("MASKDCPT_PARENT_RUN_ID", None)
    env.setdefault("GIT_AUTHOR_NAME", "maskdcpt tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@maskdcpt.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "maskdcpt tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@maskdcpt.invalid")
    return env


def make_project(dest: Path, overrides: dict | None = None, dvc: bool = True) -> Path:
    """Copy the code, dvc.yaml and tiny params.yaml into ``dest``; ``git init`` + ``dvc init`` when ``dvc``."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("maskdcpt", "pipelines", "presets"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", dest / ".gitignore")
    (dest / "data").mkdir(exist_ok=True)
    shutil.copy(REPO / "data" / "source.json", dest / "data" / "source.json")
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(overrides), sort_keys=False))
    if dvc:
        env = project_env(dest)
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True, env=env)
        shutil.copy(REPO / ".dvcignore", dest / ".dvcignore")
        subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=dest, check=True,
                       env=env)
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
        subprocess.run(["git", "commit", "-qm", "init"], cwd=dest, check=True, env=env)
    return dest


def run_stage(project: Path, stage: str, *extra: str, prefect: bool = False, check: bool = True,
              env: dict[str, str] | None = None):
    env = {**project_env(project), **(env or {})}
    env["MASKDCPT_PREFECT"] = "1" if prefect else "0"
    proc = subprocess.run([sys.executable, "-m", "pipelines.stage", stage, *extra], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"stage {stage} exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


TRAIN_TINY = Path(__file__).parent / "scripts" / "train_tiny.py"


def train_tiny(*args, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/train_tiny.py`` with ``args`` in a subprocess (600 s limit); with ``check`` a non-zero
    exit is an ``AssertionError`` showing the output's tail."""
    proc = subprocess.run([sys.executable, str(TRAIN_TINY), *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_resumed_like_uninterrupted(full: Path, part: Path, resumed_from: int) -> float:
    """``part/final.pt`` (a resumed ``train_tiny`` run) started at ``resumed_from`` and ended with the weights and
    EMA of ``full/final.pt`` (uninterrupted) within 1e-6; returns the largest weight difference."""
    import torch

    a = torch.load(full / "final.pt", weights_only=False)
    b = torch.load(part / "final.pt", weights_only=False)
    assert b["resumed_from"] == resumed_from and a["resumed_from"] == 0
    for key in a["params"]:
        torch.testing.assert_close(a["params"][key], b["params"][key], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["params_ema"][key], b["params_ema"][key], atol=1e-6, rtol=0)
    return max((a["params"][k] - b["params"][k]).abs().max().item() for k in a["params"])


CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A real moto S3 server on 127.0.0.1 for the module, with fake credentials in the environment meanwhile."""
    from pipelines.services import start_moto

    old = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    svc = start_moto(log_dir=tmp_path_factory.mktemp("moto"))
    yield svc
    svc.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def tiny_project(tmp_path):
    return make_project(tmp_path / "proj", dvc=False)


@pytest.fixture(autouse=True, scope="module")
def _reset_mlflow_uris():
    """MLflow's tracking and registry URIs are process-global: restore the defaults after every test module, so
    that one module's store never answers another module's registry queries."""
    import mlflow

    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    # set_registry_uri() also exports MLFLOW_REGISTRY_URI (and None does not clear it): child processes would
    # register into another test's store
    for var in ("MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)
    try:
        mlflow.end_run()
    except Exception:
        pass


def use_store(path: Path, experiment: str | None = None) -> str:
    """Point this process's MLflow tracking *and* registry at the SQLite store ``path``; return its URI.

    With ``experiment``, also create (if needed) and activate that experiment with its artifacts in
    ``<path's folder>/mlartifacts``: an experiment created without an artifact location would put its
    artifacts in ``./mlruns`` of the working directory, i.e. the project's."""
    import mlflow

    uri = f"sqlite:///{path}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment is not None:
        client = mlflow.MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment,
                                     artifact_location=(Path(path).parent / "mlartifacts").resolve().as_uri())
        mlflow.set_experiment(experiment)
    return uri


_SETUP_SECONDS = pytest.StashKey[float]()


# The fault-injection suite (tests/faults): every scenario declares its fault with
# ``@pytest.mark.fault(fault=..., where=..., outcome=...)``; with ``MASKDCPT_FAULT_REPORT=<file>`` each one's row
# (fault, where, declared outcome, result, seconds, what it measured) is appended to that JSON-lines file (scripts/fault_report.py).
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    import json

    outcome = yield
    report = outcome.get_result()
    path = os.environ.get("MASKDCPT_FAULT_REPORT")
    mark = item.get_closest_marker("fault")
    if report.when == "setup":  # a scenario's seconds include its fixtures' (a module fixture: its first test)
        item.stash[_SETUP_SECONDS] = report.duration
    if not path or mark is None or report.when != "call" and not (report.when == "setup" and report.failed):
        return
    seconds = report.duration + (item.stash.get(_SETUP_SECONDS, 0.0) if report.when == "call" else 0.0)
    row = {"test": item.nodeid, **mark.kwargs, "passed": report.passed, "seconds": round(seconds, 1),
           "measured": "; ".join(str(v) for k, v in report.user_properties if k == "measured")}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def cached_out_hashes(project: Path) -> dict[str, dict[str, str]]:
    """``{stage: {out path: md5}}`` of the cached outs (dvc.yaml outs without ``cache: false``) in ``dvc.lock``."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    cached = {}
    for name, spec in stages.items():
        spec = spec.get("do", spec)   # a foreach stage: its template, ${key} matched below
        outs = [o for o in spec.get("outs", []) if isinstance(o, str) or next(iter(o.values())).get("cache", True)]
        cached[name] = [re.escape(o if isinstance(o, str) else next(iter(o))).replace(r"\$\{key\}", "[^/]+")
                        for o in outs]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {stage: {o["path"]: o["md5"] for o in spec.get("outs", [])
                    if any(re.fullmatch(pat, o["path"]) for pat in cached[stage.split("@")[0]])}
            for stage, spec in lock.items()}


def benchmark_scores(project: Path) -> dict:
    """The benchmark metrics without the run's provenance (host facts), and the per-image table."""
    import json

    metrics = json.loads((project / "metrics/benchmark.json").read_text())
    metrics.pop("provenance", None)
    return {"metrics": metrics, "per_image": (project / "reports/evaluate/per_image.csv").read_text()}


def timed_repro(project: Path) -> tuple[dict[str, float], str]:
    """`dvc repro` of the whole pipeline, timing each stage from its "Running stage" line to the next one.

    Returns ``({stage: seconds}, output)``. Raises AssertionError when DVC fails.
    """
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=project_env(project),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    rc = proc.wait(timeout=1500)
    assert rc == 0, "\n".join(x for _, x in lines[-60:])
    end = time.monotonic()
    marks = [(t, line.split("'")[1]) for t, line in lines if line.startswith("Running stage '")]
    took = {name: (marks[i + 1][0] if i + 1 < len(marks) else end) - t for i, (t, name) in enumerate(marks)}
    return took, "\n".join(x for _, x in lines)


@pytest.fixture(scope="session")
def reference_repro(tmp_path_factory) -> dict:
    """One uninterrupted `dvc repro` of the tiny project, shared by the end-to-end test (which goes on changing
    that project) and the kill test (which compares with the snapshot taken here): ``project``, ``stage_times``,
    ``output``, ``outs`` (:func:`cached_out_hashes`) and ``scores`` (:func:`benchmark_scores`)."""
    project = make_project(tmp_path_factory.mktemp("reference") / "proj")
    took, output = timed_repro(project)
    return {"project": project, "stage_times": took, "output": output, "outs": cached_out_hashes(project),
            "scores": benchmark_scores(project)}
