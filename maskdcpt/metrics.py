"""Full-reference image quality metrics with explicit conventions.

Default convention (the paper's 5D protocol, docs/method.md §5.3): RGB, float images in [0, 1], both clamped
to [0, 1], no border crop, no uint8 quantisation, computed per image and averaged over images.

* PSNR = 10 log10(R^2 / MSE) with R = 1 (the data range), MSE over all pixels and channels.
* SSIM = Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population
  covariance, the map averaged over the 'valid' region and over channels: BasicSR's ``_ssim``. Computed with
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, which
  is that definition.

Other conventions found in the literature are explicit keyword arguments of :func:`psnr` and :func:`ssim`
(BasicSR ``calculate_psnr``/``calculate_ssim`` options; their order of operations is kept: clamp, quantise,
crop the border, convert to Y, score):

* ``channel="y"``: score the BT.601 limited-range luma of the RGB image, as BasicSR ``test_y_channel: true``
  (``rgb2ycbcr(img, y_only=True)``, ITU-R BT.601): on [0, 1] inputs
  ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``, so Y lies in [16/255, 235/255]; the data range
  stays 1 (BasicSR scores Y on the 0-255 scale with R = 255, the same numbers). Y is not rounded.
* ``quantize="uint8"``: both images are first rounded to 8-bit code values, ``q = round(255 * x)`` (round half
  to even, after clamping), as BasicSR's ``tensor2img`` does before ``image_range: 255`` metrics (the paper's
  OOD-denoising protocol). Scores are then computed on ``q / 255`` with R = 1, which gives exactly the same
  PSNR and SSIM as computing on ``q`` with R = 255 (both are invariant to a common scale of values and
  constants ``C1 = (K1 R)^2``, ``C2 = (K2 R)^2``).
* ``crop_border=k``: ``k`` pixels are removed from each of the four sides before scoring
  (``img[k:-k, k:-k]``, BasicSR ``crop_border``).

Every stored number should carry its convention: :func:`convention` returns the dict for a call's keyword
arguments (the same keywords as :func:`psnr` / :func:`ssim`); :data:`CONVENTION` is the default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["CONVENTION", "CHANNELS", "QUANTIZE", "Y_FORMULA", "convention", "psnr", "ssim", "rgb_to_y", "score"]

CHANNELS = ("rgb", "y")
QUANTIZE = ("none", "uint8")

#: The luma formula used with ``channel="y"`` (ITU-R BT.601, limited range, BasicSR ``rgb2ycbcr``).
Y_FORMULA = "BT.601 limited range: Y = 16/255 + (65.481 R + 128.553 G + 24.966 B)/255, RGB in [0,1]"


def convention(channel: str = "rgb", quantize: str = "none", crop_border: int = 0,
               clamp: bool = True) -> dict[str, Any]:
    """The convention dict of a :func:`psnr` / :func:`ssim` call with these keyword arguments.

    Keys: ``channel`` (``rgb``/``y``), ``range`` (``float[0,1]`` or ``uint8[0,255]``), ``clamp`` (bool),
    ``crop_border`` (pixels per side), ``quantize`` (``none``/``uint8``), ``average`` (``per-image``),
    ``ssim_window``, and ``y_formula`` when ``channel == "y"``. JSON-serialisable; store it beside every
    number (docs/method.md §8).

    Raises:
        ValueError: an unknown channel or quantisation, or a negative ``crop_border``.
    """
    _validate(channel, quantize, crop_border)
    conv = {"channel": channel, "range": "float[0,1]" if quantize == "none" else "uint8[0,255]",
            "clamp": bool(clamp), "crop_border": int(crop_border), "quantize": quantize,
            "average": "per-image", "ssim_window": "gaussian 11x11 sigma 1.5"}
    if channel == "y":
        conv["y_formula"] = Y_FORMULA
    return conv


def _validate(channel: str, quantize: str, crop_border: int) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if int(crop_border) != crop_border or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")


#: The default convention (the paper's 5D protocol); equal to ``convention()``.
CONVENTION = convention()


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 limited-range luma of an RGB image in [0, 1] (BasicSR ``rgb2ycbcr(y_only=True)``).

    ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``; input ``(H, W, 3)`` float, output ``(H, W)``
    float64 in [16/255, 235/255] for inputs in [0, 1]. Raises ``ValueError`` unless the last axis has 3
    channels.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs an (H, W, 3) RGB image, got shape {a.shape}")
    return (16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def _prepare(restored: np.ndarray, target: np.ndarray, channel: str, quantize: str, crop_border: int,
             clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    _validate(channel, quantize, crop_border)
    a, b = np.asarray(restored, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: restored {a.shape} vs target {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C) arrays, got shape {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("images contain NaN or inf")
    if clamp or quantize == "uint8":
        a, b = np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)
    if quantize == "uint8":
        a, b = np.round(a * 255.0) / 255.0, np.round(b * 255.0) / 255.0
    k = int(crop_border)
    if k:
        if min(a.shape[:2]) <= 2 * k:
            raise ValueError(f"crop_border={k} leaves nothing of a {a.shape[0]}x{a.shape[1]} image")
        a, b = a[k:-k, k:-k], b[k:-k, k:-k]
    if channel == "y":
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def psnr(restored: np.ndarray, target: np.ndarray, data_range: float = 1.0, *, channel: str = "rgb",
         quantize: str = "none", crop_border: int = 0, clamp: bool = True) -> float:
    """PSNR in dB of two (H, W, C) or (H, W) images in [0, 1]: ``10 log10(R^2 / MSE)``.

    Args:
        restored, target: same shape, float in [0, 1] (clamped first unless ``clamp=False``).
        data_range: R (1 for [0, 1] images).
        channel: ``"rgb"`` (all channels) or ``"y"`` (BT.601 luma, see :func:`rgb_to_y`; needs 3 channels).
        quantize: ``"none"`` or ``"uint8"`` (round to 8-bit code values first; see the module docstring).
        crop_border: pixels removed from each side before scoring.
        clamp: clamp both images to [0, 1] (always done with ``quantize="uint8"``).

    Returns ``inf`` for identical images. Raises ``ValueError`` on a shape mismatch, non-finite values or a bad
    convention argument. The convention of the call is ``convention(channel, quantize, crop_border, clamp)``.
    """
    a, b = _prepare(restored, target, channel, quantize, crop_border, clamp)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(restored: np.ndarray, target: np.ndarray, data_range: float = 1.0, *, channel: str = "rgb",
         quantize: str = "none", crop_border: int = 0, clamp: bool = True) -> float:
    """SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5, population covariance, K1 0.01, K2 0.03) of two
    images in [0, 1], the map averaged over its valid region and over channels (BasicSR ``_ssim``).

    Same convention arguments as :func:`psnr`. The image left after ``crop_border`` needs both sides >= 11 px
    (the window); smaller ones raise ``ValueError``.
    """
    from skimage.metrics import structural_similarity

    a, b = _prepare(restored, target, channel, quantize, crop_border, clamp)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs both sides >= 11 px, got {a.shape[:2]}")
    return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False,
                                       channel_axis=-1 if a.ndim == 3 else None))


def score(restored: np.ndarray, target: np.ndarray, **conv: Any) -> dict[str, Any]:
    """``{"psnr": dB, "ssim": float, "convention": dict}`` of one pair under the keyword convention ``conv``
    (``channel``, ``quantize``, ``crop_border``, ``clamp``; see :func:`psnr`)."""
    return {"psnr": psnr(restored, target, **conv), "ssim": ssim(restored, target, **conv),
            "convention": convention(**conv)}
