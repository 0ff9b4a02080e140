"""GPU training throughput of the paper configuration through the DeepSpeed engine (bf16, ZeRO-2, one GPU, nccl).

usage: python scripts/bench_training_gpu.py [--batch 16] [--crop 256] [--steps 20] [--warmup 5] [--json OUT]
       (or under a launcher: ``torchrun --nproc_per_node 1 scripts/bench_training_gpu.py``)

What it runs: MaskDCPT pre-training (NAFNet ``paper-5d`` backbone, degradation classifier, token reconstruction
head; L1 + focal; AdamW backbone 3e-4 / heads 1e-4) and fine-tuning (plain NAFNet ``paper-5d``, L1, grad clip
0.01, EMA 0.999) through :func:`maskdcpt.train.engine.train` with ``{"zero_stage": 2, "bf16": True,
"dist_backend": "nccl", "channels_last": True}`` (``--layout nchw`` for the plain layout); synthetic batches already on the GPU (so the data pipeline is not measured); paper
crop 256 and batch 16 (paper Sec. V) by default.

What it prints: images/s over the timed steps (step ``warmup+1`` .. ``steps``; each step's end is taken when the
engine's rank-0 ``on_log`` runs, which follows a host sync on the loss), FLOPs per step (forward + backward
counted with ``FlopCounterMode`` on the ``meta`` device, FLOPs = 2 x MACs, convs/matmuls only), and the achieved
FLOP/s as a fraction of the GPU's bf16 peak measured in the same run with an 8192^3 bf16 ``torch.matmul``
(2 n^3 FLOPs, best of 10, CUDA events). Expected to finish in about 1-2 minutes on an H100/H200-class GPU.

Without a CUDA device it exits with status 2 and a one-line message on stderr (nothing else is imported).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUM_CLASSES = 5
PRESET = "paper-5d"


def bf16_matmul_peak(n: int = 8192, repeats: int = 10) -> float:
    """Best bf16 ``torch.matmul`` rate (FLOP/s) on an n x n x n product on the current CUDA device."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best


def model_params() -> dict:
    """The ``model`` params group of the schema (its defaults, the pipeline's head) with the paper-5d preset."""
    from pipelines.params import ModelParams

    return ModelParams(preset=PRESET).model_dump()


def pretrain_params():
    """The schema's ``pretrain`` group overlaid with presets/paper-5d.yaml (lr, keep ratio, loss weights)."""
    from pipelines.params import load_typed

    return load_typed(Path(__file__).resolve().parents[1] / "params.yaml", {"preset": "paper-5d"}).pretrain


def step_flops(phase: str, batch: int, crop: int) -> int:
    """Forward + backward FLOPs of one step, counted on the meta device (no GPU memory, no compute)."""
    import torch
    import torch.nn.functional as F

    from maskdcpt.losses import maskdcpt_loss
    from maskdcpt.models import build_backbone
    from maskdcpt.models.summary import count_flops
    from maskdcpt.train.pretrain import build_pretrain_model

    with torch.device("meta"):
        model = (build_pretrain_model(model_params(), NUM_CLASSES, pretrain_params().keep_ratio)
                 if phase == "pretrain" else build_backbone("nafnet", PRESET))
        lq = torch.zeros(batch, 3, crop, crop)
        gt = torch.zeros(batch, 3, crop, crop)
        labels = torch.zeros(batch, dtype=torch.long)

    def run():
        if phase == "pretrain":
            mask = model.sample_mask(batch, crop, crop).to("meta")
            out = model(lq, mask=mask)
            loss = maskdcpt_loss(out["restored"], gt, out["logits"], labels)[0]
        else:
            loss = F.l1_loss(model(lq), gt)
        loss.backward()

    return count_flops(run)[0]


