"""PSNR/SSIM conventions pinned to independent references (scikit-image, hand computations) and the PIQE
no-reference metric checked on real packaged photos."""

import math

import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from maskdcpt import metrics, nr_metrics


def _pair(seed=0, shape=(40, 52, 3), noise=0.05):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    return np.clip(gt + rng.normal(0, noise, shape), 0, 1), gt


def test_defaults_unchanged_and_match_skimage():
    out, gt = _pair()
    assert metrics.psnr(out, gt) == pytest.approx(peak_signal_noise_ratio(gt, out, data_range=1.0), abs=1e-9)
    ref = structural_similarity(gt, out, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, channel_axis=-1)
    assert metrics.ssim(out, gt) == pytest.approx(ref, abs=1e-9)
    assert metrics.CONVENTION == metrics.convention()
    assert metrics.CONVENTION["channel"] == "rgb" and metrics.CONVENTION["crop_border"] == 0
    assert metrics.CONVENTION["quantize"] == "none" and metrics.CONVENTION["range"] == "float[0,1]"


def test_constant_offset_exact_in_every_channel_mode():
    gt = np.full((20, 24, 3), 0.4)
    out = gt + 0.1   # MSE = 0.01 -> 20 dB
    assert metrics.psnr(out, gt) == pytest.approx(20.0, abs=1e-9)
    # Y of a uniform +0.1 shift: dY = 0.1 * (65.481 + 128.553 + 24.966) / 255 = 0.1 * 219 / 255
    dy = 0.1 * 219.0 / 255.0
    assert metrics.psnr(out, gt, channel="y") == pytest.approx(-10 * math.log10(dy**2), abs=1e-9)


