"""Clean photos: the packaged catalogue, user folders and their split rules, prepare (dedupe, leakage, rejections)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
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
from maskdcpt.degradations import (
    TASKS,
)
from maskdcpt.imageio import (
    file_sha256,
    read_image,
)

FIVE_D = TASKS["5d"]



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
        # ``path`` is relative to the output folder, so the manifest's bytes do not depend on where it was built.
        assert r.path == f"images/{r.image_id}.png"
        assert file_sha256(tmp_path / "out" / r.path) == r.png_sha256 and file_sha256(r.src_path) == r.sha256
        assert read_image(tmp_path / "out" / r.path).shape == (r.height, r.width, 3) and r.mode == "RGB"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()}
    manifest2, _ = prepare_photos(srcs, tmp_path / "out", min_size=32)
    pd.testing.assert_frame_equal(manifest, manifest2)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()}
