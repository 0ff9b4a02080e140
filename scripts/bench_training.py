"""CPU training throughput of MaskDCPT pre-training and fine-tuning, with FLOPs and GEMM peaks measured in the run.

usage: python scripts/bench_training.py [--configs cpu paper paper-restormer paper-promptir paper-swinir] [--variants fp32-nchw fp32-nhwc bf16-nhwc]
                                        [--steps-cpu 5] [--steps-paper 3] [--zero-stage N] [--json OUT.json]
                                        [--allow-emulated-bf16]

Every measurement runs the pipeline's own training code: ``maskdcpt.train.pretrain.run_pretrain`` and
``maskdcpt.train.finetune.run_finetune`` through the DeepSpeed engine (``deepspeed.initialize``, one process,
gloo, the ZeRO stage of params.yaml unless ``--zero-stage``), with the recipe of params.yaml (AdamW, the
pre-training loss alpha*L1 + focal on a masked forward; fine-tuning L1, cosine LR, gradient clipping, EMA) and
the model group of params.yaml with the configuration's preset. Data: a pool of 16 random crops (the step's
cost does not depend on pixel values). Per configuration, phase and variant it prints:

* images/s = batch / median step time over ``--steps-*`` timed steps, after 1 + ``--warmup-*`` untimed steps
  (the first holds oneDNN's kernel selection and allocations); step times are the gaps between the engine's
  per-step log callbacks, so they include the optimizer, gradient clipping and the EMA update;
* peak resident memory (``ru_maxrss`` of the child process that ran that measurement alone);
* FLOPs per step (forward + backward of the same network and loss, ``torch.utils.flop_counter`` on the ``meta``
  device, FLOPs = 2 x MACs, convolutions and matrix products only; the optimizer is not counted);
* achieved FLOP/s = FLOPs per step / step time, as a fraction of the GEMM peak of the variant's precision.

GEMM peaks (measured in this run, best of several repeats at the start and at the end): an n x n x n product
(2 n^3 FLOPs, n = 2048) through ``torch.matmul`` (MKL sgemm in the CPU wheel) and through oneDNN (the same
product as a 1x1 convolution, ``[1, n, n/32, 32]`` input in NCHW and in NHWC, the path NAFNet's 1x1 convolutions
take), in fp32 and bf16. The peak of a precision is the faster of its two paths. On AMD CPUs MKL's sgemm takes a slower path than
oneDNN (here about half as fast), so the fraction of the ``torch.matmul`` peak alone would overstate the
efficiency; it is printed as well (``vs matmul``) for comparison with figures measured that way.

Variants: ``fp32-nchw`` (plain layout), ``fp32-nhwc`` (``deepspeed.channels_last: true``, the params.yaml
default), ``bf16-nhwc`` (``deepspeed.bf16: true``: bf16 module, fp32 master weights in the ZeRO optimizer;
uses the CPU's bf16 instructions when it has them, e.g. avx512_bf16, and is very slow without). Without native
bf16 (neither ``avx512_bf16`` nor ``amx_bf16`` among the ``/proc/cpuinfo`` flags) the bf16 variants are skipped
with a line saying so (``--allow-emulated-bf16`` runs them anyway), and GEMM peaks are measured only for the
precisions of the variants that run.
Configurations: ``cpu`` = NAFNet ``cpu-default``, 96x96 crops, batch 8 (the params.yaml defaults); ``paper`` =
NAFNet ``paper-5d`` (67.9 M parameters), 256x256 crops, batch 1 (the paper trains batch 16 on 4 GPUs; larger
CPU batches measured no faster per image); ``paper-restormer``, ``paper-promptir``, ``paper-swinir`` = the other
three backbones in their paper configuration at the same 256x256, batch 1 (``--steps-paper``, ``--warmup-paper``).
The numbers depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "cpu": {"arch": "nafnet", "preset": "cpu-default", "crop": 96, "batch": 8},
    "paper": {"arch": "nafnet", "preset": "paper-5d", "crop": 256, "batch": 1},
    "paper-restormer": {"arch": "restormer", "preset": "paper", "crop": 256, "batch": 1},
    "paper-promptir": {"arch": "promptir", "preset": "paper", "crop": 256, "batch": 1},
    "paper-swinir": {"arch": "swinir", "preset": "paper", "crop": 256, "batch": 1},
}
VARIANTS = ("fp32-nchw", "fp32-nhwc", "bf16-nhwc")
NUM_CLASSES = 5
POOL = 16


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 instructions: ``avx512_bf16`` or ``amx_bf16`` among the ``flags`` of
    ``/proc/cpuinfo`` (``cpuinfo``: that file's text; read when ``None``; ``False`` when it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def gemm_peaks(n: int = 2048, repeats: int = 5, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, float]:
    """Best FLOP/s of an n x n x n GEMM (2 n^3 FLOPs) per path: ``{precision}_{matmul,onednn}`` for each of
    ``precisions`` (``fp32``, ``bf16``).

    ``matmul`` = ``torch.matmul`` of two ``[n, n]`` matrices; ``onednn`` = ``F.conv2d`` of ``[1, n, n/32, 32]``
    with a ``[n, n, 1, 1]`` weight (the same product, run by oneDNN), the faster of the NCHW and NHWC input
    layouts. Raises ``ValueError`` unless 32 divides n.
    """
    import torch
    import torch.nn.functional as F

    if n % 32:
        raise ValueError(f"n must be a multiple of 32, got {n}")
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        raise ValueError(f"precisions must be a non-empty subset of ('fp32', 'bf16'), got {precisions}")

    def best(fn) -> float:
        fn()
        t = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return 2 * n**3 / t

    out = {}
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        if tag not in precisions:
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        x, w = torch.randn(1, n, n // 32, 32, dtype=dtype), torch.randn(n, n, 1, 1, dtype=dtype)
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out[f"{tag}_matmul"] = best(lambda: torch.matmul(a, b))
            out[f"{tag}_onednn"] = max(best(lambda: F.conv2d(x, w)), best(lambda: F.conv2d(x_nhwc, w)))
    return out


def _random_pairs(crop: int):
    import pandas as pd
    import torch

    from maskdcpt.data.pairs import PairSet

    g = torch.Generator().manual_seed(0)
    return PairSet(lq=torch.rand(POOL, 3, crop, crop, generator=g), gt=torch.rand(POOL, 3, crop, crop, generator=g),
                   labels=torch.randint(NUM_CLASSES, (POOL,), generator=g), rows=pd.DataFrame())


def _count_step_flops(phase: str, model_cfg: dict, phase_cfg: dict, batch: int, crop: int) -> int:
    """FLOPs of one forward + backward of the phase's network and loss, counted on the meta device.

    The loss is the phase's (alpha*L1 + focal on the masked forward / L1 on the plain forward) written out here,
    because the pipeline's loss functions read the loss value as a Python float, which meta tensors lack.
    """
    import torch
    import torch.nn.functional as F

    from maskdcpt.losses import maskdcpt_loss
    from maskdcpt.models import build_backbone
    from maskdcpt.models.summary import count_flops
    from maskdcpt.train.pretrain import build_pretrain_model

    with torch.device("meta"):
        if phase == "pretrain":
            model = build_pretrain_model(model_cfg, NUM_CLASSES, phase_cfg["keep_ratio"])
        else:
            model = build_backbone(model_cfg["arch"], model_cfg["preset"])
        lq, gt = torch.empty(batch, 3, crop, crop), torch.empty(batch, 3, crop, crop)
        labels = torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        if phase == "pretrain":
            # the meta device cannot draw the mask from a CPU generator: draw it on the CPU, then move it
            mask = model.sample_mask(batch, crop, crop, generator=torch.Generator().manual_seed(0)).to("meta")
            out = model(lq, mask=mask)
            loss = maskdcpt_loss(out["restored"], gt, out["logits"], labels,
                                 alpha=phase_cfg["alpha"],
                                 gamma=phase_cfg["focal_gamma"])[0]
        else:
            loss = F.l1_loss(model(lq), gt)
        loss.backward()

    return count_flops(step)[0]


def worker(phase: str, name: str, variant: str, steps: int, warmup: int, zero_stage: int | None) -> dict:
    """One measurement in this process: FLOPs on meta, then 1 + ``warmup`` + ``steps`` engine steps."""
    import torch

    from pipelines.params import load_params
    from maskdcpt.models.summary import count_parameters
    from maskdcpt.train import engine
    from maskdcpt.train.finetune import run_finetune
    from maskdcpt.train.pretrain import run_pretrain

    params = load_params(ROOT / "params.yaml")
    cfg = CONFIGS[name]
    precision, layout = variant.split("-")
    model_cfg = {**params["model"], "arch": cfg["arch"], "preset": cfg["preset"]}
    ds = {**params["deepspeed"], "bf16": precision == "bf16", "channels_last": layout == "nhwc"}
    if zero_stage is not None:
        ds["zero_stage"] = zero_stage
    total = 1 + warmup + steps
    phase_cfg = {**params[phase], "steps": total, "batch_size": cfg["batch"], "log_every": 1, "eval_every": 0,
                 "checkpoint_every": 0}
    flops = _count_step_flops(phase, model_cfg, phase_cfg, cfg["batch"], cfg["crop"])
    stamps: list[float] = []

    def on_log(step: int, values: dict) -> None:
        if "loss" in values:
            stamps.append(time.perf_counter())

    pairs = _random_pairs(cfg["crop"])
    with tempfile.TemporaryDirectory() as tmp:
        if phase == "pretrain":
            run_pretrain(pairs, None, num_classes=NUM_CLASSES, model_cfg=model_cfg, cfg=phase_cfg, ds_params=ds,
                         seed=0, out_dir=Path(tmp), on_log=on_log, progress=False)
        else:
            run_finetune(pairs, model_cfg=model_cfg, cfg=phase_cfg, ds_params=ds, seed=0, out_dir=Path(tmp),
                         on_log=on_log, progress=False)
    engine.shutdown_distributed()
    if len(stamps) != total:
        raise RuntimeError(f"expected {total} per-step log calls, got {len(stamps)}")
    times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    sec = statistics.median(times)
    from maskdcpt.models import build_backbone
    with torch.device("meta"):  # shapes only: no second copy of the weights
        n_params = count_parameters(build_backbone(cfg["arch"], cfg["preset"]))
    return {
        "config": name, "phase": phase, "variant": variant, **cfg, "backbone_parameters": n_params,
        "zero_stage": ds["zero_stage"], "threads": torch.get_num_threads(), "warmup_steps": 1 + warmup,
        "timed_steps": steps, "step_seconds": sec, "step_seconds_all": times, "images_per_second": cfg["batch"] / sec,
        "flops_per_step": flops, "achieved_flops_per_second": flops / sec,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["cpu", "paper"])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--steps-cpu", type=int, default=5, help="timed steps for the cpu config (default 5)")
    ap.add_argument("--steps-paper", type=int, default=3, help="timed steps for the paper config (default 3)")
    ap.add_argument("--warmup-cpu", type=int, default=1, help="extra untimed steps, cpu config (default 1)")
    ap.add_argument("--warmup-paper", type=int, default=1, help="extra untimed steps, paper config (default 1)")
    ap.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), help="default: deepspeed.zero_stage of params.yaml")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file (atomic)")
    ap.add_argument("--allow-emulated-bf16", action="store_true",
                    help="run the bf16 variants even on a CPU without avx512_bf16/amx_bf16 (very slow)")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        phase, name, variant, steps, warmup, zero = args.worker
        row = worker(phase, name, variant, int(steps), int(warmup), None if zero == "-" else int(zero))
        print(json.dumps(row))
        return 0
    if min(args.steps_cpu, args.steps_paper) < 1 or min(args.warmup_cpu, args.warmup_paper) < 0:
        ap.error("--steps-* must be >= 1 and --warmup-* >= 0")

    import torch

    t_start = time.perf_counter()
    variants, skipped = list(args.variants), []
    if any(v.startswith("bf16") for v in variants) and not args.allow_emulated_bf16 and not native_bf16():
        skipped = [v for v in variants if v.startswith("bf16")]
        variants = [v for v in variants if v not in skipped]
        print(f"skipped {', '.join(skipped)}: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in "
              "/proc/cpuinfo), so bf16 would be emulated and very slow; --allow-emulated-bf16 runs it anyway",
              flush=True)
    precisions = tuple(p for p in ("fp32", "bf16") if any(v.startswith(p) for v in variants))
    result = {"threads": torch.get_num_threads(), "skipped_variants": skipped,
              "flop_convention": "FLOPs = 2 x MACs, FlopCounterMode, forward + backward, convs/matmuls only"}
    if not variants:
        print("nothing left to measure")
        result.update(gemm_peaks_flops_per_second={}, rows=[], load_average_1min=os.getloadavg()[0],
                      seconds=time.perf_counter() - t_start)
        if args.json:
            from maskdcpt.atomic import atomic_write_json

            atomic_write_json(args.json, result)
        return 0
    if "bf16" not in precisions:
        print("bf16 GEMM peak not measured: no bf16 variant runs", flush=True)
    peaks = gemm_peaks(precisions=precisions)
    print("GEMM peaks (2048^3, %d threads), GFLOP/s: " % torch.get_num_threads()
          + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
          + f"; os.cpu_count()={os.cpu_count()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for name in args.configs:
        steps = args.steps_cpu if name == "cpu" else args.steps_paper
        warmup = args.warmup_cpu if name == "cpu" else args.warmup_paper
        for phase in ("pretrain", "finetune"):
            for variant in variants:
                zero = "-" if args.zero_stage is None else str(args.zero_stage)
                proc = subprocess.run([sys.executable, __file__, "--worker", phase, name, variant, str(steps),
                                       str(warmup), zero], capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    print(f"{name}/{phase}/{variant} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    end_peaks = gemm_peaks(precisions=precisions)
    peaks = {k: max(v, end_peaks[k]) for k, v in peaks.items()}
    for row in rows:
        tag = row["variant"].split("-")[0]
        row["gemm_peak_flops_per_second"] = max(peaks[f"{tag}_matmul"], peaks[f"{tag}_onednn"])
        row["fraction_of_gemm_peak"] = row["achieved_flops_per_second"] / row["gemm_peak_flops_per_second"]
        row["fraction_of_fp32_matmul_peak"] = row["achieved_flops_per_second"] / peaks["fp32_matmul"]
        print(f"{row['config']:<16}{row['phase']:<9}{row['variant']:<10} {row['preset']:<12}{row['crop']:>4}^2 "
              f"batch {row['batch']:<2} ZeRO-{row['zero_stage']} {row['images_per_second']:>8.3g} img/s  "
              f"step {row['step_seconds']:6.2f} s {row['flops_per_step'] / 1e9:7.1f} GFLOP/step "
              f"{row['achieved_flops_per_second'] / 1e9:6.1f} GFLOP/s = {100 * row['fraction_of_gemm_peak']:5.1f} % "
              f"of the {tag} GEMM peak ({100 * row['fraction_of_fp32_matmul_peak']:5.1f} % vs fp32 matmul)  "
              f"peak RSS {row['peak_rss_mib']:6.0f} MiB", flush=True)
    result.update(gemm_peaks_flops_per_second=peaks, load_average_1min=os.getloadavg()[0],
                  seconds=time.perf_counter() - t_start, rows=rows)
    print(f"total {result['seconds']:.0f} s")
    if args.json:
        from maskdcpt.atomic import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
