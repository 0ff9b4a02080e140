"""Tests of the data side: image I/O, packaged photos, prepare, degradations, shards, synthesis."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskdcpt.data.photos import (
    BENCHMARK_IMAGE_IDS,
    MANIFEST_COLUMNS,
    PACKAGED_PHOTOS,
    PackagedPhoto,
    PhotoSource,
    collect_folder,
    collect_packaged_photos,
    collect_real_degraded_photos,
    prepare_photos,
)
from maskdcpt.data.shards import read_shard, write_shard
from maskdcpt.data.synthesize import (
    PAIR_COLUMNS,
    regenerate_pair,
    synthesize_benchmark_pairs,
    synthesize_training_pairs,
)
from maskdcpt.degradations import (
    REGISTRY,
    TASKS,
    darken,
    degrade,
    get_degradation,
    motion_kernel,
    pseudo_depth,
    transmission,
)
from maskdcpt.imageio import (
    ImageRejected,
    decode_png,
    encode_png,
    file_sha256,
    quantize,
    read_image,
    read_image_array,
    write_png,
)

FIVE_D = TASKS["5d"]


def _rng_image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _smooth_image(h=64, w=64):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.3 + 0.4 * x / w, 0.3 + 0.4 * y / h, 0.5 + 0.1 * np.sin(x / 5)], -1)
    return img.astype(np.float32)


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


# ----------------------------------------------------------------------------------------------- photos


def test_collect_packaged_photos_and_benchmark_rule():
    sources, missing = collect_packaged_photos()
    ids = {s.image_id for s in sources}
    assert missing == []
    expected = {"skimage-astronaut", "skimage-chelsea", "skimage-coffee", "skimage-camera", "skimage-rocket",
                "skimage-moon", "skimage-coins", "skimage-retina", "sklearn-china", "sklearn-flower",
                "matplotlib-grace_hopper", "mahotas-luispedro", "sporco-kodim23", "sporco-monarch",
                "sporco-sail", "sporco-tulips", "sporco-barbara"}
    assert expected <= ids
    bench = {s.image_id for s in sources if s.split == "benchmark"}
    assert bench == set(BENCHMARK_IMAGE_IDS) == {
        "sporco-kodim23", "sporco-monarch", "sporco-sail", "sporco-tulips", "sporco-barbara",
        "skimage-astronaut", "skimage-chelsea", "skimage-coffee", "skimage-camera"}
    assert not any("lena" in s.path or "clock_motion" in s.path or "DepartmentStore" in s.path for s in sources)
    assert all(s.version and Path(s.path).is_file() and s.source == "package" for s in sources)
    assert len(ids) == len(sources) == len(PACKAGED_PHOTOS)
    found, _ = collect_real_degraded_photos()
    assert [f["degradation"] for f in found] == ["motion_blur"]


def test_missing_package_is_reported_not_raised():
    fake = PackagedPhoto("nopkg-x", "no_such_pkg_maskdcpt_xyz", "data/x.png", "none", "train")
    real = next(p for p in PACKAGED_PHOTOS if p.image_id == "skimage-coins")
    gone = PackagedPhoto("skimage-gone", "skimage", "data/not_there.png", "none", "train")
    sources, missing = collect_packaged_photos([fake, real, gone])
    assert [s.image_id for s in sources] == ["skimage-coins"]
    assert {m["image_id"]: m["reason"] for m in missing} == {
        "nopkg-x": "package_not_installed", "skimage-gone": "file_not_found"}


def _write_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    a = (np.random.default_rng(2).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(root / "alpha.png")
    shutil.copy(root / "alpha.png", root / "sub" / "alpha_copy.png")  # byte duplicate
    Image.fromarray(a).save(root / "sub" / "alpha_recoded.png", compress_level=9)  # pixel duplicate
    Image.fromarray(a[:, ::-1]).save(root / "beta.jpg", quality=95)
    Image.fromarray(a[:20, :20]).save(root / "tiny.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_bytes(b"hello")
    (root / ".hidden.png").write_bytes(b"ignored")
    (root / "readme.txt").write_text("not collected")


def test_collect_folder_split_rules(tmp_path):
    _write_folder(tmp_path / "f")
    srcs = collect_folder(tmp_path / "f", benchmark_stems=["beta"])
    names = [s.rel_path for s in srcs]
    assert names == sorted(names) and ".hidden.png" not in names and "readme.txt" not in names
    assert {s.image_id: s.split for s in srcs}["folder-beta"] == "benchmark"
    assert sum(s.split == "benchmark" for s in srcs) == 1
    all_bench = collect_folder(tmp_path / "f", benchmark_fraction=1.0)
    assert all(s.split == "benchmark" for s in all_bench)
    frac = collect_folder(tmp_path / "f", benchmark_fraction=0.5)
    assert [s.split for s in frac] == [s.split for s in collect_folder(tmp_path / "f", benchmark_fraction=0.5)]
    by_id = {s.image_id: s.split for s in frac}
    assert by_id["folder-alpha"] == by_id["folder-sub_alpha_copy"]  # same bytes → same split


def test_prepare_photos_dedupes_and_records_rejections(tmp_path):
    _write_folder(tmp_path / "f")
    srcs = collect_folder(tmp_path / "f")
    # A benchmark copy listed last must win over the training copy (no leakage).
    srcs.append(PhotoSource("bench-alpha", str(tmp_path / "f" / "alpha.png"), "benchmark", "folder"))
    manifest, rej = prepare_photos(srcs, tmp_path / "out", min_size=32)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest.image_id) == {"bench-alpha", "folder-beta"}
    assert manifest.set_index("image_id").loc["bench-alpha", "split"] == "benchmark"
    reasons = dict(zip(rej.image_id, rej.reason))
    assert reasons == {"folder-alpha": "duplicate", "folder-sub_alpha_copy": "duplicate",
                       "folder-sub_alpha_recoded": "duplicate", "folder-tiny": "too_small",
                       "folder-empty": "empty_file", "folder-text": "not_an_image"}
    assert "bench-alpha" in rej.set_index("image_id").loc["folder-alpha", "detail"]
    for r in manifest.itertuples():
        assert file_sha256(r.path) == r.png_sha256 and file_sha256(r.src_path) == r.sha256
        assert read_image(r.path).shape == (r.height, r.width, 3) and r.mode == "RGB"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()}
    manifest2, _ = prepare_photos(srcs, tmp_path / "out", min_size=32)
    pd.testing.assert_frame_equal(manifest, manifest2)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()}


# ----------------------------------------------------------------------------------------- degradations


def test_registry_and_tasks():
    assert FIVE_D == ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"]
    assert set(FIVE_D) <= set(REGISTRY)
    for name in FIVE_D:
        d = get_degradation(name)
        desc = d.describe()
        assert desc["name"] == name and desc["kind"] == "single" and isinstance(d.levels, int)
        json.dumps(desc)
    assert get_degradation("gaussian_noise").levels == 3
    with pytest.raises(ValueError, match="gaussian_noise"):
        get_degradation("snow_storm")
    with pytest.raises(ValueError, match="unknown parameter"):
        degrade(_smooth_image(), "gaussian_noise", 0, params={"sgima": 3})


@pytest.mark.parametrize("name", FIVE_D)
def test_degradation_contract(name):
    gt = _smooth_image(64, 80)
    lq, params = degrade(gt, name, 123)
    assert lq.shape == gt.shape and lq.dtype == np.float32
    assert lq.min() >= 0.0 and lq.max() <= 1.0
    assert not np.array_equal(lq, gt)
    again, params2 = degrade(gt, name, 123)
    assert np.array_equal(lq, again) and params == params2
    replay, _ = degrade(gt, name, 123, params=json.loads(json.dumps(params)))
    assert np.array_equal(lq, replay)  # the recorded params + seed regenerate the pair
    other, _ = degrade(gt, name, 124)
    assert not np.array_equal(lq, other)


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_gaussian_noise_sigma(sigma):
    gt = np.full((128, 128, 3), 0.5, np.float32)
    lq, params = degrade(gt, "gaussian_noise", 7, params={"sigma": sigma})
    assert params == {"sigma": sigma}
    est = float(np.std(lq.astype(np.float64) - gt)) * 255
    assert abs(est - sigma) / sigma < 0.05
    assert abs(float(np.mean(lq - gt))) < 0.01
    sampled = {degrade(gt[:4, :4], "gaussian_noise", s)[1]["sigma"] for s in range(40)}
    assert sampled == {15, 25, 50}


def test_motion_blur_kernel():
    for length, angle in [(7, 0.0), (8, 33.0), (35, 90.0), (20, 135.5)]:
        k = motion_kernel(length, angle)
        assert k.dtype == np.float32 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert abs(float(k.sum()) - 1.0) < 1e-5 and k.min() >= 0
    k = motion_kernel(7, 0.0)
    assert np.count_nonzero(k) == 7 and np.isclose(k[k.shape[0] // 2].sum(), 1.0)
    vertical = motion_kernel(9, 90.0)
    c = vertical.shape[0] // 2
    assert np.isclose(vertical[:, c].sum(), 1.0, atol=1e-5) and np.count_nonzero(vertical[c]) == 1
    gt = _smooth_image()
    lq, p = degrade(gt, "motion_blur", 3, params={"length": 15, "angle": 0.0, "trajectory": "linear"})
    # A horizontal blur leaves a purely vertical ramp unchanged (reflect border keeps it exact inside).
    assert np.allclose(lq[:, 10:-10, 1], gt[:, 10:-10, 1], atol=1e-5)
    _, sampled = degrade(gt, "motion_blur", 4)
    assert 7 <= sampled["length"] <= 35 and 0 <= sampled["angle"] < 180


def test_haze_follows_scattering_model():
    gt = _smooth_image(64, 96)
    lq, p = degrade(gt, "haze", 11)
    assert 0.6 <= p["beta"] <= 1.8 and 0.7 <= p["A"] <= 1.0
    d = pseudo_depth(gt, p["lum_weight"], p["near"])
    assert d.min() >= p["near"] - 1e-6 and d.max() <= 1 + 1e-6
    t = transmission(gt, p)
    assert np.allclose(t, np.exp(-p["beta"] * d), atol=1e-6)
    expected = gt * t[..., None] + p["A"] * (1 - t[..., None])
    assert np.allclose(lq, expected, atol=1e-6)
    assert t[0].mean() < t[-1].mean()  # top of the frame is farther → hazier


def test_low_light_darkens_as_params_say():
    gt = _smooth_image(96, 96)
    lq, p = degrade(gt, "low_light", 5)
    assert 0.1 <= p["exposure"] <= 0.4 and 1.2 <= p["gamma"] <= 2.0
    expected = darken(gt, p["exposure"], p["gamma"])
    assert abs(float(lq.mean()) - float(expected.mean())) / float(expected.mean()) < 0.05
    assert lq.mean() < 0.5 * gt.mean()
    fixed, _ = degrade(gt, "low_light", 5, params={"exposure": 0.2, "gamma": 1.5, "peak": 1e6,
                                                   "read_sigma": 0.0})
    assert np.allclose(fixed, 0.2 * gt ** 1.5, atol=0.01)


def test_rain_only_brightens():
    gt = _smooth_image(96, 96)
    lq, p = degrade(gt, "rain", 2)
    assert np.all(lq >= gt - 1e-6)
    assert (lq - gt > 0.05).mean() > 0.005  # visible streaks


# ----------------------------------------------------------------------------------------------- shards


@pytest.mark.parametrize("bits", [8, 16])
def test_shard_roundtrip(tmp_path, bits):
    samples = [{"key": f"k-{i}", "lq": _rng_image(seed=i), "gt": quantize(_rng_image(seed=10 + i), 8),
                "meta": {"i": i, "params": {"sigma": 25.5}}} for i in range(3)]
    n = write_shard(tmp_path / "s.tar", iter(samples), lq_bit_depth=bits)
    assert n == 3 and os.listdir(tmp_path) == ["s.tar"]
    back = list(read_shard(tmp_path / "s.tar"))
    assert [b["key"] for b in back] == ["k-0", "k-1", "k-2"]
    for s, b in zip(samples, back):
        assert b["meta"] == s["meta"]
        assert b["lq"].dtype == np.float32 and b["lq"].shape == s["lq"].shape
        assert np.abs(b["lq"] - s["lq"]).max() <= 0.5 / (2 ** bits - 1) + 1e-7
        assert np.array_equal(b["gt"], s["gt"])
    # the same samples give the same bytes (mtime 0, no user names)
    write_shard(tmp_path / "t.tar", samples, lq_bit_depth=bits)
    assert file_sha256(tmp_path / "s.tar") == file_sha256(tmp_path / "t.tar")
    with pytest.raises(ValueError):
        write_shard(tmp_path / "bad.tar", [{"key": "a.b", "lq": samples[0]["lq"], "gt": samples[0]["gt"]}])
    assert not (tmp_path / "bad.tar").exists() and len(os.listdir(tmp_path)) == 2


# -------------------------------------------------------------------------------------------- synthesis


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small real prepared set: 3 training and 2 benchmark packaged photos."""
    wanted = {"skimage-coins", "mahotas-luispedro", "sklearn-flower", "skimage-chelsea", "skimage-camera"}
    sources, _ = collect_packaged_photos([p for p in PACKAGED_PHOTOS if p.image_id in wanted])
    out = tmp_path_factory.mktemp("prepared")
    manifest, rej = prepare_photos(sources, out, min_size=64)
    assert len(manifest) == 5 and rej.empty
    return out, manifest


