"""The whole chain once, as a user runs it: `dvc repro` (stages as Prefect flows) in a real git + DVC repo."""
import json
import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml

from conftest import cached_out_hashes, project_env, use_store

pytestmark = pytest.mark.slow

STAGES = ["prepare", "synthesize", "validate", "pretrain", "finetune@maskdcpt", "finetune@scratch", "evaluate",
          "register"]


def dvc(project, *args, timeout=1500):
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=project_env(project),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"dvc {args} exit {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def dvc_json(project, *args):
    proc = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], cwd=project, env=project_env(project),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {args}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def git_show(project, path):
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=project, env=project_env(project), check=True,
                          capture_output=True, text=True).stdout


def ran(output):
    return re.findall(r"Running stage '([^']+)'", output)


def test_dvc_repro_end_to_end(reference_repro):
    project = reference_repro["project"]   # the session's uninterrupted `dvc repro`; this test goes on changing it
    assert sorted(ran(reference_repro["output"])) == sorted(STAGES)

    metrics = json.loads((project / "metrics/benchmark.json").read_text())
    for variant in ("maskdcpt", "scratch"):
        for deg in ("rain", "gaussian_noise", "haze", "low_light", "motion_blur"):
            assert set(metrics[variant][deg]) == {"psnr", "ssim"}
    shown = dvc(project, "metrics", "show")
    assert "maskdcpt.rain.psnr" in shown and "gain_db.mean" in shown

    # a forced re-run of a stage rewrites the same bytes: its cached outs keep their hash (no temp folder name,
    # wall time or host fact inside a cached out), so `dvc repro` afterwards runs nothing downstream
    hashes = cached_out_hashes(project)
    assert set(hashes["prepare"]) == {"data/prepared"} and set(hashes["finetune@scratch"]) == {
        "models/finetune/scratch"}
    forced = ["prepare", "synthesize", "pretrain", "finetune@scratch"]
    assert sorted(ran(dvc(project, "repro", "-f", "-s", *forced))) == sorted(forced)
    after = cached_out_hashes(project)
    assert {s: after[s] for s in forced} == {s: hashes[s] for s in forced}

    # nothing changed: nothing runs, even once Python has written bytecode caches into the code deps
    cache = project / "maskdcpt" / "models" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "nafnet.cpython-311.pyc").write_bytes(b"\x00" * 64)
    again = dvc(project, "repro")
    assert ran(again) == []

    # experiments: a parameter sweep entry, then compare metrics and plots
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, env=project_env(project))
    subprocess.run(["git", "commit", "-qm", "baseline run"], cwd=project, check=True, env=project_env(project))
    exp = dvc(project, "exp", "run", "-S", "evaluate.grid_max_images=2")
    assert ran(exp) == ["evaluate"]
    assert "evaluate.grid_max_images" in dvc(project, "exp", "show", "--no-pager", "--csv")
    changed = dvc_json(project, "params", "diff")["params.yaml"]["evaluate.grid_max_images"]
    assert (changed["old"], changed["new"]) == (1, 2), changed
    # another grid size re-runs evaluate but changes no score: no PSNR/SSIM in the metrics diff
    diff = dvc_json(project, "metrics", "diff").get("metrics/benchmark.json", {})
    assert not [k for k in diff if k.endswith((".psnr", ".ssim"))], diff
    plots = dvc_json(project, "plots", "diff")
    assert "psnr_per_degradation" in json.dumps(plots), str(plots)[:2000]

    # a pre-training parameter changes: pre-training and what depends on it re-run; the data stages and the
    # from-scratch baseline (which never sees the pre-trained weights) do not
    params = (project / "params.yaml").read_text()
    assert "keep_ratio: 0.5" in params
    (project / "params.yaml").write_text(params.replace("keep_ratio: 0.5", "keep_ratio: 0.75"))
    rerun = dvc(project, "repro")
    assert sorted(ran(rerun)) == sorted(["pretrain", "finetune@maskdcpt", "evaluate", "register"])
    # the metrics diff reports the committed and the new benchmark numbers
    before = json.loads(git_show(project, "metrics/benchmark.json"))
    now = json.loads((project / "metrics/benchmark.json").read_text())
    diff = dvc_json(project, "metrics", "diff")["metrics/benchmark.json"]
    assert diff, "a new pre-training, yet no metric changed"
    assert not [k for k in diff if k.startswith("scratch.")], diff   # the baseline did not re-run
    for key in ("maskdcpt.mean.psnr", "scratch.mean.psnr", "gain_db.mean"):
        a, b, leaf = key.split(".")[0], key.split(".")[1], key.split(".")[-1]
        old = before[a][b] if a == "gain_db" else before[a][b][leaf]
        new = now[a][b] if a == "gain_db" else now[a][b][leaf]
        if old != new:
            assert diff[key]["old"] == pytest.approx(old) and diff[key]["new"] == pytest.approx(new), diff[key]
        else:
            assert key not in diff

    # the registry: challenger and champion (exactly the one the gate chose), and the champion restores a
    # benchmark image
    from pipelines.registry import decide

    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = "maskdcpt-nafnet-5d"
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["version"] == "2" and decision["champion_version_before"] == "1"
    register = yaml.safe_load((project / "params.yaml").read_text())["register"]
    promote, _ = decide(decision["challenger_psnr"], decision["champion_psnr_before"], register["min_gain_db"],
                        register["max_drop_db"])
    assert decision["promoted"] == promote
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert str(client.get_model_version_by_alias(name, "champion").version) == ("2" if promote else "1")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    net = model.unwrap_python_model().net
    from maskdcpt.data.shards import read_shard
    from maskdcpt.eval.benchmark import restore_array

    shard = sorted((project / "data/pairs").glob("benchmark-*.tar"))[0]
    sample = next(iter(read_shard(shard)))
    restored = restore_array(net, sample["lq"])
    assert restored.shape == sample["gt"].shape and np.isfinite(restored).all()

    # the stages ran as Prefect flows
    env = project_env(project)
    flows = subprocess.run([sys.executable, "-c", (
        "import asyncio\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        runs = await c.read_flow_runs()\n"
        "        flows = {f.id: f.name for f in await c.read_flows()}\n"
        "        print(sorted({flows[r.flow_id] + ':' + r.state_type.value for r in runs}))\n"
        "asyncio.run(main())\n")], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert "maskdcpt-pretrain:COMPLETED" in flows.stdout, flows.stdout + flows.stderr[-3000:]
    assert "maskdcpt-register:COMPLETED" in flows.stdout
