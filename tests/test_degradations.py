"""Per-type tests of the degradation registry: each checks a measurable property, not just shapes."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import cv2
import numpy as np
import pytest

from maskdcpt.degradations import (
    REGISTRY,
    TASKS,
    RealPairsOnly,
    bayer_rggb,
    bivariate_kernel,
    degrade,
    disk_kernel,
    get_degradation,
    level_summary,
    seed_streams,
    shake_kernel,
    sinc_kernel,
)
from maskdcpt.degradations.kernels import KERNEL_FAMILIES, KERNEL_PROBS, SINC_PROB

SYNTHETIC = sorted(n for n, d in REGISTRY.items() if d.kind != "real")
REAL = sorted(n for n, d in REGISTRY.items() if d.kind == "real")


def _photo(h=96, w=112, seed=0):
    """A textured natural-looking test image: smooth ramps plus band-limited noise, in [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), 2.0)
    img = np.stack([0.3 + 0.4 * x / w, 0.3 + 0.4 * y / h, 0.5 + 0.1 * np.sin(x / 5)], -1) + 0.8 * (tex - 0.5)
    return np.clip(img, 0.05, 0.95).astype(np.float32)


def _flat(v, h=128, w=128):
    return np.full((h, w, 3), v, np.float32)


# ------------------------------------------------------------------------------------------- registry


def test_tasks_and_levels():
    assert TASKS["5d"] == ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"]
    assert len(TASKS["12d"]) == 13 and TASKS["12d"][:2] == ["noise", "real_noise"]
    assert len(TASKS["all"]) == 19 and TASKS["all"][:13] == TASKS["12d"]
    assert sum(REGISTRY[n].kind == "mixed" for n in TASKS["all"]) == 6  # 5 paper mixtures + RSD
    for task in TASKS.values():
        assert len(set(task)) == len(task) and set(task) <= set(REGISTRY)
    for name in SYNTHETIC:
        lv = get_degradation(name).levels
        assert isinstance(lv, int) and lv > 0, name
    assert all(get_degradation(n).levels == 0 for n in REAL)
    summary = level_summary()
    assert summary["single_total"] >= 200
    assert summary["per_type"]["noise"] == 50 + 60 + 10 and summary["per_type"]["jpeg"] == 86
    assert summary["per_type"]["gaussian_noise"] == 3


def test_cli_lists_registry():
    from maskdcpt.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["degradations", "--json"]) == 0
    rows = json.loads(buf.getvalue())
    assert {r["name"] for r in rows} == set(REGISTRY)
    assert all(set(r) == {"name", "kind", "params", "levels"} for r in rows)
    assert {r["kind"] for r in rows} == {"single", "mixed", "real"}
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["degradations", "--json", "--task", "12d"]) == 0
    assert [r["name"] for r in json.loads(buf.getvalue())] == TASKS["12d"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["degradations", "--task", "5d"]) == 0
    table = buf.getvalue()
    assert "gaussian_noise" in table and "moire" not in table and "levels" in table


@pytest.mark.parametrize("name", SYNTHETIC)
def test_contract_every_type(name):
    """LQ in [0, 1], differs from GT, and the recorded (seed, params) regenerate it bit for bit."""
    gt = _photo()
    lq, params = degrade(gt, name, 11)
    assert lq.shape == gt.shape and lq.dtype == np.float32
    assert lq.min() >= 0.0 and lq.max() <= 1.0
    assert np.abs(lq - gt).mean() > 1e-3
    row = json.loads(json.dumps({"seed": 11, "params": params}))  # a manifest row's round trip
    again, p2 = degrade(gt, name, row["seed"], params=row["params"])
    assert np.array_equal(lq, again) and p2 == params
    assert not np.array_equal(lq, degrade(gt, name, 12)[0]) or name == "mosaic"


@pytest.mark.parametrize("name", REAL)
def test_real_classes_cannot_be_synthesised(name):
    with pytest.raises(RealPairsOnly, match="real"):
        degrade(_photo(), name, 0)


def test_unknown_params_rejected():
    with pytest.raises(ValueError, match="unknown parameter"):
        degrade(_photo(), "jpeg", 0, params={"qualty": 3})
    with pytest.raises(ValueError, match="unknown step"):
        degrade(_photo(), "blur_jpeg", 0, params={"blur": {}})
    with pytest.raises(ValueError, match="noise_type"):
        degrade(_photo(), "noise", 0, params={"noise_type": "speckle"})