def _check_shards_match(out_dir: Path, df: pd.DataFrame, prepared_dir: Path) -> int:
    rows = df.set_index("key")
    n = 0
    for shard in sorted(out_dir.glob("*.tar")):
        for s in read_shard(shard):
            row = rows.loc[s["key"]]
            assert row["shard"] == shard.name
            lq, gt = regenerate_pair(row.to_dict(), prepared_dir)
            assert np.array_equal(lq, s["lq"]) and np.array_equal(gt, s["gt"])
            assert s["meta"]["params"] == json.loads(row["params"])
            n += 1
    return n


def test_training_pairs_regenerate_and_exclude_benchmark(prepared, tmp_path):
    prep_dir, manifest = prepared
    df = synthesize_training_pairs(manifest, FIVE_D, 3, 64, 42, tmp_path / "a", shard_size=4)
    assert list(df.columns) == PAIR_COLUMNS
    assert len(df) == 15 and df.pair_id.is_unique
    assert sorted((tmp_path / "a").glob("*.tar")) == [tmp_path / "a" / f"train-{i:05d}.tar" for i in range(4)]
    assert all((tmp_path / "a" / f"train-{i:05d}.tar.done.json").is_file() for i in range(4))
    bench = set(manifest[manifest.split == "benchmark"].image_id)
    assert bench and not (set(df.image_id) & bench)
    assert df.lq_differs.all() and np.isfinite(df.psnr_lq_gt).all()
    assert (df.class_index == df.degradation.map(FIVE_D.index)).all()
    assert _check_shards_match(tmp_path / "a", df, prep_dir) == 15
    # Deterministic: same inputs → same manifest and byte-identical shards; pair i ignores pairs_per_class.
    df2 = synthesize_training_pairs(manifest, FIVE_D, 4, 64, 42, tmp_path / "b", shard_size=5)
    common = df2.set_index("pair_id").loc[df.pair_id]
    cols = ["image_id", "params", "seed", "crop_y", "crop_x", "psnr_lq_gt"]
    pd.testing.assert_frame_equal(common[cols].reset_index(drop=True), df[cols].reset_index(drop=True))
    synthesize_training_pairs(manifest, FIVE_D, 3, 64, 42, tmp_path / "b", shard_size=4)
    assert file_sha256(tmp_path / "a" / "train-00003.tar") == file_sha256(tmp_path / "b" / "train-00003.tar")
    assert len(list((tmp_path / "b").glob("train-*.tar"))) == 4  # the stale 5th shard was removed


