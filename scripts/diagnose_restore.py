"""Where a fine-tuned model's error comes from: the tone (low-frequency) part of its change or the detail part.

usage: python scripts/diagnose_restore.py [--variants scratch maskdcpt] [--splits benchmark val train]
                                          [--per-class 32] [--sigma 8] [--weights params_ema] [--json FILE]

Reads the pipeline's pairs (``data/pairs``, from ``dvc repro validate``) and fine-tuned models
(``models/finetune/<variant>/model.pt``). For every variant, split and class (benchmark: its label; training
and validation crops: their degradation, at most ``--per-class`` pairs each) it prints the mean over pairs of:

* ``lq`` and ``out``: PSNR (dB) of the degraded input and of the restored image against GT;
* ``tone_only``: PSNR of ``LQ + low(out - LQ)``, the input changed only by the low-pass part of the model's
  change (Gaussian, ``--sigma`` px): brightness, contrast and colour casts;
* ``detail_only``: PSNR of ``LQ + (out - LQ) - low(out - LQ)``, the input changed only by the rest;
* ``shift``: the mean signed change over pixels and channels (``out - LQ``, values in [0, 1] units).

A class whose ``out`` is below ``lq`` while ``detail_only`` is at or above it loses its PSNR to tone changes
(e.g. the darkening learnt for haze applied to a sharp-but-blurred photo), not to failed detail restoration.
Writes the rows as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def split_change(lq: np.ndarray, out: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The model's change ``out - lq`` of (H, W, 3) float images split into (low-pass, rest); Gaussian of
    ``sigma`` px, borders reflected. Their sum is the change."""
    import cv2

    change = (out - lq).astype(np.float32)
    low = cv2.GaussianBlur(change, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return low, change - low


def decompose(lq: np.ndarray, out: np.ndarray, gt: np.ndarray, sigma: float) -> dict[str, float]:
    """PSNR (dB) of LQ, output, LQ + tone part and LQ + detail part of the change against GT (images in [0, 1],
    results clamped to [0, 1]), and the mean signed change."""
    from maskdcpt.metrics import psnr

    low, high = split_change(lq, out, sigma)
    return {"lq": psnr(lq, gt), "out": psnr(out, gt), "tone_only": psnr(np.clip(lq + low, 0, 1), gt),
            "detail_only": psnr(np.clip(lq + high, 0, 1), gt), "shift": float((out - lq).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=["scratch", "maskdcpt"])
    ap.add_argument("--splits", nargs="+", default=["benchmark", "val", "train"])
    ap.add_argument("--per-class", type=int, default=32, help="training/validation pairs per class")
    ap.add_argument("--sigma", type=float, default=8.0, help="low-pass Gaussian sigma in px")
    ap.add_argument("--weights", default="params_ema", help="params_ema (what evaluate scores) or params")
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from maskdcpt.data.stream import SplitPairs
    from maskdcpt.eval.benchmark import load_restorer, restore_array
    from pipelines.params import load_params

    root = Path(args.root)
    params = load_params(root / "params.yaml")
    manifest_path = root / "data" / "pairs" / "manifest.parquet"
    if not manifest_path.is_file():
        raise SystemExit(f"no pairs at {manifest_path}: run `dvc repro validate` first")
    manifest = pd.read_parquet(manifest_path)
    nets = {v: load_restorer(root / "models" / "finetune" / v / "model.pt", key=args.weights) for v in args.variants}
    rows = []
    for split in args.splits:
        counts: dict[str, int] = {}
        for pair in SplitPairs(manifest, root / "data" / "pairs", split, params["data"]):
            cls = pair["label"] if split == "benchmark" else pair["degradation"]
            if split != "benchmark":
                if counts.get(cls, 0) >= args.per_class:
                    continue
                counts[cls] = counts.get(cls, 0) + 1
            for v, net in nets.items():
                with torch.no_grad():
                    out = restore_array(net, pair["lq"])
                rows.append({"variant": v, "split": split, "class": cls, "image_id": pair["image_id"],
                             **decompose(pair["lq"], out, pair["gt"], args.sigma)})
    df = pd.DataFrame(rows)
    table = df.groupby(["variant", "split", "class"], sort=False).agg(
        n=("out", "size"), lq=("lq", "mean"), out=("out", "mean"), tone_only=("tone_only", "mean"),
        detail_only=("detail_only", "mean"), shift=("shift", "mean")).round(3)
    print(table.to_string())
    if args.json:
        Path(args.json).write_text(json.dumps({"sigma": args.sigma, "weights": args.weights, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