# -------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("sigma", [1, 10, 25, 50])
def test_gaussian_noise_sigma(sigma):
    gt = _flat(0.5, 192, 192)
    lq, p = degrade(gt, "noise", 3, params={"noise_type": "gaussian", "sigma": sigma})
    assert p == {"noise_type": "gaussian", "sigma": sigma}
    est = float(np.std(lq.astype(np.float64) - gt)) * 255
    assert abs(est - sigma) / sigma < 0.05


def test_poisson_variance_scales_with_intensity():
    var = {}
    for v in (51, 204):  # exact 8-bit levels 0.2 and 0.8
        gt = _flat(v / 255, 256, 256)
        lq, p = degrade(gt, "noise", 5, params={"noise_type": "poisson", "scale": 1.0, "gray": False})
        var[v] = float(np.var(lq.astype(np.float64) - gt))
        assert abs(var[v] - (v / 255) / 256) / ((v / 255) / 256) < 0.05  # var = scale²·x/v
    assert 3.6 < var[204] / var[51] < 4.4
    lq, _ = degrade(_flat(0.5), "noise", 5, params={"noise_type": "poisson", "scale": 2.0, "gray": True})
    assert np.array_equal(lq[..., 0], lq[..., 1]) and np.array_equal(lq[..., 1], lq[..., 2])


@pytest.mark.parametrize("density", [0.005, 0.02, 0.05])
def test_salt_pepper_density(density):
    gt = _flat(0.5, 256, 256)
    lq, _ = degrade(gt, "noise", 9, params={"noise_type": "salt_pepper", "density": density})
    salt = np.all(lq == 1.0, axis=2).mean()
    pepper = np.all(lq == 0.0, axis=2).mean()
    assert abs((salt + pepper) - density) < 0.15 * density + 1e-3
    assert abs(salt - pepper) < 0.3 * density + 1e-3
    assert np.all((lq == 0.5) | (lq == 0.0) | (lq == 1.0))


def test_noise_subtypes_are_sampled():
    types = [degrade(_flat(0.5, 4, 4), "noise", s)[1]["noise_type"] for s in range(300)]
    freq = {t: types.count(t) / 300 for t in set(types)}
    assert set(freq) == {"gaussian", "poisson", "salt_pepper"}
    assert abs(freq["gaussian"] - 0.5) < 0.1


# --------------------------------------------------------------------------------------------- blur


def test_gaussian_sinc_kernels():
    k = bivariate_kernel(21, 2.0, 2.0, 0.0, "iso")
    g = cv2.getGaussianKernel(21, 2.0, cv2.CV_64F)
    assert abs(k.sum() - 1) < 1e-9 and np.allclose(k, g @ g.T, atol=1e-9)  # separable Gaussian
    a = bivariate_kernel(15, 3.0, 0.5, math.pi / 2, "aniso")
    assert a[:, 7].sum() > 5 * a[7, :].sum()  # rotated by 90°: elongated vertically
    assert np.allclose(bivariate_kernel(11, 1.5, 1.0, 0.3, "generalized_aniso", 1.0),
                       bivariate_kernel(11, 1.5, 1.0, 0.3, "aniso"))  # β = 1 is the Gaussian
    p = bivariate_kernel(13, 2.0, 2.0, 0, "plateau_iso", 2.0)
    assert p.argmax() == 13 * 13 // 2 and abs(p.sum() - 1) < 1e-9
    s = sinc_kernel(21, math.pi / 3)
    assert abs(s.sum() - 1) < 1e-9 and s.min() < 0  # ringing lobes of the ideal low-pass
    deg = get_degradation("gaussian_blur")
    fams = []
    for seed in range(400):
        _, prm = degrade(_flat(0.5, 8, 8), "gaussian_blur", seed)
        ker = deg.kernel(prm)
        assert ker.shape == (prm["kernel_size"],) * 2 and prm["kernel_size"] in range(7, 22, 2)
        assert abs(float(ker.sum()) - 1) < 1e-5
        fams.append(prm["family"])
    assert abs(fams.count("sinc") / 400 - SINC_PROB) < 0.05
    assert abs(fams.count("iso") / 400 - (1 - SINC_PROB) * KERNEL_PROBS[0]) < 0.08
    assert set(fams) <= {"sinc", *KERNEL_FAMILIES}


