"""Restore throughput (megapixels/s) and peak memory of tiled inference for growing image sizes.

Each size runs in a fresh subprocess (this file with ``--worker``) so that its peak resident set size (the
kernel's RSS high-water mark, ``ru_maxrss`` of the child) is that size's alone. The network is the NAFNet preset
``cpu-default`` with random weights (throughput and memory do not depend on the weight values); the input is a
random uint8 RGB image; the output is uint8 like the input.

Usage::

    python scripts/bench_restore.py                       # 512, 2048, 4096; tile 512, overlap 32
    python scripts/bench_restore.py --sizes 512 1024 --tile 256 --json reports/bench_restore.json

Prints a table and, with ``--json``, writes the figures atomically. Exit status 1 when the 4096^2 (largest)
peak RSS exceeds ``--max-ratio`` (default 1.5) times the smallest size's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _worker(size: int, tile: int, overlap: int, preset: str, threads: int) -> dict:
    import numpy as np
    import torch

    from maskdcpt.inference import restore_image
    from maskdcpt.models import build_nafnet

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_nafnet(preset).eval()
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--preset", default="cpu-default")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-ratio", type=float, default=1.5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.tile, args.overlap, args.preset, args.threads)))
        return 0
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(size), "--tile", str(args.tile), "--overlap",
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
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from maskdcpt.imageio import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(summary, indent=2) + "\n").encode())
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
