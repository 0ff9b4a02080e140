"""Synthetic rain streaks (Rain100L-like light rain)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Degradation
from .blur import motion_kernel

__all__ = ["Rain", "rain_layer"]


def rain_layer(shape: tuple[int, int], params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The rain-streak layer ``S`` in [0, 1], float32 ``(H, W)``.

    1. Sparse seeds: one uniform field ``u ~ U[0, 1)``; pixels with ``u < density`` become drops of
       brightness ``0.5 + 0.5·(density − u)/density`` (uniform in (0.5, 1]), all others 0.
    2. Streaks: seeds correlated (``cv2.filter2D``, reflect-101 border) with a line kernel of ``length`` px
       at ``90° + angle`` (``angle`` = tilt from vertical, degrees), widened by a Gaussian of std
       ``width`` px (``cv2.GaussianBlur``) and scaled to peak 1, so an isolated streak peaks at its drop
       brightness.
    3. ``S = clip(streaks, 0, 1) · intensity``.
    """
    import cv2

    h, w = shape
    density = float(params["density"])
    u = rng.random((h, w), dtype=np.float32)
    seeds = np.where(u < density, 0.5 + 0.5 * (density - u) / max(density, 1e-12), 0.0).astype(np.float32)
    length = float(params["length"])
    width = float(params["width"])
    base = motion_kernel(length, 90.0 + float(params["angle"]), normalize="max")
    pad = int(np.ceil(3 * width))
    k = np.pad(base, pad)
    if width > 0:
        k = cv2.GaussianBlur(k, (0, 0), sigmaX=width, borderType=cv2.BORDER_CONSTANT)
    k = (k / k.max()).astype(np.float32)
    streaks = cv2.filter2D(seeds, -1, k, borderType=cv2.BORDER_REFLECT_101)
    return (np.clip(streaks, 0.0, 1.0) * np.float32(params["intensity"])).astype(np.float32)


class Rain(Degradation):
    """Synthetic rain streaks screened onto the image: ``lq = 1 − (1 − gt)·(1 − S)``.

    ``S`` is :func:`rain_layer` (grey, broadcast to RGB: rain streaks are whitish). Screen blending is the
    usual "add a bright layer" operation that stays in [0, 1] without clipping; for dark backgrounds it
    equals the additive model ``O = B + S`` used for Rain100L/Rain200L.

    Default ranges (uniform): ``density`` ∈ {0.001, 0.0015, ..., 0.005} (9-value grid; fraction of pixels
    that seed a streak; the severity level),
    ``length`` ∈ [10, 40] px (integer), ``angle`` ∈ [−30, 30]° from vertical (one direction per image),
    ``width`` ∈ [0.4, 1.0] px (Gaussian std across the streak), ``intensity`` ∈ [0.3, 0.7]. On natural
    256² crops this gives an LQ PSNR of roughly 18-31 dB (Rain100L inputs average ≈ 27 dB).
    ``levels`` = 9 (the density grid; the other parameters are continuous nuisance parameters).

    Source: streak model of Yang et al., "Deep joint rain detection and removal from a single image"
    (CVPR 2017; Rain100L/H, rendered Photoshop-style: sparse noise → motion blur → screen). The 5D paper
    trains on Rain200L and tests on Rain100L; it has no synthesis code (docs/method.md §4.2-4.3).
    The ranges above are chosen to look like light rain, they are not from the paper.
    """

    name = "rain"
    kind = "single"
    source = "Yang et al. CVPR 2017 streak model (sparse noise + motion blur + screen); ranges: ours"

    def __init__(self, density=(0.001, 0.005), length=(10, 40), angle=(-30.0, 30.0), width=(0.4, 1.0),
                 intensity=(0.3, 0.7)):
        self.ranges = {"density": tuple(density), "length": tuple(length), "angle": tuple(angle),
                       "width": tuple(width), "intensity": tuple(intensity)}
        self.param_ranges = {k: list(v) for k, v in self.ranges.items()}
        lo, hi = (float(v) for v in density)
        n = int(round((hi - lo) / 0.0005)) + 1
        self.density_grid = [round(lo + 0.0005 * k, 5) for k in range(n)]
        self.levels = len(self.density_grid)
        self.param_ranges["density"] = {"grid": [lo, hi, 0.0005]}

    def sample_params(self, rng: np.random.Generator) -> dict:
        r = self.ranges
        return {
            "density": self.density_grid[int(rng.integers(len(self.density_grid)))],
            "length": int(rng.integers(r["length"][0], r["length"][1] + 1)),
            "angle": float(rng.uniform(*r["angle"])),
            "width": float(rng.uniform(*r["width"])),
            "intensity": float(rng.uniform(*r["intensity"])),
        }

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        s = rain_layer(img.shape[:2], params, rng)[..., None]
        return np.clip(1.0 - (1.0 - img) * (1.0 - s), 0.0, 1.0)
