"""The pair-manifest contract (pipelines/gx_suites.py) fed real manifests broken one way at a time, and `dvc repro`
stopping at a failed validate stage.

One tiny project per module: `dvc repro` with an impossible PSNR band for haze runs prepare and synthesize, fails at
validate and runs nothing after it; its real synthesized manifest then feeds the contract checks directly.
"""
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import make_project, project_env
from pipelines.gx_suites import validate_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def failed_repro(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("contracts") / "proj")
    params = yaml.safe_load((project / "params.yaml").read_text())
    good_bands = dict(params["validate"]["psnr_lq_gt_bands"])
    params["validate"]["psnr_lq_gt_bands"]["haze"] = [90.0, 100.0]   # no real hazy crop is that close to its GT
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**project_env(project), "MASKDCPT_PREFECT": "0"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900)
    return project, proc, {**params, "validate": {**params["validate"], "psnr_lq_gt_bands": good_bands}}


def test_dvc_repro_stops_after_a_failed_validate(failed_repro):
    project, proc, _ = failed_repro
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "failed its data contract" in out and "psnr-band-haze" in out, out[-3000:]
    # the upstream stages ran and were recorded; validate and everything downstream did not complete
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"prepare", "synthesize"} <= set(lock), sorted(lock)
    assert not {"validate", "pretrain", "finetune@maskdcpt", "finetune@scratch", "evaluate", "register"} & set(lock)
    for path in ("models/pretrain", "models/finetune", "metrics/benchmark.json", "reports/register"):
        assert not (project / path).exists(), path
    report = json.loads((project / "reports/validate/report.json").read_text())
    failed = [s["suite"] for s in report["suites"] if not s["success"]]
    assert failed == ["psnr-band-haze"], failed
    # DVC still sees validate and its downstream stages as to be run
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project,
                            env=project_env(project), capture_output=True, text=True, timeout=300)
    pending = set(json.loads(status.stdout))
    assert {"validate", "pretrain", "evaluate", "register"} <= pending, pending


def _check(project, params, pairs: pd.DataFrame, count_tolerance: float | None = None) -> set[tuple[str, str]]:
    """Run the contract as the validate stage does; return the failed ``(suite, expectation)`` pairs."""
    from pipelines.stages.common import task_classes

    photos = pd.read_parquet(project / "data/prepared/manifest.parquet")
    syn, v = params["synthesize"], params["validate"]
    report = validate_manifest(pairs, photos, pd.DataFrame(), task_classes(params),
                               int(syn["crop"]), float(v["max_rejection_rate"]), psnr_bands=v["psnr_lq_gt_bands"],
                               pairs_per_class={"train": int(syn["train_pairs_per_class"]),
                                                "val": int(syn["val_pairs_per_class"])},
                               count_tolerance=v["count_tolerance"] if count_tolerance is None else count_tolerance)
    failed = {(s["suite"], r["expectation"]) for s in report["suites"] for r in s["results"] if not r["success"]}
    assert report["success"] == (not failed)
    return failed


@pytest.fixture
def manifest(failed_repro):
    project, _, params = failed_repro
    pairs = pd.read_parquet(project / "data/pairs/manifest.parquet")
    assert _check(project, params, pairs) == set()   # the unbroken manifest passes: each failure below is caused
    return project, params, pairs


def _train_row(pairs: pd.DataFrame, degradation: str, n: int = 0) -> int:
    return pairs.index[(pairs["split"] == "train") & (pairs["degradation"] == degradation)][n]


def test_psnr_band_catches_destroyed_and_near_identity_pairs(manifest):
    project, params, pairs = manifest
    low, high = params["validate"]["psnr_lq_gt_bands"]["rain"]
    broken = pairs.copy()
    broken.loc[_train_row(pairs, "rain"), "psnr_lq_gt"] = low - 1.0       # a destroyed LQ
    assert _check(project, params, broken) == {("psnr-band-rain", "expect_column_values_to_be_between")}
    broken = pairs.copy()
    broken.loc[_train_row(pairs, "motion_blur", 1), "psnr_lq_gt"] = 99.0   # a near-identity "degradation"
    assert _check(project, params, broken) == {("psnr-band-motion_blur", "expect_column_values_to_be_between")}
    # the band is inclusive: its edges pass
    edge = pairs.copy()
    edge.loc[_train_row(pairs, "rain"), "psnr_lq_gt"] = float(high)
    assert _check(project, params, edge) == set()


