"""Train a tiny backbone (NAFNet unless --arch) through the DeepSpeed engine; used by tests in a subprocess.

usage: train_tiny.py OUT_DIR CKPT_DIR STEPS [--die-at STEP] [--die-in-save STEP] [--resume MODE] [--channels-last]
                     [--zero-stage N] [--arch nafnet|restormer|promptir|swinir] [--grad-clip C]
                     [--loss-scale S] [--plain]
With --plain the same batches train through a plain eager torch loop (fused AdamW, LambdaLR cosine,
clip_grad_norm_ when C > 0, EMA) instead of the engine: the reference the engine must equal.
With --die-at the process hard-exits (os._exit) when it is about to draw the batch of that step, like a kill.
With --die-in-save the process SIGKILLs itself in the middle of writing the first file of the checkpoint of that
step: half of the file's bytes are on disk, DeepSpeed has not written ``latest`` yet.
"""
import argparse
import io
import os
import signal
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdcpt.models import build_backbone
from maskdcpt.train import engine

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("ckpt")
ap.add_argument("steps", type=int)
ap.add_argument("--die-at", type=int, default=-1)
ap.add_argument("--resume", default="auto")
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--zero-stage", type=int, default=1)
ap.add_argument("--die-in-save", type=int, default=-1)
ap.add_argument("--arch", default="nafnet")
ap.add_argument("--grad-clip", type=float, default=1.0)
ap.add_argument("--loss-scale", type=float, default=1.0)
ap.add_argument("--plain", action="store_true")
args = ap.parse_args()

if args.die_in_save >= 0:
    _save = torch.save

    def _dying_save(obj, f, *a, **kw):
        if isinstance(f, (str, os.PathLike)) and f"step{args.die_in_save}" in Path(f).parts:
            buf = io.BytesIO()
            _save(obj, buf, *a, **kw)
            with open(f, "wb") as fh:
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return _save(obj, f, *a, **kw)

    torch.save = _dying_save

torch.manual_seed(0)
net = build_backbone(args.arch, "tiny")
data_gt = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
data_lq = (data_gt + 0.2 * torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
calls = {"n": 0}
layouts = []


def make_batch(gen, n):
    if calls["n"] == args.die_at:
        os._exit(17)
    calls["n"] += 1
    idx = torch.randint(16, (n,), generator=gen)
    return data_lq[idx], data_gt[idx]


def compute_loss(module, batch, gen):
    lq, gt = batch
    weight = next(p for p in getattr(module, "module", module).parameters() if p.dim() == 4)  # engine or net
    layouts.append(all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                       for t in (lq, weight)))
    loss = args.loss_scale * F.l1_loss(module(lq), gt)
    return loss, {"loss": float(loss.detach())}


def train_plain():
    """The reference loop: what engine.train must compute for one process, ZeRO-0, fp32, no accumulation."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, engine.cosine_lambda(args.steps, 1e-3, 1e-6))
    ema = engine.EMA(net, 0.9)
    for step in range(args.steps):
        gen = engine.step_generator(5, step, 0)
        loss, logs = compute_loss(net, make_batch(gen, 4), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norms.append(float(torch.nn.utils.get_total_norm([q.grad for q in net.parameters()])))
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        opt.step()
        sched.step()
        ema.update(net)
        losses.append(logs["loss"])
    return net, ema, engine.TrainResult(step=args.steps)


losses, grad_norms = [], []  # grad_norms: before clipping, --plain only
module, ema, result = train_plain() if args.plain else engine.train(
    net, [{"params": list(net.parameters()), "lr": 1e-3}],
    ds_params={"zero_stage": args.zero_stage, "channels_last": args.channels_last}, micro_batch=4,
    steps=args.steps, seed=5, make_batch=make_batch, compute_loss=compute_loss, grad_clip=args.grad_clip,
    lr_lambda=engine.cosine_lambda(args.steps, 1e-3, 1e-6), ema_decay=0.9, checkpoint_dir=Path(args.ckpt),
    checkpoint_every=2, resume=args.resume, log_every=1, on_log=lambda s, v: losses.append(v["loss"]),
    progress=False)
engine.atomic_torch_save({"params": module.state_dict(), "params_ema": ema.shadow, "losses": losses,
                          "channels_last": layouts, "resumed_from": result.resumed_from,
                          "grad_norms": grad_norms}, Path(args.out) / "final.pt")
engine.shutdown_distributed()
