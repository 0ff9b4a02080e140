"""Additive white Gaussian noise, exactly as MaskDCPT's ``PairedImageDenoiseDataset``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .base import Degradation

__all__ = ["GaussianNoise", "Noise", "poisson_noise", "salt_pepper_noise", "NOISE_SIGMAS",
           "POISSON_SCALES", "SP_DENSITIES"]


class GaussianNoise(Degradation):
    """Additive white Gaussian noise on the float RGB image: ``lq = clip(gt + N(0, (σ/255)²), 0, 1)``.

    * Added independently per pixel and channel to the float32 RGB image in [0, 1]; clipped, **not**
      quantised (the 5D protocol, ``image_range: 1.0``).
    * σ (in 0-255 units) is drawn from the choice {15, 25, 50} by default (the 5D training set:
      BSD400 + WED, ``sigma_type: choice``); the benchmark uses σ = 25 (CBSD68). A fixed σ can be passed as
      ``params={"sigma": 25}``; any σ ≥ 0 is accepted (e.g. 60/75 for the OOD table).
    * ``levels`` = number of σ choices (3).

    Source: docs/method.md §4.3 and §5.2 (official ``PairedImageDenoiseDataset``). The official test code
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


#: Severity grids of the merged ``noise`` class (the paper's GN class: Gaussian, Poisson, salt & pepper).
NOISE_SIGMAS = list(range(1, 51))  # Gaussian σ, 0-255 units: 1, 2, ..., 50 (DCPT 10D: random [1, 50])
POISSON_SCALES = [round(0.05 * k, 2) for k in range(1, 61)]  # 0.05 ... 3.00 (Real-ESRGAN scale_range)
SP_DENSITIES = [round(0.005 * k, 3) for k in range(1, 11)]  # 0.5 % ... 5 % of the pixels
NOISE_TYPES = ("gaussian", "poisson", "salt_pepper")
NOISE_TYPE_PROBS = (0.5, 0.3, 0.2)
POISSON_LEVELS = 256  # photon-count scale v: Real-ESRGAN's 2**ceil(log2(#unique levels)) for 8-bit photos


def poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator,
                  vals: float = POISSON_LEVELS) -> np.ndarray:
    """Real-ESRGAN-style Poisson (shot) noise: ``lq = clip(x + scale·(Poisson(x·v)/v − x), 0, 1)``.

    ``x`` is the image quantised to 8 bits (``round(255·img)/255``), ``v`` = :data:`POISSON_LEVELS` (256: the
    value Real-ESRGAN's ``2**ceil(log2(#unique values))`` takes for any 8-bit photo with more than 128 levels;
    fixed here so the noise does not depend on image content). The noise variance is
    ``scale² · x / v``: proportional to intensity. With ``gray`` the noise is drawn once on the Rec. 601 luma
    (``cv2.cvtColor(RGB2GRAY)``) and added to all three channels. ``img`` float32 ``(H, W, 3)`` in [0, 1];
    returns the same shape, float32, clipped to [0, 1].

    Source: Wang et al., Real-ESRGAN (ICCVW 2021), ``scale_range = [0.05, 3]``, ``gray_prob = 0.4``
    (docs/method.md §4.3, the BasicSR hook MaskDCPT cites).
    """
    import cv2

    if scale < 0:
        raise ValueError(f"Poisson scale must be >= 0, got {scale}")
    x = np.round(np.clip(img, 0, 1) * 255.0) / 255.0
    if gray:
        x = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64)[..., None]
    noise = rng.poisson(x * vals) / float(vals) - x
    return np.clip(img + np.float32(scale) * noise.astype(np.float32), 0.0, 1.0).astype(np.float32)


