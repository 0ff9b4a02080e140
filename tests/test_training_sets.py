"""The paper's training sets as real pairs (a preset's ``training_sets``) through the pipeline's training stages."""
from __future__ import annotations

import json

import pandas as pd

from conftest import make_project, run_stage


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
