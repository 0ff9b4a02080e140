"""CPU training throughput of MaskDCPT pre-training and fine-tuning steps, with FLOPs and a measured matmul peak.

usage: python scripts/bench_training.py [--configs cpu paper] [--json OUT.json] [--steps-cpu 3] [--steps-paper 1]

For each configuration it measures, for one pre-training step (masked backbone + degradation classifier +
token reconstruction head, L1 + focal loss, AdamW with the two learning rates) and one fine-tuning step (plain
backbone, L1, gradient clipping 0.01, AdamW):

* images/s (batch / median step time over ``--steps-*`` timed steps after ``--warmup-*`` untimed steps: 3 after
  1 for ``cpu``, 1 after 0 for ``paper``);
* peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; each measurement runs in its own
  child process so that the peak belongs to that measurement alone);
* FLOPs per step (forward + backward, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
  ``meta`` device, FLOPs = 2 x MACs; convs and matrix products only, the optimizer's element-wise update is
  not counted);
* achieved FLOP/s = FLOPs per step / step time, as a fraction of the fp32 ``torch.matmul`` peak measured in the
  same run (a 2048 x 2048 x 2048 fp32 matmul, best of several, 2 n^3 FLOPs).

Configurations: ``cpu`` = NAFNet ``cpu-default``, 96x96 crops, batch 8 (the CPU defaults of params.yaml);
``paper`` = NAFNet ``paper-5d`` (67.9 M parameters), 256x256 crops, batch 1 (the paper uses batch 16 on 4 GPUs;
batch 1 keeps the CPU run short). Plain torch training steps in one process (no DeepSpeed engine: with one
process and ZeRO 0 the engine adds no computation). The numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "cpu": {"arch": "nafnet", "preset": "cpu-default", "crop": 96, "batch": 8},
    "paper": {"arch": "nafnet", "preset": "paper-5d", "crop": 256, "batch": 1},
}
NUM_CLASSES = 5


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``torch.matmul`` rate (FLOP/s) on an n x n x n product (2 n^3 FLOPs) over ``repeats`` runs."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _build(phase: str, cfg: dict, device: str):
    import torch

    from maskdcpt.models import MaskDCPTModel, build_backbone

    with torch.device(device):
        torch.manual_seed(0)
        backbone = build_backbone(cfg["arch"], cfg["preset"])
        if phase == "pretrain":
            return MaskDCPTModel(backbone, num_classes=NUM_CLASSES, recon_head="token", recon_blocks=2)
        return backbone


def _step_fn(phase: str, model, batch: int, crop: int, device: str):
    """Return ``step(with_optimizer: bool)`` doing forward + loss + backward (+ AdamW step)."""
    import torch
    import torch.nn.functional as F

    from maskdcpt.losses import maskdcpt_loss
    from maskdcpt.models import param_groups

    g = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    gt = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    labels = torch.randint(NUM_CLASSES, (batch,), generator=g).to(device)
    if phase == "pretrain":
        mask = model.sample_mask(batch, crop, crop, generator=g).to(device)
        groups = param_groups(model, 3e-4, 1e-4) if device != "meta" else None

        def loss_fn():
            out = model(lq, mask=mask)
            return maskdcpt_loss(out["restored"], gt, out["logits"], labels)[0]
    else:
        groups = [{"params": list(model.parameters()), "lr": 3e-4}] if device != "meta" else None

        def loss_fn():
            return F.l1_loss(model(lq), gt)

    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=0.0) if groups else None

    def step(with_optimizer: bool = True) -> None:
        loss = loss_fn()
        loss.backward()
        if with_optimizer and opt is not None:
            if phase == "finetune":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def worker(phase: str, name: str, steps: int, warmup: int = 1) -> dict:
    """One measurement in this process: FLOPs on meta, then ``warmup`` + ``steps`` timed real steps."""
    import torch

    from maskdcpt.models.summary import count_flops, count_parameters

    cfg = CONFIGS[name]
    meta_model = _build(phase, cfg, "meta")
    flops, _ = count_flops(lambda: _step_fn(phase, meta_model, cfg["batch"], cfg["crop"], "meta")(False))
    del meta_model
    model = _build(phase, cfg, "cpu")
    model.train()
    step = _step_fn(phase, model, cfg["batch"], cfg["crop"], "cpu")
    for _ in range(warmup):  # allocations, oneDNN kernel selection
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "config": name, "phase": phase, **cfg, "parameters": count_parameters(model),
        "threads": torch.get_num_threads(), "warmup_steps": warmup, "timed_steps": steps, "step_seconds": sec,
        "images_per_second": cfg["batch"] / sec, "flops_per_step": flops, "achieved_flops_per_second": flops / sec,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["cpu", "paper"])
    ap.add_argument("--steps-cpu", type=int, default=3, help="timed steps for the cpu config (default 3)")
    ap.add_argument("--steps-paper", type=int, default=1, help="timed steps for the paper config (default 1)")
    ap.add_argument("--warmup-cpu", type=int, default=1, help="untimed warm-up steps, cpu config (default 1)")
    ap.add_argument("--warmup-paper", type=int, default=0,
                    help="untimed warm-up steps, paper config (default 0: a step takes minutes, so the one-off "
                         "allocation/kernel-selection cost is a small part of it)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file (atomic)")
    ap.add_argument("--worker", nargs=4, metavar=("PHASE", "CONFIG", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        phase, name, steps, warmup = args.worker
        print(json.dumps(worker(phase, name, int(steps), int(warmup))))
        return 0

    import torch

    t_start = time.perf_counter()
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s; "
          f"os.cpu_count()={os.cpu_count()}; load average {os.getloadavg()[0]:.1f} (shared machine)", flush=True)
    rows = []
    for name in args.configs:
        steps = args.steps_cpu if name == "cpu" else args.steps_paper
        warmup = args.warmup_cpu if name == "cpu" else args.warmup_paper
        for phase in ("pretrain", "finetune"):
            proc = subprocess.run([sys.executable, __file__, "--worker", phase, name, str(steps), str(warmup)],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name}/{phase} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["fraction_of_matmul_peak"] = row["achieved_flops_per_second"] / peak
            rows.append(row)
            print(f"{name:<6}{phase:<9} {row['preset']:<12}{row['crop']:>4}^2 batch {row['batch']:<3}"
                  f"{row['images_per_second']:>9.3g} img/s  step {row['step_seconds']:7.2f} s  "
                  f"{row['flops_per_step'] / 1e9:9.1f} GFLOP/step  {row['achieved_flops_per_second'] / 1e9:7.1f} "
                  f"GFLOP/s = {100 * row['fraction_of_matmul_peak']:5.1f} % of peak  "
                  f"peak RSS {row['peak_rss_mib']:7.0f} MiB", flush=True)
    result = {"matmul_peak_flops_per_second": peak, "threads": torch.get_num_threads(),
              "load_average_1min": os.getloadavg()[0], "seconds": time.perf_counter() - t_start, "rows": rows,
              "flop_convention": "FLOPs = 2 x MACs, FlopCounterMode, forward + backward, convs/matmuls only"}
    print(f"total {result['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
