"""Restore speed (megapixels/s) of each inference path, and peak memory of tiled restoration.

``speed`` (default): :func:`maskdcpt.restore.restore_image` on a random uint8-valued float RGB image of
``--size`` squared, whole and in ``--tile`` tiles, for each NAFNet preset (``cpu-default``, the pipeline's
default model, and ``paper-5d``) and each execution path of :func:`maskdcpt.fastpaths.prepare_for_inference`:

* ``eager``: the plain NCHW network, the reference and the fallback;
* ``nhwc``: a channels-last copy (weights and activations NHWC);
* ``onnx``: the network exported to ONNX (dynamic H/W) and run by ONNX Runtime's CPU provider;
* ``openvino``: the same ONNX graph compiled by OpenVINO's CPU plugin (fp32 pinned, one compile per shape);
* ``compile``: ``torch.compile`` (inductor) of the NHWC copy (``--modes`` opt-in: it compiles per tile shape).

Each cell is the median of ``--repeats`` timed runs after one warm-up run (which also pays the one-off export
or compilation, reported as ``prepare_s`` + ``warmup_s``); the timed runs of all paths are interleaved, so that
the load of a shared machine hits each path alike. Every path's output is compared with the eager path's
output of the same tiling: the maximum absolute difference must be <= ``--tol`` (1e-4), else exit status 1.
Weights are random with the blocks' ``beta``/``gamma`` non-zero, so every block contributes (throughput does not
depend on the values). On a shared machine, run it several times and compare medians; the load average is
recorded.

``memory``: each size in a fresh subprocess so that its peak RSS (``ru_maxrss``) is that size's alone; exit
status 1 when the largest size's peak exceeds ``--max-ratio`` times the smallest's (tiling bounds memory).

Usage::

    python scripts/bench_restore.py --json reports/bench_restore.json              # speed, both presets
    python scripts/bench_restore.py --presets cpu-default --size 1024 --tile 512 --repeats 5
    python scripts/bench_restore.py memory --sizes 512 2048 4096 --tile 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _net(preset: str):
    import torch

    from maskdcpt.models import build_nafnet

    torch.manual_seed(0)
    net = build_nafnet(preset).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


def speed(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from maskdcpt.fastpaths import prepare_for_inference
    from maskdcpt.restore import restore_image

    if args.threads:
        torch.set_num_threads(args.threads)
    img = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3)).astype(np.float32) / 255.0
    mp = args.size * args.size / 1e6
    rows, failed = [], []
    tilings = (("whole", None), (f"tile{args.tile}", args.tile))
    for preset in args.presets:
        net = _net(preset)
        runners, prepare_s, warmup_s, outs = {}, {}, {}, {}
        for mode in args.modes:
            t0 = time.perf_counter()
            runners[mode] = prepare_for_inference(net, mode)
            prepare_s[mode] = time.perf_counter() - t0
            for tiling, tile in tilings:  # warm-up: pays the one-off export / compilation per shape
                t0 = time.perf_counter()
                outs[mode, tiling] = restore_image(runners[mode], img, tile=tile, overlap=args.overlap)
                warmup_s[mode, tiling] = time.perf_counter() - t0
        times: dict[tuple[str, str], list[float]] = {key: [] for key in outs}
        for _ in range(args.repeats):  # interleaved, so that a shared machine's load hits every path alike
            for mode in args.modes:
                for tiling, tile in tilings:
                    t0 = time.perf_counter()
                    restore_image(runners[mode], img, tile=tile, overlap=args.overlap)
                    times[mode, tiling].append(time.perf_counter() - t0)
        for mode in args.modes:
            runner = runners[mode]
            actual = "eager" if runner is net else getattr(runner, "maskdcpt_info", {}).get("fast_path", mode)
            for tiling, _ in tilings:
                diff = float(np.abs(outs[mode, tiling] - outs["eager", tiling]).max())
                med = statistics.median(times[mode, tiling])
                row = {"preset": preset, "mode": mode, "ran_as": actual, "tiling": tiling, "size": args.size,
                       "median_s": round(med, 3), "mpix_per_s": round(mp / med, 4),
                       "runs_s": [round(t, 3) for t in times[mode, tiling]], "prepare_s": round(prepare_s[mode], 2),
                       "warmup_s": round(warmup_s[mode, tiling], 2), "max_abs_diff_vs_eager": diff,
                       "ok": bool(diff <= args.tol)}
                rows.append(row)
                if not row["ok"]:
                    failed.append(row)
                print(f"{preset:>12} {mode:>8} ({actual:>7}) {tiling:>8}  {med:8.3f} s  {mp / med:7.4f} MP/s  "
                      f"max|diff| {diff:.2e}  (prepare {prepare_s[mode]:.1f} s, warm-up "
                      f"{warmup_s[mode, tiling]:.1f} s)", flush=True)
        del runners, outs
    summary = {"rows": rows, "tol": args.tol, "ok": not failed, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "cpu_flags": _cpu_flags(), "machine": platform.processor() or
               platform.machine(), "load_average": os.getloadavg(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.json:
        from maskdcpt.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(summary, indent=2) + "\n").encode())
    if failed:
        print(f"FAILED: {len(failed)} path(s) differ from eager by more than {args.tol}", file=sys.stderr)
    return 0 if not failed else 1


def _memory_worker(size: int, tile: int, overlap: int, preset: str, threads: int) -> dict:
    import numpy as np
    import torch

    from maskdcpt.restore import restore_image

    if threads:
        torch.set_num_threads(threads)
    net = _net(preset)
    img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = restore_image(net, img, tile=tile, overlap=overlap, device="cpu")
    seconds = time.perf_counter() - t0
    assert out.shape == img.shape and out.dtype == img.dtype
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"size": size, "megapixels": size * size / 1e6, "seconds": round(seconds, 3),
            "mpix_per_s": round(size * size / 1e6 / seconds, 4), "peak_rss_mib": round(peak_kib / 1024, 1),
            "rss_before_restore_mib": round(rss_before / 1024, 1), "tile": tile, "overlap": overlap,
            "preset": preset, "threads": torch.get_num_threads()}


def memory(args: argparse.Namespace) -> int:
    if args.worker is not None:
        print(json.dumps(_memory_worker(args.worker, args.tile, args.overlap, args.preset, args.threads)))
        return 0
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "memory", "--worker", str(size), "--tile", str(args.tile), "--overlap",
               str(args.overlap), "--preset", args.preset, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 2
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{size:>5}^2  {r['megapixels']:7.2f} MP  {r['seconds']:8.2f} s  {r['mpix_per_s']:7.4f} MP/s  "
              f"peak RSS {r['peak_rss_mib']:8.1f} MiB (before restore {r['rss_before_restore_mib']:.1f})", flush=True)
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    summary = {"rows": rows, "peak_rss_ratio_largest_vs_smallest": round(ratio, 3), "max_ratio": args.max_ratio,
               "ok": ratio <= args.max_ratio, "cpu_count": os.cpu_count()}
    print(f"peak RSS {rows[-1]['size']}^2 / {rows[0]['size']}^2 = {ratio:.3f} (target <= {args.max_ratio})")
    if args.json:
        from maskdcpt.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(summary, indent=2) + "\n").encode())
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("speed", "memory") else "speed"
    p = argparse.ArgumentParser(prog=f"bench_restore.py {command}", description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None)
    if command == "speed":
        p.add_argument("--presets", nargs="+", default=["cpu-default", "paper-5d"])
        p.add_argument("--modes", nargs="+", default=["eager", "nhwc", "onnx", "openvino"],
                       choices=["eager", "nhwc", "onnx", "openvino", "compile"])
        p.add_argument("--size", type=int, default=1024)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--tol", type=float, default=1e-4)
        args = p.parse_args(argv)
        if args.modes[0] != "eager":
            args.modes = ["eager", *[m for m in args.modes if m != "eager"]]  # the reference runs first
        return speed(args)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096])
    p.add_argument("--preset", default="cpu-default")
    p.add_argument("--max-ratio", type=float, default=1.5)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return memory(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