def test_parameter_range_catches_out_of_range_and_unreadable_params(manifest):
    project, params, pairs = manifest
    row = _train_row(pairs, "gaussian_noise")
    recorded = json.loads(pairs.loc[row, "params"])
    assert "sigma" in recorded
    broken = pairs.copy()
    broken.loc[row, "params"] = json.dumps({**recorded, "sigma": 500})
    expected = {("training", "expect_column_values_to_be_in_set")}
    assert _check(project, params, broken) == expected
    broken = pairs.copy()
    broken.loc[_train_row(pairs, "haze"), "params"] = "{not json"
    assert _check(project, params, broken) == expected


def test_tone_contract_catches_a_toned_held_out_crop_and_a_bad_tone(manifest):
    project, params, pairs = manifest
    toned = pairs.index[(pairs["split"] == "train") & (pairs["gt_tone"] != "{}")]
    assert len(toned) and params["synthesize"]["tone"]["prob"] > 0   # the default run tones training crops...
    assert (pairs.loc[pairs["split"] != "train", "gt_tone"] == "{}").all()   # ...and no other crop
    tone = pairs.loc[toned[0], "gt_tone"]
    expected = {("pairs", "expect_column_values_to_be_in_set")}
    for split in ("val", "benchmark"):   # a held-out crop must keep its photo's tone
        broken = pairs.copy()
        broken.loc[pairs.index[pairs["split"] == split][0], "gt_tone"] = tone
        assert _check(project, params, broken) == expected, split
    good = json.loads(tone)
    for bad in ({**good, "gamma": 0.0}, {**good, "contrast": -0.5}, {"gamma": 1.0}, {**good, "hue": 0.1},
                {**good, "shift": float("nan")}, {"gamma": True, "contrast": True, "shift": False}, "{not json",
                "[1, 2]"):
        broken = pairs.copy()
        broken.loc[toned[0], "gt_tone"] = bad if isinstance(bad, str) else json.dumps(bad)
        assert _check(project, params, broken) == expected, bad


def test_unique_seed_per_split(manifest):
    project, params, pairs = manifest
    train = pairs.index[pairs["split"] == "train"]
    broken = pairs.copy()
    broken.loc[train[1], "seed"] = pairs.loc[train[0], "seed"]   # two training pairs drawn from one seed
    assert _check(project, params, broken) == {("training", "expect_compound_columns_to_be_unique")}
    # the same seed in another split is allowed (seeds are unique per split)
    val = pairs.index[pairs["split"] == "val"]
    across = pairs.copy()
    across.loc[val[0], "seed"] = pairs.loc[train[0], "seed"]
    assert _check(project, params, across) == set()


def test_class_count_catches_a_missing_pair(manifest):
    project, params, pairs = manifest
    per_class = params["synthesize"]["train_pairs_per_class"]
    assert per_class == 6 and params["validate"]["count_tolerance"] == 0.0
    broken = pairs.drop(index=_train_row(pairs, "low_light")).reset_index(drop=True)   # 5 of 6
    assert _check(project, params, broken) == {("class-counts", "expect_column_values_to_be_between")}
    extra = pd.concat([pairs, pairs.loc[[_train_row(pairs, "rain")]].assign(
        pair_id="extra-pair", seed=-12345)], ignore_index=True)                        # 7 of 6
    assert _check(project, params, extra) == {("class-counts", "expect_column_values_to_be_between")}
    # within a declared tolerance (5/6 = 0.83 >= 1 - 0.2) the same manifest passes
    assert _check(project, params, broken, count_tolerance=0.2) == set()
