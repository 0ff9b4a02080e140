"""Train a tiny NAFNet through the DeepSpeed engine in N processes; used by tests/test_distributed.py.

usage: torchrun --standalone --nproc_per_node 2 train_dist.py OUT_DIR CKPT_DIR STEPS [--zero-stage S]
Each rank writes ``OUT_DIR/rank{r}.pt``: its final weights, EMA, the indices of its first batch, and the
values its ``on_log`` callback received (the engine calls it on rank 0 only).
"""
import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdcpt.models import build_nafnet
from maskdcpt.train import engine

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("ckpt")
ap.add_argument("steps", type=int)
ap.add_argument("--zero-stage", type=int, default=2)
args = ap.parse_args()

torch.manual_seed(0)  # same init on every rank (DeepSpeed also broadcasts rank 0's weights)
net = build_nafnet("tiny")
data_gt = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
data_lq = (data_gt + 0.2 * torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
first: list[list[int]] = []


def make_batch(gen, n):
    idx = torch.randint(16, (n,), generator=gen)
    if not first:
        first.append(idx.tolist())
    return data_lq[idx], data_gt[idx]


def compute_loss(module, batch, gen):
    lq, gt = batch
    loss = F.l1_loss(module(lq), gt)
    return loss, {"loss": float(loss.detach())}


logged = []
module, ema, result = engine.train(
    net, [{"params": list(net.parameters()), "lr": 1e-3}], ds_params={"zero_stage": args.zero_stage},
    micro_batch=2, steps=args.steps, seed=5, make_batch=make_batch, compute_loss=compute_loss, grad_clip=1.0,
    ema_decay=0.9, checkpoint_dir=Path(args.ckpt), checkpoint_every=2, log_every=1,
    on_log=lambda s, v: logged.append((s, v["loss"])), progress=True)
rank = int(os.environ["RANK"])
engine.atomic_torch_save({"params": {k: v.detach().clone() for k, v in module.state_dict().items()},
                          "params_ema": ema.shadow, "first_batch": first[0], "logged": logged,
                          "world": int(os.environ["WORLD_SIZE"]), "images_per_second": result.images_per_second},
                         Path(args.out) / f"rank{rank}.pt")
engine.shutdown_distributed()