def bench(phase: str, args: argparse.Namespace) -> dict:
    """Train ``args.steps`` steps of ``phase`` through the engine; return the throughput figures."""
    import torch
    import torch.nn.functional as F

    from maskdcpt.losses import maskdcpt_loss
    from maskdcpt.models import build_backbone, param_groups
    from maskdcpt.train import engine
    from maskdcpt.train.pretrain import build_pretrain_model

    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    pre = pretrain_params()
    if phase == "pretrain":  # the head exactly as the pipeline trains it (params schema, paper-5d model preset)
        model = build_pretrain_model(model_params(), NUM_CLASSES, pre.keep_ratio)
        groups = param_groups(model, pre.backbone_lr, pre.head_lr)
    else:
        model = build_backbone("nafnet", PRESET)
        groups = [{"params": list(model.parameters()), "lr": 3e-4}]
    pool = 4 * args.batch
    g = torch.Generator().manual_seed(1)
    lq_pool = torch.rand(pool, 3, args.crop, args.crop, generator=g).cuda()
    gt_pool = torch.rand(pool, 3, args.crop, args.crop, generator=g).cuda()
    label_pool = torch.randint(NUM_CLASSES, (pool,), generator=g).cuda()

    def make_batch(gen, n):
        idx = torch.randint(pool, (n,), generator=gen).cuda()
        return lq_pool[idx], gt_pool[idx], label_pool[idx]

    def compute_loss(module, batch, gen):
        lq, gt, y = batch
        if phase == "pretrain":
            out = module(lq, generator=gen)
            loss = maskdcpt_loss(out["restored"].float(), gt.float(), out["logits"].float(), y)[0]
        else:
            loss = F.l1_loss(module(lq).float(), gt.float())
        return loss, {"loss": float(loss.detach())}

    stamps: list[float] = []
    _, _, result = engine.train(
        model, groups, ds_params={"zero_stage": 2, "bf16": True, "dist_backend": "nccl",
                                  "channels_last": args.layout == "nhwc"},
        micro_batch=args.batch, steps=args.steps, seed=0, make_batch=make_batch, compute_loss=compute_loss,
        grad_clip=0.01 if phase == "finetune" else 0.0, ema_decay=0.999 if phase == "finetune" else None,
        checkpoint_dir=None, log_every=1, on_log=lambda s, v: stamps.append(time.perf_counter()), progress=False)
    timed = stamps[args.warmup:]
    seconds = timed[-1] - stamps[args.warmup - 1] if args.warmup > 0 else result.seconds
    steps = len(timed) if args.warmup > 0 else args.steps
    images = steps * args.batch
    flops = step_flops(phase, args.batch, args.crop)
    del model  # the data pools go with this frame
    torch.cuda.empty_cache()
    return {"phase": phase, "preset": PRESET, "batch": args.batch, "crop": args.crop, "layout": args.layout,
            "timed_steps": steps, "seconds": seconds, "images_per_second": images / seconds, "flops_per_step": flops,
            "achieved_flops_per_second": flops * steps / seconds,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16, help="micro-batch per GPU (paper: 16)")
    ap.add_argument("--crop", type=int, default=256, help="crop size in pixels (paper: 256)")
    ap.add_argument("--steps", type=int, default=20, help="steps per phase, warm-up included (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="steps excluded from the timing (default 5)")
    ap.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc",
                    help="activation memory layout (deepspeed.channels_last; default nhwc)")
    ap.add_argument("--phases", nargs="+", choices=["pretrain", "finetune"], default=["pretrain", "finetune"])
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file (atomic)")
    args = ap.parse_args(argv)
    if args.steps <= args.warmup or args.warmup < 0:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) >= 0")
    if args.crop % 16:
        ap.error(f"--crop must be a multiple of 16 (NAFNet padder size), got {args.crop}")

    import torch

    if not torch.cuda.is_available():
        print("bench_training_gpu.py: no CUDA device available (torch.cuda.is_available() is False); this "
              "this measurement needs an NVIDIA GPU with the nccl backend. Use scripts/bench_training.py on CPU.",
              file=sys.stderr)
        return 2

    from maskdcpt.train import engine

    peak = bf16_matmul_peak()
    name = torch.cuda.get_device_name()
    print(f"{name}: bf16 matmul peak (8192^3) {peak / 1e12:.1f} TFLOP/s", flush=True)
    rows = []
    try:
        for phase in args.phases:
            row = bench(phase, args)
            row["fraction_of_bf16_peak"] = row["achieved_flops_per_second"] / peak
            rows.append(row)
            print(f"{phase:<9} {PRESET} {args.crop}^2 batch {args.batch}: {row['images_per_second']:.1f} img/s, "
                  f"{row['flops_per_step'] / 1e12:.2f} TFLOP/step, {row['achieved_flops_per_second'] / 1e12:.1f} "
                  f"TFLOP/s = {100 * row['fraction_of_bf16_peak']:.1f} % of bf16 peak, "
                  f"peak memory {row['peak_gpu_memory_gib']:.1f} GiB", flush=True)
    finally:
        engine.shutdown_distributed()
    if args.json:
        from maskdcpt.atomic import atomic_write_json

        atomic_write_json(args.json, {"device": name, "bf16_matmul_peak_flops_per_second": peak, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
