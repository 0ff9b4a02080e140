"""Image I/O with explicit, documented conversions (docs/method.md §8).

In memory every image is a ``float32`` array of shape ``(H, W, 3)``, RGB order, values in ``[0, 1]``.
This module is the one place where files become such arrays and back:

* :func:`read_image` decodes a photo with Pillow (OpenCV for the few layouts Pillow cannot hold: 16-bit
  colour PNG/TIFF and multi-channel float TIFF), applies the EXIF orientation, converts every mode to RGB
  and scales by the true bit depth. Anything unreadable raises :class:`ImageRejected` with a
  machine-readable ``reason`` so that batch stages can record it and carry on.
* :func:`write_png`, :func:`encode_png`, :func:`decode_png` store arrays losslessly as 8- or 16-bit PNG
  (OpenCV's encoder; OpenCV is BGR internally, the conversion is done here, callers always see RGB).
  ``decode_png(encode_png(x, b))`` equals :func:`quantize` ``(x, b)`` bit for bit.
* :func:`file_sha256` hashes a file in streaming fashion.

Conversion rules of :func:`read_image` (pixel values ``v`` → float):

=====================  ==========================================================================
PIL mode / layout      conversion
=====================  ==========================================================================
``1``, ``L``           grey, ``v / 255``, replicated to 3 channels
``P``                  palette expanded (to RGBA when the palette carries transparency)
``RGB``                ``v / 255``
``RGBA``, ``LA``,      alpha-composited over **white**: ``c·α + 1·(1 − α)``, then alpha dropped.
``PA``, ``RGBa``, ...  White was picked because transparent regions of photos/logos are shown on
                       white backgrounds by browsers and viewers; it is deterministic either way.
``CMYK``, ``YCbCr``,   Pillow's ``convert("RGB")`` (embedded ICC profiles are **not** applied)
``HSV``
``I;16*``              ``v / (2**bits − 1)``, bits = TIFF ``BitsPerSample`` if present, else 16
``I`` (int32)          as above, bits = ``BitsPerSample`` or 16 when ``max ≤ 65535`` else 32
``F`` (float32)        taken as already in [0, 1] and clipped; NaN/inf → rejected ``non_finite``
16-bit RGB(A) PNG/TIFF decoded with OpenCV, ``v / 65535`` (Pillow would truncate it to 8 bits)
float RGB TIFF         decoded with OpenCV, clipped to [0, 1]
=====================  ==========================================================================

Multi-frame files (GIF, multi-page TIFF) yield their first frame.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from maskdcpt.atomic import atomic_open, atomic_write_bytes
from maskdcpt.integrity import file_sha256  # noqa: F401  (re-exported)
from maskdcpt.png import decode_png, encode_png, quantize, write_png  # noqa: F401  (re-exported)

__all__ = [
    "ImageRejected",
    "read_image",
    "image_info",
    "write_png",
    "encode_png",
    "decode_png",
    "quantize",
    "file_sha256",
    "atomic_write_bytes",
    "atomic_open",
    "IMAGE_EXTENSIONS",
]

#: File extensions that :func:`read_image` is expected to handle (lower case, with the dot).
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm", ".pnm",
)

DEFAULT_MAX_PIXELS = 50_000_000


class ImageRejected(ValueError):
    """An input file that cannot be used as an image.

    Attributes
    ----------
    reason : str
        Short machine-readable slug: ``not_found``, ``empty_file``, ``not_an_image``, ``truncated``,
        ``corrupt``, ``too_small``, ``too_many_pixels``, ``unsupported_mode``, ``non_finite``,
        ``bad_array`` (from :func:`read_image_array`).
    path : str or None
        The offending file, when known.
    """

    def __init__(self, reason: str, message: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{reason}: {message}" + (f" ({self.path})" if self.path else ""))

    def __reduce__(self):  # keep it picklable (multiprocessing workers)
        return (self.__class__, (self.reason, self.message, self.path))


# --------------------------------------------------------------------------------------------------
# reading


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``; raises :class:`ImageRejected` ``not_found`` / ``empty_file`` before any decoding."""
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("not_found", "no such file", path)
    if path.stat().st_size == 0:
        raise ImageRejected("empty_file", "file has zero bytes", path)
    return path


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first IFD of a classic TIFF, or None. Used before OpenCV decodes a TIFF
    that Pillow cannot identify, so that the pixel budget is checked before any pixel is decoded."""
    if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    end = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(end + "I", data[4:8])
        (n,) = struct.unpack(end + "H", data[ifd: ifd + 2])
        w = h = None
        for i in range(n):
            e = data[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, typ = struct.unpack(end + "HH", e[:4])
            val = struct.unpack(end + "H", e[8:10])[0] if typ == 3 else struct.unpack(end + "I", e[8:12])[0]
            if tag == 256:
                w = val
            elif tag == 257:
                h = val
        return (w, h) if w and h else None
    except struct.error:
        return None


def _orient_array(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an (H, W, ...) array (same semantics as ImageOps.exif_transpose)."""
    if orientation in (None, 1):
        return arr
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, k=1),
    }
    op = ops.get(int(orientation))
    return np.ascontiguousarray(op(arr)) if op else arr