def test_benchmark_pairs(prepared, tmp_path):
    prep_dir, manifest = prepared
    entries = [{"degradation": "gaussian_noise", "params": {"sigma": 25}, "label": "gaussian_noise_s25"},
               {"degradation": "haze"}]
    df = synthesize_benchmark_pairs(manifest, entries, 100, tmp_path, max_size=200)
    assert set(PAIR_COLUMNS) | {"label"} == set(df.columns)
    assert set(df.image_id) == {"skimage-chelsea", "skimage-camera"} and len(df) == 4
    assert (df.height % 16 == 0).all() and (df.width % 16 == 0).all() and (df[["height", "width"]] <= 200).all().all()
    assert (df.lq_bit_depth == 16).all()
    assert dict(zip(df.label, df.seed)) == {"gaussian_noise_s25": 100, "haze": 101}
    assert set(df[df.label == "haze"].params) == {df[df.label == "haze"].params.iloc[0]}
    assert _check_shards_match(tmp_path, df, prep_dir) == 4
    row = df.iloc[0].to_dict()
    exact, _ = regenerate_pair(row, prep_dir, quantized=False)
    stored, _ = regenerate_pair(row, prep_dir)
    assert np.abs(exact - stored).max() <= 0.5 / 65535 + 1e-7
    full = synthesize_benchmark_pairs(manifest, entries[:1], 0, tmp_path / "full")
    chelsea = full.set_index("image_id").loc["skimage-chelsea"]
    assert (chelsea.height, chelsea.width) == (300, 451)


