"""Motion blur (linear and camera-shake kernels) and defocus blur (disk kernels).

The 5D deblurring set is GoPro and the 12D defocus sets DPDD/LFDOF, which have no synthesis code
(docs/method.md §4.3); these are the standard synthetic stand-ins."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .base import Degradation

__all__ = ["MotionBlur", "DefocusBlur", "motion_kernel", "shake_kernel", "disk_kernel", "MOTION_LENGTHS",
           "DEFOCUS_RADII"]

MOTION_LENGTHS = list(range(7, 36))  # px, 29 values
DEFOCUS_RADII = [1.0 + 0.5 * k for k in range(15)]  # px: 1.0, 1.5, ..., 8.0
_SUPERSAMPLE = 8


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


def shake_kernel(length: float, angle: float, traj_seed: int, steps: int = 64, shake: float = 0.6,
                 size: int | None = None) -> np.ndarray:
    """A camera-shake blur kernel: a random smooth 2-D trajectory rasterised and normalised to sum 1.

    Trajectory (a simplified Boracchi & Foi, "Modeling the performance of image restoration from motion
    blur", TIP 2012, random-walk model, as used by DeblurGAN): ``steps`` unit steps starting in direction
    ``angle`` (degrees); each step's heading turns by ``N(0, shake²)`` rad (``numpy`` generator seeded with
    ``traj_seed``), so the path wanders and curls like a hand tremor. The path is then scaled so its larger
    extent is ``length`` px, centred at its centroid, drawn as an anti-aliased poly-line on an
    ``8×`` supersampled canvas (``cv2.polylines``, ``LINE_AA``) and area-downsampled (``cv2.resize``,
    ``INTER_AREA``): every pixel's value is proportional to the time the camera spends over it.

    Returns float32 ``(size, size)`` (default ``size`` = ``length`` rounded up to odd, + 2), ≥ 0, sum 1.
    """
    import cv2

    length = float(length)
    if not length >= 1.0:
        raise ValueError(f"length must be >= 1, got {length}")
    rng = np.random.default_rng(int(traj_seed))
    heading = math.radians(float(angle)) + np.cumsum(rng.normal(0.0, shake, steps))
    pts = np.concatenate([[[0.0, 0.0]], np.cumsum(np.stack([np.cos(heading), -np.sin(heading)], 1), 0)])
    pts -= pts.mean(axis=0)
    extent = float(np.max(pts.max(0) - pts.min(0)))
    pts *= (length - 1.0) / max(extent, 1e-9)
    ks = int(size) if size is not None else (int(math.ceil(length)) | 1) + 2
    if ks % 2 == 0 or ks < 1:
        raise ValueError(f"kernel size must be odd and positive, got {ks}")
    s = _SUPERSAMPLE
    canvas = np.zeros((ks * s, ks * s), np.uint8)
    shift = 4  # cv2 fixed-point bits for sub-pixel vertices
    centre = (ks * s - 1) / 2.0
    poly = np.round((pts * s + centre) * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [poly], False, 255, thickness=max(1, s // 2), lineType=cv2.LINE_AA, shift=shift)
    k = cv2.resize(canvas.astype(np.float32), (ks, ks), interpolation=cv2.INTER_AREA).astype(np.float64)
    if k.sum() <= 0:  # pragma: no cover - a degenerate path
        k[ks // 2, ks // 2] = 1.0
    return (k / k.sum()).astype(np.float32)


def disk_kernel(radius: float, size: int | None = None) -> np.ndarray:
    """A defocus (pill-box) kernel: a uniform disk of ``radius`` px, anti-aliased at its rim, sum 1.

    Drawn filled with ``skimage.draw.disk`` on an ``8×`` supersampled canvas (centre at the kernel centre) and
    area-downsampled (``cv2.resize``, ``INTER_AREA``), so interior pixels are equal, rim pixels hold the
    covered fraction and pixels farther than ``radius + 1`` from the centre are 0. The thin-lens
    circle of confusion of a defocused point is such a disk (Born & Wolf; the standard defocus PSF).
    Returns float32 ``(size, size)``, default ``size = 2·ceil(radius) + 1``.
    """
    import cv2
    import skimage.draw

    radius = float(radius)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    ks = int(size) if size is not None else 2 * int(math.ceil(radius)) + 1
    if ks % 2 == 0 or ks < 1:
        raise ValueError(f"kernel size must be odd and positive, got {ks}")
    s = _SUPERSAMPLE
    canvas = np.zeros((ks * s, ks * s), np.float32)
    c = (ks * s - 1) / 2.0
    rr, cc = skimage.draw.disk((c, c), radius * s, shape=canvas.shape)
    canvas[rr, cc] = 1.0
    k = cv2.resize(canvas, (ks, ks), interpolation=cv2.INTER_AREA).astype(np.float64)
    return (k / k.sum()).astype(np.float32)


class MotionBlur(Degradation):
    """Motion blur: ``lq = clip(gt ⊛ k, 0, 1)`` with a linear or a camera-shake kernel ``k`` (sum 1).

    * ``trajectory`` ∈ {linear, shake} (p = 0.5 each); ``length`` ∈ {7, ..., 35} px (the blur extent);
      ``angle`` ∈ [0, 180) degrees, uniform (the direction; a nuisance parameter, not a level).
    * linear: :func:`motion_kernel` (a straight segment); shake: :func:`shake_kernel` with the recorded
      integer ``traj_seed`` (so the kernel is a pure function of the params).
    * Applied per channel with ``cv2.filter2D`` and ``BORDER_REFLECT_101`` (OpenCV's default, the one BasicSR
      uses for blur kernels). No noise; blur of [0, 1] data stays in [0, 1].
    * ``levels`` = 2 trajectory families × 29 lengths = 58.

    Source: linear PSF and Boracchi & Foi (TIP 2012) random trajectories (as in DeblurGAN, Kupyn et al.
    CVPR 2018). The paper trains on GoPro/REDS/RSBlur (no synthesis code, docs/method.md §4.3).
    """

    name = "motion_blur"
    kind = "single"
    source = "linear PSF + Boracchi-Foi camera-shake trajectories (DeblurGAN); paper uses GoPro (no code)"
    TRAJECTORIES = ("linear", "shake")

    def __init__(self, length_range=(7, 35), angle_range=(0.0, 180.0)):
        self.length_range = tuple(int(v) for v in length_range)
        self.angle_range = tuple(float(v) for v in angle_range)
        self.levels = len(self.TRAJECTORIES) * (self.length_range[1] - self.length_range[0] + 1)
        self.param_ranges = {"trajectory": {"choice": list(self.TRAJECTORIES)},
                             "length": {"grid": [self.length_range[0], self.length_range[1], 1]},
                             "angle": list(self.angle_range), "traj_seed": [0, 2 ** 31 - 1]}

    def sample_params(self, rng: np.random.Generator) -> dict:
        lo, hi = self.length_range
        return {
            "length": int(rng.integers(lo, hi + 1)),
            "angle": float(rng.uniform(*self.angle_range)),
            "trajectory": self.TRAJECTORIES[int(rng.integers(2))],
            "traj_seed": int(rng.integers(2 ** 31 - 1)),
        }

    def prune_params(self, params: dict) -> dict:
        if params.get("trajectory", "linear") == "linear":
            params = {k: v for k, v in params.items() if k != "traj_seed"}
        return params

    def kernel(self, params: Mapping[str, Any]) -> np.ndarray:
        """The kernel for ``params`` (float32, odd square, sums to 1)."""
        t = params.get("trajectory", "linear")
        if t == "linear":
            return motion_kernel(params["length"], params["angle"])
        if t == "shake":
            return shake_kernel(params["length"], params["angle"], params["traj_seed"])
        raise ValueError(f"trajectory must be one of {self.TRAJECTORIES}, got {t!r}")

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        import cv2

        out = cv2.filter2D(img, -1, self.kernel(params), borderType=cv2.BORDER_REFLECT_101)
        return np.clip(out, 0.0, 1.0)


class DefocusBlur(Degradation):
    """Defocus blur: ``lq = clip(gt ⊛ disk(r), 0, 1)`` with the pill-box kernel :func:`disk_kernel`.

    ``radius`` r ∈ {1.0, 1.5, ..., 8.0} px (15 levels), ``cv2.filter2D`` with ``BORDER_REFLECT_101``.
    Source: thin-lens circle of confusion (uniform disk PSF; e.g. Abuolaim & Brown, DPDD, ECCV 2020 discuss
    it). The paper's DB class comes from DPDD/LFDOF captures (no synthesis code); radius range: ours.
    """

    name = "defocus_blur"
    kind = "single"
    source = "uniform-disk (pill-box) defocus PSF; paper uses DPDD/LFDOF (no code); radii: ours"
    levels = len(DEFOCUS_RADII)
    param_ranges = {"radius": {"grid": [1.0, 8.0, 0.5]}}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"radius": DEFOCUS_RADII[int(rng.integers(len(DEFOCUS_RADII)))]}

    def kernel(self, params: Mapping[str, Any]) -> np.ndarray:
        return disk_kernel(params["radius"])

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        import cv2

        out = cv2.filter2D(img, -1, self.kernel(params), borderType=cv2.BORDER_REFLECT_101)
        return np.clip(out, 0.0, 1.0)
