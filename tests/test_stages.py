"""Each pipeline stage on a tiny configuration, in order, as `python -m pipelines.stage NAME` (without Prefect;
the end-to-end test runs them through DVC and Prefect)."""
import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import make_project, run_stage, use_store


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("stages") / "proj", dvc=False)


def test_prepare(project):
    run_stage(project, "prepare")
    manifest = pd.read_parquet(project / "data/prepared/manifest.parquet")
    assert set(manifest["split"]) == {"train", "benchmark"}
    bench = set(manifest.loc[manifest["split"] == "benchmark", "image_id"])
    assert {"sporco-kodim23", "skimage-astronaut", "skimage-camera"} <= bench
    assert len(bench) == 9
    for col in ("package", "version", "src_path", "sha256", "bytes", "width", "height"):
        assert manifest[col].notna().all(), col
    # grayscale photos are converted, not dropped
    assert "L" in set(manifest["mode"])
    for image_id in manifest["image_id"]:
        assert Image.open(project / "data/prepared/images" / f"{image_id}.png").mode == "RGB"


def test_synthesize(project):
    run_stage(project, "synthesize")
    pairs = pd.read_parquet(project / "data/pairs/manifest.parquet")
    classes = ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"]
    train = pairs[pairs["split"] == "train"]
    assert sorted(train["degradation"].unique()) == sorted(classes)
    assert (train.groupby("degradation").size() == 6).all()
    assert (train["class_index"] == train["degradation"].map(classes.index)).all()
    bench = pairs[pairs["split"] == "benchmark"]
    assert {"gaussian_noise", "gaussian_noise_s15", "gaussian_noise_s50"} <= set(bench["label"])
    entries = yaml.safe_load((project / "params.yaml").read_text())["synthesize"]["benchmark"]
    expected = {e["params"]["sigma"] for e in entries if e["degradation"] == "gaussian_noise"}
    sigmas = {json.loads(p)["sigma"] for p in bench.loc[bench["degradation"] == "gaussian_noise", "params"]}
    assert sigmas == expected and {15, 25, 50} <= sigmas
    photos = pd.read_parquet(project / "data/prepared/manifest.parquet")
    bench_sha = set(photos.loc[photos["split"] == "benchmark", "sha256"])
    assert not set(train["image_sha256"]) & bench_sha
    assert pairs["seed"].notna().all() and pairs["params"].notna().all()


def test_validate_passes(project):
    run_stage(project, "validate")
    report = json.loads((project / "reports/validate/report.json").read_text())
    assert report["success"]
    assert "PASSED" in (project / "reports/validate/report.html").read_text()


def test_pretrain(project):
    run_stage(project, "pretrain")
    ckpt = __import__("torch").load(project / "models/pretrain/backbone.pt", weights_only=True)
    assert "intro.weight" in ckpt["params"] and "ending.weight" in ckpt["params"]
    metrics = json.loads((project / "metrics/pretrain.json").read_text())
    assert metrics["steps"] == 3 and math.isfinite(metrics["train_loss"])
    assert 0.0 <= metrics["val_acc"] <= 1.0


@pytest.mark.parametrize("variant", ["maskdcpt", "scratch"])
def test_finetune(project, variant):
    run_stage(project, "finetune", "--variant", variant)
    ckpt = __import__("torch").load(project / f"models/finetune/{variant}/model.pt", weights_only=True)
    assert set(ckpt["params"]) == set(ckpt["params_ema"])
    summary = json.loads((project / f"models/finetune/{variant}/summary.json").read_text())
    assert summary["init_report"]["init"] == ("pretrained" if variant == "maskdcpt" else "random")


def test_evaluate(project):
    run_stage(project, "evaluate")
    result = json.loads((project / "metrics/benchmark.json").read_text())
    classes = ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"]
    for variant in ("maskdcpt", "scratch", "lq"):
        for deg in [*classes, "mean"]:
            assert math.isfinite(result[variant][deg]["psnr"]) and -1 <= result[variant][deg]["ssim"] <= 1
    assert result["gain_db"]["mean"] == pytest.approx(
        result["maskdcpt"]["mean"]["psnr"] - result["scratch"]["mean"]["psnr"], abs=2e-4)
    entries = yaml.safe_load((project / "params.yaml").read_text())["synthesize"]["benchmark"]
    per_image = pd.read_csv(project / "reports/evaluate/per_image.csv")
    assert len(per_image) == 3 * 9 * len(entries)
    # unseen noise levels and an unseen degradation type are reported as extra rows
    assert {"gaussian_noise_s60", "gaussian_noise_s75", "defocus_blur_unseen"} <= set(result["maskdcpt"]["extra"])
    noise = pd.read_csv(project / "reports/evaluate/psnr_vs_noise_level.csv")
    assert list(noise["sigma"]) == [15, 25, 50, 60, 75]
    assert (noise["lq"].diff().dropna() < 0).all()  # more noise, lower input PSNR
    real = result["real_piqe"]["skimage-clock_motion"]
    assert all(0 <= real[v] <= 100 for v in ("lq", "maskdcpt", "scratch"))
    # the mean of a label equals the mean of its per-image PSNRs (per-image averaging)
    rain = per_image[(per_image["variant"] == "maskdcpt") & (per_image["label"] == "rain")]["psnr"].mean()
    assert result["maskdcpt"]["rain"]["psnr"] == pytest.approx(rain, abs=1e-3)
    assert len(list((project / "reports/evaluate/grids").glob("*.png"))) == len(entries)
    assert (project / "reports/evaluate/table.md").read_text().startswith("| variant |")