# --------------------------------------------------------------------------- resume, workers, shard k


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.glob("*.tar"))}


def test_interrupted_synthesis_resumes_to_identical_output(prepared, tmp_path, monkeypatch):
    import maskdcpt.data.shard_jobs as synth  # where shards are written

    _, manifest = prepared
    args = (manifest, FIVE_D, 4, 48, 7)
    ref = synthesize_training_pairs(*args, tmp_path / "ref", shard_size=3)
    ref_shards = _snapshot(tmp_path / "ref")
    assert len(ref_shards) == 7

    real_write, calls = synth.write_shard, []

    def crashing(path, samples, **kw):
        calls.append(path)
        if len(calls) == 4:  # die in the middle of the 4th shard, after one sample
            def partial():
                yield next(iter(samples))
                raise KeyboardInterrupt
            return real_write(path, partial(), **kw)
        return real_write(path, samples, **kw)

    monkeypatch.setattr(synth, "write_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        synthesize_training_pairs(*args, tmp_path / "run", shard_size=3)
    monkeypatch.setattr(synth, "write_shard", real_write)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.tar")) == [f"train-{i:05d}.tar" for i in range(3)]
    assert not [p for p in run.iterdir() if "tmp" in p.name]  # the atomic write left no half file
    # a shard replaced but killed before its completion marker: must be redone, not trusted
    (run / "train-00003.tar").write_bytes(b"half a shard")
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("*.tar")}
    made = []
    monkeypatch.setattr(synth, "write_shard", lambda path, samples, **kw: made.append(Path(path).name)
                        or real_write(path, samples, **kw))
    resumed = synthesize_training_pairs(*args, run, shard_size=3)
    assert made == [f"train-{i:05d}.tar" for i in range(3, 7)]  # finished shards were not redone
    assert all((run / n).stat().st_mtime_ns == before[n] for n in ("train-00000.tar", "train-00002.tar"))
    pd.testing.assert_frame_equal(resumed, ref)
    assert _snapshot(run) == ref_shards
    made.clear()
    again = synthesize_training_pairs(*args, run, shard_size=3)  # same params: a no-op
    assert made == [] and _snapshot(run) == ref_shards
    pd.testing.assert_frame_equal(again, ref)
    # a tampered shard fails re-validation against its sidecar and is remade
    (run / "train-00001.tar").write_bytes(b"x")
    synthesize_training_pairs(*args, run, shard_size=3)
    assert made == ["train-00001.tar"] and _snapshot(run) == ref_shards


