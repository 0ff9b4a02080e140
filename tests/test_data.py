"""Tests of the data side: degradations, shards, synthesis."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskdcpt.data.photos import (
    PACKAGED_PHOTOS,
    collect_packaged_photos,
    prepare_photos,
)
from maskdcpt.data.shards import read_shard, write_shard
from maskdcpt.data.pair_recipe import apply_tone, draw_tone, tone_of
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
    file_sha256,
    quantize,
)

FIVE_D = TASKS["5d"]


def _rng_image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _smooth_image(h=64, w=64):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.3 + 0.4 * x / w, 0.3 + 0.4 * y / h, 0.5 + 0.1 * np.sin(x / 5)], -1)
    return img.astype(np.float32)


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
    # the manifest records paths relative to its folder; the synthesis takes absolute ones (as the stage gives it)
    return out, manifest.assign(path=[str(out / p) for p in manifest["path"]])


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
    assert list(df.columns) == PAIR_COLUMNS and PAIR_COLUMNS[-1] == "gt_tone"
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
    assert set(PAIR_COLUMNS) | {"label"} == set(df.columns) and (df.gt_tone == "{}").all()
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


TONE = {"prob": 0.5, "gamma": 0.5, "contrast": [0.4, 1.0], "shift": 0.2}


def test_apply_tone_matches_hand_computed_values():
    flat = np.full((2, 2, 3), 0.25, np.float32)
    # gamma 2: 0.0625 everywhere, the mean; shift 0.1 → 0.1625 → 8-bit round(41.44) = 41
    out = apply_tone(flat, {"gamma": 2.0, "contrast": 0.7, "shift": 0.1})
    assert np.array_equal(out, np.full_like(flat, 41 / 255))
    two = np.array([[[0.2] * 3, [0.6] * 3]], np.float32)
    # gamma 1, mean 0.4, contrast 0.5: 0.3 and 0.5 → 76.5 → 76 (round half to even), 127.5 → 128
    out = apply_tone(two, {"gamma": 1.0, "contrast": 0.5, "shift": 0.0})
    assert np.array_equal(out[0, :, 0], np.array([76, 128], np.float32) / 255)
    # clipped to [0, 1]
    assert apply_tone(two, {"gamma": 1.0, "contrast": 1.0, "shift": 0.9}).max() == 1.0
    assert apply_tone(two, {}) is two
    tone = {"gamma": 1.0, "contrast": 0.5, "shift": 0.0}
    assert tone_of({"gt_tone": json.dumps(tone)}) == tone == tone_of({"gt_tone": tone})
    assert tone_of({}) == tone_of({"gt_tone": float("nan")}) == tone_of({"gt_tone": "{}"}) == {}
    with pytest.raises(TypeError, match="gt_tone"):
        tone_of({"gt_tone": 3})


def test_draw_tone_config_and_stream():
    assert draw_tone(7, None) == {} and draw_tone(7, {**TONE, "prob": 0.0}) == {}
    tones = [draw_tone(s, TONE) for s in range(400)]
    assert tones == [draw_tone(s, TONE) for s in range(400)]  # a pure function of (seed, config)
    drawn = [t for t in tones if t]
    assert 160 <= len(drawn) <= 240
    g = np.log([t["gamma"] for t in drawn])
    assert g.min() >= -0.5 and g.max() <= 0.5 and g.min() < -0.4 and g.max() > 0.4
    c = np.array([t["contrast"] for t in drawn])
    assert c.min() >= 0.4 and c.max() <= 1.0
    sh = np.array([t["shift"] for t in drawn])
    assert sh.min() >= -0.2 and sh.max() <= 0.2 and sh.min() < -0.15 and sh.max() > 0.15
    assert all(draw_tone(s, {**TONE, "prob": 1.0}) for s in range(50))
    for bad in ({**TONE, "prob": 1.5}, {**TONE, "contrast": [0.9, 0.5]}, {**TONE, "contrast": [0.0, 1.0]},
                {**TONE, "gamma": -1}, {"prob": 0.5}, {**TONE, "hue": 0.1}, {**TONE, "shift": float("inf")},
                {**TONE, "gamma": 800}, {**TONE, "contrast": [0.4, 0.5, 1.0]}):
        with pytest.raises(ValueError, match="tone config"):
            draw_tone(1, bad)


def test_tone_changes_only_the_drawn_clean_crops_and_regenerates(prepared, tmp_path):
    prep_dir, manifest = prepared
    plain = synthesize_training_pairs(manifest, FIVE_D, 8, 64, 42, tmp_path / "plain", shard_size=8)
    toned = synthesize_training_pairs(manifest, FIVE_D, 8, 64, 42, tmp_path / "toned", shard_size=8, tone=TONE)
    # the tone has its own random stream: photos, crops, seeds and degradation parameters are unchanged
    cols = ["pair_id", "image_id", "seed", "crop_y", "crop_x", "params"]
    pd.testing.assert_frame_equal(plain[cols], toned[cols])
    assert (plain.gt_tone == "{}").all()
    tones = {k: json.loads(t) for k, t in zip(toned.key, toned.gt_tone)}
    assert tones == {k: draw_tone(s, TONE) for k, s in zip(toned.key, toned.seed)}
    assert 8 <= sum(map(bool, tones.values())) <= 32  # 40 pairs at prob 0.5
    before = {s["key"]: s for sh in sorted((tmp_path / "plain").glob("*.tar")) for s in read_shard(sh)}
    after = {s["key"]: s for sh in sorted((tmp_path / "toned").glob("*.tar")) for s in read_shard(sh)}
    for key, tone in tones.items():
        if tone:  # the stored GT is the toned crop of the photo, and the LQ is made from it
            assert after[key]["meta"]["gt_tone"] == tone
            assert np.array_equal(after[key]["gt"], apply_tone(before[key]["gt"], tone))
            assert not np.array_equal(after[key]["gt"], before[key]["gt"])
        else:
            assert "gt_tone" not in after[key]["meta"]
            assert np.array_equal(after[key]["gt"], before[key]["gt"])
            assert np.array_equal(after[key]["lq"], before[key]["lq"])
    assert _check_shards_match(tmp_path / "toned", toned, prep_dir) == 40
    # prob 0 is the untoned synthesis byte for bit; a changed tone config remakes finished shards
    synthesize_training_pairs(manifest, FIVE_D, 8, 64, 42, tmp_path / "zero", shard_size=8, tone={**TONE, "prob": 0.0})
    assert _snapshot(tmp_path / "zero") == _snapshot(tmp_path / "plain")
    again = synthesize_training_pairs(manifest, FIVE_D, 8, 64, 42, tmp_path / "plain", shard_size=8, tone=TONE)
    pd.testing.assert_frame_equal(again, toned)
    assert _snapshot(tmp_path / "plain") == _snapshot(tmp_path / "toned")


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
