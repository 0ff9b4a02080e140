"""Fault: two retraining flows started on the same project at once (an overlapping schedule, a manual run).

The first flow holds the project's retraining lock for its whole run; a second one given a short wait fails at
once saying who holds the lock and running nothing, and a third one waits for the first and then finds every
stage up to date. Afterwards DVC is up to date and the registry holds exactly one complete version.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import make_project, project_env, use_store

pytestmark = pytest.mark.slow


def _flow(project, *extra):
    return subprocess.Popen([sys.executable, "-m", "maskdcpt.cli", "pipeline", "run", *extra], cwd=project,
                            env=project_env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.fault(fault="two retraining flows at once", where="Prefect retraining flow (maskdcpt pipeline run)",
                   outcome="the second waits for the first (or, with a short wait, fails naming the holder); "
                           "no stage runs twice, nothing corrupted")
def test_second_retraining_flow_waits_or_fails_on_the_project_lock(tmp_path, record_property):
    project = make_project(tmp_path / "proj")
    holder = project / ".cache" / "retrain.lock.json"
    first = _flow(project)
    try:
        deadline = time.monotonic() + 300
        while not holder.is_file():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first flow never took the lock"
            time.sleep(0.2)
        t0 = time.monotonic()
        impatient = _flow(project, "--lock-timeout", "2")
        out, err = impatient.communicate(timeout=300)
        refused_after = time.monotonic() - t0
        assert impatient.returncode == 3, out[-2000:] + err[-3000:]
        assert "another retraining flow still holds" in err and f'"pid": {first.pid}' in err, err[-3000:]
        assert first.poll() is None, "the first flow ended before the second was refused: nothing was tested"
        patient = _flow(project)
        first_out, first_err = first.communicate(timeout=1500)
        assert first.returncode == 0, first_out[-3000:] + first_err[-4000:]
        t1 = time.monotonic()
        patient_out, patient_err = patient.communicate(timeout=1500)
        assert patient.returncode == 0, patient_out[-3000:] + patient_err[-4000:]
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    assert "waiting up to" in patient_out + patient_err
    first_summary = json.loads(first_out[first_out.index("{\n"):])
    second_summary = json.loads(patient_out[patient_out.index("{\n"):])
    assert all(s["ran"] for s in first_summary["stages"])
    assert not any(s["ran"] for s in second_summary["stages"]), second_summary["stages"]
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, env=project_env(project),
                            capture_output=True, text=True, timeout=300)
    assert "up to date" in status.stdout.lower(), status.stdout + status.stderr
    use_store(project / "mlflow.db")
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name = 'maskdcpt-nafnet-5d'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].tags["maskdcpt.state"] == "registered"
    record_property("measured", f"short wait refused after {refused_after:.1f} s (exit 3, holder named); the "
                                f"patient flow ran {time.monotonic() - t1:.1f} s after the first ended, 0 stages "
                                "re-run; one complete registry version")
