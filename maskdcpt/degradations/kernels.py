"""Gaussian & sinc blur: the Real-ESRGAN kernel family (the paper's GB class).

Sampling (docs/method.md §4.3, MaskDCPT's ``PairedImageGaussianBlurDataset`` / ``test_NAFNet_12d.yml``):

* kernel size ``ks`` uniform over the odd sizes {7, 9, ..., 21};
* with probability ``SINC_PROB`` = 0.1 a circular low-pass (sinc) kernel with cut-off
  ``ω_c ~ U[π/3, π]`` if ``ks < 13`` else ``U[π/5, π]``;
* otherwise one of ``iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso`` with
  probabilities ``0.45, 0.25, 0.12, 0.03, 0.12, 0.03``; σ_x, σ_y ~ U[0.2, 3] px (iso: σ_y = σ_x and no
  rotation), rotation θ ~ U[−π, π], generalized shape β_g ~ U[0.5, 4], plateau shape β_p ~ U[1, 2];
* the kernel (sum 1) is applied with ``cv2.filter2D`` (reflect-101 border); the official code zero-pads it to
  21×21 first, which changes nothing but float rounding (see ``GaussianSincBlur.apply``);
  no noise (the final clip to [0, 1] of :func:`degrade` is a no-op up to the sinc's small ringing).

Kernel formulas (Wang et al., Real-ESRGAN, ICCVW 2021, Eq. 1-2; Liang et al. 2021 for the
generalized/plateau shapes), with ``M = xᵀ Σ⁻¹ x`` and ``Σ = R(θ) diag(σ_x², σ_y²) R(θ)ᵀ``:
Gaussian ``exp(−M/2)``, generalized Gaussian ``exp(−M^β/2)``, plateau ``1/(1 + M^β)``, sinc
``ω_c J₁(ω_c r) / (2π r)`` (centre value ``ω_c²/(4π)``). Each is normalised to sum 1.

Level counting: (family, kernel size) cells, 7 × 8 = 56; σ, θ, β and ω_c are continuous within a cell.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .base import Degradation

__all__ = ["GaussianSincBlur", "bivariate_kernel", "sinc_kernel", "KERNEL_FAMILIES", "KERNEL_PROBS",
           "KERNEL_SIZES", "SINC_PROB", "PAD_SIZE"]

KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
KERNEL_SIZES = tuple(range(7, 22, 2))
SINC_PROB = 0.1
PAD_SIZE = 21
SIGMA_RANGE = (0.2, 3.0)
BETA_G_RANGE = (0.5, 4.0)
BETA_P_RANGE = (1.0, 2.0)


def _grid(ks: int) -> np.ndarray:
    if ks % 2 == 0 or ks < 1:
        raise ValueError(f"kernel size must be odd and positive, got {ks}")
    ax = np.arange(ks, dtype=np.float64) - ks // 2
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def bivariate_kernel(ks: int, sigma_x: float, sigma_y: float, rotation: float, family: str = "iso",
                     beta: float = 1.0) -> np.ndarray:
    """A ``ks × ks`` Gaussian / generalized-Gaussian / plateau kernel (float64, sum 1).

    ``family`` ∈ :data:`KERNEL_FAMILIES`; ``*_iso`` uses ``σ_y = σ_x`` and θ = 0. ``sigma_*`` in px (> 0),
    ``rotation`` θ in radians, ``beta`` the shape exponent of the generalized/plateau families (ignored for
    ``iso``/``aniso``). Formulas in the module docstring.
    """
    if family not in KERNEL_FAMILIES:
        raise ValueError(f"family must be one of {KERNEL_FAMILIES}, got {family!r}")
    if not (sigma_x > 0 and sigma_y > 0):
        raise ValueError("sigmas must be > 0")
    if family.endswith("iso") and not family.endswith("aniso"):
        sigma_y, rotation = sigma_x, 0.0
    c, s = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rot.T
    xy = _grid(ks)
    m = np.einsum("...i,ij,...j->...", xy, np.linalg.inv(cov), xy)
    if family in ("iso", "aniso"):
        k = np.exp(-0.5 * m)
    elif family.startswith("generalized"):
        k = np.exp(-0.5 * np.power(m, beta))
    else:
        k = 1.0 / (1.0 + np.power(m, beta))
    return k / k.sum()


def sinc_kernel(ks: int, omega_c: float) -> np.ndarray:
    """A ``ks × ks`` circular low-pass (2-D sinc / Airy) kernel with cut-off ``omega_c`` (rad/px), sum 1.

    ``ω_c J₁(ω_c r)/(2π r)`` with ``scipy.special.j1``; the centre takes the limit ``ω_c²/(4π)``.
    """
    from scipy.special import j1

    r = np.hypot(*np.moveaxis(_grid(ks), -1, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1(omega_c * r) / (2 * np.pi * r)
    k[ks // 2, ks // 2] = omega_c ** 2 / (4 * np.pi)
    return k / k.sum()


class GaussianSincBlur(Degradation):
    """Gaussian & sinc blur with the Real-ESRGAN kernel family (module docstring), ``cv2.filter2D``.

    Params: ``family`` (one of :data:`KERNEL_FAMILIES` or ``"sinc"``), ``kernel_size`` (odd 7-21), and per
    family ``sigma_x``/``sigma_y``/``rotation``/``beta`` or ``omega_c`` (only the used ones are recorded).
    ``levels`` = 7 families × 8 kernel sizes = 56.
    """

    name = "gaussian_blur"
    kind = "single"
    source = "Real-ESRGAN kernels; MaskDCPT PairedImageGaussianBlurDataset settings (docs/method.md §4.3)"
    levels = (len(KERNEL_FAMILIES) + 1) * len(KERNEL_SIZES)
    param_ranges = {
        "family": {"choice": ["sinc", *KERNEL_FAMILIES], "p": [SINC_PROB, *[(1 - SINC_PROB) * p
                                                                            for p in KERNEL_PROBS]]},
        "kernel_size": {"choice": list(KERNEL_SIZES)},
        "sigma_x": list(SIGMA_RANGE), "sigma_y": list(SIGMA_RANGE), "rotation": [-math.pi, math.pi],
        "beta": {"generalized": list(BETA_G_RANGE), "plateau": list(BETA_P_RANGE)},
        "omega_c": {"ks<13": [math.pi / 3, math.pi], "ks>=13": [math.pi / 5, math.pi]},
    }

    def __init__(self, sigma_range: tuple[float, float] = SIGMA_RANGE):
        """``sigma_range``: σ_x/σ_y range in px (default the paper's [0.2, 3]; near 0.2 an ``iso`` kernel is
        almost the identity, so an 8-bit LQ can equal the GT: raise the lower bound if a data contract
        requires LQ ≠ GT for every pair)."""
        lo, hi = (float(v) for v in sigma_range)
        if not 0 < lo <= hi:
            raise ValueError(f"sigma_range must satisfy 0 < lo <= hi, got {sigma_range}")
        self.sigma_range = (lo, hi)
        self.param_ranges = {**self.param_ranges, "sigma_x": [lo, hi], "sigma_y": [lo, hi]}

    def sample_params(self, rng: np.random.Generator) -> dict:
        ks = int(KERNEL_SIZES[int(rng.integers(len(KERNEL_SIZES)))])
        sinc = bool(rng.random() < SINC_PROB)
        family = KERNEL_FAMILIES[int(rng.choice(len(KERNEL_FAMILIES), p=KERNEL_PROBS))]
        sx, sy = float(rng.uniform(*self.sigma_range)), float(rng.uniform(*self.sigma_range))
        rotation = float(rng.uniform(-math.pi, math.pi))
        beta_g, beta_p = float(rng.uniform(*BETA_G_RANGE)), float(rng.uniform(*BETA_P_RANGE))
        omega = float(rng.uniform(math.pi / 3 if ks < 13 else math.pi / 5, math.pi))
        return {"family": "sinc" if sinc else family, "kernel_size": ks, "sigma_x": sx, "sigma_y": sy,
                "rotation": rotation, "beta": beta_p if family.startswith("plateau") else beta_g,
                "omega_c": omega}

    def prune_params(self, params: dict) -> dict:
        fam = params["family"]
        keep = ["family", "kernel_size"]
        if fam == "sinc":
            keep.append("omega_c")
        elif fam in KERNEL_FAMILIES:
            keep.append("sigma_x")
            if "aniso" in fam:
                keep += ["sigma_y", "rotation"]
            if fam.startswith(("generalized", "plateau")):
                keep.append("beta")
        else:
            raise ValueError(f"family must be 'sinc' or one of {KERNEL_FAMILIES}, got {fam!r}")
        return {k: params[k] for k in keep}

    def kernel(self, params: Mapping[str, Any]) -> np.ndarray:
        """The ``ks × ks`` kernel of ``params`` (float32, sum 1), before padding to 21×21."""
        ks, fam = int(params["kernel_size"]), params["family"]
        if fam == "sinc":
            k = sinc_kernel(ks, float(params["omega_c"]))
        else:
            sx = float(params["sigma_x"])
            k = bivariate_kernel(ks, sx, float(params.get("sigma_y", sx)), float(params.get("rotation", 0.0)),
                                 fam, float(params.get("beta", 1.0)))
        return k.astype(np.float32)

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        import cv2

        # The official code zero-pads the kernel to 21×21 first; zero taps add nothing (also at reflected
        # borders), so the unpadded kernel gives the same result up to float rounding (OpenCV switches to
        # its DFT path for large kernels; |Δ| ≤ 1e-4) at a fraction of the cost.
        return cv2.filter2D(img, -1, self.kernel(params), borderType=cv2.BORDER_REFLECT_101)
