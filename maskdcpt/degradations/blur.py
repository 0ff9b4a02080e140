"""Linear motion blur (a GoPro-like stand-in: the 5D deblurring set is GoPro, which has no synthesis code)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .base import Degradation

__all__ = ["MotionBlur", "motion_kernel"]


def motion_kernel(length: float, angle: float, size: int | None = None, normalize: str = "sum") -> np.ndarray:
    """A linear motion-blur kernel: a line segment of ``length`` px through the kernel centre.

    Parameters
    ----------
    length : float
        Segment length in pixels (≥ 1). Non-integer/even lengths are handled with fractional end weights, so
        the segment is always centred (no sub-pixel shift of the image).
    angle : float
        Direction in degrees, counter-clockwise from the +x axis as displayed (0 = horizontal,
        90 = vertical). The horizontal segment is rotated with ``cv2.warpAffine`` (bilinear).
    size : int, optional
        Odd kernel side; default ``2·ceil(length/2) + 1``.
    normalize : ``"sum"`` or ``"max"``
        ``"sum"``: the kernel sums to 1 (blur preserves mean intensity); ``"max"``: peak value 1.

    Returns
    -------
    numpy.ndarray
        float32 ``(size, size)``, non-negative.
    """
    import cv2

    length = float(length)
    if not length >= 1.0:
        raise ValueError(f"length must be >= 1, got {length}")
    half = length / 2.0
    ks = int(size) if size is not None else 2 * int(math.ceil(half)) + 1
    if ks % 2 == 0 or ks < 1:
        raise ValueError(f"kernel size must be odd and positive, got {ks}")
    c = ks // 2
    x = np.arange(ks, dtype=np.float64) - c
    weights = np.clip(np.minimum(x + 0.5, half) - np.maximum(x - 0.5, -half), 0.0, 1.0)
    k = np.zeros((ks, ks), np.float64)
    k[c] = weights
    if float(angle) % 180.0 != 0.0:
        m = cv2.getRotationMatrix2D((float(c), float(c)), float(angle), 1.0)
        k = cv2.warpAffine(k, m, (ks, ks), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    k = np.clip(k, 0.0, None)
    if normalize == "sum":
        k = k / k.sum()
    elif normalize == "max":
        k = k / k.max()
    else:
        raise ValueError("normalize must be 'sum' or 'max'")
    return k.astype(np.float32)


class MotionBlur(Degradation):
    """Uniform linear motion blur: ``lq = clip(gt ⊛ k, 0, 1)`` with a straight-line kernel ``k``.

    * ``length`` ∈ [7, 35] px (integer, uniform), ``angle`` ∈ [0, 180) degrees (uniform; a line has no
      direction sign). ``k`` is :func:`motion_kernel` (sums to 1), applied per channel with
      ``cv2.filter2D`` and ``BORDER_REFLECT_101`` (OpenCV's default reflect border, the one BasicSR uses for
      blur kernels). No noise is added; blur of [0, 1] data stays in [0, 1].
    * ``levels`` = 0 (continuous angle).

    Source: standard linear-motion PSF (e.g. Kupyn et al., DeblurGAN, 2018, use random-trajectory kernels;
    this is the simpler straight-line case). The 5D paper trains on GoPro (real frame averaging); there is
    no synthesis code to copy (maskdcpt-method.md §4.3).
    """

    name = "motion_blur"
    kind = "single"
    levels = 0
    param_ranges = {"length": [7, 35], "angle": [0.0, 180.0]}
    source = "linear motion PSF; 5D trains on GoPro (no synthesis code in the paper)"

    def __init__(self, length_range=(7, 35), angle_range=(0.0, 180.0)):
        self.length_range = tuple(int(v) for v in length_range)
        self.angle_range = tuple(float(v) for v in angle_range)
        self.param_ranges = {"length": list(self.length_range), "angle": list(self.angle_range)}

    def sample_params(self, rng: np.random.Generator) -> dict:
        lo, hi = self.length_range
        return {
            "length": int(rng.integers(lo, hi + 1)),
            "angle": float(rng.uniform(*self.angle_range)),
        }

    def kernel(self, params: Mapping[str, Any]) -> np.ndarray:
        """The kernel for ``params`` (float32, sums to 1)."""
        return motion_kernel(params["length"], params["angle"])

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        import cv2

        k = self.kernel(params)
        out = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)
        return np.clip(out, 0.0, 1.0)