def test_y_formula_by_hand():
    img = np.zeros((1, 3, 3))
    img[0, 0] = [1, 0, 0]
    img[0, 1] = [0.2, 0.4, 0.6]
    img[0, 2] = [1, 1, 1]
    y = metrics.rgb_to_y(img)
    assert y[0, 0] == pytest.approx((16 + 65.481) / 255)
    assert y[0, 1] == pytest.approx((16 + 65.481 * 0.2 + 128.553 * 0.4 + 24.966 * 0.6) / 255)
    assert y[0, 2] == pytest.approx(235 / 255)
    assert metrics.rgb_to_y(np.zeros((2, 2, 3))) == pytest.approx(np.full((2, 2), 16 / 255))
    # the Y-channel scores equal skimage on the hand-converted luma
    out, gt = _pair(3)
    yo = (16 + 65.481 * out[..., 0] + 128.553 * out[..., 1] + 24.966 * out[..., 2]) / 255
    yg = (16 + 65.481 * gt[..., 0] + 128.553 * gt[..., 1] + 24.966 * gt[..., 2]) / 255
    assert metrics.psnr(out, gt, channel="y") == pytest.approx(peak_signal_noise_ratio(yg, yo, data_range=1), abs=1e-9)
    ref = structural_similarity(yg, yo, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert metrics.ssim(out, gt, channel="y") == pytest.approx(ref, abs=1e-9)


def test_crop_border_removes_exactly_the_border():
    gt = np.full((30, 34, 3), 0.5)
    out = gt.copy()
    out[:4] = out[-4:] = 0.9          # garbage in a 4-px frame only
    out[:, :4] = out[:, -4:] = 0.0
    assert metrics.psnr(out, gt, crop_border=4) == math.inf
    assert metrics.psnr(out, gt, crop_border=3) < 30
    inner = out[4:-4, 4:-4].copy()
    inner[5, 5, 1] += 0.1            # one sample wrong inside: MSE = 0.01 / (22 * 26 * 3)
    out[4:-4, 4:-4] = inner
    assert metrics.psnr(out, gt, crop_border=4) == pytest.approx(10 * math.log10(22 * 26 * 3 / 0.01), abs=1e-9)
    with pytest.raises(ValueError):
        metrics.psnr(out, gt, crop_border=15)


def test_uint8_rounding_convention():
    gt = np.full((16, 16, 3), 100 / 255)
    out = gt + 0.4 / 255           # rounds back to the same code value
    assert metrics.psnr(out, gt) < math.inf
    assert metrics.psnr(out, gt, quantize="uint8") == math.inf
    out2 = gt + 0.6 / 255          # rounds to 101: error of exactly one code value
    assert metrics.psnr(out2, gt, quantize="uint8") == pytest.approx(20 * math.log10(255), abs=1e-9)
    # same as skimage on uint8 arrays with R = 255 (the 0-255 scale gives identical numbers)
    o, g = _pair(5)
    qo, qg = np.round(o * 255).astype(np.uint8), np.round(g * 255).astype(np.uint8)
    assert metrics.psnr(o, g, quantize="uint8") == pytest.approx(peak_signal_noise_ratio(qg, qo, data_range=255),
                                                                 abs=1e-9)
    ref = structural_similarity(qg.astype(float), qo.astype(float), data_range=255, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False, channel_axis=-1)
    assert metrics.ssim(o, g, quantize="uint8") == pytest.approx(ref, abs=1e-9)


def test_convention_dict_and_errors():
    c = metrics.convention(channel="y", quantize="uint8", crop_border=4)
    assert c["channel"] == "y" and c["quantize"] == "uint8" and c["crop_border"] == 4
    assert c["range"] == "uint8[0,255]" and "y_formula" in c
    s = metrics.score(*_pair(1), channel="y", crop_border=2)
    assert s["convention"] == metrics.convention(channel="y", crop_border=2) and s["psnr"] > 0
    for bad in ({"channel": "lab"}, {"quantize": "uint16"}, {"crop_border": -1}):
        with pytest.raises(ValueError):
            metrics.psnr(*_pair(), **bad)
    with pytest.raises(ValueError):
        metrics.psnr(np.full((4, 4, 3), np.nan), np.zeros((4, 4, 3)))


# ---------------------------------------------------------------------------------------------- PIQE

def _photo(name, size=256):
    img = getattr(skdata, name)()[:size, :size].astype(np.float64) / 255.0
    return img


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_piqe_rises_with_noise(name):
    clean = _photo(name)
    rng = np.random.default_rng(0)
    scores = [nr_metrics.piqe(clean)]
    # Very mild noise (sigma <= 10) can score *below* the clean photo: it fills flat edge segments that the
    # noticeable-distortion criterion flags. From sigma 15 on the score must rise strictly.
    for sigma in (15, 25, 50, 75):
        noisy = np.clip(clean + rng.normal(0, sigma / 255, clean.shape), 0, 1)
        scores.append(nr_metrics.piqe(noisy))
    assert all(0 <= s <= 100 and math.isfinite(s) for s in scores), scores
    assert all(b > a for a, b in zip(scores, scores[1:])), scores


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_piqe_rises_with_blur(name):
    import cv2

    clean = _photo(name)
    scores = [nr_metrics.piqe(clean)]
    for sigma in (0.5, 1.0, 1.5):
        scores.append(nr_metrics.piqe(cv2.GaussianBlur(clean, (0, 0), sigma)))
    assert all(0 <= s <= 100 and math.isfinite(s) for s in scores), scores
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    # strong blur leaves no spatially active block: the score saturates at the worst value
    assert nr_metrics.piqe(cv2.GaussianBlur(clean, (0, 0), 4.0)) == 100.0


def test_piqe_inputs_and_flat_image():
    img = _photo("astronaut", 64)
    u8 = np.round(img * 255).astype(np.uint8)
    assert nr_metrics.piqe(u8) == pytest.approx(nr_metrics.piqe(u8 / 255.0), abs=1e-9)
    gray = nr_metrics.piqe(img.mean(axis=2))
    assert 0 <= gray <= 100
    assert nr_metrics.piqe(np.full((48, 48), 0.5)) == 100.0   # no spatially active block
    with pytest.raises(ValueError):
        nr_metrics.piqe(np.zeros((8, 8)))


def test_weighted_metrics_skip_without_weights(tmp_path):
    res = nr_metrics.no_reference_scores(_photo("coffee", 64), metrics=("piqe", "niqe", "brisque"))
    assert 0 <= res["piqe"]["value"] <= 100
    for name in ("niqe", "brisque"):
        assert res[name]["value"] is None and "weights" in res[name]["skipped"]
    for name in ("lpips", "fid"):
        reason = nr_metrics.weighted_metric_unavailable(name, None)
        assert reason and "no local weight file" in reason
    missing = nr_metrics.weighted_metric_unavailable("lpips", tmp_path / "nope.pth")
    assert "not found" in missing
    with pytest.raises(ValueError):
        nr_metrics.no_reference_scores(_photo("coffee", 64), metrics=("psnr",))
