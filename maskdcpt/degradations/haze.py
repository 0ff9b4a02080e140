"""Atmospheric-scattering haze with a pseudo-depth map (RESIDE-style synthesis)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Degradation

__all__ = ["Haze", "pseudo_depth", "transmission"]


def pseudo_depth(img: np.ndarray, lum_weight: float = 0.3, near: float = 0.2) -> np.ndarray:
    """A smooth pseudo-depth map in ``[near, 1]`` for a photo without measured depth, float32 ``(H, W)``.

    ``d0 = (1 − lum_weight)·v + lum_weight·L_blur`` where ``v = 1 − y/(H − 1)`` (top of the frame = far,
    bottom = near: the usual ground-plane prior of outdoor photos) and ``L_blur`` is the Rec. 601 luma
    ``0.299 R + 0.587 G + 0.114 B`` blurred with ``cv2.GaussianBlur`` (σ = 5 % of the longer side,
    reflect-101 border): bright, flat regions (sky) are taken as far, as in the dark-channel prior's
    observation that hazy distant regions are bright. ``d0`` is min-max normalised to [0, 1] and mapped to
    ``d = near + (1 − near)·d0`` so that even the nearest pixel gets a little haze. A constant ``d0``
    (1-row flat image) gives ``d = (near + 1)/2``.
    """
    import cv2

    h, w = img.shape[:2]
    v = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] if h > 1 else np.zeros((1, 1), np.float32)
    luma = (img[..., 0] * np.float32(0.299) + img[..., 1] * np.float32(0.587)
            + img[..., 2] * np.float32(0.114)).astype(np.float32)
    sigma = 0.05 * max(h, w)
    blurred = cv2.GaussianBlur(luma, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    d0 = (np.float32(1.0 - lum_weight) * v + np.float32(lum_weight) * blurred).astype(np.float32)
    lo, hi = float(d0.min()), float(d0.max())
    if hi - lo < 1e-6:
        return np.full((h, w), (near + 1.0) / 2.0, np.float32)
    d0 = (d0 - np.float32(lo)) / np.float32(hi - lo)
    return (np.float32(near) + np.float32(1.0 - near) * d0).astype(np.float32)


def transmission(img: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """``t = exp(−β·d)`` with ``d = pseudo_depth(img, lum_weight, near)``, float32 ``(H, W)`` in (0, 1]."""
    d = pseudo_depth(img, float(params["lum_weight"]), float(params["near"]))
    return np.exp(-np.float32(params["beta"]) * d).astype(np.float32)


class Haze(Degradation):
    """Haze by the atmospheric scattering model ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``.

    * ``J`` = clean image, ``A`` = global atmospheric light (grey, same for R, G, B),
      ``d`` = :func:`pseudo_depth` of ``J`` in [near, 1] (no measured depth is available for our photos).
    * ``beta`` ∈ {0.6, 0.7, ..., 1.8} (13-value grid, uniform), ``A`` ∈ [0.7, 1.0] (uniform; a nuisance
      parameter); ``lum_weight`` = 0.3 and ``near`` = 0.2 are fixed defaults recorded in the params. With
      ``d`` ≤ 1 this gives ``t`` ∈ [0.17, 0.89], between thin and dense haze. A convex combination of values
      in [0, 1] stays in [0, 1]; no noise is added. ``levels`` = 13 (the β grid).

    Source: Koschmieder / McCartney scattering model as used by RESIDE (Li et al., TIP 2019; OTS/SOTS-outdoor
    use A ∈ [0.8, 1.0], β ∈ [0.04, 0.2] with metric depth). Because our depth proxy is normalised to
    [0, 1], β is rescaled to [0.6, 1.8] and A widened to [0.7, 1.0].
    """

    name = "haze"
    kind = "single"
    source = "atmospheric scattering model, RESIDE (Li et al. TIP 2019); beta rescaled for d in [0,1]"

    def __init__(self, beta=(0.6, 1.8), airlight=(0.7, 1.0), lum_weight=0.3, near=0.2):
        self.beta = tuple(float(b) for b in beta)
        n = int(round((self.beta[1] - self.beta[0]) / 0.1)) + 1
        self.beta_grid = [round(self.beta[0] + 0.1 * k, 2) for k in range(n)]
        self.levels = len(self.beta_grid)
        self.airlight = tuple(float(a) for a in airlight)
        self.lum_weight = float(lum_weight)
        self.near = float(near)
        self.param_ranges = {"beta": {"grid": [self.beta[0], self.beta[1], 0.1]}, "A": list(self.airlight),
                             "lum_weight": self.lum_weight, "near": self.near}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {
            "beta": self.beta_grid[int(rng.integers(len(self.beta_grid)))],
            "A": float(rng.uniform(*self.airlight)),
            "lum_weight": self.lum_weight,
            "near": self.near,
        }

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        t = transmission(img, params)[..., None]
        a = np.float32(params["A"])
        return np.clip(img * t + a * (np.float32(1.0) - t), 0.0, 1.0)
