"""Paired gains with bootstrap confidence intervals over seeds and images (the ``maskdcpt study`` statistics).

Data: scores ``a`` (the method) and ``b`` (the baseline) as arrays ``(S, N, D)``: S training seeds, N benchmark
images, D degradations; ``a[s, i, d]`` and ``b[s, i, d]`` are the same image restored by models trained with the
same seed. The paired gain is ``g = a - b``; its estimate per degradation is the mean of ``g`` over seeds and
images, and over degradations the mean of the per-degradation estimates.

Two-level (seed and image) bootstrap, percentile interval (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13): one replicate draws S seeds and N images with replacement, the same draw for every
degradation (the held-out photos are shared by the degradations, so the mean over degradations keeps their
correlation), and recomputes the estimates. A replicate only depends on how often each seed and image was
drawn, so when the number of distinct count vectors is small the distribution is enumerated exactly with its
multinomial probabilities; otherwise ``n_boot`` Monte Carlo replicates are drawn. Interval ends are the
inverted-CDF quantiles ``(1 - level) / 2`` and ``(1 + level) / 2`` of that distribution.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

__all__ = ["paired_bootstrap", "weighted_quantile", "compositions", "verdict", "seed_stats"]


def compositions(total: int, parts: int) -> np.ndarray:
    """Every vector of ``parts`` non-negative integers summing to ``total`` (stars and bars), ``(K, parts)``."""
    rows = []
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        rows.append([edges[k + 1] - edges[k] - 1 for k in range(parts)])
    return np.asarray(rows, dtype=np.int64)


def _multinomial_prob(counts: np.ndarray) -> np.ndarray:
    """P(counts) of drawing ``n = counts.sum()`` items uniformly with replacement from ``len(counts)``."""
    n, k = int(counts[0].sum()), counts.shape[1]
    log_coef = math.lgamma(n + 1) - np.array([sum(math.lgamma(c + 1) for c in row) for row in counts])
    return np.exp(log_coef - n * math.log(k))


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Inverted-CDF quantile: the smallest value whose cumulative weight reaches ``q`` (weights normalised)."""
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    cdf = np.cumsum(w) / w.sum()
    idx = int(np.searchsorted(cdf, q - 1e-12, side="left"))
    return float(v[min(idx, len(v) - 1)])


def verdict(low: float, high: float) -> str:
    """``"gain"`` when the interval is above 0, ``"loss"`` when below, ``"inconclusive"`` when it contains 0."""
    if low > 0:
        return "gain"
    if high < 0:
        return "loss"
    return "inconclusive"


def _check(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"need two (seeds, images[, degradations]) arrays of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < 1:
        raise ValueError(f"need at least one seed, image and degradation, got shape {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores contain NaN or inf")
    return a, b


def paired_bootstrap(a: Any, b: Any, level: float = 0.95, n_boot: int = 10000, seed: int = 0,
                     exact_limit: int = 20000) -> dict[str, Any]:
    """Paired gain ``a - b`` per degradation and on their mean, with bootstrap intervals (module docstring).

    Args:
        a, b: ``(S, N, D)`` or ``(S, N)`` scores (e.g. PSNR in dB) of the method and the baseline.
        level: interval coverage in (0, 1).
        n_boot: Monte Carlo replicates when the exact distribution is too large.
        seed: seed of the Monte Carlo draws.
        exact_limit: enumerate exactly when (#seed count vectors) x (#image count vectors) is at most this.

    Returns:
        ``{"gain": [D + 1], "low": [D + 1], "high": [D + 1], "verdict": [D + 1], "method": "exact" |
        "monte carlo", "replicates": int}``; index D is the mean over degradations.

    Raises:
        ValueError: shapes differ or are empty, non-finite scores, ``level`` outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a, b = _check(a, b)
    g = a - b
    n_seeds, n_images, _ = g.shape
    point = g.mean(axis=(0, 1))
    point = np.append(point, point.mean())
    n_seed_vec, n_image_vec = math.comb(2 * n_seeds - 1, n_seeds), math.comb(2 * n_images - 1, n_images)
    if n_seed_vec * n_image_vec <= exact_limit:
        cs, ci = compositions(n_seeds, n_seeds), compositions(n_images, n_images)
        ps, pi = _multinomial_prob(cs), _multinomial_prob(ci)
        ws = np.repeat(cs, len(ci), axis=0) / n_seeds
        wi = np.tile(ci, (len(cs), 1)) / n_images
        weights = np.repeat(ps, len(ci)) * np.tile(pi, len(cs))
        method = "exact"
    else:
        rng = np.random.default_rng(seed)
        ws = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot) / n_seeds
        wi = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot) / n_images
        weights = np.ones(n_boot)
        method = "monte carlo"
    reps = np.einsum("bs,sid,bi->bd", ws, g, wi)
    reps = np.concatenate([reps, reps.mean(axis=1, keepdims=True)], axis=1)
    q_lo, q_hi = (1 - level) / 2, (1 + level) / 2
    low = [weighted_quantile(reps[:, d], weights, q_lo) for d in range(reps.shape[1])]
    high = [weighted_quantile(reps[:, d], weights, q_hi) for d in range(reps.shape[1])]
    return {"gain": [float(x) for x in point], "low": low, "high": high,
            "verdict": [verdict(lo, hi) for lo, hi in zip(low, high)], "method": method,
            "replicates": int(len(weights))}


def seed_stats(x: Any) -> dict[str, Any]:
    """Mean and sample std over seeds of per-seed scores ``(S, N, D)``: each seed's score per degradation is its
    mean over images, its mean score the mean over degradations. Returns ``{"mean": [D + 1], "std": [D + 1]}``
    (std is 0.0 for one seed)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    per_seed = x.mean(axis=1)                                    # (S, D)
    per_seed = np.concatenate([per_seed, per_seed.mean(axis=1, keepdims=True)], axis=1)
    std = per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else np.zeros(per_seed.shape[1])
    return {"mean": [float(v) for v in per_seed.mean(axis=0)], "std": [float(v) for v in std]}
