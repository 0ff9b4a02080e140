"""`make repro`'s closing summary: CPU kind and per-stage times from a real MLflow store."""
from __future__ import annotations

import time

import mlflow
import pytest

from pipelines import summary
from pipelines.tracking import ROLE_TAG


@pytest.mark.parametrize("flags, expect", [
    (["avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16"], "AVX-512 with bf16 (amx_bf16, avx512_bf16)"),
    (["avx", "avx2", "avx512f", "avx512bw"], "AVX-512 (no bf16)"),
    (["avx", "avx2", "fma"], "AVX2 only"),
    ([], "SIMD flags unknown"),
])
def test_cpu_kind(flags, expect):
    line = summary.cpu_kind({"model": "Some CPU", "flags": flags, "logical_cpus": 2})
    assert line.startswith("Some CPU, 2 logical CPUs, ") and expect in line


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("maskdcpt", artifact_location=str(tmp_path / "art"))
    return uri, client, exp


def _pipeline(client, exp, stages: dict[str, float]) -> None:
    time.sleep(0.01)   # distinct start times (ms resolution) for "newest"
    parent = client.create_run(exp, tags={ROLE_TAG: "pipeline"})
    for name, seconds in stages.items():
        child = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id,
                                                            "maskdcpt.stage": name})
        client.log_metric(child.info.run_id, "stage_seconds", seconds)
        client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")


def test_stage_times_reads_the_newest_pipeline_run_in_order(tmp_path):
    uri, client, exp = _store(tmp_path)
    _pipeline(client, exp, {"prepare": 99.0, "pretrain": 99.0})            # an older run: ignored
    _pipeline(client, exp, {"evaluate": 20.0, "finetune@scratch": 121.0, "pretrain": 172.0, "prepare": 3.0})
    rows = summary.stage_times(uri, "maskdcpt")
    assert [(r["stage"], r["seconds"]) for r in rows] == [
        ("prepare", 3.0), ("pretrain", 172.0), ("finetune@scratch", 121.0), ("evaluate", 20.0)]
    assert summary.stage_times(uri, "no-such-experiment") == []


def test_summary_prints_machine_and_times(tmp_path, monkeypatch, capsys):
    uri, client, exp = _store(tmp_path)
    _pipeline(client, exp, {"prepare": 3.0, "pretrain": 172.5})
    (tmp_path / "params.yaml").write_text("tracking: {experiment: maskdcpt}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    summary.print_timings(tmp_path)
    out = capsys.readouterr().out
    assert out.startswith("Machine: ") and "logical CPUs" in out
    assert "pretrain" in out and "172.5 s" in out and "175.5 s (2.9 min)" in out
    assert "not reached): synthesize, validate, finetune@maskdcpt" in out
