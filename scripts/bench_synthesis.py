"""Speed of the degradation synthesis: pairs/s per type at 256×256 with 1 and 2 worker processes, and the
PSNR(LQ, GT) band of every type.

    .venv/bin/python scripts/bench_synthesis.py [--pairs 60] [--crop 256] [--bands 50] [--types a,b]

A "pair" is what a shard writer pays per sample: ``degrade`` on a random crop of a packaged training photo,
then PNG encoding of LQ and GT (8-bit). 1 worker: one process; 2 workers: a ``ProcessPoolExecutor`` of 2, each
making half of the pairs (process start-up excluded: the pool is warmed first). Timings depend on the machine
and its load: say so when you report them. Target (issue 3): every single type ≥ 50 pairs/s per core and
2 workers ≥ 1.7× one.

:func:`psnr_bands` gives min/median/max of PSNR(LQ, GT) (dB, float RGB in [0, 1], peak 1, no crop; the
5D protocol) over ``n`` seeded crops, for params.yaml / GX expectations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PHOTOS: list[np.ndarray] = []


def _photos(min_side: int) -> list[np.ndarray]:
    """The packaged training-pool photos (float32 RGB) whose shorter side is ≥ ``min_side``; cached."""
    global _PHOTOS
    if not _PHOTOS:
        from maskdcpt.data.photos import collect_packaged_photos
        from maskdcpt.imageio import read_image

        sources, _ = collect_packaged_photos()
        _PHOTOS = [read_image(s.path) for s in sources if s.split == "train"]
    out = [p for p in _PHOTOS if min(p.shape[:2]) >= min_side]
    if not out:
        raise SystemExit(f"no packaged photo has both sides >= {min_side}")
    return out


def _crop(seed: int, crop: int) -> np.ndarray:
    photos = _photos(crop)
    rng = np.random.default_rng([7, seed])
    img = photos[int(rng.integers(len(photos)))]
    y = int(rng.integers(0, img.shape[0] - crop + 1))
    x = int(rng.integers(0, img.shape[1] - crop + 1))
    return np.ascontiguousarray(img[y:y + crop, x:x + crop])


def _work(name: str, seeds: list[int], crop: int) -> int:
    from maskdcpt.degradations import degrade
    from maskdcpt.data.shards import PNG_COMPRESSION
    from maskdcpt.imageio import encode_png

    gts = [_crop(s, crop) for s in seeds]  # outside the timed part in spirit: cheap slicing
    for s, gt in zip(seeds, gts):
        lq, _ = degrade(gt, name, s)
        encode_png(lq, compression=PNG_COMPRESSION)
        encode_png(gt, compression=PNG_COMPRESSION)
    return len(seeds)


def _timed(name: str, n: int, crop: int, pool: ProcessPoolExecutor | None) -> float:
    seeds = list(range(1000, 1000 + n))
    t0 = time.perf_counter()
    if pool is None:
        _work(name, seeds, crop)
    else:
        halves = [seeds[0::2], seeds[1::2]]
        sum(f.result() for f in [pool.submit(_work, name, h, crop) for h in halves])
    return n / (time.perf_counter() - t0)


def _degrade_ms(name: str, n: int, crop: int) -> float:
    """Mean milliseconds of ``degrade`` alone (no PNG encoding), one process."""
    from maskdcpt.degradations import degrade

    gts = [_crop(s, crop) for s in range(n)]
    t0 = time.perf_counter()
    for s, gt in enumerate(gts):
        degrade(gt, name, s)
    return (time.perf_counter() - t0) / n * 1000


def _warm(crop: int) -> int:
    _photos(crop)
    from maskdcpt.degradations import degrade  # noqa: F401  (import cost out of the timing)

    return os.getpid()


def bench(names: list[str], n: int = 60, crop: int = 256) -> list[dict]:
    """``[{"name", "kind", "pairs_per_s_1", "pairs_per_s_2", "speedup", "degrade_ms"}]`` (pairs/s of
    degrade + PNG encoding, wall clock; ``degrade_ms``: the degradation alone, per pair)."""
    from maskdcpt.degradations import get_degradation

    _warm(crop)
    rows = []
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_warm, [crop] * 4))
        for name in names:
            _work(name, [0], crop)  # warm caches (kernels, imports)
            one = _timed(name, n, crop, None)
            two = _timed(name, n, crop, pool)
            rows.append({"name": name, "kind": get_degradation(name).kind, "pairs_per_s_1": one,
                         "pairs_per_s_2": two, "speedup": two / one, "degrade_ms": _degrade_ms(name, n, crop)})
    return rows


def psnr_bands(n: int = 50, crop: int = 256, names: list[str] | None = None) -> dict[str, dict]:
    """PSNR(LQ, GT) band per type: ``{name: {"min", "median", "max"}}`` in dB over ``n`` seeded ``crop²``
    crops of the packaged training photos (crop ``i`` and the degradation both use seed ``i``)."""
    from maskdcpt.data.pair_recipe import psnr
    from maskdcpt.degradations import REGISTRY, degrade

    names = names or sorted(k for k, d in REGISTRY.items() if d.kind != "real")
    out = {}
    for name in names:
        vals = []
        for i in range(n):
            gt = _crop(i, crop)
            lq, _ = degrade(gt, name, i)
            vals.append(psnr(lq, gt))
        v = np.array(vals)
        out[name] = {"min": round(float(v.min()), 2), "median": round(float(np.median(v)), 2),
                     "max": round(float(v.max()), 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    from maskdcpt.degradations import REGISTRY, level_summary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=60, help="pairs per measurement")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--bands", type=int, default=50, help="crops per PSNR band (0: skip)")
    ap.add_argument("--types", default="", help="comma-separated names (default: every synthetic type)")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    names = [t for t in args.types.split(",") if t] or sorted(k for k, d in REGISTRY.items() if d.kind != "real")
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()}, crop {args.crop}, pairs {args.pairs}")
    rows = bench(names, args.pairs, args.crop)
    levels = level_summary(names)["per_type"]
    bands = psnr_bands(args.bands, args.crop, names) if args.bands else {}
    print(f"{'type':<24} {'kind':<6} {'levels':>8} {'1 worker':>9} {'2 workers':>9} {'speedup':>7} "
          f"{'deg. ms':>7}  PSNR min/median/max (dB)")
    for r in rows:
        b = bands.get(r["name"])
        band = f"{b['min']:.2f} / {b['median']:.2f} / {b['max']:.2f}" if b else ""
        lv = levels[r["name"]]
        lv = str(lv) if lv < 10 ** 7 else f"{lv:.1e}"
        print(f"{r['name']:<24} {r['kind']:<6} {lv:>8} {r['pairs_per_s_1']:>9.1f} {r['pairs_per_s_2']:>9.1f} "
              f"{r['speedup']:>7.2f} {r['degrade_ms']:>7.1f}  {band}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": rows, "psnr_bands": bands, "levels": levels}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
