"""Native-format image I/O for restoration: read a file keeping its layout (grey/RGB, alpha) and bit depth,
EXIF orientation applied; write it back as 8- or 16-bit PNG; expand command-line inputs into files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskdcpt.atomic import atomic_write_bytes
from maskdcpt.imageio import ImageRejected, _orient_array

__all__ = ["NativeImage", "read_image_native", "write_image_native", "expand_inputs"]



@dataclass
class NativeImage:
    """An image as stored in its file, EXIF orientation applied.

    Attributes:
        pixels: ``(H, W)`` grey, ``(H, W, 2)`` grey + alpha, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA;
            ``uint8``, ``uint16`` or ``float32`` (float TIFF/``F`` mode, clipped to [0, 1]).
        bit_depth: 8, 16 or 32 (float).
        mode: the file's PIL mode (``"L"``, ``"RGB"``, ``"I;16"``, ...; ``"RGB;16"``-style for 16-bit colour
            decoded with OpenCV).
        orientation: the EXIF orientation tag that was applied (None if absent).
    """

    pixels: np.ndarray
    bit_depth: int
    mode: str
    orientation: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        """True for grey + alpha and RGBA."""
        return self.pixels.ndim == 3 and self.pixels.shape[2] in (2, 4)

    @property
    def is_gray(self) -> bool:
        """True for grey and grey + alpha."""
        return self.pixels.ndim == 2 or self.pixels.shape[2] == 2




def read_image_native(path: str | os.PathLike, max_pixels: int | None = 50_000_000) -> NativeImage:
    """Read an image keeping its layout (grey or colour, alpha) and bit depth; apply its EXIF orientation.

    Unlike :func:`maskdcpt.imageio.read_image` (which always returns float RGB, alpha composited on white) this
    keeps what a user expects to get back from a restoration tool. Conversions: ``1`` -> ``L``; ``P`` -> RGB
    or RGBA (if the palette has transparency); ``PA`` -> RGBA; ``La`` / ``RGBa`` (premultiplied) -> ``LA`` /
    ``RGBA``; ``CMYK``/``YCbCr``/``LAB``/``HSV`` -> RGB (no ICC transform); ``I;16*`` -> uint16 grey; ``I``
    -> uint16 grey when its values fit, else rejected; ``F`` -> float32 grey clipped to [0, 1]; 16-bit colour
    PNG/TIFF decoded with OpenCV to uint16 RGB(A). Multi-frame files give their first frame.

    Raises:
        ImageRejected: ``not_found``, ``empty_file``, ``not_an_image``, ``corrupt``, ``truncated``,
            ``too_many_pixels``, ``unsupported_mode``, ``non_finite`` (see :class:`maskdcpt.imageio.ImageRejected`).
    """
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageRejected("not_found", "no such file", path)
    data = path.read_bytes()
    if not data:
        raise ImageRejected("empty_file", "file has zero bytes", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e), path) from e
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", "Pillow cannot identify this file", path) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected("corrupt", f"header could not be parsed: {e}", path) from e
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageRejected("too_many_pixels", f"{w}x{h} > max_pixels={max_pixels}", path)
        try:
            orientation = im.getexif().get(0x0112)
        except Exception:  # noqa: BLE001 - malformed EXIF: ignore the orientation
            orientation = None
        mode = im.mode
        bps = None
        tags = getattr(im, "tag_v2", None)
        if tags is not None and tags.get(258) is not None:
            b = tags.get(258)
            bps = int(max(b) if isinstance(b, (tuple, list)) else b)
        sixteen_colour = mode in ("RGB", "RGBA", "LA") and (
            (im.format == "PNG" and len(data) > 24 and data[24] == 16) or (im.format == "TIFF" and (bps or 8) > 8))
        if sixteen_colour:
            import cv2

            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ImageRejected("truncated", "OpenCV could not decode the 16-bit image data", path)
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = arr[..., ::-1]
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = arr[..., [2, 1, 0, 3]]
            pixels, depth, mode = arr, 16 if arr.dtype == np.uint16 else 8, f"{mode};16"
            if pixels.dtype.kind == "f":
                pixels, depth = np.clip(pixels.astype(np.float32), 0, 1), 32
        else:
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                msg = str(e)
                reason = "truncated" if "truncat" in msg.lower() or isinstance(e, EOFError) else "corrupt"
                raise ImageRejected(reason, f"decoding failed: {msg}", path) from e
            pixels, depth = _pil_native(im, path)
    pixels = _orient_array(pixels, orientation)
    return NativeImage(np.ascontiguousarray(pixels), depth, mode, orientation)


def _pil_native(im, path) -> tuple[np.ndarray, int]:
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im, dtype=np.uint8), 8
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 16
    if mode == "I":
        raw = np.asarray(im)
        if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
            raise ImageRejected("unsupported_mode", "32-bit integer image with values outside 0-65535", path)
        return raw.astype(np.uint16), 16
    if mode == "F":
        f = np.asarray(im, dtype=np.float32)
        if not np.isfinite(f).all():
            raise ImageRejected("non_finite", "float image contains NaN or inf", path)
        return np.clip(f, 0.0, 1.0), 32
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8), 8
    except (ValueError, OSError) as e:
        raise ImageRejected("unsupported_mode", f"unsupported PIL mode {mode!r}: {e}", path) from e


def write_image_native(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Atomically write an image array as PNG keeping its layout; bit depth from the dtype.

    ``uint8`` -> 8-bit PNG, ``uint16`` and float (in [0, 1], rounded to 65535 levels) -> 16-bit PNG. Layouts:
    ``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA; grey + alpha ``(H, W, 2)`` is written as an 8-bit
    ``LA`` PNG, or, at 16 bits (which OpenCV and Pillow cannot write as grey + alpha), as a 16-bit RGBA PNG
    with the grey value in R, G and B. Returns ``Path(path)``.

    Raises:
        ValueError: an unsupported shape or dtype.
    """
    from maskdcpt.imageio import encode_png

    a = np.asarray(pixels)
    if a.dtype.kind == "f":
        a = np.round(np.clip(a, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported dtype {a.dtype}; expected uint8, uint16 or float")
    depth = 8 if a.dtype == np.uint8 else 16
    if a.ndim == 3 and a.shape[2] == 2:
        if depth == 8:
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(a), mode="LA").save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            return Path(path)
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    atomic_write_bytes(path, encode_png(a, bit_depth=depth))
    return Path(path)


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand command-line inputs into image files: ``(files, unmatched specs)``.

    A file is taken as is (whatever its extension, so that unreadable files are reported rather than silently
    dropped); a folder contributes its files with an image extension (:data:`maskdcpt.imageio.IMAGE_EXTENSIONS`,
    recursively, sorted); anything else is a glob pattern (``**`` recursive), whose matching files are taken.
    Duplicates are removed, order kept.
    """
    import glob

    from maskdcpt.imageio import IMAGE_EXTENSIONS

    files: list[Path] = []
    missing: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file())
        if not found:
            missing.append(spec)
        files.extend(found)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, missing
