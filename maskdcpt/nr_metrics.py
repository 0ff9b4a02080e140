"""No-reference image quality metrics (no ground truth needed).

* :func:`piqe`: PIQE, Venkatanath N., Praneeth D., Maruthi Chandrasekhar Bh., S. S. Channappayya and
  S. S. Medasani, "Blind image quality evaluation using perception based features", Twenty First National
  Conference on Communications (NCC), 2015, doi:10.1109/NCC.2015.7084843. Implemented here from the paper and
  MATLAB's documented ``piqe`` behaviour (8-bit grey input, 16x16 blocks, symmetric padding of partial blocks);
  it needs no trained weights. The paper reports it with pyiqa (docs/method.md §5.3). Agreement with the
  published MATLAB values on the five calibration images that the pyiqa wheel ships is pinned by
  ``tests/test_piqe_matlab.py`` (README, "PIQE").
* LPIPS, NIQE, BRISQUE and FID need pretrained weights or fitted model parameters. Nothing is downloaded at
  run time: :func:`weighted_metric_unavailable` says in one line why such a metric is skipped, and
  :func:`no_reference_scores` records that line instead of a value.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["piqe", "piqe_maps", "WEIGHTED_METRICS", "weighted_metric_unavailable", "no_reference_scores"]

# PIQE constants (paper §2-3): block size N, the MSCN Gaussian window (7x7, sigma 7/6, replicated borders as
# MATLAB's imgaussfilt) and stabiliser C = 1 (on 8-bit grey levels), the spatial-activity threshold T_A on the
# block's MSCN variance, edge segments of 6 pixels with the low-activity threshold T_E, and the score's
# stabiliser C1.
BLOCK = 16
MSCN_WINDOW = 7
MSCN_SIGMA = 7.0 / 6.0
MSCN_C = 1.0
ACTIVITY_THRESHOLD = 0.1
SEGMENT = 6
EDGE_THRESHOLD = 0.1
C1 = 1.0
#: MATLAB rgb2gray's weights (the first row of the inverse of the NTSC YIQ matrix)
RGB2GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]

#: Metrics that need weights or fitted parameters: name -> what they need.
WEIGHTED_METRICS: dict[str, str] = {
    "lpips": "an AlexNet/VGG backbone plus the LPIPS linear-layer weights",
    "niqe": "the pristine-image multivariate Gaussian model parameters",
    "brisque": "the trained SVR model and its feature scaling",
    "fid": "the Inception-v3 network weights",
}


def _gray255(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    # MATLAB's piqe works on 8-bit grey levels: other types are first quantised as im2uint8 (round half up)
    if a.dtype == np.uint8:
        f = a.astype(np.float64)
    elif a.dtype == np.uint16:
        f = np.floor(a.astype(np.float64) / 257.0 + 0.5)
    elif a.dtype.kind in "fb":
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise ValueError("image contains NaN or inf")
        f = np.floor(np.clip(f, 0.0, 1.0) * 255.0 + 0.5)
    else:
        raise ValueError(f"unsupported dtype {a.dtype}")
    if f.ndim == 3:  # MATLAB rgb2gray on uint8: BT.601 luma weights, rounded back to 8 bits
        f = np.floor(f @ RGB2GRAY + 0.5)
    return f


def piqe_maps(img: np.ndarray) -> dict[str, Any]:
    """PIQE with its intermediate block decisions (see :func:`piqe` for the definition).

    Returns ``{"score", "active", "noticeable", "noisy", "block_variance", "num_active"}`` where the block maps
    are ``(ceil(H / 16), ceil(W / 16))`` arrays (bool, bool, bool, float64).
    """
    import cv2

    g = _gray255(img)
    h, w = g.shape
    if h < BLOCK or w < BLOCK:
        raise ValueError(f"PIQE needs an image of at least {BLOCK}x{BLOCK} px, got {h}x{w}")
    # a partial block at the bottom/right is completed by symmetric padding (as MATLAB's piqe)
    g = np.pad(g, ((0, -h % BLOCK), (0, -w % BLOCK)), mode="symmetric")
    h, w = g.shape
    mu = cv2.GaussianBlur(g, (MSCN_WINDOW, MSCN_WINDOW), MSCN_SIGMA, borderType=cv2.BORDER_REPLICATE)
    var = cv2.GaussianBlur(g * g, (MSCN_WINDOW, MSCN_WINDOW), MSCN_SIGMA, borderType=cv2.BORDER_REPLICATE) - mu**2
    mscn = (g - mu) / (np.sqrt(np.abs(var)) + MSCN_C)
    nby, nbx = h // BLOCK, w // BLOCK
    blocks = mscn[: nby * BLOCK, : nbx * BLOCK].reshape(nby, BLOCK, nbx, BLOCK).transpose(0, 2, 1, 3)
    v = blocks.var(axis=(2, 3), ddof=1)
    active = v > ACTIVITY_THRESHOLD

    # Noticeable distortion (blockiness / blur): an active block with a low-activity segment on one of its four
    # edges. Each edge (N px) is cut into N - 6 + 1 overlapping 6-px segments.
    edges = np.stack([blocks[..., 0, :], blocks[..., -1, :], blocks[..., :, 0], blocks[..., :, -1]], axis=2)
    segs = np.lib.stride_tricks.sliding_window_view(edges, SEGMENT, axis=-1)  # (nby, nbx, 4, 11, 6)
    noticeable = active & (segs.std(axis=-1, ddof=1) < EDGE_THRESHOLD).any(axis=(2, 3))

    # Noise: centre-surround criterion. Centre = the two middle columns (0-based 7 and 8); the ratio r of the
    # centre's and the surround's standard deviations is compared with the block's: beta = |sigma_blk - r| /
    # max(sigma_blk, r), noisy when sigma_blk > 2 beta. The surround that reproduces MATLAB's published values
    # (within 0.005 on the five calibration images, tests/test_piqe_matlab.py) is the block without columns 7
    # and 9: column 7 removed, then column 8 of the narrowed block. Removing 7 and 8 leaves I04 0.27 off.
    c0 = BLOCK // 2 - 1
    centre = blocks[..., :, c0 : c0 + 2].reshape(nby, nbx, -1)
    surround = np.delete(blocks, [c0, c0 + 2], axis=-1).reshape(nby, nbx, -1)
    s_cen, s_sur = centre.std(axis=-1, ddof=1), surround.std(axis=-1, ddof=1)
    ratio = np.divide(s_cen, s_sur, out=np.zeros_like(s_cen), where=s_sur > 0)
    s_blk = np.sqrt(v)
    denom = np.maximum(s_blk, ratio)
    beta = np.divide(np.abs(s_blk - ratio), denom, out=np.zeros_like(denom), where=denom > 0)
    noisy = active & (s_blk > 2.0 * beta)

    # Per-block distortion D_k (paper §3): 1 - v_k for a noticeable distortion, v_k for noise, 1 for both.
    d = np.where(noticeable, 1.0 - v, 0.0) + np.where(noisy, v, 0.0)
    n_active = int(active.sum())
    score = 100.0 * (float(d[active].sum()) + C1) / (n_active + C1)
    return {"score": score, "active": active, "noticeable": noticeable, "noisy": noisy, "block_variance": v,
            "num_active": n_active}


def piqe(img: np.ndarray) -> float:
    """PIQE no-reference quality score in [0, 100], higher = worse (Venkatanath et al., NCC 2015).

    Steps (paper §2-3, MATLAB ``piqe``): the image quantised to 8 bits (as ``im2uint8``) and, for RGB, made grey as
    MATLAB's ``rgb2gray`` (BT.601 weights, rounded); a partial 16x16 block at the bottom/right completed by
    symmetric padding; MSCN coefficients ``(I - mu) / (sigma + 1)`` with a 7x7 Gaussian window (sigma 7/6,
    replicated borders); non-overlapping 16x16 blocks; a block is spatially active when the (N - 1 normalised)
    variance ``v_k`` of its MSCN coefficients exceeds 0.1; an active block is *noticeably distorted* when one of
    the 11 overlapping 6-px segments of one of its four edges has an MSCN standard deviation below 0.1, and
    *noisy* when it meets the centre-surround criterion (:func:`piqe_maps`); ``PIQE = 100 (sum_k D_k + 1) /
    (N_active + 1)`` with ``D_k = 1 - v_k`` for a noticeable distortion, ``v_k`` for noise, 1 for both. An image
    without active blocks scores 100. (As in MATLAB, a noticeably distorted block with ``v_k > 1`` lowers the
    score; natural images rarely have one.)

    Behaviour measured on packaged photos (tests/test_metrics_conventions.py): the score rises strictly with
    Gaussian noise from sigma 15 to 75 (8-bit scale) and with Gaussian blur from sigma 0.5 to 1.5, and saturates
    at 100 for strong blur (no active block left). Very mild noise (sigma <= 10) can score *below* the clean
    photo, because it fills the flat edge segments that the noticeable-distortion criterion flags.

    Args:
        img: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (alpha ignored); float in
            [0, 1] (clipped), uint8 or uint16. Both sides >= 16 px.

    Raises:
        ValueError: bad shape or dtype, non-finite values, or an image smaller than 16x16.
    """
    return float(piqe_maps(img)["score"])


def weighted_metric_unavailable(name: str, weights: str | os.PathLike | None) -> str | None:
    """One line saying why the weight-based metric ``name`` cannot be computed, or None if it could be.

    Nothing is ever downloaded: without a local weight file the metric is skipped. These metrics are not
    implemented in maskdcpt (they would come from ``pyiqa``, not a dependency), so today every call returns a
    reason; the ``None`` return is the hook for a future implementation.

    Raises:
        ValueError: ``name`` is not one of :data:`WEIGHTED_METRICS`.
    """
    name = name.lower()
    if name not in WEIGHTED_METRICS:
        raise ValueError(f"unknown weight-based metric {name!r}; known: {sorted(WEIGHTED_METRICS)}")
    if weights is None:
        return (f"{name} skipped: it needs {WEIGHTED_METRICS[name]}; no local weight file was given "
                f"(--{name}-weights PATH) and nothing is downloaded")
    if not Path(weights).is_file():
        return f"{name} skipped: weight file not found: {weights}"
    return (f"{name} skipped: a weight file was given, but maskdcpt has no {name} implementation of its own "
            "(it would come from pyiqa, which is not a dependency)")


def no_reference_scores(img: np.ndarray, metrics: Iterable[str] = ("piqe",),
                        weights: Mapping[str, str | os.PathLike] | None = None) -> dict[str, dict[str, Any]]:
    """Score one image with the named no-reference metrics.

    Returns ``{name: {"value": float | None, "skipped": str | None, "higher_is_better": bool}}``; a
    weight-based metric without usable weights has ``value=None`` and the one-line reason in ``skipped``.

    Args:
        img: see :func:`piqe`.
        metrics: names among ``piqe``, ``niqe``, ``brisque`` (``lpips``/``fid`` are full-reference/set-level
            and rejected here).
        weights: ``{metric: local weight file}``.

    Raises:
        ValueError: an unknown or non-no-reference metric name.
    """
    out: dict[str, dict[str, Any]] = {}
    weights = dict(weights or {})
    for name in metrics:
        key = name.lower()
        if key == "piqe":
            value = piqe(img)
            out[key] = {"value": value if math.isfinite(value) else None, "skipped": None, "higher_is_better": False}
        elif key in ("niqe", "brisque"):
            reason = weighted_metric_unavailable(key, weights.get(key))
            out[key] = {"value": None, "skipped": reason, "higher_is_better": False}
        else:
            raise ValueError(f"{name!r} is not a no-reference image metric here; choose from piqe, niqe, brisque")
    return out