def test_gaussian_blur_is_filter2d_with_padded_kernel():
    gt = _photo()
    lq, prm = degrade(gt, "gaussian_blur", 0, params={"family": "iso", "kernel_size": 9, "sigma_x": 1.3})
    k = get_degradation("gaussian_blur").kernel(prm)
    ref = np.clip(cv2.filter2D(gt, -1, k, borderType=cv2.BORDER_REFLECT_101), 0, 1)
    assert np.array_equal(lq, ref)
    padded = np.pad(k, 6)  # the official pipeline's 21×21 zero padding: same result up to float rounding
    assert padded.shape == (21, 21)
    ref21 = np.clip(cv2.filter2D(gt, -1, padded, borderType=cv2.BORDER_REFLECT_101), 0, 1)
    assert np.abs(lq - ref21).max() < 1e-4


def test_motion_kernels():
    deg = get_degradation("motion_blur")
    for seed in range(20):
        _, prm = degrade(_flat(0.5, 8, 8), "motion_blur", seed)
        k = deg.kernel(prm)
        assert abs(float(k.sum()) - 1) < 1e-5 and k.min() >= 0 and 7 <= prm["length"] <= 35
        pts = np.argwhere(k > 1e-4)
        if prm["trajectory"] == "linear":  # a centred segment: farthest support points ≈ length apart
            far = max(float(np.hypot(*(pts - q).T).max()) for q in pts)
            assert prm["length"] - 2.5 <= far + 1 <= prm["length"] + 2.5, (prm, far)
        else:  # a trajectory scaled so that its larger bounding-box side is the length
            extent = int(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]))) + 1
            assert prm["length"] - 2 <= extent <= prm["length"] + 3, (prm, extent)
    trajs = {degrade(_flat(0.5, 4, 4), "motion_blur", s)[1]["trajectory"] for s in range(30)}
    assert trajs == {"linear", "shake"}
    a, b = shake_kernel(25, 0, 1), shake_kernel(25, 0, 2)
    assert not np.allclose(a, b) and np.array_equal(a, shake_kernel(25, 0, 1))


@pytest.mark.parametrize("radius", [1.0, 2.5, 4.0, 8.0])
def test_defocus_kernel_is_a_disk(radius):
    k = disk_kernel(radius).astype(np.float64)
    assert abs(k.sum() - 1) < 1e-6
    c = k.shape[0] // 2
    yy, xx = np.mgrid[:k.shape[0], :k.shape[0]] - c
    r = np.hypot(yy, xx)
    inside, outside = k[r <= radius - 0.75], k[r >= radius + 0.75]
    assert np.allclose(inside, inside.max(), rtol=1e-6) and np.all(outside == 0)
    assert np.allclose(k, k.T) and np.allclose(k, k[::-1]) and np.allclose(k, k[:, ::-1])
    area = k.sum() / k.max()  # equivalent area of a uniform disk
    assert abs(area - math.pi * radius ** 2) / (math.pi * radius ** 2) < 0.1
    lq, _ = degrade(_photo(), "defocus_blur", 0, params={"radius": radius})
    ref = np.clip(cv2.filter2D(_photo(), -1, disk_kernel(radius), borderType=cv2.BORDER_REFLECT_101), 0, 1)
    assert np.array_equal(lq, ref)


# -------------------------------------------------------------------------------- codec and camera


def test_jpeg_equals_opencv_roundtrip():
    gt = _photo()
    lq, p = degrade(gt, "jpeg", 0, params={"quality": 50})
    u8 = np.round(gt * 255).astype(np.uint8)[..., ::-1].copy()
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, 50])
    ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    assert ok and np.array_equal(lq, ref)
    qs = [degrade(gt[:8, :8], "jpeg", s)[1]["quality"] for s in range(200)]
    assert min(qs) >= 10 and max(qs) <= 95 and len(set(qs)) > 50


