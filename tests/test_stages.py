"""Each pipeline stage on a tiny configuration, as `python -m pipelines.stage NAME` (without Prefect; the
end-to-end test runs them through DVC and Prefect).

The module shares one project: a test asks :class:`Pipeline` for the stage it checks, and the stages before it
run first, once each, so any single test passes alone (``pytest tests/test_stages.py::test_finetune``)."""
import contextlib
import json
import math
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import make_project, run_stage, use_store
from maskdcpt.integrity import file_sha256, write_sidecar

ORDER = ("prepare", "synthesize", "validate", "pretrain", "finetune@maskdcpt", "finetune@scratch", "evaluate",
         "register")
# a small fine-tuning LR keeps the 3-step fine-tuned weights provably close to where they started (AdamW moves a
# weight by at most about lr per step), so the tests can tell which initialisation a variant really used
FT_LR = 1e-5


class Pipeline:
    """The module's project and the stages run in it so far (in :data:`ORDER`)."""

    def __init__(self, root: Path):
        self.root = root
        self.done: list[str] = []

    def upto(self, stage: str) -> Path:
        """Run every stage up to and including ``stage`` that has not run yet; return the project root."""
        for name in ORDER[:ORDER.index(stage) + 1]:
            if name not in self.done:
                base, _, variant = name.partition("@")
                run_stage(self.root, base, *(["--variant", variant] if variant else []))
                self.done.append(name)
        return self.root


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return Pipeline(make_project(tmp_path_factory.mktemp("stages") / "proj",
                                 {"finetune.lr": FT_LR, "finetune.eta_min": 0.0}, dvc=False))


@contextlib.contextmanager
def restored_after(root: Path, *paths: str):
    """Back up files/folders under ``root`` and put them back afterwards (for tests that break the project)."""
    backup = root.parent / (root.name + "-backup")
    shutil.rmtree(backup, ignore_errors=True)
    for rel in paths:
        src, dst = root / rel, backup / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    try:
        yield
    finally:
        for rel in paths:
            src, dst = backup / rel, root / rel
            if dst.is_dir():
                shutil.rmtree(dst)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        shutil.rmtree(backup, ignore_errors=True)


def adam_bound(steps: int, lr: float) -> float:
    """How far AdamW (betas 0.9/0.999, no weight decay, bias-corrected) can move one weight in ``steps`` steps of
    LR at most ``lr``: |m_hat / sqrt(v_hat)| <= ~1.01 for the first few steps; 5 % slack."""
    return steps * lr * 1.05 + 1e-7


def max_abs_diff(a: dict, b: dict) -> dict[str, float]:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    return {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}


def test_prepare(pipeline):
    project = pipeline.upto("prepare")
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


def test_synthesize(pipeline):
    project = pipeline.upto("synthesize")
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


def test_validate_passes(pipeline):
    project = pipeline.upto("validate")
    report = json.loads((project / "reports/validate/report.json").read_text())
    assert report["success"]
    assert "PASSED" in (project / "reports/validate/report.html").read_text()


def test_pretrain(pipeline):
    from maskdcpt.models import build_backbone

    project = pipeline.upto("pretrain")
    params = yaml.safe_load((project / "params.yaml").read_text())
    backbone = torch.load(project / "models/pretrain/backbone.pt", weights_only=True)["params"]
    whole = torch.load(project / "models/pretrain/model.pt", weights_only=True)["params"]
    assert "intro.weight" in backbone and "ending.weight" in backbone
    # backbone.pt is exactly the backbone part of the pre-trained network, under the plain NAFNet's key names,
    # and loads strictly into the plain network fine-tuning builds
    net = build_backbone(params["model"]["arch"], params["model"]["preset"])
    net.load_state_dict(backbone, strict=True)
    for k, v in backbone.items():
        assert torch.equal(whole[f"backbone.{k}"], v), k
    heads = {k for k in whole if not k.startswith("backbone.")}
    assert any(k.startswith("classifier") for k in heads) and len(heads) > 2, sorted(heads)
    # really trained, for the configured 3 steps only: every weight moved from the seeded initialisation by at
    # most what 3 AdamW steps allow, and the weights did move
    torch.manual_seed(int(params["seed"]))
    init = build_backbone(params["model"]["arch"], params["model"]["preset"]).state_dict()
    moved = max_abs_diff(backbone, init)
    bound = adam_bound(params["pretrain"]["steps"], params["pretrain"]["backbone_lr"])
    assert max(moved.values()) <= bound, {k: v for k, v in moved.items() if v > bound}
    assert max(moved.values()) > 0.5 * params["pretrain"]["backbone_lr"]
    # the checksums fine-tuning verifies are those of the files written
    record = json.loads((project / "models/pretrain/sha256.json").read_text())
    assert record == {n: file_sha256(project / "models/pretrain" / n) for n in ("backbone.pt", "model.pt")}
    metrics = json.loads((project / "metrics/pretrain.json").read_text())
    assert metrics["steps"] == 3 and math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    assert 0.0 <= metrics["val_acc"] <= 1.0


