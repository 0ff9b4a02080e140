"""One degraded/clean pair: its seed, the photo table it is cut from, how it is made and scored, the manifest
columns that record it, and rebuilding it from its manifest row (:func:`regenerate_pair`). The seeding rules are
documented in :mod:`maskdcpt.data.synthesize`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from maskdcpt.data.shard_jobs import GT_BIT_DEPTH
from maskdcpt.degradations import degrade
from maskdcpt.imageio import file_sha256, image_info, quantize, read_image

__all__ = ["PAIR_COLUMNS", "SELECT_STREAM", "TONE_STREAM", "pair_seed", "psnr", "load_photo", "photo_path",
           "photo_table", "tone_config", "draw_tone", "apply_tone", "tone_of", "make_pair", "pair_frame",
           "regenerate_pair"]

PAIR_COLUMNS = [
    "pair_id", "split", "image_id", "image_sha256", "image_png_sha256", "degradation", "class_index",
    "params", "seed", "crop_y", "crop_x", "height", "width", "shard", "key", "psnr_lq_gt", "lq_differs",
    "lq_bit_depth", "gt_tone",
]
SELECT_STREAM = 2  # spawn key reserved for photo/crop selection (degrade uses 0 and 1)
TONE_STREAM = 3    # spawn key of the clean crop's tone draw (:func:`draw_tone`)
TONE_KEYS = ("prob", "gamma", "contrast", "shift")


def tone_config(cfg: Mapping[str, Any] | None) -> tuple[float, float, float, float, float] | None:
    """A checked tone config as ``(prob, gamma, contrast low, contrast high, shift)``, or ``None`` when it draws
    nothing (``None`` or ``prob`` 0).

    ``cfg``: ``prob`` (share of crops changed, [0, 1]), ``gamma`` (0 ≤ g ≤ 5: gamma = exp(U(−g, g))), ``contrast``
    ([low, high] with 0 < low ≤ high: contrast factor U(low, high)), ``shift`` (s ≥ 0: mean shift U(−s, s)).
    Raises ``ValueError`` for missing, unknown, non-finite or out-of-range keys.
    """
    if cfg is None:
        return None
    cfg = dict(cfg)
    if set(cfg) != set(TONE_KEYS):
        raise ValueError(f"tone config needs exactly the keys {TONE_KEYS}, got {sorted(cfg)}")
    if not isinstance(cfg["contrast"], (list, tuple)) or len(cfg["contrast"]) != 2:
        raise ValueError(f"tone config contrast must be [low, high], got {cfg['contrast']!r}")
    prob, gamma, shift = float(cfg["prob"]), float(cfg["gamma"]), float(cfg["shift"])
    low, high = (float(v) for v in cfg["contrast"])
    finite = all(math.isfinite(v) for v in (prob, gamma, shift, low, high))
    if not (finite and 0.0 <= prob <= 1.0 and 0.0 <= gamma <= 5.0 and shift >= 0.0 and 0.0 < low <= high):
        raise ValueError(f"tone config out of range: {cfg} (finite; prob in [0, 1], gamma in [0, 5], "
                         "shift >= 0, 0 < contrast low <= high)")
    return None if prob == 0.0 else (prob, gamma, low, high, shift)


def draw_tone(seed: int, cfg: Mapping[str, Any] | None) -> dict[str, float]:
    """The tone change of the clean crop of pair seed ``seed`` under ``cfg`` (:func:`tone_config`): ``{}`` (crop
    left as it is) or ``{"gamma", "contrast", "shift"}`` for :func:`apply_tone`. Drawn from
    ``SeedSequence(seed, spawn_key=(TONE_STREAM,))``, so the crop, degradation parameters and noise of the pair
    do not change with ``cfg``. Raises ``ValueError`` as :func:`tone_config`.
    """
    checked = tone_config(cfg)
    if checked is None:
        return {}
    prob, gamma, low, high, shift = checked
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(TONE_STREAM,)))
    if rng.random() >= prob:
        return {}
    return {"gamma": float(math.exp(rng.uniform(-gamma, gamma))), "contrast": float(rng.uniform(low, high)),
            "shift": float(rng.uniform(-shift, shift))}


def apply_tone(gt: np.ndarray, tone: Mapping[str, float]) -> np.ndarray:
    """``gt`` (H, W, 3) float in [0, 1] with the tone ``tone`` (:func:`draw_tone`): ``y = gt ** gamma``, then
    ``m + shift + contrast · (y − m)`` with ``m`` the mean of ``y`` over all pixels and channels, clipped to
    [0, 1] and rounded to 8 bits (the clean crop is stored as 8-bit, and the LQ is made from exactly that).
    ``{}`` returns ``gt`` unchanged. float32."""
    if not tone:
        return gt
    y = np.asarray(gt, np.float64) ** float(tone["gamma"])
    m = float(y.mean())
    return quantize(m + float(tone["shift"]) + float(tone["contrast"]) * (y - m), GT_BIT_DEPTH)


def pair_seed(seed: int, class_index: int, index: int) -> int:
    """The training pair seed ``SeedSequence([seed, class_index, index]).generate_state(1)[0]`` (uint32)."""
    return int(np.random.SeedSequence([int(seed), int(class_index), int(index)]).generate_state(1)[0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (peak 1, float64 MSE over all pixels and channels, no
    quantisation, no border crop). ``inf`` for identical images."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def load_photo(path: str) -> np.ndarray:
    """The prepared photo as float32 (H, W, 3), cached by (path, mtime, size); read-only array."""
    st = os.stat(path)
    return _load_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    img = read_image(path, max_pixels=None)
    img.setflags(write=False)
    return img


def photo_path(row: Mapping[str, Any], prepared_dir: str | os.PathLike | None) -> Path:
    if prepared_dir is not None:
        return Path(prepared_dir) / "images" / f"{row['image_id']}.png"
    if "path" in row and isinstance(row["path"], str) and row["path"]:
        if not Path(row["path"]).is_absolute():
            raise ValueError(f"image {row['image_id']}: path {row['path']!r} is relative to its manifest's folder; "
                             "pass prepared_dir")
        return Path(row["path"])
    raise ValueError("images need an absolute 'path' column, or pass prepared_dir")


def photo_table(images: pd.DataFrame, prepared_dir, *, keep_split: str | None, drop_split: str | None) -> list[dict]:
    if not isinstance(images, pd.DataFrame):
        images = pd.DataFrame(images)
    for col in ("image_id", "sha256"):
        if col not in images.columns:
            raise ValueError(f"images lacks the column {col!r}")
    df = images
    if "split" in df.columns:
        if keep_split is not None:
            df = df[df["split"] == keep_split]
        if drop_split is not None:
            df = df[df["split"] != drop_split]
    if df["image_id"].duplicated().any():
        raise ValueError("images has duplicated image_id values")
    rows = []
    for r in df.sort_values("image_id", kind="stable").to_dict("records"):
        p = photo_path(r, prepared_dir)
        if {"width", "height"} <= set(r) and not pd.isna(r["width"]) and not pd.isna(r["height"]):
            w, h = int(r["width"]), int(r["height"])
        else:
            info = image_info(p)
            w, h = info["width"], info["height"]
        rows.append({"image_id": str(r["image_id"]), "sha256": str(r["sha256"]),
                     "png_sha256": r.get("png_sha256"), "path": str(p), "width": w, "height": h})
    return rows


def tone_of(row: Mapping[str, Any]) -> dict[str, float]:
    """The recorded tone of a manifest row (column ``gt_tone``: JSON text or a mapping; absent, NaN, ``""`` or
    ``"{}"``: none). Raises ``TypeError`` for any other value."""
    value = row.get("gt_tone")
    if isinstance(value, str):
        return json.loads(value) if value else {}
    if isinstance(value, Mapping):
        return dict(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    raise TypeError(f"gt_tone must be JSON text or a mapping, got {type(value).__name__}")


def make_pair(gt: np.ndarray, degradation: str, seed: int, params, lq_bit_depth: int):
    lq, full = degrade(gt, degradation, seed, params=params)
    stored_lq = quantize(lq, lq_bit_depth)
    stored_gt = quantize(gt, GT_BIT_DEPTH)
    return lq, full, psnr(lq, gt), bool(not np.array_equal(stored_lq, stored_gt))


def pair_frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    cols = list(dict.fromkeys(columns + ["shard"]))
    df = pd.DataFrame(rows, columns=cols)
    ints = {c: "int64" for c in ("class_index", "seed", "crop_y", "crop_x", "height", "width", "lq_bit_depth")}
    if len(df):
        df = df.astype({**ints, "psnr_lq_gt": "float64", "lq_differs": "bool"})
    return df[[c for c in cols]]


def regenerate_pair(
    row: Mapping[str, Any] | pd.Series,
    prepared_dir: str | os.PathLike,
    *,
    quantized: bool = True,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a pair from its manifest row and the prepared photo ``prepared_dir/images/<image_id>.png``.

    Returns ``(lq, gt)``, float32 ``(height, width, 3)``. With ``quantized=True`` (default) the LQ is rounded
    to the row's ``lq_bit_depth`` exactly as the shard stores it, so both arrays equal the shard's decoded
    ``lq``/``gt`` bit for bit; with ``quantized=False`` the un-quantised float LQ is returned. A recorded
    ``gt_tone`` is applied to the crop first (:func:`apply_tone`).
    With ``verify`` the prepared PNG's sha256 is checked against ``image_png_sha256`` when the row has one
    (``ValueError`` on mismatch).
    """
    row = dict(row)
    path = Path(prepared_dir) / "images" / f"{row['image_id']}.png"
    want = row.get("image_png_sha256")
    if verify and isinstance(want, str) and want and file_sha256(path) != want:
        raise ValueError(f"{path} does not match the manifest's image_png_sha256")
    img = load_photo(str(path))
    y, x, h, w = (int(row[k]) for k in ("crop_y", "crop_x", "height", "width"))
    gt = np.ascontiguousarray(img[y:y + h, x:x + w])
    if gt.shape[:2] != (h, w):
        raise ValueError(f"crop {h}x{w} at ({y}, {x}) does not fit {row['image_id']} {img.shape[:2]}")
    gt = apply_tone(gt, tone_of(row))
    params = row["params"]
    params = json.loads(params) if isinstance(params, str) else dict(params)
    lq, _ = degrade(gt, row["degradation"], int(row["seed"]), params=params)
    if quantized:
        lq = quantize(lq, int(row.get("lq_bit_depth", 8)))
    return lq, gt.copy()