def test_mosaic_keeps_cfa_samples():
    gt = _photo(64, 64)
    lq, p = degrade(gt, "mosaic", 0)
    assert p == {"swap_rb": False}
    u8 = np.round(lq * 255).astype(np.uint8)
    cfa = bayer_rggb(gt)
    chan = np.ones((64, 64), int)
    chan[0::2, 0::2], chan[1::2, 1::2] = 0, 2  # RGGB: which channel each site samples
    at_sites = np.take_along_axis(u8, chan[..., None], axis=2)[..., 0]
    # OpenCV's demosaicers overwrite the outermost row/column by replication: check the interior.
    assert np.array_equal(at_sites[1:-1, 1:-1], cfa[1:-1, 1:-1])
    assert not np.array_equal(u8, np.round(gt * 255).astype(np.uint8))  # the missing samples are estimated
    swapped, _ = degrade(gt, "mosaic", 0, params={"swap_rb": True})
    assert np.array_equal(swapped, lq[..., ::-1])  # the official pipeline's R/B swap, opt-in


def test_moire_fringe_frequency():
    gt = _flat(0.5, 256, 256)
    pitch = 1.1
    lq, _ = degrade(gt, "moire", 0, params={"strength": 0.5, "pitch": pitch, "angle": 0.0, "phase": 0.0})
    assert abs(float(lq.mean()) - 0.5) < 0.01  # auto-exposure keeps the mean
    profile = lq[..., 0].mean(axis=0) - lq[..., 0].mean()
    spec = np.abs(np.fft.rfft(profile))
    f_peak = np.argmax(spec[1:]) / 256 + 1 / 256
    assert abs(f_peak - abs(1 / pitch - 1)) < 0.01  # aliasing beat of the sub-pixel grid
    assert float(lq.std()) > 0.05


# ------------------------------------------------------------------------------------ light/weather


@pytest.mark.parametrize("exposure", [0.1, 0.25, 0.4])
def test_low_light_scales_mean(exposure):
    gt = _photo()
    lq, _ = degrade(gt, "low_light", 1, params={"exposure": exposure, "gamma": 1.0, "peak": 1000.0,
                                                "read_sigma": 0.002})
    assert abs(float(lq.mean()) / float(gt.mean()) - exposure) / exposure < 0.03


def test_snow_and_rain_only_brighten_raindrops_scale_with_count():
    gt = _photo()
    for name in ("snow", "rain"):
        lq, _ = degrade(gt, name, 4)
        assert np.all(lq >= gt - 1e-6) and (lq - gt > 0.05).mean() > 0.003
    changed = []
    for count in (10, 60):
        lq, _ = degrade(gt, "raindrop", 2, params={"count": count, "size": 0.03})
        changed.append(float((np.abs(lq - gt).max(axis=2) > 0.01).mean()))
    assert changed[1] > 2 * changed[0] > 0


# ------------------------------------------------------------------------------------------ mixtures


def test_mixture_is_the_sequence_of_its_components():
    gt = _photo()
    lq, p = degrade(gt, "blur_jpeg", 21)
    assert set(p) == {"motion_blur", "jpeg"}
    _, field = seed_streams(21, 2)
    step1 = np.clip(get_degradation("motion_blur").apply(gt, p["motion_blur"], field), 0, 1)
    step2 = get_degradation("jpeg").apply(step1, p["jpeg"], field)
    assert np.array_equal(lq, np.clip(step2, 0, 1))
    part, p2 = degrade(gt, "blur_jpeg", 21, params={"jpeg": {"quality": 20}})
    assert p2["jpeg"] == {"quality": 20} and p2["motion_blur"] == p["motion_blur"]
    _, p3 = degrade(gt, "blur_lowlight_noise", 3)
    assert p3["noise"]["noise_type"] == "gaussian" and set(p3) == {"motion_blur", "low_light", "noise"}


def test_second_order_keeps_shape_and_records_every_step():
    gt = _photo(80, 72)
    lq, p = degrade(gt, "second_order", 5, params={"resize1": {"scale": 0.5}})
    assert lq.shape == gt.shape
    assert [k for k in p if k != "final_interpolation"] == ["blur1", "resize1", "noise1", "jpeg1", "blur2",
                                                           "resize2", "noise2", "jpeg2"]
    assert p["noise1"]["noise_type"] in ("gaussian", "poisson")
    assert 10 * math.log10(1 / float(np.mean((lq - gt) ** 2))) < 35
