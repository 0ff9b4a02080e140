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
from maskdcpt.atomic import atomic_torch_save
from maskdcpt.train.distributed import consolidated_state_dict

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


# --------------------------------------------------------------------------------------------- bench scripts (speed and memory)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_bench_script_fails_clearly_without_cuda():
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


def test_bench_step_flops_are_forward_plus_backward():
    """bench_training counts FLOPs of a whole step on the meta device: backward of a conv net costs ~2x forward."""
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
    pre_total = bench._count_step_flops("pretrain", model_cfg,
                                       {"keep_ratio": 0.5, "alpha": 1.0, "focal_gamma": 2.0}, 2, 32)
    assert pre_total > step_total  # classifier + reconstruction head on top of the backbone
    peaks = bench.gemm_peaks(n=256, repeats=2)
    assert set(peaks) == {"fp32_matmul", "fp32_onednn", "bf16_matmul", "bf16_onednn"}
    assert all(1e8 < v < 1e14 for v in peaks.values()), peaks
    with pytest.raises(ValueError, match="multiple of 32"):
        bench.gemm_peaks(n=100)


@pytest.mark.slow
def test_bench_script_runs_the_pipeline_training_steps(tmp_path):
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
    # only the precisions that run are measured: no slow bf16 GEMM when no bf16 variant runs
    assert set(result["gemm_peaks_flops_per_second"]) == {"fp32_matmul", "fp32_onednn"}
    assert "bf16 GEMM peak not measured" in proc.stdout and result["skipped_variants"] == []


def test_bench_skips_bf16_without_native_bf16(tmp_path, monkeypatch, capsys):
    """On a CPU without avx512_bf16/amx_bf16 the bf16 variants are skipped with a line saying so (bf16 would be
    emulated, far too slow for the suite); the flags are read from /proc/cpuinfo."""
    bench = _load_bench()
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert not bench.native_bf16(avx2)
    assert bench.native_bf16(avx2.replace("fma", "fma avx512f avx512_bf16"))
    assert bench.native_bf16(avx2.replace("fma", "fma amx_bf16 amx_tile"))
    assert not bench.native_bf16("flags\t\t: avx512f avx512bw\n")
    assert bench.native_bf16() == ("avx512_bf16" in Path("/proc/cpuinfo").read_text()
                                   or "amx_bf16" in Path("/proc/cpuinfo").read_text())
    with pytest.raises(ValueError, match="precisions"):
        bench.gemm_peaks(n=64, precisions=("fp16",))
    assert set(bench.gemm_peaks(n=64, repeats=1, precisions=("fp32",))) == {"fp32_matmul", "fp32_onednn"}

    calls = []
    monkeypatch.setattr(bench, "native_bf16", lambda cpuinfo=None: False)
    monkeypatch.setattr(bench, "gemm_peaks", lambda *a, **k: calls.append(k) or {})
    out = tmp_path / "bench.json"
    assert bench.main(["--configs", "cpu", "--variants", "bf16-nhwc", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped bf16-nhwc: this CPU has no native bf16" in printed
    result = json.loads(out.read_text())
    assert result["rows"] == [] and result["skipped_variants"] == ["bf16-nhwc"] and calls == []


# ------------------------------------------------------------------------------- streaming data, 2 ranks
STREAM_SCRIPT = Path(__file__).parent / "scripts" / "train_stream.py"


def _stream_shards(folder: Path, n_shards: int, per_shard: int) -> Path:
    from test_stream import make_shards

    manifest = make_shards(folder, n_shards=n_shards, per_shard=per_shard, size=32)
    manifest.to_parquet(folder / "manifest.parquet")
    return folder


def _run(cmd, root, **env):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=root,
                          env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **env))
    return proc


