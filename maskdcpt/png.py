"""PNG encoding and decoding of float images at 8 or 16 bits (OpenCV), and the rounding to integer codes.

Arrays are float32 ``(H, W, 3)`` RGB in [0, 1] (or ``(H, W)`` grey); codes are ``round(x * (2**b - 1))``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskdcpt.atomic import atomic_write_bytes

__all__ = ["quantize", "encode_png", "decode_png", "decode_png_codes", "code_scale", "write_png"]


def _max_value(bit_depth: int) -> int:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    return 255 if bit_depth == 8 else 65535


def _to_int(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """float [0, 1] → uint8/uint16 by ``round(clip(x, 0, 1) · (2**b − 1))`` (round half to even)."""
    maxv = _max_value(bit_depth)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    img = np.asarray(img)
    if img.dtype == dtype:
        return img
    if img.dtype.kind not in "fb":
        raise TypeError(f"expected a float image in [0, 1] (or {np.dtype(dtype).name}), got {img.dtype}")
    f = img.astype(np.float32)
    if not np.all(np.isfinite(f)):
        raise ValueError("image contains NaN or inf")
    return np.round(np.clip(f, 0.0, 1.0) * np.float32(maxv)).astype(dtype)


def quantize(img: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """What a PNG of ``bit_depth`` stores and :func:`decode_png` returns: float32 ``round(x·m)/m`` with
    ``m = 2**bit_depth − 1`` after clipping to [0, 1]. Bit-identical to ``decode_png(encode_png(x))``."""
    maxv = _max_value(bit_depth)
    return _to_int(img, bit_depth).astype(np.float32) / np.float32(maxv)


def _check_layout(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"empty image of shape {img.shape}")
    return img


def encode_png(img: np.ndarray, bit_depth: int = 8, compression: int = 3) -> bytes:
    """Encode an RGB(A)/grey image as PNG bytes.

    Parameters
    ----------
    img : array
        float in [0, 1] (clipped, rounded to the nearest code value), shape ``(H, W)``, ``(H, W, 1)``,
        ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA). ``uint8`` (bit_depth 8) or ``uint16`` (bit_depth 16)
        arrays are stored as they are.
    bit_depth : 8 or 16
    compression : int
        zlib level 0-9 (OpenCV ``IMWRITE_PNG_COMPRESSION``); lossless at every level.

    Raises ``ValueError`` for a bad shape, bit depth or non-finite values, ``TypeError`` for other dtypes.
    """
    import cv2

    q = _to_int(_check_layout(img), bit_depth)
    if q.ndim == 3:
        q = q[..., [2, 1, 0]] if q.shape[2] == 3 else q[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(q), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError("OpenCV failed to encode PNG")
    return buf.tobytes()


def decode_png_codes(data: bytes) -> np.ndarray:
    """Decode PNG bytes to their integer code values (``uint8`` or ``uint16``), unscaled.

    Returns ``(H, W)`` for grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (possibly a non-contiguous view of
    OpenCV's BGR(A) buffer). Raises ``ValueError`` if undecodable.
    """
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("could not decode PNG data")
    if arr.dtype not in (np.uint8, np.uint16):  # pragma: no cover - PNG has no other sample types
        raise ValueError(f"unexpected PNG dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]
    return arr


def code_scale(dtype) -> float:
    """The code value of white: 255 for ``uint8``, 65535 for ``uint16``."""
    return 255.0 if np.dtype(dtype) == np.uint8 else 65535.0


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to float32 in [0, 1]: 8-bit ``/255``, 16-bit ``/65535``.

    Returns ``(H, W)`` for grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (channel order as stored, alpha
    kept; use :func:`read_image` for the compositing rules). Raises ``ValueError`` if undecodable.
    """
    arr = decode_png_codes(data)
    return np.ascontiguousarray(arr.astype(np.float32) / np.float32(code_scale(arr.dtype)))


def write_png(path: str | os.PathLike, img: np.ndarray, bit_depth: int = 8, compression: int = 3) -> Path:
    """Atomically write ``img`` (see :func:`encode_png`) as an 8- or 16-bit PNG at ``path``.

    The bytes go to a temporary file in the destination folder, are fsynced and then ``os.replace``-d
    onto ``path``, so an interrupted run never leaves a partial PNG. Returns ``Path(path)``.
    """
    data = encode_png(img, bit_depth=bit_depth, compression=compression)
    atomic_write_bytes(path, data)
    return Path(path)
