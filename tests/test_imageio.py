"""Image I/O: every mode and bit depth to float RGB, EXIF orientation, rejections, PNG round trips."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from maskdcpt.degradations import (
    TASKS,
)
from maskdcpt.imageio import (
    ImageRejected,
    decode_png,
    encode_png,
    file_sha256,
    quantize,
    read_image,
    write_png,
)
from maskdcpt.array_io import read_image_array

FIVE_D = TASKS["5d"]


def _rng_image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)




def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w×h pixels but carries almost no data (decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------- imageio


def test_read_grayscale_is_replicated(tmp_path):
    g = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img, mode = read_image(tmp_path / "g.png", return_mode=True)
    assert mode == "L" and img.shape == (12, 20, 3) and img.dtype == np.float32
    assert np.array_equal(img[..., 0], img[..., 2])
    assert np.allclose(img[..., 1], g / 255.0, atol=1e-7)


def test_read_palette_and_rgba_and_cmyk(tmp_path):
    p = Image.new("P", (4, 3))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.shape == (3, 4, 3)
    assert np.allclose(img[0, 0], [1, 0, 0]) and np.allclose(img[1, 1], [0, 0, 1])

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [255, 0, 0, 0]  # fully transparent → white
    rgba[0, 2] = [0, 0, 0, 51]  # 20 % black over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (2, 3, 3)
    assert np.allclose(img[0, 0], [1, 0, 0]) and np.allclose(img[0, 1], [1, 1, 1])
    assert np.allclose(img[0, 2], 0.8, atol=1e-6)

    cmyk = Image.new("CMYK", (5, 4), (255, 0, 0, 0))  # pure cyan
    cmyk.save(tmp_path / "c.tif")
    img, mode = read_image(tmp_path / "c.tif", return_mode=True)
    assert mode == "CMYK" and img.shape == (4, 5, 3)
    assert np.allclose(img[0, 0], [0, 1, 1])


def test_read_16bit_png_true_bit_depth(tmp_path):
    a = np.array([[0, 257], [65535, 1000]], np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), a)
    img, mode = read_image(tmp_path / "g16.png", return_mode=True)
    assert mode.startswith("I")
    assert img[1, 0, 0] == 1.0
    assert img[0, 1, 0] == np.float32(257 / 65535)
    # 16-bit colour: Pillow would truncate to 8 bits; the reader keeps 16 and returns RGB order.
    bgr = np.zeros((3, 4, 3), np.uint16)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 65535, 30000, 1000  # B, G, R
    assert cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    img = read_image(tmp_path / "c16.png")
    assert np.allclose(img[0, 0], [1000 / 65535, 30000 / 65535, 1.0], atol=1e-7)


def test_read_float_tiff(tmp_path):
    f = np.array([[0.25, 1.5], [-0.5, 0.75]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    img = read_image(tmp_path / "f.tif")
    assert np.allclose(img[..., 1], [[0.25, 1.0], [0.0, 0.75]])
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[..., 0] = 0.9  # OpenCV writes B first
    rgb[..., 2] = 0.1
    assert cv2.imwrite(str(tmp_path / "rgb.tif"), rgb)
    img = read_image(tmp_path / "rgb.tif")
    assert np.allclose(img[0, 0], [0.1, 0.0, 0.9], atol=1e-6)


def test_exif_orientation_applied(tmp_path):
    a = np.full((10, 20, 3), 255, np.uint8)
    a[:5, :5] = [255, 0, 0]  # red block at the stored top-left
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "o.jpg")
    assert img.shape == (20, 10, 3)  # 20×10 stored reads back 10×20 (W×H)
    assert img[1, 8, 0] > 0.8 and img[1, 8, 1] < 0.3  # block moved to the top-right
    assert img[18, 1, 1] > 0.8


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.png", b"", "empty_file"),
        ("notes.png", b"this is a text file, not a picture\n" * 4, "not_an_image"),
    ],
)
def test_rejections_simple(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / name)
    assert e.value.reason == reason and isinstance(e.value, ValueError)


def test_rejections_truncated_missing_small(tmp_path):
    noisy = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "cut.png")
    assert e.value.reason == "truncated"
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "nope.png")
    assert e.value.reason == "not_found"
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "full.png", min_size=65)
    assert e.value.reason == "too_small"
    assert read_image(tmp_path / "full.png", min_size=64).shape == (64, 64, 3)


def test_decompression_bomb_guard(tmp_path):
    # Header-only files: if the guard decoded pixels first they would fail as truncated instead.
    (tmp_path / "big.png").write_bytes(_png_header_only(9000, 9000))  # 81 MP > 50 MP default
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "big.png")
    assert e.value.reason == "too_many_pixels"
    (tmp_path / "huge.png").write_bytes(_png_header_only(50000, 50000))  # over Pillow's own hard limit
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "huge.png", max_pixels=None)
    assert e.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "big.png", max_pixels=100_000_000)
    assert e.value.reason == "truncated"  # within budget → decoded → the data is missing


def test_read_image_array(tmp_path):
    a = np.array([[0, 65535], [257, 0]], np.uint16)
    np.save(tmp_path / "a.npy", a)
    img = read_image_array(tmp_path / "a.npy")
    assert img.shape == (2, 2, 3) and img[0, 1, 0] == 1.0 and img[1, 0, 2] == np.float32(257 / 65535)
    np.savez(tmp_path / "b.npz", image=np.full((3, 4, 3), 128, np.uint8), other=np.zeros(2))
    assert np.allclose(read_image_array(tmp_path / "b.npz"), 128 / 255)
    with pytest.raises(ImageRejected) as e:
        read_image_array(tmp_path / "b.npz", key="other")
    assert e.value.reason == "bad_array"


@pytest.mark.parametrize("bits", [8, 16])
def test_png_roundtrip_and_atomic_write(tmp_path, bits):
    x = _rng_image()
    back = decode_png(encode_png(x, bits))
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.array_equal(back, quantize(x, bits))
    assert np.abs(back - x).max() <= 0.5 / (2 ** bits - 1) + 1e-7
    p = write_png(tmp_path / "sub" / "x.png", x, bit_depth=bits)
    assert np.array_equal(read_image(p), quantize(x, bits))
    assert os.listdir(tmp_path / "sub") == ["x.png"]  # no temp files left
    g = decode_png(encode_png(x[..., 0], bits))
    assert g.shape == x.shape[:2]
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(ValueError):
        encode_png(x, 12)
