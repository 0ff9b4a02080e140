"""Benchmark evaluation: restore every held-out pair with each variant and score it (paper 5D protocol).

Inference as in the official test code, with the project's one padding rule (:mod:`maskdcpt.restore`):
reflect-pad the LQ at the bottom/right to the network's multiple, run the whole image, crop back, clamp to
[0, 1]; weights = ``params_ema``. Metrics: PSNR and SSIM on
RGB floats, no crop, averaged per image (:mod:`maskdcpt.metrics`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from maskdcpt import metrics
from maskdcpt.integrity import verify_if_recorded
from maskdcpt.models import build_backbone, load_backbone_state_dict


def load_restorer(path: str | Path, preset: str | None = None, key: str = "params_ema",
                  arch: str | None = None) -> torch.nn.Module:
    """Load a fine-tuned checkpoint (``{"params", "params_ema", "meta"}``) into a plain backbone in eval mode.

    The arch (``nafnet`` default, or ``restormer``) and preset come from the checkpoint's ``meta`` unless given.
    Raises ``FileNotFoundError`` / ``ValueError``, and ``maskdcpt.integrity.ChecksumError`` for a file that
    differs from the ``sha256.json`` beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    verify_if_recorded(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = state.get("meta") or {}
    preset = preset or meta.get("preset") or "cpu-default"
    net = build_backbone(arch or meta.get("arch") or "nafnet", preset)
    load_backbone_state_dict(net, state, key=key)
    return net.eval()


def restore_tensor(net: torch.nn.Module, lq: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """Restore (N, 3, H, W) float images in [0, 1] whole: :func:`maskdcpt.restore.restore_tensor`, the same
    padding rule as ``maskdcpt restore`` (reflect-pad bottom/right to ``multiple``, default the network's
    multiple; forward; crop back; clamp to [0, 1])."""
    from maskdcpt.restore import restore_tensor as _restore

    return _restore(net, lq, multiple)


def restore_array(net: torch.nn.Module, lq: np.ndarray) -> np.ndarray:
    """Restore one (H, W, 3) float32 image in [0, 1]; returns the same shape."""
    x = torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32)).permute(2, 0, 1)[None]
    return restore_tensor(net, x)[0].permute(1, 2, 0).cpu().numpy()


def evaluate_variants(variants: dict[str, torch.nn.Module], pairs: list[dict[str, Any]]) -> pd.DataFrame:
    """Score each variant (and the unrestored LQ, variant ``lq``) on every benchmark pair.

    Args:
        variants: ``{name: network}``.
        pairs: dicts with ``pair_id``, ``label``, ``degradation``, ``image_id``, ``lq`` and ``gt`` (H, W, 3) float.

    Returns:
        One row per (variant, pair): variant, pair_id, label, degradation, image_id, psnr, ssim.

    Raises:
        FloatingPointError: a variant produced a non-finite output; the pair and variant are named.
    """
    rows = []
    for pair in pairs:
        outputs = {"lq": pair["lq"]}
        for name, net in variants.items():
            out = restore_array(net, pair["lq"])
            if not np.isfinite(out).all():
                raise FloatingPointError(f"variant {name!r} produced a non-finite output on {pair['pair_id']}")
            outputs[name] = out
        for name, out in outputs.items():
            rows.append({"variant": name, "pair_id": pair["pair_id"], "label": pair["label"],
                         "degradation": pair["degradation"], "image_id": pair["image_id"],
                         "psnr": metrics.psnr(out, pair["gt"]), "ssim": metrics.ssim(out, pair["gt"])})
        pair["outputs"] = outputs
    return pd.DataFrame(rows)


def summarize(per_image: pd.DataFrame, main_labels: list[str], baseline: str = "scratch",
              method: str = "maskdcpt") -> dict[str, Any]:
    """Aggregate per-image scores into the DVC metrics dict.

    Layout: ``{variant: {label: {"psnr", "ssim"}, "mean": {...}, "extra": {label: {...}}}, "gain_db": {...},
    "convention": {...}}``. ``main_labels`` are the task's degradations (the mean is over them, each label's
    score being the mean over its images); other labels (e.g. extra noise levels) go under ``extra``.
    ``gain_db`` is ``method - baseline`` PSNR per main label and for the mean.
    """
    out: dict[str, Any] = {}
    for variant, frame in per_image.groupby("variant", sort=False):
        by_label = frame.groupby("label")[["psnr", "ssim"]].mean()
        entry: dict[str, Any] = {}
        for label in main_labels:
            if label in by_label.index:
                entry[label] = {m: _r(by_label.loc[label, m]) for m in ("psnr", "ssim")}
        present = [lab for lab in main_labels if lab in by_label.index]
        entry["mean"] = {m: _r(float(np.mean([by_label.loc[lab, m] for lab in present]))) for m in ("psnr", "ssim")}
        extra = {lab: {m: _r(by_label.loc[lab, m]) for m in ("psnr", "ssim")}
                 for lab in by_label.index if lab not in main_labels}
        if extra:
            entry["extra"] = extra
        out[str(variant)] = entry
    if method in out and baseline in out:
        out["gain_db"] = {lab: _r(out[method][lab]["psnr"] - out[baseline][lab]["psnr"])
                          for lab in [*main_labels, "mean"] if lab in out[method] and lab in out[baseline]}
    out["convention"] = dict(metrics.CONVENTION)
    return out


def _r(x: float) -> float:
    return round(float(x), 4) if math.isfinite(x) else float(x)


def save_grid(pair: dict[str, Any], order: list[str], path: Path) -> None:
    """Write a side-by-side PNG ``LQ | variant... | GT`` of one benchmark pair (8-bit, atomic)."""
    from maskdcpt.imageio import write_png

    panels = [pair["outputs"][name] for name in order if name in pair["outputs"]] + [pair["gt"]]
    h = min(p.shape[0] for p in panels)
    gap = np.ones((h, 4, 3), dtype=np.float32)
    row = []
    for p in panels:
        row.extend([p[:h], gap])
    write_png(path, np.concatenate(row[:-1], axis=1))
