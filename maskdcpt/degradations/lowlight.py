"""LOL-like low-light synthesis: exposure/gamma reduction plus Poisson-Gaussian sensor noise."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .base import Degradation

__all__ = ["LowLight", "darken"]


def darken(img: np.ndarray, exposure: float, gamma: float) -> np.ndarray:
    """Noise-free low-light image ``k·J^γ`` (float32, same shape), ``k`` = ``exposure``, ``γ`` = ``gamma``."""
    return (np.float32(exposure) * np.power(img, np.float32(gamma))).astype(np.float32)


class LowLight(Degradation):
    """Low light: ``x = k·J^γ``, then ``lq = clip(Poisson(x·peak)/peak + N(0, read_sigma²), 0, 1)``.

    * ``exposure`` k ∈ {0.1, 0.125, ..., 0.4} (13-value grid, the severity level) and ``gamma``
      γ ∈ [1.2, 2.0] (uniform): darkens mid-tones more than
      highlights, as an under-exposed camera response does; a typical photo (mean ≈ 0.4) lands at mean
      ≈ 0.02-0.13, the range of LOL's low-light inputs.
    * Signal-dependent shot noise with ``peak`` photo-electrons at full scale, ``peak`` log-uniform in
      [100, 1000] (fewer photons = noisier), plus Gaussian read noise ``read_sigma`` ∈ [0.001, 0.01]
      (uniform, in [0, 1] units). Noise is independent per pixel and channel.
    * The expected value of the LQ is the noise-free ``k·J^γ`` (up to clipping at 0); see :func:`darken`.
      ``levels`` = 13 (the exposure grid; γ and the noise parameters are continuous nuisance parameters).

    Source: gamma + exposure darkening and Poisson-Gaussian noise as in synthetic low-light data
    (e.g. Lore et al., LLNet, 2017; Lv et al., MBLLEN, 2018; Foi et al. 2008 for the noise model). The 5D paper
    trains on real LOL pairs and has no synthesis code; ranges are ours (docs/method.md §4.2-4.3, §4.4).
    """

    name = "low_light"
    kind = "single"
    source = "gamma/exposure darkening + Poisson-Gaussian noise (LLNet/MBLLEN style); ranges: ours"

    def __init__(self, exposure=(0.1, 0.4), gamma=(1.2, 2.0), peak=(100.0, 1000.0), read_sigma=(0.001, 0.01)):
        self.exposure = tuple(float(v) for v in exposure)
        n = int(round((self.exposure[1] - self.exposure[0]) / 0.025)) + 1
        self.exposure_grid = [round(self.exposure[0] + 0.025 * k, 4) for k in range(n)]
        self.levels = len(self.exposure_grid)
        self.gamma = tuple(float(v) for v in gamma)
        self.peak = tuple(float(v) for v in peak)
        self.read_sigma = tuple(float(v) for v in read_sigma)
        self.param_ranges = {"exposure": {"grid": [self.exposure[0], self.exposure[1], 0.025]}, "gamma": list(self.gamma),
                             "peak": list(self.peak), "read_sigma": list(self.read_sigma)}

    def sample_params(self, rng: np.random.Generator) -> dict:
        lo, hi = math.log(self.peak[0]), math.log(self.peak[1])
        return {
            "exposure": self.exposure_grid[int(rng.integers(len(self.exposure_grid)))],
            "gamma": float(rng.uniform(*self.gamma)),
            "peak": float(math.exp(rng.uniform(lo, hi))),
            "read_sigma": float(rng.uniform(*self.read_sigma)),
        }

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        x = darken(img, params["exposure"], params["gamma"]).astype(np.float64)
        peak = float(params["peak"])
        if peak <= 0:
            raise ValueError(f"peak must be > 0, got {peak}")
        shot = rng.poisson(x * peak) / peak
        read = rng.standard_normal(img.shape) * float(params["read_sigma"])
        return np.clip(shot + read, 0.0, 1.0).astype(np.float32)
