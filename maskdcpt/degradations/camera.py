"""Camera/codec degradations: JPEG compression, Bayer mosaic + demosaicing, and screen-capture moiré."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .base import Degradation

__all__ = ["JPEG", "Mosaic", "Moire", "jpeg_roundtrip", "bayer_rggb", "demosaic", "moire_pattern",
           "JPEG_QUALITIES", "MOIRE_STRENGTHS"]

JPEG_QUALITIES = list(range(10, 96))  # 86 levels
MOIRE_STRENGTHS = [round(0.1 + 0.05 * k, 2) for k in range(10)]  # 0.10 ... 0.55


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress and decode with OpenCV, as MaskDCPT's ``PairedImageJPEGCARDataset``.

    ``uint8(round(255·img))`` is converted RGB→BGR, encoded with ``cv2.imencode('.jpg', ...,
    IMWRITE_JPEG_QUALITY=quality)`` (libjpeg defaults: 4:2:0 chroma subsampling, baseline), decoded with
    ``cv2.imdecode`` and converted back to RGB float32 ``/255``. ``img`` float32 ``(H, W, 3)`` in [0, 1];
    ``quality`` 0-100 (``ValueError`` otherwise). Source: docs/method.md §4.3.
    """
    import cv2

    q = int(quality)
    if not 0 <= q <= 100:
        raise ValueError(f"JPEG quality must be in [0, 100], got {quality}")
    bgr = np.ascontiguousarray(_to_uint8(img)[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError("OpenCV failed to encode JPEG")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(dec[..., ::-1]).astype(np.float32) / np.float32(255.0)


class JPEG(Degradation):
    """JPEG compression artefacts (the paper's J class): ``lq = `` :func:`jpeg_roundtrip` ``(gt, quality)``.

    ``quality`` ∈ {10, ..., 95} (integers, uniform; 86 levels). The 5D/12D test sets use ``quality = 50``
    (pass ``params={"quality": 50}``); DCPT 10D trains on {10, 20, 30, 40, 50}. Source: docs/method.md §4.3.
    """

    name = "jpeg"
    kind = "single"
    source = "MaskDCPT PairedImageJPEGCARDataset (cv2.imencode/imdecode on BGR uint8); test q=50"
    levels = len(JPEG_QUALITIES)
    param_ranges = {"quality": {"grid": [10, 95, 1]}}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"quality": JPEG_QUALITIES[int(rng.integers(len(JPEG_QUALITIES)))]}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        return jpeg_roundtrip(img, params["quality"])


def bayer_rggb(img: np.ndarray) -> np.ndarray:
    """Sample an RGB image with an RGGB Bayer colour filter array: uint8 ``(H, W)``.

    ``uint8(round(255·img))``; site ``(even row, even col)`` keeps R, ``(even, odd)`` and ``(odd, even)`` keep
    G, ``(odd, odd)`` keeps B (Bayer, US patent 3,971,065; the ``mosaic_CFA_Bayer`` RGGB layout).
    """
    u8 = _to_uint8(img)
    cfa = u8[..., 1].copy()
    cfa[0::2, 0::2] = u8[0::2, 0::2, 0]
    cfa[1::2, 1::2] = u8[1::2, 1::2, 2]
    return cfa


def demosaic(cfa: np.ndarray, swap_rb: bool = False) -> np.ndarray:
    """Edge-aware demosaicing of an RGGB mosaic with OpenCV: uint8 ``(H, W, 3)``.

    ``swap_rb=False``: ``cv2.COLOR_BayerRGGB2RGB_EA`` (= ``COLOR_BayerBG2RGB_EA``; output in RGB, the GT's
    channel order). ``swap_rb=True``: ``cv2.COLOR_BayerBG2BGR_EA`` as the official MaskDCPT pipeline calls it on
    the RGB-order mosaic, which returns R and B swapped relative to the GT (docs/method.md §4.3 and §6 item 11);
    use it only to reproduce the official demosaic numbers. Interior CFA sites keep their sampled value;
    OpenCV fills the outermost row and column by replication.
    """
    import cv2

    code = cv2.COLOR_BayerBG2BGR_EA if swap_rb else cv2.COLOR_BayerBG2RGB_EA
    return cv2.cvtColor(np.ascontiguousarray(cfa, dtype=np.uint8), code)


class Mosaic(Degradation):
    """Bayer mosaic then demosaicing (the paper's MS class): ``lq = demosaic(bayer_rggb(gt)) / 255``.

    Deterministic (no random field). ``swap_rb`` (default ``False``) reproduces the official pipeline's R/B
    swap when ``True`` (see :func:`demosaic`). ``levels`` = 1 (one fixed setting: the CFA and the
    edge-aware demosaicer). Source: MaskDCPT ``PairedImageMosaicDataset`` (docs/method.md §4.3).
    """

    name = "mosaic"
    kind = "single"
    source = "MaskDCPT PairedImageMosaicDataset: RGGB CFA + cv2 edge-aware demosaic (R/B swap optional)"
    levels = 1
    param_ranges = {"swap_rb": False}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"swap_rb": False}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        out = demosaic(bayer_rggb(img), bool(params.get("swap_rb", False)))
        return out.astype(np.float32) / np.float32(255.0)


