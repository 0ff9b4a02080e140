"""The study's paired bootstrap on cases small enough to enumerate by hand."""
import numpy as np
import pytest

from maskdcpt.eval.bootstrap import compositions, paired_bootstrap, seed_stats, verdict, weighted_quantile

# gains g[seed, image] = a - b for 2 seeds x 2 images
G = np.array([[1.0, 3.0], [2.0, 6.0]])
B = np.array([[10.0, 11.0], [12.0, 9.0]])
A = B + G

# By hand: a replicate draws seed counts (2,0) p=1/4, (1,1) p=1/2, (0,2) p=1/4 and the same for images, and its
# value is sum_s sum_i (c_s / 2) (k_i / 2) g[s, i]:
#   seeds (2,0): images (2,0) -> 1, (1,1) -> 2, (0,2) -> 3
#   seeds (1,1): 1.5, 3, 4.5          seeds (0,2): 2, 4, 6
# distribution: 1 (1/16), 1.5 (1/8), 2 (1/8 + 1/16), 3 (1/16 + 1/4), 4 (1/8), 4.5 (1/8), 6 (1/16)
# CDF: 1 .0625 | 1.5 .1875 | 2 .375 | 3 .6875 | 4 .8125 | 4.5 .9375 | 6 1
# 50 % interval: q .25 -> 2, q .75 -> 4;  95 %: q .025 -> 1, q .975 -> 6;  80 %: q .1 -> 1.5, q .9 -> 4.5


def test_hand_computed_exact_distribution():
    r = paired_bootstrap(A, B, level=0.5)
    assert r["method"] == "exact" and r["replicates"] == 9
    assert r["gain"] == [pytest.approx(3.0), pytest.approx(3.0)]  # one degradation, and the mean over it
    assert (r["low"][0], r["high"][0]) == (pytest.approx(2.0), pytest.approx(4.0))
    r95 = paired_bootstrap(A, B, level=0.95)
    assert (r95["low"][0], r95["high"][0]) == (pytest.approx(1.0), pytest.approx(6.0))
    r80 = paired_bootstrap(A, B, level=0.8)
    assert (r80["low"][0], r80["high"][0]) == (pytest.approx(1.5), pytest.approx(4.5))
    assert r["verdict"][0] == "gain"


def test_monte_carlo_agrees_with_the_exact_case():
    r = paired_bootstrap(A, B, level=0.5, exact_limit=0, n_boot=40000, seed=1)
    assert r["method"] == "monte carlo" and r["replicates"] == 40000
    assert (r["low"][0], r["high"][0]) == (pytest.approx(2.0), pytest.approx(4.0))
    r80 = paired_bootstrap(A, B, level=0.8, exact_limit=0, n_boot=40000, seed=2)
    assert (r80["low"][0], r80["high"][0]) == (pytest.approx(1.5), pytest.approx(4.5))


def test_resamples_both_seeds_and_images():
    # resampling only images (seed weights fixed at 1/2) would give 1.5, 3, 4.5 -> 50 % interval [3, 3];
    # only seeds: 2, 3, 4 -> [3, 3]. Both levels give [2, 4] (above).
    r = paired_bootstrap(A, B, level=0.5)
    assert r["high"][0] - r["low"][0] == pytest.approx(2.0)


def test_paired_not_independent():
    # the baseline varies a lot from image to image, the gain is a constant 0.5 dB: a paired interval is [0.5, 0.5],
    # an unpaired one would be wide and contain 0
    b = np.array([[20.0, 35.0, 28.0], [21.0, 34.0, 27.0]])
    r = paired_bootstrap(b + 0.5, b)
    assert r["low"][0] == pytest.approx(0.5) and r["high"][0] == pytest.approx(0.5)
    assert r["verdict"][0] == "gain"


def test_mean_over_degradations_uses_one_joint_image_draw():
    # one seed; two degradations whose gains are opposite per image: each alone is uncertain, their mean is
    # always 2 when the same images are drawn for both
    a = np.zeros((1, 2, 2))
    b = np.zeros((1, 2, 2))
    a[0, :, 0] = [1.0, 3.0]
    a[0, :, 1] = [3.0, 1.0]
    r = paired_bootstrap(a, b, level=0.95)
    assert r["gain"] == [pytest.approx(2.0)] * 3
    assert (r["low"][0], r["high"][0]) == (pytest.approx(1.0), pytest.approx(3.0))
    assert (r["low"][2], r["high"][2]) == (pytest.approx(2.0), pytest.approx(2.0))
    assert r["verdict"] == ["gain", "gain", "gain"]


def test_verdicts_and_errors():
    assert verdict(0.1, 0.5) == "gain" and verdict(-0.5, -0.1) == "loss" and verdict(-0.1, 0.2) == "inconclusive"
    lose = paired_bootstrap(B, A)  # the mirror case: a loss of 3 dB, interval [-6, -1]
    assert lose["verdict"][0] == "loss" and lose["high"][0] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([[np.nan]]), np.array([[0.0]]))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(A, B, level=1.0)


def test_helpers():
    assert sorted(map(tuple, compositions(2, 2))) == [(0, 2), (1, 1), (2, 0)]
    assert len(compositions(3, 3)) == 10 and (compositions(3, 3).sum(axis=1) == 3).all()
    assert weighted_quantile(np.array([3.0, 1.0, 2.0]), np.array([1, 1, 2]), 0.25) == 1.0
    assert weighted_quantile(np.array([3.0, 1.0, 2.0]), np.array([1, 1, 2]), 0.5) == 2.0
    assert weighted_quantile(np.array([3.0, 1.0, 2.0]), np.array([1, 1, 2]), 0.76) == 3.0
    s = seed_stats(np.array([[[20.0, 30.0]], [[22.0, 34.0]]]))   # 2 seeds, 1 image, 2 degradations
    assert s["mean"] == [pytest.approx(21.0), pytest.approx(32.0), pytest.approx(26.5)]
    assert s["std"] == [pytest.approx(np.sqrt(2.0)), pytest.approx(np.sqrt(8.0)), pytest.approx(np.sqrt(4.5))]
