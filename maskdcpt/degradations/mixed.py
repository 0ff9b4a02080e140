"""Mixed degradations (kind ``'mixed'``): sequential compositions of registered single types.

A :class:`Mixture` applies its steps in order, each to the previous step's output (clipped to [0, 1]), with
the random fields drawn one after the other from the pair's noise stream. Its parameters are
``{step_label: <that step's complete params>}``, so a manifest row records every component's parameters and
regenerates the pair exactly; a partial override such as ``{"jpeg": {"quality": 30}}`` replaces only that
value. ``levels`` = product of the steps' levels (distinct severity combinations); mixtures are reported
separately from the single-type total (see :mod:`maskdcpt.degradations`).

The five mixtures are the UIR-2.5M mixed rows (docs/method.md §4.1): Blur+JPEG (REDS/RealBlur-J),
Blur+Rain (RainDrop-Clarity), Blur+Low-light+Noise (LoL-Blur), Low-light+Haze+Rain+Snow (CDD), and
DownSample+Noise+Blur+JPEG (a Real-ESRGAN-like second-order pipeline), plus RSD (rain streak + raindrop,
RainDS), which the paper counts among its 14 single types but is a composition here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .base import Degradation, _jsonable

__all__ = ["Mixture", "Resize", "SecondOrder", "RESIZE_SCALES"]

RESIZE_SCALES = [round(0.25 + 0.05 * k, 2) for k in range(16)]  # 0.25 ... 1.00
_INTERP = ("area", "linear", "cubic")


class Mixture(Degradation):
    """A sequence of ``(label, degradation, fixed_params)`` steps applied in order (module docstring).

    ``fixed_params`` (may be ``None``) are merged into that step's sampled parameters before recording (e.g.
    ``{"noise_type": "gaussian"}``). Raises ``ValueError`` for duplicate labels or non-synthetic steps.
    """

    kind = "mixed"

    def __init__(self, name: str, steps: Sequence[tuple], doc: str = "", source: str = ""):
        self.name = name
        self.steps = [(lbl, deg, dict(fixed or {})) for lbl, deg, *rest in steps for fixed in (rest or [None])]
        labels = [s[0] for s in self.steps]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{name}: duplicate step labels {labels}")
        for _, deg, _ in self.steps:
            if deg.kind == "real":
                raise ValueError(f"{name}: a mixture cannot contain the real class {deg.name!r}")
        self.levels = int(math.prod(max(1, d.levels) for _, d, _ in self.steps))
        self.param_ranges = {lbl: {"type": d.name, **({"fixed": f} if f else {}), "ranges": d.param_ranges}
                             for lbl, d, f in self.steps}
        self.source = source
        self.doc = doc

    def describe(self) -> dict:
        out = super().describe()
        out["doc"] = self.doc or " → ".join(d.name for _, d, _ in self.steps)
        out["steps"] = [{"label": lbl, "type": d.name} for lbl, d, _ in self.steps]
        return out

    def sample_params(self, rng: np.random.Generator) -> dict:
        out = {}
        for lbl, deg, fixed in self.steps:
            p = deg.sample_params(rng)
            p.update(fixed)
            out[lbl] = p
        return out

    def complete_params(self, given: Mapping[str, Any] | None, rng: np.random.Generator) -> dict:
        params = self.sample_params(rng)
        steps = {lbl: deg for lbl, deg, _ in self.steps}
        for key, sub in (given or {}).items():
            if key not in params:
                raise ValueError(f"{self.name}: unknown step/parameter {key!r}; known: {list(params)}")
            if key not in steps:  # a mixture-level scalar (e.g. final_interpolation)
                params[key] = sub
                continue
            if not isinstance(sub, Mapping):
                raise ValueError(f"{self.name}: params of step {key!r} must be a dict")
            unknown = sorted(set(sub) - set(params[key]))
            if unknown:
                raise ValueError(f"{self.name}.{key}: unknown parameter(s) {unknown}; known: {sorted(params[key])}")
            params[key].update(sub)
        return _jsonable({k: (steps[k].prune_params(v) if k in steps else v) for k, v in params.items()})

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        out = img
        for lbl, deg, _ in self.steps:
            out = np.clip(np.asarray(deg.apply(out, params[lbl], rng), np.float32), 0.0, 1.0)
        return out


class Resize(Degradation):
    """Down-sampling step of the second-order pipeline: ``cv2.resize`` by ``scale`` (both sides, at least 1 px)
    with ``interpolation`` ∈ {area, linear, cubic}. Changes the shape; not registered on its own."""

    name = "resize"
    kind = "single"
    levels = len(RESIZE_SCALES)
    param_ranges = {"scale": {"grid": [0.25, 1.0, 0.05]}, "interpolation": {"choice": list(_INTERP)}}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"scale": RESIZE_SCALES[int(rng.integers(len(RESIZE_SCALES)))],
                "interpolation": _INTERP[int(rng.integers(len(_INTERP)))]}

    @staticmethod
    def resize(img: np.ndarray, size_hw: tuple[int, int], interpolation: str) -> np.ndarray:
        import cv2

        codes = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
        if interpolation not in codes:
            raise ValueError(f"interpolation must be one of {_INTERP}, got {interpolation!r}")
        h, w = size_hw
        return np.clip(cv2.resize(img, (int(w), int(h)), interpolation=codes[interpolation]), 0.0, 1.0)

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        s = float(params["scale"])
        if not 0 < s <= 4:
            raise ValueError(f"resize scale must be in (0, 4], got {s}")
        h, w = img.shape[:2]
        return self.resize(img, (max(1, round(h * s)), max(1, round(w * s))), params["interpolation"])


class SecondOrder(Mixture):
    """DownSample + Noise + Blur + JPEG, Real-ESRGAN-like second-order degradation (Wang et al. ICCVW 2021):
    two rounds of ``blur → resize → noise → JPEG`` (labels ``blur1 .. jpeg2``), then the result is resized
    back to the GT size (``final_interpolation``), so LQ and GT stay aligned at the same size (the lost
    resolution is the "down-sample" part). Noise is Gaussian or Poisson (p = 0.5 each, as Real-ESRGAN)."""

    def __init__(self, name: str, blur: Degradation, noise: Degradation, jpeg: Degradation, doc: str = "",
                 source: str = ""):
        rs = Resize()
        steps = [("blur1", blur), ("resize1", rs), ("noise1", noise), ("jpeg1", jpeg),
                 ("blur2", blur), ("resize2", rs), ("noise2", noise), ("jpeg2", jpeg)]
        super().__init__(name, steps, doc=doc, source=source)
        self.levels *= len(_INTERP)
        self.param_ranges["final_interpolation"] = {"choice": list(_INTERP)}

    def sample_params(self, rng: np.random.Generator) -> dict:
        out = super().sample_params(rng)
        out["final_interpolation"] = _INTERP[int(rng.integers(len(_INTERP)))]
        return out

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        out = super().apply(img, params, rng)
        if out.shape != img.shape:
            out = Resize.resize(out, img.shape[:2], params["final_interpolation"])
        return out
