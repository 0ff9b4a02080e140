"""Real (captured) paired classes: registry entries whose pairs come from GT/LQ folders only."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Degradation, RealPairsOnly

__all__ = ["RealPairs", "REAL_CLASSES"]


class RealPairs(Degradation):
    """A class of captured degraded/clean pairs (kind ``'real'``): nothing is synthesised.

    ``sample_params`` returns ``{}`` and :meth:`apply` raises :class:`RealPairsOnly`; the pairs are matched
    from folders (or an S3 prefix) by :func:`maskdcpt.data.sources.collect_real_pairs`, whose manifest rows
    carry ``degradation = <this name>`` and ``kind = 'real'``. ``levels`` = 0 (no synthetic levels).
    """

    kind = "real"
    levels = 0
    param_ranges: dict = {}

    def __init__(self, name: str, datasets: str):
        self.name = name
        self.source = f"captured pairs, e.g. {datasets} (UIR-2.5M real rows, docs/method.md §4.1)"
        self.__doc__ = f"Real captured pairs ({datasets}); no synthesis."

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        raise RealPairsOnly(f"{self.name!r} is a real (captured) class: its pairs come from real GT/LQ folders "
                            "(maskdcpt.data.sources.collect_real_pairs); it cannot be synthesised")


#: name → example datasets of the real classes.
REAL_CLASSES = {
    "real_noise": "SIDD",
    "real_rain": "RealRain-1k, RainDS-real, OutdoorRain",
    "real_motion_blur": "RSBlur, RealBlur",
    "real_low_light": "LOL-v2-real, LSRW",
}