@pytest.mark.slow
def test_two_ranks_stream_disjoint_halves_and_match_one_rank_on_the_concatenated_batches(tmp_path):
    """2 gloo ranks (ZeRO-0, 2 DataLoader workers each) over one epoch and a bit: disjoint epoch-0 sample sets
    whose union is the epoch, and the same weights (1e-5) as one process trained on the two ranks' batches
    concatenated. Fails if gradients are not averaged (each rank would step on its own half)."""
    shards = _stream_shards(tmp_path / "shards", n_shards=4, per_shard=7)  # 27 samples
    torchrun = Path(sys.executable).parent / "torchrun"
    steps = 8  # slots of 6, 7 | 7, 7 samples; each worker makes every other batch of 2: 8 steps cover them all
    two = _run([str(torchrun), "--standalone", "--nproc_per_node", "2", "--log-dir", str(tmp_path / "logs"),
                "--redirects", "3", str(STREAM_SCRIPT), str(shards), str(tmp_path / "two"), str(tmp_path / "ck2"),
                str(steps), "--workers", "2"], tmp_path)
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*.log"))
    assert two.returncode == 0, two.stderr[-3000:] + logs[-3000:]
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    import pandas as pd

    all_keys = sorted(pd.read_parquet(shards / "manifest.parquet")["key"])
    epoch0 = [[k for b in r["seen"] for k, e in zip(b["keys"], b["epochs"]) if e == 0] for r in (r0, r1)]
    assert len(epoch0[0]) == 13 and len(epoch0[1]) == 14 and not set(epoch0[0]) & set(epoch0[1])
    assert sorted(epoch0[0] + epoch0[1]) == all_keys and len(all_keys) == 27
    assert all(len(b["keys"]) == 2 for r in (r0, r1) for b in r["seen"]) and len(r0["seen"]) == steps
    for key in r0["params"]:
        assert torch.equal(r0["params"][key], r1["params"][key]), key
    one = _run([sys.executable, str(STREAM_SCRIPT), str(shards), str(tmp_path / "one"), str(tmp_path / "ck1"),
                str(steps), "--replay", str(tmp_path / "two")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    ref = torch.load(tmp_path / "one" / "rank0.pt", weights_only=False)
    init = build_nafnet("tiny").state_dict()
    moved = 0.0
    for key, value in ref["params"].items():
        torch.testing.assert_close(r0["params"][key], value, atol=1e-5, rtol=0)
        moved = max(moved, float((value - init[key]).abs().max()))
    assert moved > 1e-3  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_killed_streaming_run_resumes_to_the_uninterrupted_weights(tmp_path, workers):
    """SIGKILL after step 5 (checkpoint at 4, workers prefetching), rerun: same batches from step 4 on and final
    weights and EMA within 1e-6 of an uninterrupted run; the 13-sample epoch ends inside the run."""
    shards = _stream_shards(tmp_path / "shards", n_shards=2, per_shard=7)  # 13 samples
    steps = ["10", "--workers", str(workers)]
    full = _run([sys.executable, str(STREAM_SCRIPT), str(shards), str(tmp_path / "full"), str(tmp_path / "ckf"),
                 *steps], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run([sys.executable, str(STREAM_SCRIPT), str(shards), str(tmp_path / "res"), str(tmp_path / "ckr"),
                   *steps, "--die-after", "5"], tmp_path)
    assert killed.returncode == -9 and not (tmp_path / "res" / "rank0.pt").exists()
    assert (tmp_path / "ckr" / "latest").read_text().strip() == "step4"
    resumed = _run([sys.executable, str(STREAM_SCRIPT), str(shards), str(tmp_path / "res"), str(tmp_path / "ckr"),
                    *steps], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "rank0.pt", weights_only=False)
    b = torch.load(tmp_path / "res" / "rank0.pt", weights_only=False)
    assert b["resumed_from"] == 4 and len(b["seen"]) == 6
    assert [s["keys"] for s in a["seen"][4:]] == [s["keys"] for s in b["seen"]]
    assert a["position"] == b["position"] and a["position"]["epoch"] == 1
    for key, value in a["params"].items():
        torch.testing.assert_close(b["params"][key], value, atol=1e-6, rtol=0)
        torch.testing.assert_close(b["params_ema"][key], a["params_ema"][key], atol=1e-6, rtol=0)
