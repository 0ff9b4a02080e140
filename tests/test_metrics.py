import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from maskdcpt import metrics


def test_psnr_constant_offset_is_exact():
    gt = np.full((32, 40, 3), 0.5, dtype=np.float32)
    out = gt + 0.1  # MSE = 0.01 -> PSNR = 20 dB exactly
    assert metrics.psnr(out, gt) == pytest.approx(20.0, abs=1e-5)


def test_psnr_matches_skimage_and_clamps():
    rng = np.random.default_rng(0)
    gt = rng.random((48, 48, 3))
    out = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    assert metrics.psnr(out, gt) == pytest.approx(peak_signal_noise_ratio(gt, out, data_range=1.0), abs=1e-9)
    # values outside [0, 1] are clamped before scoring
    assert metrics.psnr(out + 5.0, gt) == pytest.approx(metrics.psnr(np.ones_like(out), gt))
    assert math.isinf(metrics.psnr(gt, gt))


def test_ssim_matches_skimage_gaussian_population():
    rng = np.random.default_rng(1)
    gt = rng.random((40, 50, 3))
    out = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    ref = structural_similarity(gt, out, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, channel_axis=-1)
    assert metrics.ssim(out, gt) == pytest.approx(ref, abs=1e-9)
    assert metrics.ssim(gt, gt) == pytest.approx(1.0)


def test_metric_errors():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
