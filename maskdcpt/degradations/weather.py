"""Raindrops on the lens/window and falling snow (the paper's RD and S classes)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Degradation
from .rain import rain_layer

__all__ = ["Raindrop", "Snow", "raindrop_mask", "RAINDROP_COUNTS", "SNOW_DENSITIES"]

RAINDROP_COUNTS = list(range(10, 61, 5))  # drops per 256×256 area: 10, 15, ..., 60 (11 levels)
SNOW_DENSITIES = [round(0.001 * k, 4) for k in range(1, 11)]  # flake seeds per pixel: 0.001 ... 0.010


def raindrop_mask(shape: tuple[int, int], params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Soft coverage mask of adherent raindrops, float32 ``(H, W)`` in [0, 1].

    ``n = round(count · H·W / 256²)`` drops (at least 1), centres uniform, radii
    ``U[0.5, 1.5] · size · min(H, W)`` px, aspect ratio ``U[0.7, 1.3]``, orientation ``U[0, 180)``, each drawn
    filled with ``cv2.ellipse``; the union is softened with ``cv2.GaussianBlur`` (σ = ``edge`` · mean radius)
    so drop rims fade like the out-of-focus drops of Qian et al. (CVPR 2018).
    """
    import cv2

    h, w = shape
    n = max(1, int(round(float(params["count"]) * h * w / 65536.0)))
    base = float(params["size"]) * min(h, w)
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    rad = rng.uniform(0.5, 1.5, n) * base
    aspect, ang = rng.uniform(0.7, 1.3, n), rng.uniform(0, 180, n)
    mask = np.zeros((h, w), np.float32)
    for x, y, r, a, t in zip(cx, cy, rad, aspect, ang):
        axes = (max(1, int(round(r))), max(1, int(round(r * a))))
        cv2.ellipse(mask, (int(round(x)), int(round(y))), axes, float(t), 0, 360, 1.0, thickness=-1,
                    lineType=cv2.LINE_AA)
    sigma = max(0.5, float(params["edge"]) * base)
    return np.clip(cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101), 0, 1)


class Raindrop(Degradation):
    """Adherent raindrops: ``lq = (1 − M)·J + M·clip(g·blur(J), 0, 1)`` with the soft drop mask ``M``.

    A drop on the glass is out of focus and refracts a wide, blurred view of the scene (Qian et al.,
    "Attentive GAN for raindrop removal", CVPR 2018, Eq. 1: ``I = (1 − M)⊙B + R``); we render ``R`` as the
    scene blurred with ``cv2.GaussianBlur`` (σ = ``blur`` px) brightened by ``g`` = ``gain``.

    Params: ``count`` ∈ {10, 15, ..., 60} drops per 256² px (11 levels; the severity), ``size`` ∈
    [0.015, 0.04] (mean radius / shorter side), ``edge`` ∈ [0.15, 0.4], ``blur`` ∈ [3, 8] px,
    ``gain`` ∈ [1.0, 1.2]. Drop positions come from the pair's noise stream. Ranges: ours.
    """

    name = "raindrop"
    kind = "single"
    source = "raindrop image model of Qian et al. CVPR 2018 (I = (1-M)B + R); rendering and ranges: ours"
    levels = len(RAINDROP_COUNTS)
    param_ranges = {"count": {"grid": [10, 60, 5]}, "size": [0.015, 0.04], "edge": [0.15, 0.4],
                    "blur": [3.0, 8.0], "gain": [1.0, 1.2]}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"count": RAINDROP_COUNTS[int(rng.integers(len(RAINDROP_COUNTS)))],
                "size": float(rng.uniform(0.015, 0.04)), "edge": float(rng.uniform(0.15, 0.4)),
                "blur": float(rng.uniform(3.0, 8.0)), "gain": float(rng.uniform(1.0, 1.2))}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        import cv2

        m = raindrop_mask(img.shape[:2], params, rng)[..., None]
        drop = cv2.GaussianBlur(img, (0, 0), sigmaX=float(params["blur"]), borderType=cv2.BORDER_REFLECT_101)
        drop = np.clip(drop * np.float32(params["gain"]), 0.0, 1.0)
        return np.clip((1.0 - m) * img + m * drop, 0.0, 1.0)


class Snow(Degradation):
    """Falling snow: a whitening veil, then two flake layers (far: small, near: large) screen-blended.

    ``J' = (1 − v)·J + v`` (``veil`` v ∈ [0, 0.15]), then ``lq = 1 − (1 − J')(1 − S_far)(1 − S_near)``; each
    layer is :func:`maskdcpt.degradations.rain.rain_layer` (sparse seeds → short motion streak →
    Gaussian widening) with the flakes' fall direction ``angle`` ∈ [−30, 30]° from vertical:
    far flakes ``density`` seeds/px, width ``size`` px, streak 2 px; near flakes ``density/4``, width
    ``2.5·size``, streak 4 px, brighter. Params: ``density`` ∈ {0.001, ..., 0.010} (10 levels; the
    severity), ``size`` ∈ [0.6, 1.4] px, ``intensity`` ∈ [0.6, 1.0]. Source: Snow100K-style rendering
    (Liu et al., DesnowNet, TIP 2018: snow mask composited over the scene with a veiling effect); ranges: ours.
    """

    name = "snow"
    kind = "single"
    source = "Snow100K/DesnowNet composite model (flake mask + veil), rendered with the rain-layer primitive"
    levels = len(SNOW_DENSITIES)
    param_ranges = {"density": {"grid": [0.001, 0.01, 0.001]}, "size": [0.6, 1.4], "angle": [-30.0, 30.0],
                    "intensity": [0.6, 1.0], "veil": [0.0, 0.15]}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"density": SNOW_DENSITIES[int(rng.integers(len(SNOW_DENSITIES)))],
                "size": float(rng.uniform(0.6, 1.4)), "angle": float(rng.uniform(-30.0, 30.0)),
                "intensity": float(rng.uniform(0.6, 1.0)), "veil": float(rng.uniform(0.0, 0.15))}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        d, size, inten = float(params["density"]), float(params["size"]), float(params["intensity"])
        far = rain_layer(img.shape[:2], {"density": d, "length": 2, "angle": params["angle"], "width": size,
                                         "intensity": 0.8 * inten}, rng)
        near = rain_layer(img.shape[:2], {"density": d / 4, "length": 4, "angle": params["angle"],
                                          "width": 2.5 * size, "intensity": inten}, rng)
        v = np.float32(params["veil"])
        base = (np.float32(1.0) - v) * img + v
        keep = (np.float32(1.0) - far) * (np.float32(1.0) - near)
        return np.clip(1.0 - (1.0 - base) * keep[..., None], 0.0, 1.0)