def test_workers_and_shard_k_match_single_process(prepared, tmp_path):
    from maskdcpt.data.synthesize import synthesize_training_shard

    _, manifest = prepared
    args = (manifest, FIVE_D, 3, 40, 3)
    one = synthesize_training_pairs(*args, tmp_path / "one", shard_size=4)
    two = synthesize_training_pairs(*args, tmp_path / "two", shard_size=4, workers=2, progress=True)
    pd.testing.assert_frame_equal(one, two)
    assert _snapshot(tmp_path / "one") == _snapshot(tmp_path / "two")
    parts = []
    for k in (3, 0, 2, 1):  # any order, any process
        n, rows = synthesize_training_shard(*args, tmp_path / "k", k, shard_size=4)
        assert n == 4
        parts.append((k, rows))
    merged = pd.concat([r for _, r in sorted(parts, key=lambda t: t[0])], ignore_index=True)
    pd.testing.assert_frame_equal(merged, one)
    assert _snapshot(tmp_path / "k") == _snapshot(tmp_path / "one")
    with pytest.raises(ValueError, match="outside"):
        synthesize_training_shard(*args, tmp_path / "k", 4, shard_size=4)


def test_every_synthetic_type_regenerates_from_its_manifest_row(prepared, tmp_path):
    prep_dir, manifest = prepared
    classes = TASKS["all"]
    with pytest.raises(ValueError, match="real"):
        synthesize_training_pairs(manifest, classes, 1, 48, 5, tmp_path)
    df = synthesize_training_pairs(manifest, classes, 1, 48, 5, tmp_path, shard_size=8, real_classes="skip")
    synthetic = [c for c in classes if REGISTRY[c].kind != "real"]
    assert list(df.degradation) == synthetic
    assert (df.class_index == df.degradation.map(classes.index)).all() and df.lq_differs.all()
    assert _check_shards_match(tmp_path, df, prep_dir) == len(synthetic)
