"""LQ synthesis at test time for GT-only sets (docs/method.md §5.2): the official noise field, JPEG, mosaic, blur."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

def official_test_noise(shape: tuple[int, ...], sigma: float, seed: int = 0) -> np.ndarray:
    """The official test noise field: ``np.random.seed(seed); np.random.normal(0, sigma/255, shape)``, float64,
    drawn from a private legacy ``RandomState`` (same MT19937 + Box-Muller stream, global RNG untouched).
    ``sigma`` on the 0-255 scale (docs/method.md §5.2)."""
    return np.random.RandomState(int(seed)).normal(0.0, float(sigma) / 255.0, shape)


def synthesize_lq(gt: np.ndarray, synth: Mapping[str, Any], index: int = 0) -> np.ndarray:
    """Deterministic test-time LQ of a GT-only set (module docstring).

    Args:
        gt: float32 ``(H, W, 3)`` RGB in [0, 1].
        synth: ``{"type": "gaussian_noise", "sigma": σ (0-255 scale), "seed": 0}`` |
            ``{"type": "jpeg", "quality": q}`` | ``{"type": "mosaic", "swap_rb": bool}`` |
            ``{"type": "gaussian_blur"}`` (seeded with ``index``; not the official kernels).
        index: position of the image in the set (only the Gaussian-blur approximation uses it).

    Returns float32 ``(H, W, 3)`` in [0, 1]. Raises ``ValueError`` for an unknown type.
    """
    kind = synth.get("type")
    if kind == "gaussian_noise":
        noisy = np.asarray(gt, dtype=np.float64) + official_test_noise(gt.shape, synth["sigma"], synth.get("seed", 0))
        return np.clip(noisy, 0.0, 1.0).astype(np.float32)
    if kind == "jpeg":
        from maskdcpt.degradations import jpeg_roundtrip

        return jpeg_roundtrip(gt, int(synth.get("quality", 50)))
    if kind == "mosaic":
        from maskdcpt.degradations import bayer_rggb, demosaic

        return demosaic(bayer_rggb(gt), bool(synth.get("swap_rb", False))).astype(np.float32) / np.float32(255.0)
    if kind == "gaussian_blur":
        from maskdcpt.degradations import degrade

        return degrade(gt, "gaussian_blur", seed=int(index))[0]
    raise ValueError(f"unknown LQ synthesis {synth!r}; known types: gaussian_noise, jpeg, mosaic, gaussian_blur")