@pytest.mark.parametrize("variant", ["maskdcpt", "scratch"])
def test_finetune(pipeline, variant):
    project = pipeline.upto(f"finetune@{variant}")
    params = yaml.safe_load((project / "params.yaml").read_text())
    ckpt = torch.load(project / f"models/finetune/{variant}/model.pt", weights_only=True)
    assert set(ckpt["params"]) == set(ckpt["params_ema"])
    backbone = torch.load(project / "models/pretrain/backbone.pt", weights_only=True)["params"]
    report = json.loads((project / f"models/finetune/{variant}/init_report.json").read_text())
    assert report["init"] == ("pretrained" if variant == "maskdcpt" else "random")
    metrics = json.loads((project / f"metrics/finetune-{variant}.json").read_text())
    assert metrics["steps"] == 3 and math.isfinite(metrics["train_loss"])
    assert "init_report" not in metrics and "seconds" in metrics   # timings live in the uncached metrics file
    # where the weights started: 3 steps at lr <= FT_LR move no weight by more than the AdamW bound, while the
    # random initialisation is farther than that from the pre-trained backbone (pre-training ran at 3e-4)
    if params["finetune"].get("head_init", "default") == "zeros":
        # the shared recipe zeroes the output head (never trained by pre-training) before fine-tuning starts
        assert report["head_zeroed"] == "ending"
        backbone = {k: (torch.zeros_like(v) if k.startswith("ending.") else v) for k, v in backbone.items()}
    moved = max_abs_diff(ckpt["params"], backbone)
    bound = adam_bound(params["finetune"]["steps"], max(params["finetune"]["lr"], params["finetune"]["eta_min"]))
    assert params["finetune"]["lr"] == FT_LR
    if variant == "maskdcpt":
        # every backbone tensor was loaded (strict: none missing, none unexpected) and training started from it
        assert report["num_tensors"] == len(backbone) and report["source_key"] == "params"
        assert max(moved.values()) <= bound, {k: v for k, v in moved.items() if v > bound}
        assert max(moved.values()) > 0      # and it trained
    else:
        assert "num_tensors" not in report
        assert max(moved.values()) > 10 * bound, max(moved.values())


def test_evaluate(pipeline):
    project = pipeline.upto("evaluate")
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


def _versions(client, name: str) -> int:
    return len(client.search_model_versions(f"name = '{name}'"))


def _finetuned_net(project: Path):
    from maskdcpt.eval.benchmark import load_restorer

    return load_restorer(project / "models/finetune/maskdcpt/model.pt")


def test_register_and_promotion(pipeline):
    from maskdcpt.eval.benchmark import restore_array

    project = pipeline.upto("register")
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["promoted"] and decision["version"] == "1" and decision["reason"] == "no champion yet"
    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = decision["model_name"]
    assert name == "maskdcpt-nafnet-5d"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    # the weights' checksums are recorded as the version tag and in decision.json: those of the logged checkpoint
    recorded = json.loads(client.get_model_version(name, "1").tags["weights_sha256"])
    assert recorded == decision["weights_sha256"]
    assert file_sha256(project / "models/finetune/maskdcpt/model.pt") in recorded.values()
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    net = model.unwrap_python_model().net
    # the champion is the fine-tuned MaskDCPT model (its EMA weights), not some other network of the same shape
    ours = _finetuned_net(project)
    x = np.random.default_rng(0).random((37, 50, 3), dtype=np.float32)
    out, ref = restore_array(net, x), restore_array(ours, x)
    assert out.shape == (37, 50, 3) and np.isfinite(out).all()
    assert np.abs(out - ref).max() < 1e-6
    # a real network, not a pass-through (the output conv starts at zero, `finetune.head_init: zeros`, and this
    # project fine-tunes a few steps at lr 1e-5, so the change is small but far above float noise)
    assert np.abs(out - x).max() > 1e-5
    batch = np.random.default_rng(1).random((2, 40, 52, 3), dtype=np.float32)
    served = model.predict(batch)
    assert served.shape == batch.shape and np.isfinite(served).all()
    assert np.abs(served[1] - restore_array(ours, batch[1])).max() < 1e-5
    # a stage run by hand (no DVC invocation, no flow) owns a parent run of its own, holding its nested stage
    # run, and ends it: one finished parent per stage run here, none left open
    exp = client.get_experiment_by_name("maskdcpt")
    parents = client.search_runs([exp.experiment_id], "tags.`maskdcpt.role` = 'pipeline'")
    assert parents and all(p.info.status == "FINISHED" for p in parents), [p.info.status for p in parents]
    names = []
    for parent in parents:
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert len(children) == 1, [r.info.run_name for r in children]
        names.append(children[0].info.run_name)
    assert sorted(names) == sorted(pipeline.done) == sorted(ORDER)


