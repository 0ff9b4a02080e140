"""Standard benchmark loaders, the paper protocol and the `maskdcpt paper-eval` CLI on tiny folders laid out like
the real sets (each with a deliberate mismatch)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskdcpt.data.testsets import (DATASETS, TestSetMissing, first_number, load_test_set, synthesize_lq,
                                      training_pairs)
from maskdcpt.imageio import read_image, write_png

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64


def _img(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * xx + seed), np.cos(2 * yy - seed), xx * yy], -1)
    return np.clip(0.5 + 0.4 * base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


def _pair(lq_path: Path, gt_path: Path | None, seed: int, size=(H, W)) -> None:
    gt = _img(seed, *size)
    if gt_path is not None:
        write_png(gt_path, gt)
    if lq_path is not None:
        write_png(lq_path, np.clip(gt * 0.8 + 0.1, 0, 1))


def make_rain100l(d: Path) -> None:
    (d / "rainy").mkdir(parents=True), (d / "norain").mkdir()
    for i in (1, 2):
        _pair(d / "rainy" / f"rain-{i:03d}.png", d / "norain" / f"norain-{i:03d}.png", i)
    _pair(d / "rainy" / "rain-003.png", None, 3)                 # mismatch: no GT
    _pair(None, d / "norain" / "norain-004.png", 4)              # mismatch: no LQ


def make_sots(d: Path) -> None:
    (d / "hazy").mkdir(parents=True), (d / "clear").mkdir()
    for i in (1, 2):
        _pair(d / "hazy" / f"{i:04d}_0.8_0.2.png", d / "clear" / f"{i:04d}.png", 10 + i)
    _pair(d / "hazy" / "0003_1_0.16.png", None, 13)              # mismatch


def make_gt_only(d: Path, n: int = 2) -> None:
    d.mkdir(parents=True)
    for i in range(n):
        write_png(d / f"img{i:02d}.png", _img(20 + i))


def make_gopro(d: Path) -> None:
    for scene, ids in (("GOPR0384_11_00", (1, 2)), ("GOPR0385_11_01", (1,))):
        (d / scene / "blur").mkdir(parents=True), (d / scene / "sharp").mkdir()
        for i in ids:
            _pair(d / scene / "blur" / f"{i:06d}.png", d / scene / "sharp" / f"{i:06d}.png", 30 + i)
    _pair(d / "GOPR0385_11_01" / "blur" / "000009.png", None, 39)  # mismatch


def make_lol(d: Path) -> None:
    (d / "eval15" / "low").mkdir(parents=True), (d / "eval15" / "high").mkdir()
    for i in (1, 22):
        _pair(d / "eval15" / "low" / f"{i}.png", d / "eval15" / "high" / f"{i}.png", 40 + i)
    _pair(None, d / "eval15" / "high" / "23.png", 63)            # mismatch


def make_5d_root(root: Path, gopro: bool = True) -> None:
    make_rain100l(root / "Rain100L")
    make_sots(root / "SOTS" / "outdoor")
    make_gt_only(root / "CBSD68")
    make_lol(root / "LOL")
    if gopro:
        make_gopro(root / "GoPro" / "test")


def _reasons(pairs) -> list[tuple[str, str]]:
    return sorted(zip(pairs.rejections["reason"], pairs.rejections["id"]))


# ----------------------------------------------------------------------------------------------- loaders


def test_first_number_key():
    assert first_number("rain-001") == first_number("norain-1") == first_number("norain-1x2") == "1"
    assert first_number("abc") == "abc"


def test_5d_layouts_match_and_report_mismatches(tmp_path):
    make_5d_root(tmp_path)
    rain = load_test_set("rain100l", tmp_path / "Rain100L")
    assert [e.id for e in rain.entries] == ["1", "2"]
    assert _reasons(rain) == [("unmatched_gt", "4"), ("unmatched_lq", "3")]
    sots = load_test_set("sots_outdoor", tmp_path / "SOTS" / "outdoor")
    assert [e.id for e in sots.entries] == ["0001_0.8_0.2", "0002_0.8_0.2"]
    assert sots.entries[0].gt_path.name == "0001.png"
    assert _reasons(sots) == [("unmatched_lq", "0003")]
    gopro = load_test_set("gopro", tmp_path / "GoPro" / "test")
    assert [e.id for e in gopro.entries] == ["GOPR0384_11_00/000001", "GOPR0384_11_00/000002",
                                             "GOPR0385_11_01/000001"]
    assert _reasons(gopro) == [("unmatched_lq", "GOPR0385_11_01/000009")]
    lol = load_test_set("lol_v1", tmp_path / "LOL")
    assert [e.id for e in lol.entries] == ["1", "22"] and _reasons(lol) == [("unmatched_gt", "23")]
    pairs = list(rain)
    assert len(pairs) == 2 and pairs[0].lq.shape == pairs[0].gt.shape == (H, W, 3)
    assert pairs[0].lq.dtype == np.float32 and not np.array_equal(pairs[0].lq, pairs[0].gt)


def test_12d_layouts(tmp_path):
    d = tmp_path / "RainDrop" / "test_a"
    (d / "data").mkdir(parents=True), (d / "gt").mkdir()
    _pair(d / "data" / "0_rain.png", d / "gt" / "0_clean.png", 1)
    _pair(d / "data" / "1_rain.png", None, 2)
    rd = load_test_set("raindrop_a", d)
    assert [e.id for e in rd.entries] == ["0"] and _reasons(rd) == [("unmatched_lq", "1")]

    v2 = tmp_path / "LOL-v2"
    lo, no = v2 / "Real_captured/Test/Low", v2 / "Real_captured/Test/Normal"
    lo.mkdir(parents=True), no.mkdir(parents=True)
    _pair(lo / "low00690.png", no / "normal00690.png", 3)
    _pair(lo / "low00691.png", None, 4)
    r = load_test_set("lol_v2_real", v2)
    assert [e.id for e in r.entries] == ["00690"] and _reasons(r) == [("unmatched_lq", "00691")]

    hide = tmp_path / "HIDE"
    for sub in ("test/test-close-ups", "test/test-long-shot", "GT"):
        (hide / sub).mkdir(parents=True)
    _pair(hide / "test/test-close-ups/a.png", hide / "GT/a.png", 5)
    _pair(hide / "test/test-long-shot/b.png", hide / "GT/b.png", 6)
    _pair(None, hide / "GT/c.png", 7)
    h = load_test_set("hide", hide)
    assert [e.id for e in h.entries] == ["a", "b"] and _reasons(h) == [("unmatched_gt", "c")]

    rb = tmp_path / "RealBlur"
    (rb / "scene1" / "gt").mkdir(parents=True), (rb / "scene1" / "blur").mkdir()
    _pair(rb / "scene1/blur/blur_1.png", rb / "scene1/gt/gt_1.png", 8)
    (rb / "RealBlur_J_test_list.txt").write_text(
        "scene1/gt/gt_1.png scene1/blur/blur_1.png\nscene1/gt/gt_2.png scene1/blur/blur_2.png\nlonely\n")
    j = load_test_set("realblur_j", rb)
    assert [e.id for e in j.entries] == ["scene1/blur/blur_1"]
    assert sorted(j.rejections["reason"]) == ["bad_list_line", "missing_file"]

    for name, sub, lq_dir, gt_dir in (("dpdd", "DPDD", "test_c/source", "test_c/target"),
                                      ("sidd", "SIDD/val", "noisy", "gt"), ("moire", "moire/test", "moire", "gt"),
                                      ("snow100k_l", "Snow100K-L", "synthetic", "gt")):
        root = tmp_path / sub
        (root / lq_dir).mkdir(parents=True), (root / gt_dir).mkdir(parents=True)
        _pair(root / lq_dir / "x1.png", root / gt_dir / "x1.png", 9)
        _pair(root / lq_dir / "x2.png", None, 10)
        s = load_test_set(name, root)
        assert [e.id for e in s.entries] == ["x1"] and _reasons(s) == [("unmatched_lq", "x2")], name


def test_size_mismatch_is_a_rejection_at_read_time(tmp_path):
    d = tmp_path / "Rain100L"
    (d / "rainy").mkdir(parents=True), (d / "norain").mkdir()
    _pair(d / "rainy/rain-001.png", d / "norain/norain-001.png", 1)
    write_png(d / "rainy/rain-002.png", _img(2, 40, 64))
    write_png(d / "norain/norain-002.png", _img(2))
    s = load_test_set("rain100l", d)
    assert len(s) == 2 and [p.id for p in s] == ["1"]
    assert _reasons(s) == [("size_mismatch", "2")]


def test_missing_set_names_the_layout(tmp_path):
    with pytest.raises(TestSetMissing) as e:
        load_test_set("rain100l", tmp_path / "nope")
    assert "rainy/" in str(e.value) and "norain/" in str(e.value) and "is missing" in str(e.value)
    (tmp_path / "half" / "rainy").mkdir(parents=True)
    with pytest.raises(TestSetMissing, match="has no folder norain/"):
        load_test_set("rain100l", tmp_path / "half")
    with pytest.raises(TestSetMissing, match="<scene>/blur"):
        (tmp_path / "g").mkdir()
        load_test_set("gopro", tmp_path / "g")
    with pytest.raises(KeyError):
        load_test_set("no_such_set", tmp_path)


def test_registry_classes_are_task_classes():
    from maskdcpt.degradations import TASKS

    for spec in DATASETS.values():
        for task, cls in spec.classes.items():
            if task in TASKS:
                assert cls in TASKS[task], (spec.name, task, cls)
    assert {s.classes.get("5d") for s in DATASETS.values()} - {None} == set(TASKS["5d"])


# ------------------------------------------------------------------------------------------- synthesis


def test_cbsd68_sigma25_is_the_official_noise_and_bit_identical(tmp_path):
    make_gt_only(tmp_path / "CBSD68", n=2)
    runs = [[(p.id, p.lq, p.gt) for p in load_test_set("cbsd68", tmp_path / "CBSD68")] for _ in range(2)]
    for (i1, lq1, gt1), (i2, lq2, gt2) in zip(*runs):
        assert i1 == i2 and lq1.dtype == np.float32 and lq1.tobytes() == lq2.tobytes()
    state = np.random.get_state()
    try:
        np.random.seed(0)
        noise = np.random.normal(0, 25 / 255.0, (H, W, 3))      # the official test code, global legacy RNG
    finally:
        np.random.set_state(state)
    for _, lq, gt in runs[0]:
        expect = np.clip(gt.astype(np.float64) + noise, 0, 1).astype(np.float32)
        assert np.array_equal(lq, expect)
        assert not np.allclose(lq * 255, np.round(lq * 255))  # float, not quantised
    # seed 0 for every image: the same noise field where nothing was clipped
    (_, a, ga), (_, b, gb) = runs[0]
    inside = (a > 0) & (a < 1) & (b > 0) & (b < 1)
    np.testing.assert_allclose((a - ga)[inside], (b - gb)[inside], atol=1e-6)


def test_jpeg_and_demosaic_synthesis():
    from maskdcpt.degradations import jpeg_roundtrip

    gt = _img(5)
    assert np.array_equal(synthesize_lq(gt, {"type": "jpeg", "quality": 50}), jpeg_roundtrip(gt, 50))
    plain = synthesize_lq(gt, {"type": "mosaic", "swap_rb": False})
    swapped = synthesize_lq(gt, {"type": "mosaic", "swap_rb": True})
    assert np.array_equal(swapped, plain[..., ::-1]) and not np.array_equal(swapped, plain)
    with pytest.raises(ValueError, match="unknown LQ synthesis"):
        synthesize_lq(gt, {"type": "bogus"})


def test_s3_prefix_is_mirrored(tmp_path, monkeypatch):
    """A set under an ``s3://`` prefix of a real S3-compatible server (moto on 127.0.0.1) is mirrored into the
    cache byte for byte, credentials from the environment, and loads like the local folder."""
    import boto3

    from pipelines.services import start_moto

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    src = tmp_path / "src"
    make_rain100l(src / "Rain100L")
    local = load_test_set("rain100l", src / "Rain100L")
    server = start_moto(log_dir=tmp_path / "moto")
    try:
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for f in src.rglob("*.png"):
            client.upload_file(str(f), "bench", f"sets/{f.relative_to(src).as_posix()}")
        client.put_object(Bucket="bench", Key="sets/other/ignored.png", Body=b"not under the prefix")
        s = load_test_set("rain100l", "s3://bench/sets/Rain100L", cache_dir=tmp_path / "cache",
                           endpoint_url=server.url)
        assert [e.id for e in s.entries] == ["1", "2"] and len(list(s)) == 2
        assert str(s.root).startswith(str(tmp_path / "cache"))
        mirrored = {p.relative_to(s.root).as_posix(): p.read_bytes() for p in Path(s.root).rglob("*.png")}
        assert mirrored == {p.relative_to(src / "Rain100L").as_posix(): p.read_bytes()
                            for p in (src / "Rain100L").rglob("*.png")}
        assert not list((tmp_path / "cache").rglob("ignored.png"))
        for a, b in zip(s, local):
            assert a.id == b.id and np.array_equal(a.lq, b.lq) and np.array_equal(a.gt, b.gt)
        # a second load is served from the cache: the objects are not fetched again
        stamps = {p: p.stat().st_mtime_ns for p in Path(s.root).rglob("*.png")}
        again = load_test_set("rain100l", "s3://bench/sets/Rain100L", cache_dir=tmp_path / "cache",
                               endpoint_url=server.url)
        assert [e.id for e in again.entries] == ["1", "2"]
        assert {p: p.stat().st_mtime_ns for p in Path(s.root).rglob("*.png")} == stamps
    finally:
        server.stop()


# ------------------------------------------------------------------------------------- protocol + CLI


def _checkpoint(path: Path) -> None:
    from maskdcpt.models import build_nafnet

    torch.manual_seed(0)
    net = build_nafnet("tiny")
    ema = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))                  # params != params_ema
    torch.save({"params": net.state_dict(), "params_ema": ema}, path)


def test_paper_numbers_and_table_results():
    from maskdcpt.eval.paper_tables import table_results

    res = table_results("table1", {})
    assert res["paper_avg"]["NAFNet"] == pytest.approx(27.766) and res["paper_avg"]["NAFNet + MaskDCPT"] == pytest.approx(32.088)
    sets = {"rain100l": {"n": 3, "psnr": 30.0, "ssim": 0.9, "psnr_uint8": 29.0, "ssim_uint8": 0.8}}
    res = table_results("table1", sets)
    assert res["gap_db"] == {"derain": pytest.approx(30.0 - 39.92)} and res["avg"]["columns"] == 1
    res2 = table_results("table2", {**sets, "rain100h": {"n": 1, "psnr": 20.0, "ssim": 0.5,
                                                          "psnr_uint8": 0, "ssim_uint8": 0}})
    assert res2["ours"]["derain"]["psnr"] == 25.0 and res2["ours"]["derain"]["complete"]


def test_cli_paper_eval_end_to_end(tmp_path, capsys):
    from maskdcpt import metrics
    from maskdcpt.cli import main
    from maskdcpt.eval.benchmark import restore_array
    from maskdcpt.inference import load_model

    root = tmp_path / "bench"
    make_5d_root(root, gopro=False)
    ckpt = tmp_path / "NAFNet_5d.pth"
    _checkpoint(ckpt)
    out = tmp_path / "out"
    rc = main(["paper-eval", "--preset", "paper-5d", "--root", str(root), "--model", str(ckpt), "--out", str(out),
               "--device", "cpu", "--only", "sots_outdoor,rain100l,cbsd68,gopro,lol_v1,cbsd68_s50"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "skip gopro:" in cap.err and "<scene>/blur/*.png" in cap.err
    assert "unmatched_lq 3" in cap.err                          # the Rain100L mismatch is reported
    table = (out / "table.md").read_text()
    assert table in cap.out
    for paper in ("31.40 / 0.978", "39.92 / 0.986", "25.23 / 0.939", "29.47 / 0.976", "32.09", "27.77",
                  "34.03", "28.21"):
        assert paper in table, paper
    assert "**ours: NAFNet_5d**" in table and "— (not run)" in table and "gap to paper NAFNet + MaskDCPT" in table
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["metrics"]["quantize"] == "none" and res["protocol"]["metrics_uint8"]["quantize"] == "uint8"
    assert res["sets"]["rain100l"]["n"] == 2 and res["sets"]["sots_outdoor"]["n"] == 2 and "gopro" in res["skipped"]
    per = pd.read_csv(out / "per_image.csv")
    assert set(per["dataset"]) == {"sots_outdoor", "rain100l", "cbsd68", "lol_v1", "cbsd68_s50"}
    assert set(pd.read_csv(out / "rejections.csv")["reason"]) == {"unmatched_lq", "unmatched_gt"}
    # recompute one image independently: EMA weights, whole image, float metrics; uint8 variant differs
    net = load_model(ckpt, device="cpu", key="params_ema")
    pair = next(iter(load_test_set("cbsd68", root / "CBSD68")))
    restored = restore_array(net, pair.lq)
    row = per[(per.dataset == "cbsd68") & (per.id == pair.id)].iloc[0]
    assert row.psnr == pytest.approx(metrics.psnr(restored, pair.gt), abs=1e-9)
    assert row.ssim == pytest.approx(metrics.ssim(restored, pair.gt), abs=1e-9)
    assert row.psnr_uint8 == pytest.approx(metrics.psnr(restored, pair.gt, quantize="uint8"), abs=1e-9)
    assert row.psnr_uint8 != row.psnr
    ours = res["tables"]["table1"]["ours"]["denoise"]["psnr"]
    assert ours == pytest.approx(per[per.dataset == "cbsd68"].psnr.mean(), abs=1e-4)
    assert res["tables"]["table1"]["gap_db"]["denoise"] == pytest.approx(ours - 31.41, abs=1e-3)

    # the raw `params` give different numbers than `params_ema`
    rc = main(["paper-eval", "--root", str(root), "--model", str(ckpt), "--out", str(tmp_path / "o2"),
               "--device", "cpu", "--only", "cbsd68", "--key", "params", "--limit", "1"])
    assert rc == 0
    per2 = pd.read_csv(tmp_path / "o2" / "per_image.csv")
    assert len(per2) == 1 and per2.psnr.iloc[0] != pytest.approx(row.psnr, abs=1e-6)
    assert "--limit 1" in capsys.readouterr().out

    # --strict turns a missing set into a failure naming the layout; --set points at one set
    rc = main(["paper-eval", "--root", str(root), "--model", str(ckpt), "--out", str(tmp_path / "o3"),
               "--only", "gopro", "--strict", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "GoPro" in err and "<scene>/blur/*.png" in err
    rc = main(["paper-eval", "--model", str(ckpt), "--out", str(tmp_path / "o4"), "--only", "rain100l",
               "--set", f"rain100l={root / 'Rain100L'}", "--device", "cpu"])
    assert rc == 0 and json.loads((tmp_path / "o4" / "results.json").read_text())["sets"]["rain100l"]["n"] == 2
    assert main(["paper-eval", "--model", str(ckpt), "--set", "bogus"]) == 2
    assert main(["paper-eval", "--list"]) == 0 and "rain100l" in capsys.readouterr().out


# -------------------------------------------------------------------------------------- presets + training


@pytest.mark.parametrize("name", ["paper-5d", "paper-12d"])
def test_presets_overlay_known_keys(name):
    """Each paper preset loads through the strict params schema (an unknown key would be an error), and names only
    test sets and layouts the loaders know."""
    from pipelines.params import load_params

    params = load_params(REPO / "params.yaml", {"preset": name})
    for set_name in params["test_sets"]["sets"]:
        assert set_name in DATASETS
    for s in params["training_sets"]["sets"].values():
        assert s["layout"] in DATASETS
    assert params["model"]["preset"] == "paper-5d" and params["pretrain"]["steps"] == 100000


def test_training_pairs_from_tiny_sets(tmp_path):
    from maskdcpt.data.shards import read_shard
    from maskdcpt.data.pair_recipe import PAIR_COLUMNS
    from maskdcpt.degradations import TASKS

    root = tmp_path / "train"
    make_rain100l(root / "Rain200L")
    make_gt_only(root / "BSD400", n=2)
    preset = {"seed": 7, "task": {"name": "5d", "classes": []},
              "training_sets": {"root": str(root), "mode": "crop", "crop": 32, "sets": {
                  "rain200l": {"layout": "rain100l", "path": "Rain200L", "class": "rain", "repeat": 3},
                  "bsd400": {"layout": "cbsd68", "path": "BSD400", "class": "gaussian_noise", "repeat": 2,
                             "sigmas": [15, 25, 50]},
                  "gopro": {"layout": "gopro", "path": "GoPro/train", "class": "motion_blur", "repeat": 5}}}}
    man, rej = training_pairs(preset, tmp_path / "shards")
    assert list(man.columns[:len(PAIR_COLUMNS)]) == PAIR_COLUMNS
    assert (man.split == "train").all() and man.pair_id.is_unique
    counts = man.groupby("dataset").size().to_dict()
    assert counts == {"rain200l": 2 * 3, "bsd400": 2 * 2}
    assert set(man.class_index[man.dataset == "rain200l"]) == {TASKS["5d"].index("rain")}
    assert set(man.class_index[man.dataset == "bsd400"]) == {TASKS["5d"].index("gaussian_noise")}
    assert (man.height == 32).all() and (man.width == 32).all()
    assert {"missing_set", "unmatched_lq", "unmatched_gt"} <= set(rej.reason)
    assert "<scene>/blur" in rej[rej.reason == "missing_set"].detail.iloc[0]
    # the shards hold the GT crops at the recorded positions; the noise LQ is recorded with its sigma
    samples = {s["key"]: s for f in sorted((tmp_path / "shards").glob("*.tar")) for s in read_shard(f)}
    assert set(samples) == set(man.key)
    for r in man.itertuples():
        gt = read_image(r.gt_path)[r.crop_y:r.crop_y + 32, r.crop_x:r.crop_x + 32]
        np.testing.assert_allclose(samples[r.key]["gt"], gt, atol=1 / 255 / 2 + 1e-6)
    assert all(json.loads(p)["sigma"] in (15, 25, 50) for p in man.params[man.dataset == "bsd400"])
    man2, _ = training_pairs(preset, tmp_path / "shards2")
    assert man2.drop(columns=["shard"]).equals(man.drop(columns=["shard"]))   # deterministic
    whole, _ = training_pairs({**preset, "training_sets": {**preset["training_sets"], "mode": "whole"}},
                              tmp_path / "w")
    assert set(whole.repeat[whole.dataset == "rain200l"]) == {3} and (whole.height == H).all()
