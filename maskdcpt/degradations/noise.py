"""Additive white Gaussian noise, exactly as MaskDCPT's ``PairedImageDenoiseDataset``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .base import Degradation

__all__ = ["GaussianNoise"]


class GaussianNoise(Degradation):
    """Additive white Gaussian noise on the float RGB image: ``lq = clip(gt + N(0, (σ/255)²), 0, 1)``.

    * Added independently per pixel and channel to the float32 RGB image in [0, 1]; clipped, **not**
      quantised (the 5D protocol, ``image_range: 1.0``).
    * σ (in 0-255 units) is drawn from the choice {15, 25, 50} by default (the 5D training set:
      BSD400 + WED, ``sigma_type: choice``); the benchmark uses σ = 25 (CBSD68). A fixed σ can be passed as
      ``params={"sigma": 25}``; any σ ≥ 0 is accepted (e.g. 60/75 for the OOD table).
    * ``levels`` = number of σ choices (3).

    Source: maskdcpt-method.md §4.3 and §5.2 ([M] ``PairedImageDenoiseDataset``). The official test code
    seeds NumPy's legacy global RNG with 0 per image; here the noise comes from the pair's seed stream.
    """

    name = "gaussian_noise"
    kind = "single"
    source = "MaskDCPT PairedImageDenoiseDataset; 5D config sigma in {15,25,50}"

    def __init__(self, sigmas: Sequence[float] = (15, 25, 50)):
        self.sigmas = [s for s in sigmas]
        self.param_ranges = {"sigma": {"choice": list(self.sigmas)}}
        self.levels = len(self.sigmas)

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"sigma": self.sigmas[int(rng.integers(len(self.sigmas)))]}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        sigma = float(params["sigma"])
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma / 255.0)
        return np.clip(img + noise, 0.0, 1.0)
