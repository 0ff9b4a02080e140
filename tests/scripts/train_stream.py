"""Fine-tune a tiny NAFNet through the DeepSpeed engine on streamed shards; used by tests/test_distributed.py.

usage: [torchrun --standalone --nproc_per_node N] train_stream.py SHARDS OUT CKPT STEPS [--workers W]
           [--die-after S] [--replay OUT_OF_A_2_RANK_RUN]
Each rank writes ``OUT/rank{r}.pt``: final weights and EMA, the keys / LQ / GT of every batch it trained on and its
final data position. ``--die-after S`` SIGKILLs the process after step S (a checkpoint every 2 steps).
``--replay DIR`` trains one process on the concatenation of the two ranks' recorded batches of ``DIR``.
"""
import argparse
import os
import signal
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from maskdcpt.data.stream import ShardIndex, StreamLoader
from maskdcpt.models import build_nafnet
from maskdcpt.train import engine

ap = argparse.ArgumentParser()
ap.add_argument("shards")
ap.add_argument("out")
ap.add_argument("ckpt")
ap.add_argument("steps", type=int)
ap.add_argument("--workers", type=int, default=0)
ap.add_argument("--batch", type=int, default=2)
ap.add_argument("--die-after", type=int, default=0)
ap.add_argument("--replay", default="")
ap.add_argument("--zero-stage", type=int, default=0)
args = ap.parse_args()

torch.manual_seed(0)
net = build_nafnet("tiny")
seen: list[dict] = []


def compute_loss(module, batch, gen):
    if isinstance(batch, dict):
        seen.append({"keys": list(batch["keys"]), "epochs": list(batch["epochs"]), "lq": batch["lq"].clone(),
                     "gt": batch["gt"].clone()})
        lq, gt = batch["lq"], batch["gt"]
    else:
        lq, gt = batch
    loss = F.l1_loss(module(lq), gt)
    return loss, {"loss": float(loss.detach())}


def on_log(step, values):
    if args.die_after and step == args.die_after:
        os.kill(os.getpid(), signal.SIGKILL)


kw = {}
if args.replay:
    r0, r1 = (torch.load(Path(args.replay) / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    batches = iter([(torch.cat([a["lq"], b["lq"]]), torch.cat([a["gt"], b["gt"]]))
                    for a, b in zip(r0["seen"], r1["seen"])])
    kw["make_batch"] = lambda gen, n: next(batches)
    micro = 2 * args.batch
else:
    manifest = pd.read_parquet(Path(args.shards) / "manifest.parquet")
    index = ShardIndex.from_manifest(manifest, args.shards, "train")
    kw["data"] = StreamLoader(index, batch_size=args.batch, seed=3, num_workers=args.workers, shuffle_buffer=4,
                              fields=None, timeout=120)
    micro = args.batch
module, ema, result = engine.train(
    net, [{"params": list(net.parameters()), "lr": 1e-3}], ds_params={"zero_stage": args.zero_stage},
    micro_batch=micro, steps=args.steps, seed=5, compute_loss=compute_loss, grad_clip=1.0, ema_decay=0.9,
    checkpoint_dir=Path(args.ckpt), checkpoint_every=2, log_every=1, on_log=on_log, progress=False, **kw)
rank = int(os.environ["RANK"])
engine.atomic_torch_save({"params": {k: v.detach().clone() for k, v in module.state_dict().items()},
                          "params_ema": ema.shadow, "seen": seen, "world": int(os.environ["WORLD_SIZE"]),
                          "resumed_from": result.resumed_from, "position": result.data_position},
                         Path(args.out) / f"rank{rank}.pt")
engine.shutdown_distributed()