def salt_pepper_noise(img: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Salt & pepper (impulse) noise: a fraction ``density`` of the *pixels* is replaced, half by white (1) and
    half by black (0), the same value in all three channels (a dead/hot photosite), via
    ``skimage.util.random_noise(mode='s&p', amount=density, salt_vs_pepper=0.5)`` on one channel whose mask
    is broadcast to RGB. ``density`` ∈ [0, 1]; returns float32 ``(H, W, 3)`` in [0, 1].

    Source: standard impulse-noise model (Gonzalez & Woods, *Digital Image Processing*, §5.2); the paper's GN
    class includes it but has no code (docs/method.md §4.3). Density range 0.5-5 %: ours.
    """
    from skimage.util import random_noise

    if not 0.0 <= density <= 1.0:
        raise ValueError(f"salt & pepper density must be in [0, 1], got {density}")
    probe = np.full(img.shape[:2], 0.5, np.float32)
    sp = random_noise(probe, mode="s&p", amount=float(density), salt_vs_pepper=0.5,
                      rng=int(rng.integers(2 ** 32)))
    out = img.copy()
    out[sp >= 0.75] = 1.0
    out[sp <= 0.25] = 0.0
    return out


class Noise(Degradation):
    """The merged noise class (the paper's GN: Gaussian, Poisson, salt & pepper), for the 12D/all tasks.

    Sub-type ``noise_type`` ∈ {gaussian (p = 0.5), poisson (0.3), salt_pepper (0.2)} (probabilities: ours);
    then, on documented grids:

    * gaussian: ``sigma`` ∈ {1, ..., 50} (0-255 units), ``clip(J + N(0, (σ/255)²))``, float, unquantised (as
      :class:`GaussianNoise`; DCPT 10D trains with σ ~ U[1, 50]);
    * poisson: ``scale`` ∈ {0.05, 0.10, ..., 3.00}, ``gray`` with p = 0.4 (:func:`poisson_noise`);
    * salt_pepper: ``density`` ∈ {0.005, ..., 0.05} (:func:`salt_pepper_noise`).

    Only the chosen sub-type's parameters are recorded. ``levels`` = 50 + 60 + 10 = 120 (sub-types add; the
    Poisson colour/grey switch is not a severity). Why one class: the UIR-2.5M table merges the three into
    one "Noise (GN)" row with one class label (docs/method.md §4.1); the 5D task keeps its own
    :class:`GaussianNoise` (σ ∈ {15, 25, 50}), which is this class's Gaussian sub-type restricted to 3 levels.
    """

    name = "noise"
    kind = "single"
    source = "UIR-2.5M GN class (Gaussian/Poisson/S&P); Real-ESRGAN Poisson; DCPT 10D sigma U[1,50]"
    param_ranges = {
        "noise_type": {"choice": list(NOISE_TYPES), "p": list(NOISE_TYPE_PROBS)},
        "sigma": {"grid": [1, 50, 1]},
        "scale": {"grid": [0.05, 3.0, 0.05]},
        "gray": {"p": 0.4},
        "density": {"grid": [0.005, 0.05, 0.005]},
    }
    _KEYS = {"gaussian": ("sigma",), "poisson": ("scale", "gray"), "salt_pepper": ("density",)}
    _LEVELS = {"gaussian": len(NOISE_SIGMAS), "poisson": len(POISSON_SCALES), "salt_pepper": len(SP_DENSITIES)}

    def __init__(self, types: Sequence[str] = NOISE_TYPES, probs: Sequence[float] = NOISE_TYPE_PROBS):
        """``types``/``probs``: the sub-types the sampler draws and their probabilities (e.g. Gaussian and
        Poisson only, 0.5 each, inside the Real-ESRGAN-like second-order mixture)."""
        if len(types) != len(probs) or not types or set(types) - set(NOISE_TYPES):
            raise ValueError(f"types must be a non-empty subset of {NOISE_TYPES} with one probability each")
        self.types = tuple(types)
        self.probs = tuple(float(p) / float(sum(probs)) for p in probs)
        self.levels = sum(self._LEVELS[t] for t in self.types)
        self.param_ranges = {**self.param_ranges,
                             "noise_type": {"choice": list(self.types), "p": list(self.probs)}}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {
            "noise_type": self.types[int(rng.choice(len(self.types), p=self.probs))],
            "sigma": NOISE_SIGMAS[int(rng.integers(len(NOISE_SIGMAS)))],
            "scale": POISSON_SCALES[int(rng.integers(len(POISSON_SCALES)))],
            "gray": bool(rng.random() < 0.4),
            "density": SP_DENSITIES[int(rng.integers(len(SP_DENSITIES)))],
        }

    def prune_params(self, params: dict) -> dict:
        t = params["noise_type"]
        if t not in self._KEYS:
            raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {t!r}")
        return {"noise_type": t, **{k: params[k] for k in self._KEYS[t]}}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        t = params["noise_type"]
        if t == "gaussian":
            return GaussianNoise.apply(self, img, params, rng)
        if t == "poisson":
            return poisson_noise(img, float(params["scale"]), bool(params["gray"]), rng)
        if t == "salt_pepper":
            return salt_pepper_noise(img, float(params["density"]), rng)
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {t!r}")
