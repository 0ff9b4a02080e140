"""Images stored as NumPy arrays (``.npy``, ``.npz``), with the same rejections as :func:`maskdcpt.imageio.read_image`."""

from __future__ import annotations

import os

import numpy as np

from maskdcpt.imageio import DEFAULT_MAX_PIXELS, ImageRejected, check_file

__all__ = ["read_image_array"]


def read_image_array(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_size: int = 0,
) -> np.ndarray:
    """Load an image stored as a NumPy array (``.npy``, or one array of an ``.npz``).

    The array must be channel-last: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA,
    composited over white). ``uint8`` is divided by 255, ``uint16`` by 65535, ``bool`` maps to {0, 1},
    floats are taken as [0, 1] and clipped. ``key`` selects the array of an ``.npz`` (default: the only
    one, or ``"image"``). Pickled objects are never loaded. Returns float32 ``(H, W, 3)`` in [0, 1].

    Raises :class:`ImageRejected` (``not_found``, ``empty_file``, ``bad_array``, ``too_many_pixels``,
    ``too_small``, ``non_finite``).
    """
    path = check_file(path)
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode=None)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if key is None:
                    key = names[0] if len(names) == 1 else ("image" if "image" in names else None)
                if key is None or key not in names:
                    raise ImageRejected("bad_array", f"choose one of the arrays {names} with key=", path)
                arr = loaded[key]
        else:
            arr = loaded
    except ImageRejected:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise ImageRejected("bad_array", f"not a loadable .npy/.npz: {e}", path) from e
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageRejected("bad_array", f"expected (H, W[, 1|3|4]) array, got shape {arr.shape}", path)
    h, w = arr.shape[:2]
    if max_pixels is not None and h * w > max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h} > max_pixels={max_pixels}", path)
    if min(h, w) < min_size:
        raise ImageRejected("too_small", f"{w}x{h}: shorter side < min_size={min_size}", path)
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / np.float32(255)
    elif arr.dtype == np.uint16:
        f = arr.astype(np.float32) / np.float32(65535)
    elif arr.dtype == np.bool_:
        f = arr.astype(np.float32)
    elif arr.dtype.kind == "f":
        f = arr.astype(np.float32)
        if not np.all(np.isfinite(f)):
            raise ImageRejected("non_finite", "array contains NaN or inf", path)
        f = np.clip(f, 0.0, 1.0)
    else:
        raise ImageRejected("bad_array", f"unsupported dtype {arr.dtype}", path)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=2)
    elif f.shape[2] == 4:
        a = f[..., 3:4]
        f = f[..., :3] * a + (1 - a)
    return np.ascontiguousarray(f, dtype=np.float32)
