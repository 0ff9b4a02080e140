"""``maskdcpt study``: the statistics and reports on hand-made records, the options, and (slow) the whole study on a
tiny config: killed after its first finished run, resumed through a Prefect work pool served by two process
workers on a real local Prefect server, redoing only the unfinished runs."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from conftest import make_project, project_env, use_store

from pipelines import study_config as st
from pipelines import study_report as report

LABELS = ["rain", "haze"]
IMAGES = ["img-a", "img-b", "img-c"]


def _record(variant: str, seed: int, psnr: dict[tuple[str, str], float]) -> dict:
    rows = [{"label": lab, "image_id": img, "variant": variant, "psnr": psnr[(lab, img)], "ssim": psnr[(lab, img)] / 100}
            for lab in LABELS for img in IMAGES]
    rows += [{"label": lab, "image_id": img, "variant": "lq", "psnr": 10.0, "ssim": 0.1}
             for lab in LABELS for img in IMAGES]
    return {"status": "finished", "key": "k", "seed": seed, "variant": variant, "labels": LABELS, "per_image": rows}


def _records():
    rng = np.random.default_rng(0)
    base = {(s, lab, img): 20 + 5 * rng.random() for s in (1, 2) for lab in LABELS for img in IMAGES}
    out = {"maskdcpt": [], "scratch": [], "scratch_matched": []}
    for s in (1, 2):
        out["scratch"].append(_record("scratch", s, {(lab, img): base[s, lab, img] for lab in LABELS for img in IMAGES}))
        # maskdcpt: +1 dB on rain, -0.2 / +0.2 dB on haze alternating with the seed; scratch_matched: +1.5 dB everywhere
        out["maskdcpt"].append(_record("maskdcpt", s, {
            (lab, img): base[s, lab, img] + (1.0 if lab == "rain" else (-0.2 if s == 1 else 0.2))
            for lab in LABELS for img in IMAGES}))
        out["scratch_matched"].append(_record("scratch_matched", s, {
            (lab, img): base[s, lab, img] + 1.5 for lab in LABELS for img in IMAGES}))
    return out


def test_aggregate_gains_intervals_and_verdicts(tmp_path):
    result = report.aggregate(_records(), LABELS, level=0.95, n_boot=2000, bootstrap_seed=0)
    vs_scratch = result["comparisons"]["maskdcpt-scratch"]
    assert vs_scratch["rain"]["gain_db"] == pytest.approx(1.0, abs=1e-4)
    assert vs_scratch["rain"]["ci95"] == [pytest.approx(1.0, abs=1e-4)] * 2
    assert vs_scratch["rain"]["verdict"] == "gain"
    assert vs_scratch["haze"]["gain_db"] == pytest.approx(0.0, abs=1e-4)
    assert vs_scratch["haze"]["ci95"] == [pytest.approx(-0.2, abs=1e-4), pytest.approx(0.2, abs=1e-4)]
    assert vs_scratch["haze"]["verdict"] == "inconclusive"
    assert vs_scratch["mean"]["gain_db"] == pytest.approx(0.5, abs=1e-4)
    assert vs_scratch["mean"]["ci95"] == [pytest.approx(0.4, abs=1e-4), pytest.approx(0.6, abs=1e-4)]
    vs_matched = result["comparisons"]["maskdcpt-scratch_matched"]
    assert vs_matched["rain"]["gain_db"] == pytest.approx(-0.5, abs=1e-4)
    assert vs_matched["mean"]["verdict"] == "loss"
    assert vs_scratch["seeds"] == [1, 2] and vs_scratch["bootstrap"]["method"] == "exact"
    # per-variant mean and std over seeds: scratch_matched is scratch + 1.5 dB, same spread
    sm, sc = result["variants"]["scratch_matched"], result["variants"]["scratch"]
    assert sm["mean"]["psnr_mean"] == pytest.approx(sc["mean"]["psnr_mean"] + 1.5, abs=1e-3)
    assert sm["rain"]["psnr_std"] == pytest.approx(sc["rain"]["psnr_std"], abs=1e-3) and sc["rain"]["psnr_std"] > 0
    assert result["variants"]["lq"]["mean"]["psnr_mean"] == pytest.approx(10.0)
    table = report.markdown_table(result)
    assert "| maskdcpt-scratch (n=2) | +1.000 [+1.000, +1.000] gain | +0.000 [-0.200, +0.200] inconclusive |" in table
    report.gains_plot(result, tmp_path / "gains.png")
    assert (tmp_path / "gains.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregate_pairs_by_seed_and_reports_missing_cells():
    recs = _records()
    recs["scratch"] = recs["scratch"][:1]   # only seed 1 ran for scratch: the comparison uses seed 1 only
    result = report.aggregate(recs, LABELS, n_boot=500)
    assert result["comparisons"]["maskdcpt-scratch"]["seeds"] == [1]
    assert result["comparisons"]["maskdcpt-scratch"]["haze"]["gain_db"] == pytest.approx(-0.2, abs=1e-4)
    broken = _records()
    broken["maskdcpt"][0]["per_image"] = [r for r in broken["maskdcpt"][0]["per_image"]
                                          if not (r["image_id"] == "img-b" and r["label"] == "haze")]
    with pytest.raises(st.StudyError, match="img-b"):
        report.aggregate(broken, LABELS, n_boot=500)


def test_config_and_run_overlay(tiny_project):
    with pytest.raises(st.StudyError, match="cannot override"):
        st.study_config(tiny_project, overrides={"synthesize.crop": 64})
    with pytest.raises(st.StudyError, match="cannot override"):
        st.study_config(tiny_project, overrides={"seed": 3})
    with pytest.raises(st.StudyError, match="dvc repro validate"):
        st.study_config(tiny_project)  # no pairs synthesized yet
    # study options go through the params schema: a bad value names its key, an unknown option is refused
    for bad, key in (({"level": 1.5}, "study.level"), ({"seeds": 0}, "study.seeds"), ({"parallel": 0}, "study.parallel"),
                     ({"variants": ["maskdcpt", "nope"]}, "study.variants")):
        with pytest.raises(st.StudyError, match=key.replace(".", r"\.")):
            st.study_config(tiny_project, **bad)
    with pytest.raises(st.StudyError, match="unknown study options.*'n_bot'"):
        st.study_config(tiny_project, n_bot=5)
    from conftest import tiny_params

    p = st.run_params(tiny_params(), 7, "scratch_matched")
    assert p["seed"] == 7 and p["evaluate"]["variants"] == ["scratch_matched"]
    assert p["finetune"]["variants"] == {"scratch_matched": {"init": "random", "init_dep": "maskdcpt/models",
                                                             "compute_matched": True}}


def test_cli_passes_through_without_importing_prefect():
    code = ("import sys\nfrom maskdcpt.cli import build_parser\n"
            "a = build_parser().parse_args(['study', '--seeds', '2', '-S', 'pretrain.steps=5'])\n"
            "assert a.argv == ['--seeds', '2', '-S', 'pretrain.steps=5'], a.argv\n"
            "assert 'prefect' not in sys.modules\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "maskdcpt.cli", "study", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--pool" in out.stdout and "scratch_matched" in out.stdout


# ------------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cmd, cwd, env, log: Path):
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _prepare_data(project: Path) -> None:
    env = dict(project_env(project), MASKDCPT_PREFECT="0")
    code = ("import sys\nfrom pipelines.stage import main\n"
            "for s in ('prepare', 'synthesize', 'validate'):\n"
            "    rc = main([s])\n    assert rc == 0, s\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_study_killed_then_resumed_on_a_two_worker_pool(tmp_path):
    # the study machinery is under test, not the evaluation extras: no real-photo PIQE, no grids
    project = make_project(tmp_path / "proj", {"evaluate.real_photos": False, "evaluate.grid_max_images": 0},
                           dvc=False)
    _prepare_data(project)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(project_env(project), PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_UI_ENABLED="false", PYTHONPATH=str(project))
    server_env = dict(env, PREFECT_HOME=str(tmp_path / "prefect-server"))
    server_env.pop("PREFECT_API_URL")
    prefect = str(Path(sys.executable).parent / "prefect")
    procs = [_spawn([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path, server_env,
                    tmp_path / "server.log")]
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        subprocess.run([prefect, "work-pool", "create", "study-pool", "--type", "process"], env=env, check=True,
                       capture_output=True, timeout=120)
        for k in range(2):  # two workers, one flow run at a time each
            procs.append(_spawn([prefect, "worker", "start", "--pool", "study-pool", "--type", "process",
                                 "--limit", "1", "--name", f"worker-{k}"], project, env, tmp_path / f"worker{k}.log"))

        study_cmd = [sys.executable, "-m", "pipelines.study", "--seeds", "2", "--n-boot", "2000"]
        runs = project / "reports/study/runs"
        first = _spawn(study_cmd, project, env, tmp_path / "study1.log")
        deadline = time.monotonic() + 900
        while not list(runs.glob("*/*.json")):
            assert first.poll() is None, (tmp_path / "study1.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)  # the study and the stages of the run in flight
        first.wait(timeout=30)
        done = list(runs.glob("*/*.json"))
        assert len(done) == 1
        finished_first = {p.relative_to(runs).as_posix(): p.read_bytes() for p in done}

        second = subprocess.run([*study_cmd, "--pool", "study-pool", "--timeout", "1500"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=1800)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]

        records = sorted(p.relative_to(runs).as_posix() for p in runs.glob("*/*.json"))
        assert records == [f"seed-{s}/{v}.json" for s in (2025, 2026) for v in sorted(st.VARIANTS)]
        for name, data in finished_first.items():
            assert (runs / name).read_bytes() == data, f"{name} was redone"

        # the rerun did only the rest, as flow runs of the deployment, two at a time
        flow_runs = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "flows": {"name": {"any_": [st.RUN_FLOW]}}}).json()
        names = sorted(r["name"] for r in flow_runs)
        expected = sorted(f"seed-{s}-{v}" for s in (2025, 2026) for v in st.VARIANTS
                          if f"seed-{s}/{v}.json" not in finished_first)
        assert names == expected and all(r["state_type"] == "COMPLETED" for r in flow_runs)
        spans = sorted((r["start_time"], r["end_time"]) for r in flow_runs)
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), f"no two runs overlapped: {spans}"
        artifacts = httpx.post(f"{api}/artifacts/filter", timeout=30,
                               json={"artifacts": {"key": {"any_": ["maskdcpt-study"]}}}).json()
        assert artifacts and "Paired PSNR gain" in artifacts[0]["data"]

        result = json.loads((project / "reports/study/study.json").read_text())
        assert result["missing_runs"] == []
        for comp in ("maskdcpt-scratch", "maskdcpt-scratch_matched"):
            for lab in ["rain", "gaussian_noise", "haze", "low_light", "motion_blur", "mean"]:
                c = result["comparisons"][comp][lab]
                assert c["ci95"][0] <= c["gain_db"] <= c["ci95"][1] and c["verdict"] in ("gain", "loss", "inconclusive")
        for v in st.VARIANTS:
            assert result["variants"][v]["seeds"] == [2025, 2026]
            assert result["variants"][v]["mean"]["psnr_std"] >= 0
        prov = result["provenance"]
        assert {"cpu", "torch", "device", "threads", "weights_key", "inference", "padding"} <= set(prov)
        assert all(p["weights_key"] == "params_ema" for p in result["runs_provenance"].values())
        assert "| maskdcpt-scratch_matched (n=2) |" in (project / "reports/study/table.md").read_text()
        assert (project / "reports/study/gains.png").stat().st_size > 1000
        # the run's own metrics files carry their provenance
        rec = json.loads((runs / "seed-2025/maskdcpt.json").read_text())
        work = Path(rec["work_dir"])
        assert json.loads((work / "metrics/pretrain.json").read_text())["provenance"]["torch"]["version"]
        assert json.loads((work / "metrics/benchmark.json").read_text())["provenance"]["padding"]

        # MLflow: one parent for both invocations, a finished child per seed x variant, stage runs below them
        use_store(project / "mlflow.db")
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name("maskdcpt")
        parent = json.loads((project / "reports/study/state.json").read_text())["parent_run_id"]
        assert result["mlflow_parent_run"] == parent
        studies = client.search_runs([exp.experiment_id], "tags.`maskdcpt.role` = 'study'")
        assert [r.info.run_id for r in studies] == [parent]
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
        finished = [r for r in children if r.info.status == "FINISHED"]
        assert sorted(r.data.tags["study.variant"] + r.data.tags["study.seed"] for r in finished) == sorted(
            v + str(s) for s in (2025, 2026) for v in st.VARIANTS)
        stages = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{rec['mlflow_run_id']}'")
        assert sorted(r.info.run_name for r in stages) == ["evaluate", "finetune@maskdcpt", "pretrain"]
    finally:
        for proc in reversed(procs):
            _stop(proc)
