"""Degradation base class, registry and the seeded entry point :func:`degrade`.

Determinism contract
--------------------
``degrade(gt, name, seed, params=None)`` is a pure function of its arguments:

* ``SeedSequence(seed)`` is split into two independent child streams (``spawn_key`` 0 and 1):
  stream 0 samples the parameters, stream 1 draws the degradation's random field (noise, rain seeds, ...).
* If ``params`` is given (fully or partly) it overrides the sampled values; because the random field comes
  from its own stream, ``degrade(gt, name, seed)`` and ``degrade(gt, name, seed, params=<recorded>)``
  return the same LQ bit for bit. A manifest row (seed + params JSON) therefore regenerates its pair.
* Parameters are plain JSON types (int, float, str, bool); Python floats survive a JSON round trip
  exactly, so ``json.loads(json.dumps(params))`` regenerates the same LQ.

Spawn keys 2 and 3 of the same ``SeedSequence`` are reserved for callers (synthesis: crop selection and the
clean crop's tone).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np

__all__ = [
    "Degradation",
    "REGISTRY",
    "register",
    "get_degradation",
    "list_degradations",
    "degrade",
    "seed_streams",
    "check_image",
    "KINDS",
    "RealPairsOnly",
]

KINDS = ("single", "mixed", "real")


class RealPairsOnly(RuntimeError):
    """Raised by ``apply`` of a ``kind == 'real'`` class: its pairs come from captured GT/LQ folders only
    (:func:`maskdcpt.data.sources.collect_real_pairs`), there is nothing to synthesise."""


def check_image(img: np.ndarray) -> np.ndarray:
    """Validate and return ``img`` as a float32 C-contiguous ``(H, W, 3)`` array (values not modified).

    Raises ``ValueError`` for another shape, an empty image or non-finite values, ``TypeError`` for a
    non-float dtype (convert integer images with :func:`maskdcpt.imageio.read_image` semantics first).
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"expected a float image in [0, 1], got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or inf")
    return arr


def seed_streams(seed: int, n: int = 2) -> list[np.random.Generator]:
    """``n`` independent generators derived from ``SeedSequence(seed)`` with spawn keys ``0 .. n-1``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    root = int(seed)
    return [np.random.default_rng(np.random.SeedSequence(root, spawn_key=(k,))) for k in range(n)]


def _jsonable(value: Any) -> Any:
    """numpy scalars → Python scalars; tuples → lists; dicts recursively. Floats must be finite."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"parameter value {value!r} is not finite")
        return f
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    raise TypeError(f"parameter value {value!r} of type {type(value).__name__} is not JSON-serialisable")