def _from_cv2(arr: np.ndarray) -> np.ndarray:
    """OpenCV-decoded array (BGR/BGRA/grey, uint8/uint16/float) → float32 (H, W, 3) RGB in [0, 1]."""
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / np.float32(255)
    elif arr.dtype == np.uint16:
        f = arr.astype(np.float32) / np.float32(65535)
    elif arr.dtype.kind == "f":
        f = arr.astype(np.float32)
        if not np.all(np.isfinite(f)):
            raise ValueError("non_finite")
        f = np.clip(f, 0.0, 1.0)
    else:
        raise TypeError(f"unsupported dtype {arr.dtype}")
    if f.ndim == 2:
        f = f[..., None]
    c = f.shape[2]
    if c == 1:
        return np.ascontiguousarray(np.repeat(f, 3, axis=2))
    if c == 2:  # grey + alpha
        g, a = f[..., :1], f[..., 1:2]
        return np.ascontiguousarray(np.repeat(g * a + (1 - a), 3, axis=2))
    rgb = f[..., 2::-1]
    if c >= 4:
        a = f[..., 3:4]
        rgb = rgb * a + (1 - a)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _bits_per_sample(im) -> int | None:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    bps = tags.get(258)
    if bps is None:
        return None
    if isinstance(bps, (tuple, list)):
        bps = max(bps)
    return int(bps)


def _needs_cv2(im, head: bytes) -> bool:
    """True for colour images with more than 8 bits per sample, which Pillow silently truncates."""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    if im.format == "PNG" and len(head) >= 26:
        return head[24] == 16  # IHDR bit depth
    if im.format == "TIFF":
        bps = _bits_per_sample(im)
        return bps is not None and bps > 8
    return False


