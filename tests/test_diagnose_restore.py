"""scripts/diagnose_restore.py: the split of a model's change into its tone (low-pass) and detail parts."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location("diagnose_restore",
                                              Path(__file__).resolve().parents[1] / "scripts" / "diagnose_restore.py")
diag = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(diag)


def _images():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.2, 0.8, (64, 64, 3)).astype(np.float32)
    lq = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1).astype(np.float32)
    return lq, gt


def test_a_colour_cast_is_all_tone_and_fine_texture_all_detail():
    lq, gt = _images()
    cast = lq + np.array([0.06, -0.04, 0.05], np.float32)       # a uniform cast: nothing but low frequencies
    d = diag.decompose(lq, cast, gt, sigma=8)
    assert d["tone_only"] == pytest.approx(d["out"], abs=1e-3)
    assert d["detail_only"] == pytest.approx(d["lq"], abs=1e-3)
    assert d["shift"] == pytest.approx(0.07 / 3, abs=1e-4)
    yy, xx = np.mgrid[0:64, 0:64]
    checker = (0.04 * (-1.0) ** (yy + xx))[..., None].astype(np.float32)  # a 1 px checkerboard: no low frequencies
    d = diag.decompose(lq, lq + checker, gt, sigma=8)
    assert d["detail_only"] == pytest.approx(d["out"], abs=0.05)
    assert d["tone_only"] == pytest.approx(d["lq"], abs=0.05)
    assert d["out"] < d["lq"] - 1.0  # the checkerboard does cost PSNR, so the two checks above can fail


def test_the_two_parts_add_up_to_the_change():
    lq, gt = _images()
    out = np.clip(lq + 0.1 * np.random.default_rng(1).standard_normal(lq.shape), 0, 1).astype(np.float32)
    low, high = diag.split_change(lq, out, 4.0)
    np.testing.assert_allclose(low + high, out - lq, atol=1e-6)
    assert np.abs(low).mean() < np.abs(high).mean()  # white noise is mostly high frequency