def moire_pattern(shape: tuple[int, int], params: Mapping[str, Any], factor: int = 2) -> np.ndarray:
    """The screen's sub-pixel transmission on a ``factor×`` finer grid, float32 ``(factor·H, factor·W, 3)``.

    Channel ``c`` (R, G, B) is a raised-cosine stripe ``0.5 + 0.5·cos(2π(u/p − c/3) + 2π·phase)`` with
    ``u = x cos θ + y sin θ`` (fine-grid px), period ``p = pitch·factor`` and θ = ``angle`` (degrees): the
    R/G/B sub-pixel columns of an LCD, pitch given in *image* pixels.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h * factor, 0:w * factor].astype(np.float32)
    th = math.radians(float(params["angle"]))
    u = xx * np.float32(math.cos(th)) + yy * np.float32(math.sin(th))
    p = np.float32(float(params["pitch"]) * factor)
    base = np.float32(2 * math.pi) * (u / p + np.float32(params["phase"]))
    return np.stack([0.5 + 0.5 * np.cos(base - np.float32(2 * math.pi * c / 3)) for c in range(3)], -1)


class Moire(Degradation):
    """Screen-capture moiré (the paper's MR class): aliasing between a display's sub-pixel grid and the
    camera's sampling grid.

    Model: the image is shown on a screen (upsampled ``2×`` with ``cv2.resize``, ``INTER_LINEAR``) whose
    light passes R/G/B sub-pixel stripes (:func:`moire_pattern`, pitch slightly above one image pixel and
    slightly rotated), ``screen = up · (1 − s + s·pattern)``; the camera then resamples it to the original
    grid with ``cv2.resize(INTER_LINEAR)``, which has no anti-aliasing pre-filter, so the stripe frequency
    ``1/pitch`` folds to the low beat frequency ``|1/pitch − 1|`` cycles/px: coloured, rotated interference
    fringes with a period of ``pitch/(pitch − 1)`` px (4-50 px here). Finally the LQ is rescaled so its mean
    matches the GT's (a camera's auto-exposure) and a slight optical blur (``cv2.GaussianBlur``, σ = 0.5) is
    applied.

    Params: ``strength`` s ∈ {0.10, 0.15, ..., 0.55} (10 levels), ``pitch`` ∈ [1.02, 1.30] image px,
    ``angle`` ∈ [−20, 20]°, ``phase`` ∈ [0, 1) (nuisance parameters). Source: the aliasing account of
    screen moiré in Sun et al., "Moiré photo restoration using multiresolution CNNs" (TIP 2018) and the
    RDNet/TIP2018 data; the paper's MR class uses captured pairs (no code). Ranges: ours.
    """

    name = "moire"
    kind = "single"
    source = "display sub-pixel grid resampled without anti-aliasing (Sun et al. TIP 2018 account); ours"
    levels = len(MOIRE_STRENGTHS)
    param_ranges = {"strength": {"grid": [0.1, 0.55, 0.05]}, "pitch": [1.02, 1.30], "angle": [-20.0, 20.0],
                    "phase": [0.0, 1.0]}

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"strength": MOIRE_STRENGTHS[int(rng.integers(len(MOIRE_STRENGTHS)))],
                "pitch": float(rng.uniform(1.02, 1.30)), "angle": float(rng.uniform(-20.0, 20.0)),
                "phase": float(rng.uniform(0.0, 1.0))}

    def apply(self, img: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        import cv2

        h, w = img.shape[:2]
        f = 2
        up = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_LINEAR)
        s = np.float32(params["strength"])
        screen = up * (np.float32(1.0) - s + s * moire_pattern((h, w), params, f))
        down = cv2.resize(screen, (w, h), interpolation=cv2.INTER_NEAREST)
        gain = float(img.mean()) / max(float(down.mean()), 1e-6)
        down = np.clip(down * np.float32(gain), 0.0, 1.0)
        return cv2.GaussianBlur(down, (0, 0), sigmaX=0.5, borderType=cv2.BORDER_REFLECT_101)