def test_second_register_gates_on_the_champion(pipeline):
    """A really worse challenger (every output 0.3 brighter) at the default margins is registered, not promoted;
    the champion is re-scored on the same benchmark and keeps its alias."""
    from maskdcpt.eval.benchmark import restore_array
    from pipelines.params import RegisterParams

    project = pipeline.upto("register")
    register = yaml.safe_load((project / "params.yaml").read_text())["register"]
    defaults = RegisterParams()
    assert (register["min_gain_db"], register["max_drop_db"]) == (defaults.min_gain_db, defaults.max_drop_db)
    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = json.loads((project / "reports/register/decision.json").read_text())["model_name"]
    before = _versions(client, name)
    champion_before = str(client.get_model_version_by_alias(name, "champion").version)
    good = json.loads((project / "metrics/benchmark.json").read_text())["maskdcpt"]["mean"]["psnr"]
    with restored_after(project, "models/finetune/maskdcpt", "metrics/benchmark.json", "reports/evaluate"):
        path = project / "models/finetune/maskdcpt/model.pt"
        ckpt = torch.load(path, weights_only=True)
        for key in ("params", "params_ema"):
            ckpt[key]["ending.bias"] = ckpt[key]["ending.bias"] + 0.3
        torch.save(ckpt, path)
        write_sidecar(path.parent, ["model.pt"])  # a worse fine-tune, recorded as the stage would
        run_stage(project, "evaluate")
        worse = json.loads((project / "metrics/benchmark.json").read_text())["maskdcpt"]["mean"]["psnr"]
        assert worse < good - 3.0, (worse, good)
        run_stage(project, "register")
        decision = json.loads((project / "reports/register/decision.json").read_text())
        assert decision["version"] == str(before + 1) and not decision["promoted"]
        assert "not above the margin" in decision["reason"]
        assert decision["champion_version_before"] == champion_before
        assert decision["challenger_psnr"]["mean"] == pytest.approx(worse, abs=1e-4)
        assert decision["champion_psnr_before"]["mean"] == pytest.approx(good, abs=1e-3)   # re-scored, same pairs
        assert str(client.get_model_version_by_alias(name, "champion").version) == champion_before
        assert str(client.get_model_version_by_alias(name, "challenger").version) == decision["version"]
        assert client.get_model_version(name, decision["version"]).tags["decision"] == "rejected"
        # the rejected version holds the broken weights, the champion still the good ones
        x = np.random.default_rng(2).random((32, 40, 3), dtype=np.float32)
        rejected = mlflow.pyfunc.load_model(f"models:/{name}/{decision['version']}").unwrap_python_model().net
        champion = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model().net
        assert np.abs(restore_array(rejected, x) - restore_array(_finetuned_net(project), x)).max() < 1e-6
    assert np.abs(restore_array(champion, x) - restore_array(_finetuned_net(project), x)).max() < 1e-6


