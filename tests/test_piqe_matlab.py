"""PIQE against MATLAB's published values on the five calibration images that the pyiqa 0.1.16 wheel ships.

Only the images are taken from the wheel (fetched from the package index with ``pip download --no-deps``, then
cached); the expected numbers are the published MATLAB ``piqe`` results for those files. The images are not
committed. Without access to the package index the test is skipped with a message saying how to provide them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from maskdcpt import nr_metrics

WHEEL = "pyiqa==0.1.16"
MEMBER = "ResultsCalibra/dist_dir/{}.bmp"
#: MATLAB piqe on ResultsCalibra/dist_dir/<name>.bmp (uint8 RGB read by imread)
MATLAB = {"I03": 100.0, "I04": 21.62, "I06": 35.86, "I08": 41.15, "I19": 76.95}
TOL = 0.1


def _cache_dir(request, tmp_path_factory) -> Path:
    if os.environ.get("MASKDCPT_TEST_DATA"):
        return Path(os.environ["MASKDCPT_TEST_DATA"]).expanduser() / "pyiqa-0.1.16"
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("pyiqa-0.1.16-calibration"))
    return tmp_path_factory.mktemp("pyiqa-0.1.16-calibration")


@pytest.fixture(scope="module")
def calibration_images(request, tmp_path_factory) -> dict[str, Path]:
    """The five BMPs, extracted from the wheel into a cache folder (downloaded once)."""
    folder = _cache_dir(request, tmp_path_factory)
    paths = {name: folder / f"{name}.bmp" for name in MATLAB}
    if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        return paths
    download = tmp_path_factory.mktemp("pyiqa-wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "-q", WHEEL, "-d", str(download)], capture_output=True, text=True, timeout=300)
    wheels = sorted(download.glob("pyiqa-0.1.16-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot fetch the PIQE calibration images: `pip download --no-deps {WHEEL}` failed "
                    f"(package index unreachable?): {(proc.stdout + proc.stderr).strip()[-300:]}. Put "
                    f"I03/I04/I06/I08/I19.bmp from the wheel's ResultsCalibra/dist_dir in "
                    f"$MASKDCPT_TEST_DATA/pyiqa-0.1.16/ to run it offline")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name, path in paths.items():
            data = wheel.read(MEMBER.format(name))
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
    return paths


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (512, 384)
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("name", sorted(MATLAB))
def test_piqe_matches_matlab(calibration_images, name):
    img = _read_rgb(calibration_images[name])
    score = nr_metrics.piqe(img)
    assert abs(score - MATLAB[name]) <= TOL, f"{name}: PIQE {score:.3f}, MATLAB {MATLAB[name]}"
    # the float path is the same image quantised as MATLAB's im2uint8
    assert nr_metrics.piqe(img.astype(np.float32) / 255.0) == pytest.approx(score, abs=1e-9)


def test_piqe_partial_blocks_are_padded(calibration_images):
    # a crop whose sides are not multiples of 16 keeps its last rows/columns (MATLAB pads symmetrically)
    img = _read_rgb(calibration_images["I06"])[:200, :300]
    maps = nr_metrics.piqe_maps(img)
    assert maps["active"].shape == (13, 19)
    assert maps["score"] != pytest.approx(nr_metrics.piqe(img[:192, :288]), abs=1e-6)
