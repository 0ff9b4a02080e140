"""Full-reference image quality metrics with explicit conventions.

Default convention (the paper's 5D protocol, maskdcpt-method.md §5.3): RGB, float images in [0, 1], both clamped
to [0, 1], no border crop, no uint8 quantisation, computed per image and averaged over images.

* PSNR = 10 log10(R^2 / MSE) with R = 1 (the data range), MSE over all pixels and channels.
* SSIM = Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population
  covariance, the map averaged over the 'valid' region and over channels: BasicSR's ``_ssim``. Computed with
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, which
  is that definition.
"""

from __future__ import annotations

import math

import numpy as np

CONVENTION = {"channel": "rgb", "range": "float[0,1]", "clamp": True, "crop_border": 0, "quantize": "none",
              "average": "per-image", "ssim_window": "gaussian 11x11 sigma 1.5"}


def _check(restored: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(restored, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: restored {a.shape} vs target {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C) arrays, got shape {a.shape}")
    return np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)


def psnr(restored: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of two (H, W, C) or (H, W) float images in [0, 1] (clamped first).

    Returns ``inf`` for identical images. Raises ``ValueError`` on a shape mismatch.
    """
    a, b = _check(restored, target)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(restored: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM (Gaussian 11x11, sigma 1.5, population covariance) of two float images in [0, 1], channels averaged.

    Images need both sides >= 11 px (the window); smaller ones raise ``ValueError``.
    """
    from skimage.metrics import structural_similarity

    a, b = _check(restored, target)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs both sides >= 11 px, got {a.shape[:2]}")
    return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False,
                                       channel_axis=-1 if a.ndim == 3 else None))