def test_register_and_promotion(project):
    run_stage(project, "register")
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["promoted"] and decision["version"] == "1"
    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = decision["model_name"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    net = model.unwrap_python_model().net
    from maskdcpt.eval.benchmark import restore_array

    out = restore_array(net, np.random.default_rng(0).random((37, 50, 3), dtype=np.float32))
    assert out.shape == (37, 50, 3) and np.isfinite(out).all()
    batch = np.random.default_rng(1).random((2, 40, 52, 3), dtype=np.float32)
    served = model.predict(batch)
    assert served.shape == batch.shape and np.isfinite(served).all()
    # one parent run holding a nested run per stage, ended by register
    exp = client.get_experiment_by_name("maskdcpt")
    parents = client.search_runs([exp.experiment_id], "tags.`maskdcpt.role` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(
        ["prepare", "synthesize", "validate", "pretrain", "finetune@maskdcpt", "finetune@scratch", "evaluate",
         "register"])


def test_second_register_gates_on_the_champion(project):
    """A worse challenger (demanded margin impossible to meet) is registered but not promoted."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["register"]["min_gain_db"] = 100.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage(project, "register")
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["version"] == "2" and not decision["promoted"]
    assert "not above the margin" in decision["reason"]
    client = mlflow.MlflowClient()
    name = decision["model_name"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["decision"] == "rejected"


def test_third_register_promotes_when_the_gate_passes(project):
    """With a champion in place, a challenger that clears the gate (margin -100 dB: any score) is promoted, and
    the champion it replaced was re-scored on the same benchmark."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["register"]["min_gain_db"] = -100.0
    params["register"]["max_drop_db"] = 100.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage(project, "register")
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["version"] == "3" and decision["promoted"] and decision["champion_version_before"] == "1"
    assert decision["champion_psnr_before"]["mean"] == pytest.approx(decision["challenger_psnr"]["mean"], abs=1e-3)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(decision["model_name"], "champion").version) == "3"
    assert json.loads((project / "reports/register/results_contract.json").read_text())["success"]


def test_validate_failure_stops_with_readable_report(project):
    manifest = pd.read_parquet(project / "data/pairs/manifest.parquet")
    manifest.loc[0, "degradation"] = "snow"
    manifest.to_parquet(project / "data/pairs/manifest.parquet", index=False)
    proc = run_stage(project, "validate", check=False)
    assert proc.returncode == 2
    assert "failed its data contract" in proc.stderr
    report = (project / "reports/validate/report.html").read_text()
    assert "FAILED" in report and "snow" in report


def test_real_training_sets_feed_the_training_stages(tmp_path):
    """A preset's `training_sets` (the paper's training data laid out as the real sets) replace the synthetic
    training pairs: synthesize writes them with their repeat ratios, validate passes, pre-training trains on them."""
    from test_benchmarks import make_gopro, make_gt_only, make_lol, make_rain100l, make_sots

    root = tmp_path / "train"
    make_rain100l(root / "Rain200L")
    make_gt_only(root / "BSD400", n=2)
    make_sots(root / "RESIDE")
    make_gopro(root / "GoPro")
    make_lol(root / "LOL")
    sets = {"rain200l": {"layout": "rain100l", "path": "Rain200L", "class": "rain", "repeat": 3},
            "bsd400": {"layout": "cbsd68", "path": "BSD400", "class": "gaussian_noise", "repeat": 2,
                       "sigmas": [15, 25, 50]},
            "reside": {"layout": "sots_outdoor", "path": "RESIDE", "class": "haze", "repeat": 1},
            "gopro": {"layout": "gopro", "path": "GoPro", "class": "motion_blur", "repeat": 1},
            "lol": {"layout": "lol_v1", "path": "LOL", "class": "low_light", "repeat": 2}}
    project = make_project(tmp_path / "proj", {"training_sets": {"root": str(root), "mode": "crop", "crop": 32,
                                                                 "sets": sets}}, dvc=False)
    for stage in ("prepare", "synthesize", "validate", "pretrain"):
        run_stage(project, stage)
    manifest = pd.read_parquet(project / "data/pairs/manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    assert train.groupby("dataset").size().to_dict() == {"rain200l": 6, "bsd400": 4, "reside": 2, "gopro": 3,
                                                         "lol": 4}
    assert set(train["degradation"]) == {"rain", "gaussian_noise", "haze", "motion_blur", "low_light"}
    assert (manifest.loc[manifest["split"] == "val", "dataset"].isna()).all()   # validation crops stay synthetic
    assert json.loads((project / "metrics/pretrain.json").read_text())["steps"] == 3