def test_register_rejects_results_failing_their_contract(pipeline):
    """Per-image results that break the results contract (a degradation missing, a NaN PSNR) block promotion even
    when the PSNR gate would pass."""
    project = pipeline.upto("register")
    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = json.loads((project / "reports/register/decision.json").read_text())["model_name"]
    before = _versions(client, name)
    champion_before = str(client.get_model_version_by_alias(name, "champion").version)
    with restored_after(project, "params.yaml", "reports/evaluate/per_image.csv"):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["register"]["min_gain_db"] = -100.0
        params["register"]["max_drop_db"] = 100.0
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        per_image = pd.read_csv(project / "reports/evaluate/per_image.csv")
        ours = per_image["variant"] == "maskdcpt"
        per_image = per_image[~(ours & (per_image["label"] == "haze"))].reset_index(drop=True)
        per_image.loc[per_image.index[per_image["variant"] == "maskdcpt"][0], "psnr"] = float("nan")
        per_image.to_csv(project / "reports/evaluate/per_image.csv", index=False)
        run_stage(project, "register")
        decision = json.loads((project / "reports/register/decision.json").read_text())
        contract = json.loads((project / "reports/register/results_contract.json").read_text())
    assert decision["version"] == str(before + 1) and not decision["promoted"]
    assert decision["reason"].startswith("benchmark results failed their data contract")
    assert "haze" in decision["reason"]
    assert not contract["success"]
    failed = {r["expectation"] for suite in contract["suites"] for r in suite["results"] if not r["success"]}
    assert {"expect_column_values_to_not_be_null", "expect_column_distinct_values_to_contain_set"} <= failed, failed
    assert str(client.get_model_version_by_alias(name, "champion").version) == champion_before
    assert client.get_model_version(name, decision["version"]).tags["decision"] == "rejected"


def test_third_register_promotes_when_the_gate_passes(pipeline):
    """With a champion in place, a challenger that clears the gate (margin -100 dB: any score) is promoted, and
    the champion it replaced was re-scored on the same benchmark."""
    project = pipeline.upto("register")
    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = json.loads((project / "reports/register/decision.json").read_text())["model_name"]
    before = _versions(client, name)
    champion_before = str(client.get_model_version_by_alias(name, "champion").version)
    with restored_after(project, "params.yaml"):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["register"]["min_gain_db"] = -100.0
        params["register"]["max_drop_db"] = 100.0
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_stage(project, "register")
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["version"] == str(before + 1) and decision["promoted"]
    assert decision["champion_version_before"] == champion_before
    assert decision["champion_psnr_before"]["mean"] == pytest.approx(decision["challenger_psnr"]["mean"], abs=1e-3)
    assert str(client.get_model_version_by_alias(name, "champion").version) == decision["version"]
    assert json.loads((project / "reports/register/results_contract.json").read_text())["success"]


def test_register_deletes_the_version_a_killed_register_left_half_registered(pipeline):
    """A register stage killed after creating its version leaves it in state ``registering`` with no alias; the
    next register deletes it, and every version it keeps is complete (state ``registered``, checksums, decision)."""
    from mlflow.exceptions import MlflowException

    from pipelines.registry import STATE_TAG, register_version

    project = pipeline.upto("register")
    use_store(project / 'mlflow.db')
    client = mlflow.MlflowClient()
    name = json.loads((project / "reports/register/decision.json").read_text())["model_name"]
    champion = client.get_model_version_by_alias(name, "champion")
    abandoned = register_version(client, champion.source, name)   # the state a kill right after creation leaves
    assert client.get_model_version(name, abandoned).tags[STATE_TAG] == "registering"
    run_stage(project, "register")
    decision = json.loads((project / "reports/register/decision.json").read_text())
    assert decision["removed_abandoned_versions"] == [abandoned]
    with pytest.raises(MlflowException):
        client.get_model_version(name, abandoned)
    kept = client.search_model_versions(f"name = '{name}'")
    assert str(decision["version"]) in {str(v.version) for v in kept}
    for v in kept:
        assert v.tags.get(STATE_TAG) == "registered" and "weights_sha256" in v.tags and "decision" in v.tags, v


def test_validate_failure_stops_with_readable_report(pipeline):
    project = pipeline.upto("validate")
    with restored_after(project, "data/pairs/manifest.parquet", "reports/validate"):
        manifest = pd.read_parquet(project / "data/pairs/manifest.parquet")
        manifest.loc[0, "degradation"] = "snow"
        manifest.to_parquet(project / "data/pairs/manifest.parquet", index=False)
        proc = run_stage(project, "validate", check=False)
        assert proc.returncode == 2
        assert "failed its data contract" in proc.stderr
        report = (project / "reports/validate/report.html").read_text()
        assert "FAILED" in report and "snow" in report
