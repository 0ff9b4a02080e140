"""Memory and speed of the streaming training data (maskdcpt.data.stream) and of the engine's own overhead.

usage: python scripts/bench_data.py [--json [FILE]] [--quick] [--sizes 2000 40000] [--steps 100]

Prints one JSON object (also written to FILE with ``--json FILE``) with:

* ``rss_peak_mb``: peak resident memory (training process + its DataLoader workers, from ``getrusage``) of a
  fine-tuning run of ``--steps`` steps at the params.yaml defaults on synthesised shard sets of each size
  (128 px pairs), each in a fresh process; ``rss_ratio`` = largest / smallest (goal <= 1.1: memory does not grow
  with the data set).
* ``images_per_second``: loader-only throughput at 256 px (decode + augment + batch) for 0, 1 and 2 workers.
* ``step_seconds``: median fine-tuning step time at the pipeline's own config (the repository's ``data/pairs``
  when present, else synthesised pairs; ``synthesize.crop`` windows; the ``data`` group), streaming vs the former
  in-memory sampler (``PairSet`` + ``sample_batch``), each the median over 3 fresh processes run alternately (1
  with ``--quick``) of 300 steps (20 with ``--quick``); ``stream_vs_memory`` is their ratio;
  ``data_wait_fraction``: the streaming runs' share of training wall time spent waiting for batches.
  ``step_seconds_128px``: the same on whole 128 px samples (``--steps`` steps).
* ``stream_vs_memory_interleaved``: the same ratio with the two batch sources alternating in blocks of steps
  inside one engine run, so that both see the same process and machine.
* ``engine_vs_plain``: the pipeline's engine step (``maskdcpt.train.engine.train``) against a plain eager PyTorch
  loop with the same numerics (L1, fused AdamW, grad-norm clipping, EMA, NHWC), the two alternating step by step
  in one process: ``speed_ratio`` = plain step time / engine step time (>= 1: the engine is as fast), at the CPU
  default and (not with ``--quick``) at paper-5d.

Timings on a shared machine are noisy: every step time is a median over the timed steps.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------------- shard sets
def make_shard_set(folder: Path, pairs: int, size: int, shard_size: int = 256, pool: int = 64, seed: int = 0):
    """``pairs`` pairs of ``size`` px in tar shards + ``manifest.parquet``. ``pool`` distinct smooth images are
    PNG-encoded once and their bytes reused (the loader decodes every member; encoding 80k PNGs is not what is
    measured). Returns the manifest."""
    import io
    import tarfile

    import pandas as pd

    from maskdcpt.imageio import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    encoded = []
    for i in range(pool):
        base = np.stack([np.sin((3 + i % 5) * xx + i), np.cos((2 + i % 3) * yy - i), xx * yy], -1)
        gt = np.clip(0.5 + 0.4 * base + 0.03 * rng.standard_normal((size, size, 3)), 0, 1).astype(np.float32)
        lq = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
        encoded.append((encode_png(lq, compression=1), encode_png(gt, compression=1)))
    rows = []
    for s0 in range(0, pairs, shard_size):
        name = f"train-{s0 // shard_size:05d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for j in range(s0, min(pairs, s0 + shard_size)):
                key = f"train-{j:06d}"
                lq, gt = encoded[j % pool]
                for suffix, data in (("lq.png", lq), ("gt.png", gt), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append({"split": "train", "shard": name, "key": key, "class_index": j % 5})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(folder / "manifest.parquet")
    return manifest


def _params():
    from pipelines.params import load_params

    return load_params(os.environ.get("MASKDCPT_BENCH_PARAMS") or ROOT / "params.yaml")


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024.0


# ------------------------------------------------------------------------------------------- child: train
def child_train(shards: Path, steps: int, mode: str, crop: int = 0) -> dict:
    """Fine-tune ``steps`` steps at the params.yaml defaults (streaming or in-memory); per-step times. ``crop``
    (> 0): the streaming loader's window, as the stages pass ``synthesize.crop`` (pairs stored at that size, so
    both samplers see the same images)."""
    import pandas as pd
    import torch

    from maskdcpt.data.stream import train_loader
    from maskdcpt.train.finetune import run_finetune

    params = _params()
    cfg = {**params["finetune"], "steps": steps, "log_every": 1, "checkpoint_every": 0}
    manifest = pd.read_parquet(shards / "manifest.parquet")
    if mode == "stream":
        data = train_loader(manifest, shards, params["data"], batch_size=int(cfg["batch_size"]),
                            seed=int(params["seed"]), crop=crop or None)
    else:
        from maskdcpt.data.pairs import load_pairs

        data = load_pairs(manifest, shards, "train")
    stamps = []
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_finetune(data, model_cfg=params["model"], cfg=cfg, ds_params=params["deepspeed"],
                               seed=int(params["seed"]), out_dir=Path(tmp), init="random",
                               on_log=lambda s, v: stamps.append(time.perf_counter()), progress=False)
    steps_s = np.diff(stamps)[5:]  # the first steps include worker start and oneDNN warm-up
    return {"mode": mode, "steps": steps, "seconds": summary["seconds"],
            "data_wait_seconds": summary["data_wait_seconds"],
            "data_wait_fraction": summary["data_wait_seconds"] / max(summary["seconds"], 1e-9),
            "step_seconds": float(np.median(steps_s)), "rss_peak_mb": _peak_rss_mb(),
            "threads": torch.get_num_threads()}


def _run_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, "--_child", *args], capture_output=True, text=True, env=env,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(shards: Path, steps: int, crop: int, rounds: int, first: dict | None = None) -> dict:
    """Median step time streaming vs in-memory over ``rounds`` fresh processes of each, run alternately (stream,
    memory, stream, ...): one-off pairs of runs moved by 20-45 % between two runs of this script on an idle 2-core
    AMD EPYC, more than the 5 % to resolve. ``first``: an earlier streaming run of the same shards to reuse."""
    strm = [first] if first else []
    mem = []
    for r in range(rounds):
        if len(strm) <= r:
            strm.append(_run_child(str(shards), str(steps), "stream", str(crop)))
        mem.append(_run_child(str(shards), str(steps), "memory", str(crop)))
    s_mem = statistics.median(r["step_seconds"] for r in mem)
    s_str = statistics.median(r["step_seconds"] for r in strm)
    return {"memory": round(s_mem, 4), "stream": round(s_str, 4), "ratio": round(s_str / s_mem, 3), "steps": steps,
            "crop": crop or None, "torch_threads": strm[0].get("threads"), "runs_each": len(mem),
            "memory_runs": [round(r["step_seconds"], 4) for r in mem],
            "stream_runs": [round(r["step_seconds"], 4) for r in strm],
            "data_wait_fraction": round(statistics.median(r["data_wait_fraction"] for r in strm), 4)}


# ----------------------------------------------------------------------------------------- loader speed
def loader_throughput(shards: Path, workers: int, batches: int, batch_size: int = 8) -> float:
    import pandas as pd

    from maskdcpt.data.stream import ShardIndex, StreamLoader

    index = ShardIndex.from_manifest(pd.read_parquet(shards / "manifest.parquet"), shards, "train")
    loader = StreamLoader(index, batch_size=batch_size, seed=0, num_workers=workers, shuffle_buffer=256)
    it = iter(loader)
    next(it)  # worker start-up excluded
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    it.close()
    return batches * batch_size / dt


# ------------------------------------------------------------------- streaming vs in-memory, interleaved
def stream_vs_memory_interleaved(shards: Path, rounds: int, block: int, settle: int = 3) -> dict:
    """Engine fine-tuning step time with batches from the streaming loader vs the former in-memory sampler,
    alternating in blocks of ``block`` steps within one engine run (one process, same model and optimizer).

    Both arms run at the params.yaml defaults (``data`` group, ``finetune.batch_size``, ``synthesize.crop``); each
    step's time includes fetching its batch. The first ``settle`` steps of every block are not timed: the loader's
    worker has its prefetched batches ready when a streaming block starts and refills them during the next
    in-memory block, which would move its decoding cost from one arm to the other. ``ratio`` = median streaming
    step / median in-memory step.
    """
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from maskdcpt.data.pairs import load_pairs, sample_batch
    from maskdcpt.data.stream import train_loader
    from maskdcpt.models import build_backbone
    from maskdcpt.train import engine

    params = _params()
    ft, ds, crop = params["finetune"], params["deepspeed"], int(params["synthesize"]["crop"])
    batch, lr = int(ft["batch_size"]), float(ft["lr"])
    manifest = pd.read_parquet(shards / "manifest.parquet")
    loader = train_loader(manifest, shards, params["data"], batch_size=batch, seed=int(params["seed"]), crop=crop)
    loader.fields = ("lq", "gt")
    stream = iter(loader)
    pairs = load_pairs(manifest, shards, "train")
    total = 2 * rounds * block
    source: list[str] = []

    def make_batch(gen: torch.Generator, n: int):
        arm = "stream" if (len(source) // block) % 2 == 0 else "memory"
        source.append(arm)
        if arm == "stream":
            return next(stream)
        lq, gt, _ = sample_batch(pairs, gen, n)
        return lq, gt

    stamps: list[float] = []
    torch.manual_seed(0)
    net = build_backbone(params["model"]["arch"], params["model"]["preset"])
    t0 = time.perf_counter()
    engine.train(net, [{"params": list(net.parameters()), "lr": lr}], ds_params=ds, micro_batch=batch,
                 steps=total, seed=0, make_batch=make_batch,
                 compute_loss=lambda m, b, gen: (F.l1_loss(m(b[0]).float(), b[1]), {}),
                 grad_clip=float(ft["grad_clip"]), lr_lambda=engine.cosine_lambda(total, lr, 1e-6),
                 ema_decay=float(ft["ema_decay"]), log_every=1,
                 on_log=lambda s, v: stamps.append(time.perf_counter()), progress=False)
    stream.close()
    times: dict[str, list[float]] = {"stream": [], "memory": []}
    for i in range(2 * block, total):  # the first round warms up (worker start, oneDNN kernels)
        if i % block >= settle:
            times[source[i]].append(stamps[i] - stamps[i - 1])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"shards": str(shards), "pairs": int((manifest["split"] == "train").sum()), "crop": crop,
            "batch": batch, "num_workers": int(params["data"]["num_workers"]), "block": block,
            "timed_steps_each": len(times["stream"]), "stream_step_seconds": round(med["stream"], 4),
            "memory_step_seconds": round(med["memory"], 4), "ratio": round(med["stream"] / med["memory"], 4),
            "seconds": round(time.perf_counter() - t0, 1)}


# -------------------------------------------------------------------------------- engine vs plain loop
def engine_vs_plain(preset: str, crop: int, batch: int, steps: int, warmup: int) -> dict:
    """Median fine-tuning step time of the engine and of a plain eager loop (same numerics), interleaved.

    One plain step runs inside the engine's per-step ``on_log`` callback, so the two alternate step by step in one
    process and share every drift of the machine (clock, cache, allocator, other load). Run one after the other,
    whichever loop ran first was 8-15 % faster on a 2-core AMD EPYC (AVX-512), in either order.
    """
    import torch
    import torch.nn.functional as F

    from maskdcpt.models import build_backbone
    from maskdcpt.train import engine

    params = _params()
    ft, ds = params["finetune"], params["deepspeed"]
    lr, clip, decay = float(ft["lr"]), float(ft["grad_clip"]), float(ft["ema_decay"])
    g = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(batch, 3, crop, crop, generator=g), torch.rand(batch, 3, crop, crop, generator=g)
    total = steps + warmup

    torch.manual_seed(0)
    ref = build_backbone("nafnet", preset).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, engine.cosine_lambda(total, lr, 1e-6))
    ema = engine.EMA(ref, decay)
    x = lq.contiguous(memory_format=torch.channels_last)
    y = gt.contiguous(memory_format=torch.channels_last)

    def plain_step() -> None:
        loss = F.l1_loss(ref(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        opt.step()
        sched.step()
        ema.update(ref)

    marks: list[tuple[float, float]] = []  # (engine step ended, plain step ended)

    def on_log(step: int, values: dict) -> None:
        t_engine = time.perf_counter()
        plain_step()
        marks.append((t_engine, time.perf_counter()))

    torch.manual_seed(0)
    net = build_backbone("nafnet", preset)
    engine.train(net, [{"params": list(net.parameters()), "lr": lr}], ds_params=ds, micro_batch=batch,
                 steps=total, seed=0, make_batch=lambda gen, n: (lq, gt),
                 compute_loss=lambda m, b, gen: (F.l1_loss(m(b[0]).float(), b[1]), {}), grad_clip=clip,
                 lr_lambda=engine.cosine_lambda(total, lr, 1e-6), ema_decay=decay, log_every=1, on_log=on_log,
                 progress=False)
    timed = range(warmup, total)
    p = statistics.median(marks[i][1] - marks[i][0] for i in timed)
    e = statistics.median(marks[i][0] - marks[i - 1][1] for i in timed)
    return {"preset": preset, "crop": crop, "batch": batch, "timed_steps": steps, "plain_step_seconds": p,
            "engine_step_seconds": e, "speed_ratio": p / e}


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write the JSON to FILE (- = stdout only)")
    ap.add_argument("--quick", action="store_true", help="small sizes and few steps (under 2 minutes)")
    ap.add_argument("--sizes", type=int, nargs=2, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="where the shard sets go (default: a temporary folder)")
    ap.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-5d engine-vs-plain rows (~2 min idle)")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        shards, steps, mode, crop = args._child
        print(json.dumps(child_train(Path(shards), int(steps), mode, int(crop))))
        return 0
    if args.params:
        os.environ["MASKDCPT_BENCH_PARAMS"] = str(Path(args.params).resolve())
    sizes = args.sizes or ([200, 2000] if args.quick else [2000, 40000])
    steps = args.steps or (20 if args.quick else 100)
    import torch

    from pipelines.params import DataParams

    t_start = time.perf_counter()
    out: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "avx512": "avx512" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo")
                             else None},
                 "data_defaults": DataParams().model_dump(), "sizes": sizes, "steps": steps}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        runs = {}
        for n in sizes:
            make_shard_set(tmp / f"s{n}", n, 128)
            runs[n] = _run_child(str(tmp / f"s{n}"), str(steps), "stream", "0")
        out["rss_peak_mb"] = {str(n): round(r["rss_peak_mb"], 1) for n, r in runs.items()}
        out["rss_ratio"] = round(runs[sizes[-1]]["rss_peak_mb"] / runs[sizes[0]]["rss_peak_mb"], 3)
        # the pipeline's own config: the repository's training pairs (else synthesised ones) at synthesize.crop
        crop = int(_params()["synthesize"]["crop"])
        pairs = ROOT / "data" / "pairs"
        if not (pairs / "manifest.parquet").exists():
            pairs = tmp / "crop"
            make_shard_set(pairs, sizes[0], crop)
        rounds = 1 if args.quick else 3
        # 300 steps: 2.5 epochs of the default's 960 pairs (the pipeline trains 25), so later epochs count too
        default = alternate(pairs, 20 if args.quick else 300, crop, rounds)
        out["data_wait_fraction"] = default.pop("data_wait_fraction")
        out["step_seconds"] = {**default, "shards": str(pairs)}
        out["stream_vs_memory"] = out["step_seconds"].pop("ratio")
        # whole 128 px samples (twice the pixels per step to decode and to train on)
        out["step_seconds_128px"] = alternate(tmp / f"s{sizes[0]}", steps, 0, rounds, first=runs[sizes[0]])
        out["stream_vs_memory_interleaved"] = (stream_vs_memory_interleaved(pairs, 5, 10) if args.quick
                                               else stream_vs_memory_interleaved(pairs, 10, 20))
        make_shard_set(tmp / "t256", 1024, 256)
        nb = 20 if args.quick else 60
        out["images_per_second"] = {str(w): round(loader_throughput(tmp / "t256", w, nb), 1) for w in (0, 1, 2)}
    rows = [engine_vs_plain("cpu-default", 96, 8, 10 if args.quick else 30, 3)]
    if not (args.quick or args.no_paper):
        rows.append(engine_vs_plain("paper-5d", 256, 1, 12, 2))
    out["engine_vs_plain"] = rows
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json and args.json != "-":
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
