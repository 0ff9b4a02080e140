"""Two-process DeepSpeed training on CPU (torchrun + gloo, ZeRO-2) and the consolidated fp32 export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskdcpt.models import build_nafnet, load_backbone_state_dict
from maskdcpt.train.engine import atomic_torch_save, consolidated_state_dict

SCRIPT = Path(__file__).parent / "scripts" / "train_dist.py"
STEPS = 4


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--log-dir", str(root / "logs"),
           "--redirects", "3", str(SCRIPT), str(root / "out"), str(root / "ckpt"), str(STEPS), "--zero-stage", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    logs = {r: "".join(p.read_text(errors="replace") for p in (root / "logs").rglob(f"attempt_0/{r}/*.log"))
            for r in (0, 1)}
    return root, proc, logs


@pytest.mark.slow
def test_two_ranks_train_identically_and_exit_cleanly(two_process_run):
    root, proc, logs = two_process_run
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{logs[0][-2000:]}\n{logs[1][-2000:]}"
    r0 = torch.load(root / "out" / "rank0.pt", weights_only=False)
    r1 = torch.load(root / "out" / "rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    # data-parallel: different data per rank, identical weights and EMA after every all-reduce
    assert r0["first_batch"] != r1["first_batch"]
    for key, value in r0["params"].items():
        assert torch.equal(value, r1["params"][key]), key
        assert torch.equal(r0["params_ema"][key], r1["params_ema"][key]), key
    torch.manual_seed(0)
    init = build_nafnet("tiny")  # the script's initialisation
    assert not torch.equal(init.state_dict()["intro.weight"], r0["params"]["intro.weight"])  # it trained
    # metrics and the progress bar come from rank 0 only
    assert [s for s, _ in r0["logged"]] == list(range(1, STEPS + 1)) and r1["logged"] == []
    assert f"{STEPS}/{STEPS}" in logs[0] and "step/s" in logs[0]
    assert "step/s" not in logs[1]
    # every rank saved its ZeRO partition; the newest two checkpoints are kept
    assert (root / "ckpt" / "latest").read_text().strip() == f"step{STEPS}"
    for r in (0, 1):
        assert (root / "ckpt" / f"step{STEPS}" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").is_file()
    assert sorted(p.name for p in (root / "ckpt").glob("step*")) == ["step2", "step4"]


@pytest.mark.slow
def test_consolidated_fp32_state_dict_from_zero2_checkpoint(two_process_run):
    root, proc, _ = two_process_run
    assert proc.returncode == 0
    r0 = torch.load(root / "out" / "rank0.pt", weights_only=False)
    sd = consolidated_state_dict(root / "ckpt")
    assert sd["step"] == STEPS and sd["tag"] == f"step{STEPS}"
    assert set(sd["params"]) == set(r0["params"])
    for key, value in r0["params"].items():
        assert sd["params"][key].dtype == torch.float32
        torch.testing.assert_close(sd["params"][key], value, atol=0, rtol=0)
        torch.testing.assert_close(sd["params_ema"][key], r0["params_ema"][key], atol=0, rtol=0)
    net = build_nafnet("tiny")
    report = load_backbone_state_dict(net, sd, key="params_ema")
    assert report["source_key"] == "params_ema"
    older = consolidated_state_dict(root / "ckpt", tag="step2")
    assert older["step"] == 2 and not torch.equal(older["params"]["intro.weight"], sd["params"]["intro.weight"])


def test_consolidated_state_dict_stage0_layout_and_errors(tmp_path):
    """Without ZeRO partitions (stage 0) the model-states ``module`` is used, cast to fp32."""
    net = build_nafnet("tiny")
    module = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}
    shadow = {k: v.float() + 1 for k, v in net.state_dict().items()}
    (tmp_path / "step3").mkdir()
    atomic_torch_save({"module": module, "step": 3, "ema": {"decay": 0.9, "updates": 3, "shadow": shadow}},
                      tmp_path / "step3" / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("step3")
    sd = consolidated_state_dict(tmp_path)
    assert sd["step"] == 3 and all(v.dtype == torch.float32 for v in sd["params"].values())
    torch.testing.assert_close(sd["params"]["intro.weight"], module["intro.weight"].float())
    assert sd["params_ema"] is shadow or torch.equal(sd["params_ema"]["intro.weight"], shadow["intro.weight"])
    with pytest.raises(FileNotFoundError, match="no 'latest'"):
        consolidated_state_dict(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="mp_rank_00_model_states"):
        consolidated_state_dict(tmp_path, tag="step9")


# --------------------------------------------------------------------------------------------- benchmark scripts

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_benchmark_fails_clearly_without_cuda():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_training_gpu.py"), "--steps", "3", "--warmup", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    bad = subprocess.run([sys.executable, str(SCRIPTS / "bench_training_gpu.py"), "--steps", "2", "--warmup", "5"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "must exceed" in bad.stderr


def _load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_training", SCRIPTS / "bench_training.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_step_flops_are_forward_plus_backward():
    """The benchmark counts FLOPs of a whole step on the meta device: backward of a conv net costs ~2x forward."""
    from maskdcpt.models import build_backbone
    from maskdcpt.models.summary import count_flops

    bench = _load_bench()
    model_cfg = {"arch": "nafnet", "preset": "tiny", "recon_head": "token", "recon_blocks": 1}
    step_total = bench._count_step_flops("finetune", model_cfg, {}, 2, 32)
    with torch.device("meta"):
        model = build_backbone("nafnet", "tiny")
        x = torch.zeros(2, 3, 32, 32)
    forward, _ = count_flops(lambda: model(x))
    assert 2.9 < step_total / forward < 3.0, step_total / forward  # < 3: the first conv needs no input grad
    pre_total = bench._count_step_flops("pretrain", model_cfg, {"keep_ratio": 0.5}, 2, 32)
    assert pre_total > step_total  # classifier + reconstruction head on top of the backbone
    peaks = bench.gemm_peaks(n=256, repeats=2)
    assert set(peaks) == {"fp32_matmul", "fp32_onednn", "bf16_matmul", "bf16_onednn"}
    assert all(1e8 < v < 1e14 for v in peaks.values()), peaks
    with pytest.raises(ValueError, match="multiple of 32"):
        bench.gemm_peaks(n=100)


@pytest.mark.slow
def test_benchmark_script_runs_the_pipeline_training_steps(tmp_path):
    """bench_training.py times real engine steps (pipeline code, params.yaml recipe) and writes its JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_training.py"), "--configs", "cpu", "--variants",
                           "fp32-nhwc", "--steps-cpu", "2", "--warmup-cpu", "0", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["phase"], r["variant"]) for r in result["rows"]] == [("pretrain", "fp32-nhwc"), ("finetune", "fp32-nhwc")]
    for row in result["rows"]:
        assert row["timed_steps"] == 2 and len(row["step_seconds_all"]) == 2 and row["step_seconds"] > 0
        assert row["zero_stage"] == 0 and row["flops_per_step"] > 1e9  # params.yaml's ZeRO stage, a real step
        assert 0 < row["fraction_of_gemm_peak"] < 2 and row["gemm_peak_flops_per_second"] > 1e9
    assert "% of the fp32 GEMM peak" in proc.stdout