def _pil_to_array(im) -> np.ndarray:
    """A loaded, oriented PIL image → float32 (H, W, 3) in [0, 1] (see the module table)."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA" if mode != "La" else "LA")
        mode = im.mode
    if mode in ("L", "RGB"):
        f = np.asarray(im, dtype=np.float32) / np.float32(255)
    elif mode in ("LA", "RGBA"):
        a8 = np.asarray(im, dtype=np.float32) / np.float32(255)
        a = a8[..., -1:]
        f = a8[..., :-1] * a + (1 - a)
    elif mode.startswith("I;16") or mode == "I":
        raw = np.asarray(im)
        bits = _bits_per_sample(im)
        if bits is None:
            bits = 16 if (mode != "I" or int(raw.max(initial=0)) <= 65535) else 32
        f = np.clip(raw.astype(np.float64) / float(2 ** bits - 1), 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        f = np.asarray(im, dtype=np.float32)
        if not np.all(np.isfinite(f)):
            raise ValueError("non_finite")
        f = np.clip(f, 0.0, 1.0)
    else:
        try:
            rgb = im.convert("RGB")
        except (ValueError, OSError) as e:
            raise TypeError(f"unsupported PIL mode {mode!r}: {e}") from e
        f = np.asarray(rgb, dtype=np.float32) / np.float32(255)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=2)
    elif f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return np.ascontiguousarray(f, dtype=np.float32)


def image_info(path: str | os.PathLike) -> dict:
    """Header-only facts about an image file: ``{"width", "height", "mode", "format", "orientation"}``.

    Width/height are *after* EXIF orientation. Raises :class:`ImageRejected` like :func:`read_image`
    for missing, empty or non-image files; decodes no pixels.
    """
    from PIL import Image, UnidentifiedImageError

    path = check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112)
                mode, fmt = im.mode, im.format
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e), path) from e
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", "Pillow cannot identify this file", path) from e
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return {"width": w, "height": h, "mode": mode, "format": fmt, "orientation": orientation}


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_size: int = 0,
    return_mode: bool = False,
):
    """Decode an image file into a float32 ``(H, W, 3)`` RGB array with values in ``[0, 1]``.

    Parameters
    ----------
    path : path-like
        Any format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, GIF, PNM, ...), plus float/16-bit colour TIFF
        and 16-bit colour PNG through OpenCV.
    max_pixels : int or None
        Decompression-bomb guard: the pixel count ``W·H`` is read from the header *before* any pixel is
        decoded, and a larger image is rejected with reason ``too_many_pixels``. Pillow's own hard limit
        (``2 · PIL.Image.MAX_IMAGE_PIXELS`` ≈ 179 MP by default) also maps to ``too_many_pixels``.
        ``None`` disables the check here (Pillow's limit still applies).
    min_size : int
        Minimum allowed length of the *shorter* side in pixels (after orientation); smaller images are
        rejected with reason ``too_small``.
    return_mode : bool
        If True return ``(array, pil_mode)`` where ``pil_mode`` is the file's original PIL mode
        (e.g. ``"L"``, ``"RGB"``, ``"I;16"``, ``"CMYK"``; ``"RGB;16"``/``"RGBA;16"`` for 16-bit colour).

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, shape ``(H, W, 3)``, RGB, in ``[0, 1]``; EXIF orientation applied.
        Conversions follow the table in the module docstring.

    Raises
    ------
    ImageRejected
        ``reason`` ∈ {``not_found``, ``empty_file``, ``not_an_image``, ``truncated``, ``corrupt``,
        ``too_many_pixels``, ``too_small``, ``unsupported_mode``, ``non_finite``}. The whole file is decoded
        (``Image.load()``), so truncated or corrupt data is detected here, not later. Note: if some other
        code sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` Pillow pads truncated files silently.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageRejected("not_found", "no such file", path)
    size = path.stat().st_size
    if size == 0:
        raise ImageRejected("empty_file", "file has zero bytes", path)
    with open(path, "rb") as f:
        data = f.read()

    def check_size(w: int, h: int) -> None:
        if max_pixels is not None and w * h > max_pixels:
            raise ImageRejected("too_many_pixels", f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}", path)
        if min(w, h) < min_size:
            raise ImageRejected("too_small", f"{w}x{h}: shorter side < min_size={min_size}", path)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e), path) from e
    except UnidentifiedImageError as e:
        tsize = _tiff_size(data)
        if tsize is None:
            raise ImageRejected("not_an_image", "Pillow cannot identify this file", path) from e
        # A TIFF layout Pillow cannot hold (e.g. float32 RGB): size-check, then OpenCV.
        check_size(*tsize)
        arr = _cv2_decode(data, path)
        out = _from_cv2_checked(arr, path)
        return (out, f"cv2:{arr.dtype}x{arr.shape[2] if arr.ndim == 3 else 1}") if return_mode else out
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise ImageRejected("corrupt", f"header could not be parsed: {e}", path) from e

    with im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112)
        except Exception:  # malformed EXIF: ignore orientation rather than reject the photo
            orientation = None
        ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        check_size(ow, oh)
        mode = im.mode
        if _needs_cv2(im, data[:32]):
            arr = _cv2_decode(data, path)
            out = _orient_array(_from_cv2_checked(arr, path), orientation)
            mode = f"{mode};16"
        else:
            try:
                im.load()
            except Image.DecompressionBombError as e:
                raise ImageRejected("too_many_pixels", str(e), path) from e
            except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
                msg = str(e)
                reason = "truncated" if "truncat" in msg.lower() or isinstance(e, EOFError) else "corrupt"
                raise ImageRejected(reason, f"decoding failed: {msg}", path) from e
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:
                oriented = im
            try:
                out = _pil_to_array(oriented)
            except ValueError as e:
                raise ImageRejected("non_finite", "float image contains NaN or inf", path) from e
            except TypeError as e:
                raise ImageRejected("unsupported_mode", str(e), path) from e
    return (out, mode) if return_mode else out


def _cv2_decode(data: bytes, path) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageRejected("truncated", "OpenCV could not decode the (high bit depth) image data", path)
    return arr


def _from_cv2_checked(arr: np.ndarray, path) -> np.ndarray:
    try:
        return _from_cv2(arr)
    except ValueError as e:
        raise ImageRejected("non_finite", "float image contains NaN or inf", path) from e
    except TypeError as e:
        raise ImageRejected("unsupported_mode", str(e), path) from e


# --------------------------------------------------------------------------------------------------
# writing
