"""The paper's training sets as real pairs (a preset's ``training_sets``) through the pipeline's training stages."""
from __future__ import annotations

import json

import pandas as pd

from conftest import make_project, run_stage


def test_real_training_sets_feed_the_training_stages(tmp_path):
    """A preset's `training_sets` (the paper's training data laid out as the real sets) replace the synthetic
    training pairs: synthesize writes them with their repeat ratios, validate passes, pre-training trains on them."""
    from test_test_sets import make_gopro, make_gt_only, make_lol, make_rain100l, make_sots

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


def test_a_presets_set_groups_are_validated_by_the_schema(tmp_path, capsys):
    """`training_pairs` and `maskdcpt paper-eval` read a preset's raw `training_sets` / `test_sets` group through
    the same typed groups as params.yaml: a misspelt key or a wrong type is an error naming it, before any file
    is read or any model loaded, and the defaults are the schema's."""
    import pytest
    import yaml

    from maskdcpt.cli import main
    from maskdcpt.data.testsets import training_pairs
    from maskdcpt.data.testsets.params import TestSetsParams, TrainingSetsParams
    from pipelines.params import load_params

    rain = {"layout": "rain100l", "path": "Rain200L", "class": "rain"}
    base = {"seed": 1, "task": {"name": "5d", "classes": []}}
    for group, needle in ((({"root": str(tmp_path), "mdoe": "whole", "sets": {"r": rain}}), "training_sets.mdoe"),
                          ({"root": str(tmp_path), "sets": {"r": {**rain, "clas": "rain"}}}, "training_sets.sets.r"),
                          ({"root": str(tmp_path), "sets": {"r": {**rain, "repeat": "3"}}}, "training_sets.sets.r.repeat"),
                          ({"root": str(tmp_path), "sets": {"r": {**rain, "sigmas": []}}}, "training_sets.sets.r.sigmas")):
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            training_pairs({**base, "training_sets": group}, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()
    with pytest.raises(ValueError, match="needs the params' \\['seed'\\]"):
        training_pairs({"task": base["task"], "training_sets": {"sets": {"r": rain}}}, tmp_path / "shards")

    preset = tmp_path / "typo.yaml"
    preset.write_text(yaml.safe_dump({"test_sets": {"rot": "/data/test_sets", "sets": {"rain100l": {}}}}))
    assert main(["paper-eval", "--preset", str(preset), "--model", str(tmp_path / "absent.pt")]) == 1
    err = capsys.readouterr().err
    assert "test_sets.rot" in err and "absent.pt" not in err       # the preset is checked before the model

    # names and files are checked before the model is loaded: unknown sets and tables, a group that is not a
    # mapping, YAML that does not parse, an empty --only
    for body, needle in (({"test_sets": {"sets": {"bogus": {}}}}, "test_sets.sets: unknown test sets ['bogus']"),
                         ({"test_sets": {"tables": ["table9"], "sets": {}}}, "test_sets.tables: unknown tables"),
                         ({"test_sets": ["rain100l"]}, "test_sets must be a mapping, got list")):
        preset.write_text(yaml.safe_dump(body))
        assert main(["paper-eval", "--preset", str(preset), "--model", str(tmp_path / "absent.pt")]) in (1, 2)
        err = capsys.readouterr().err
        assert needle in err and "absent.pt" not in err, err
    preset.write_text("test_sets: {root: [unclosed\n")
    assert main(["paper-eval", "--preset", str(preset), "--model", str(tmp_path / "absent.pt")]) == 1
    err = capsys.readouterr().err
    assert "is not valid YAML (line" in err and "Traceback" not in err, err
    assert main(["paper-eval", "--model", str(tmp_path / "absent.pt"), "--only", ","]) == 2
    assert "--only expects set names" in capsys.readouterr().err

    # one set of defaults: the pipeline's validated params carry exactly the groups' defaults
    params = load_params(overrides={"training_sets": {"sets": {"r": rain}}, "test_sets": {}})
    assert {k: v for k, v in params["training_sets"].items() if k != "sets"} == {
        k: v for k, v in TrainingSetsParams().model_dump().items() if k != "sets"}
    assert params["training_sets"]["sets"]["r"]["sigmas"] == [15, 25, 50]
    assert params["test_sets"] == TestSetsParams().model_dump()