class Degradation:
    """A degradation type: samples parameters and turns a clean image into a degraded one.

    Subclasses set the class attributes and implement :meth:`sample_params` and :meth:`apply`.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"gaussian_noise"``.
    kind : str
        ``'single'`` (one synthetic degradation), ``'mixed'`` (a composition) or ``'real'`` (captured pairs,
        no synthesis).
    param_ranges : dict
        For listing/documentation: ``{param: [lo, hi]}`` for continuous ranges, ``{param: {"choice":
        [...]}}`` for discrete choices, ``{param: value}`` for fixed defaults. Given parameters are not
        limited to these ranges (e.g. out-of-distribution σ = 75 is allowed).
    levels : int
        Number of distinct severity levels the default sampler draws from, by the counting rule of
        :mod:`maskdcpt.degradations` (severity parameters on a documented discrete grid; sub-types add,
        jointly drawn severities and mixture components multiply; nuisance parameters such as angles,
        positions and random-field seeds are not counted). Positive for every synthetic type; ``0`` for
        ``'real'`` classes (no synthesis).
    source : str
        Where the formula / ranges come from.
    """

    name: str = ""
    kind: str = "single"
    param_ranges: dict = {}
    levels: int = 0
    source: str = ""

    def sample_params(self, rng: np.random.Generator) -> dict:
        """Draw a complete parameter dict (JSON-serialisable) from ``rng``."""
        raise NotImplementedError

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Degrade ``img`` (float32 ``(H, W, 3)`` in [0, 1]) with complete ``params``; random fields come from
        ``rng``. Returns float32 ``(H, W, 3)`` in [0, 1]."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------------
    def complete_params(self, given: Mapping[str, Any] | None, rng: np.random.Generator) -> dict:
        """Sampled parameters overridden by ``given``; unknown keys raise ``ValueError``."""
        params = self.sample_params(rng)
        if given:
            unknown = sorted(set(given) - set(params))
            if unknown:
                raise ValueError(f"{self.name}: unknown parameter(s) {unknown}; known: {sorted(params)}")
            params.update(given)
        return _jsonable(self.prune_params(params))

    def prune_params(self, params: dict) -> dict:
        """Drop the sampled parameters that the chosen sub-type does not use (after overrides were applied),
        so the recorded dict holds only what ``apply`` reads. Default: unchanged. ``sample_params`` of a
        type with sub-types draws *every* sub-type's parameters in a fixed order, so that overriding the
        sub-type (e.g. ``{"noise_type": "poisson"}``) still yields a complete, seed-determined dict."""
        return params

    def describe(self) -> dict:
        """``{"name", "kind", "levels", "param_ranges", "source", "doc"}`` for listings."""
        doc = (self.__class__.__doc__ or "").strip().splitlines()
        return {
            "name": self.name,
            "kind": self.kind,
            "levels": self.levels,
            "param_ranges": _jsonable(self.param_ranges),
            "source": self.source,
            "doc": doc[0] if doc else "",
        }

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(name={self.name!r}, kind={self.kind!r})"


#: name → Degradation instance. Add new types with :func:`register`.
REGISTRY: dict[str, Degradation] = {}


def register(deg: Degradation, *, replace: bool = False) -> Degradation:
    """Add ``deg`` to :data:`REGISTRY` under ``deg.name`` (``ValueError`` if taken and not ``replace``)."""
    if not deg.name:
        raise ValueError("a degradation needs a non-empty name")
    if deg.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {deg.kind!r}")
    if deg.name in REGISTRY and not replace:
        raise ValueError(f"degradation {deg.name!r} is already registered")
    REGISTRY[deg.name] = deg
    return deg


def get_degradation(name: str) -> Degradation:
    """The registered degradation ``name``; ``ValueError`` listing the known names if there is none."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown degradation {name!r}; known: {sorted(REGISTRY)}") from None


def list_degradations() -> list[dict]:
    """:meth:`Degradation.describe` of every registered type, sorted by name."""
    return [REGISTRY[k].describe() for k in sorted(REGISTRY)]


def degrade(
    gt: np.ndarray,
    name: str,
    seed: int,
    params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict]:
    """Degrade a clean image deterministically.

    Parameters
    ----------
    gt : array
        Clean image, float ``(H, W, 3)`` RGB in [0, 1].
    name : str
        A key of :data:`REGISTRY` (``ValueError`` otherwise).
    seed : int
        Non-negative integer; see the module docstring for how it is split into parameter and noise streams.
    params : dict, optional
        Full or partial parameters; missing ones are sampled from the seed. Unknown keys → ``ValueError``.

    Returns
    -------
    lq : numpy.ndarray
        float32 ``(H, W, 3)`` in [0, 1], same shape as ``gt``.
    params : dict
        The complete, JSON-serialisable parameters used.
    """
    deg = get_degradation(name)
    img = check_image(gt)
    param_rng, field_rng = seed_streams(seed, 2)
    full = deg.complete_params(params, param_rng)
    lq = deg.apply(img, full, field_rng)
    lq = np.asarray(lq, dtype=np.float32)
    if lq.shape != img.shape:  # pragma: no cover - guards new implementations
        raise RuntimeError(f"{name}: output shape {lq.shape} != input shape {img.shape}")
    return np.ascontiguousarray(np.clip(lq, 0.0, 1.0)), full
