from pathlib import Path

import pandas as pd
import pytest

from pipelines.params import ParamsError, flatten, load_params, set_dotted
from pipelines.gx_suites import render_html, validate_manifest
from pipelines.registry import decide
from maskdcpt.atomic import atomic_dir
from pipelines.stages.report import markdown_table

CLASSES = ["rain", "gaussian_noise"]


def _manifest(**overrides):
    rows = []
    for i, (split, deg) in enumerate([("train", "rain"), ("train", "gaussian_noise"), ("val", "rain"),
                                      ("val", "gaussian_noise"), ("benchmark", "rain"),
                                      ("benchmark", "gaussian_noise")]):
        rows.append({"pair_id": f"p{i}", "split": split, "image_id": "img-b" if split == "benchmark" else "img-a",
                     "image_sha256": "bbb" if split == "benchmark" else "aaa", "degradation": deg,
                     "class_index": CLASSES.index(deg), "params": "{}", "seed": i, "shard": "s.tar",
                     "key": f"k{i}", "height": 64, "width": 64, "lq_differs": True})
    frame = pd.DataFrame(rows)
    for col, (idx, value) in overrides.items():
        frame.loc[idx, col] = value
    return frame


PHOTOS = pd.DataFrame({"image_id": ["img-a", "img-b"], "split": ["train", "benchmark"], "sha256": ["aaa", "bbb"]})


def test_manifest_contract_passes_on_good_manifest():
    report = validate_manifest(_manifest(), PHOTOS, pd.DataFrame(), CLASSES, crop=64, max_rejection_rate=0.5)
    assert report["success"], report
    assert "PASSED" in render_html(report, "t")


@pytest.mark.parametrize("column,row,value,failing", [
    ("degradation", 0, "snow", "expect_column_values_to_be_in_set"),
    ("image_sha256", 1, "bbb", "expect_column_values_to_not_be_in_set"),
    ("height", 2, 32, "expect_column_values_to_be_between"),
    ("lq_differs", 3, False, "expect_column_values_to_be_in_set"),
    ("pair_id", 1, "p0", "expect_column_values_to_be_unique"),
])
def test_manifest_contract_catches_violations(column, row, value, failing):
    frame = _manifest(**{column: (row, value)})
    report = validate_manifest(frame, PHOTOS, pd.DataFrame(), CLASSES, crop=64, max_rejection_rate=0.5)
    assert not report["success"]
    failed = [r["expectation"] for s in report["suites"] for r in s["results"] if not r["success"]]
    assert failing in failed
    assert "FAILED" in render_html(report, "t")


def test_manifest_contract_missing_class_and_rejection_rate():
    frame = _manifest()
    frame = frame[~((frame["split"] == "train") & (frame["degradation"] == "rain"))]
    frame = frame[~((frame["split"] == "val") & (frame["degradation"] == "rain"))]
    report = validate_manifest(frame, PHOTOS, pd.DataFrame({"reason": ["x"] * 5}), CLASSES, 64, 0.5)
    failed = {(s["suite"], r["expectation"]) for s in report["suites"] for r in s["results"] if not r["success"]}
    assert ("training", "expect_column_distinct_values_to_contain_set") in failed
    assert ("photos", "expect_column_values_to_be_between") in failed


def test_promotion_rule():
    champ = {"rain": 30.0, "haze": 25.0, "mean": 27.5}
    assert decide({"rain": 31.0, "haze": 25.0, "mean": 28.0}, None, 0.0, 1.0)[0]
    ok, reason = decide({"rain": 31.0, "haze": 25.0, "mean": 28.0}, champ, 0.0, 1.0)
    assert ok and "beats" in reason
    ok, reason = decide({"rain": 29.0, "haze": 25.0, "mean": 27.0}, champ, 0.0, 1.0)
    assert not ok and "not above the margin" in reason
    ok, reason = decide({"rain": 34.0, "haze": 23.0, "mean": 28.5}, champ, 0.0, 1.0)
    assert not ok and "haze drops" in reason
    assert not decide({"rain": 30.1, "haze": 25.0, "mean": 27.55}, champ, 0.1, 1.0)[0]


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_params_overrides_and_flatten():
    params = load_params(Path(__file__).parents[1] / "params.yaml", {"pretrain.steps": 3})
    assert params["pretrain"]["steps"] == 3
    with pytest.raises(ParamsError, match="unknown parameter 'nosuch'"):
        load_params(Path(__file__).parents[1] / "params.yaml", {"nosuch.group.x": 1})
    with pytest.raises(ValueError, match="is a value, not a group"):
        set_dotted(params, "seed.x", 1)
    assert flatten({"a": {"b": 1}, "c": [1, 2]}) == {"a.b": 1, "c": [1, 2]}


def test_markdown_table_shape():
    res = {v: {"rain": {"psnr": 30.0, "ssim": 0.9}, "mean": {"psnr": 30.0, "ssim": 0.9}}
           for v in ("lq", "scratch", "maskdcpt")}
    res["gain_db"] = {"rain": 0.0, "mean": 0.0}
    res["convention"] = {"channel": "rgb"}
    text = markdown_table(res, ["rain"], ["lq", "scratch", "maskdcpt"])
    assert text.splitlines()[0] == "| variant | rain | mean |"
    assert "| maskdcpt | 30.00 / 0.9000 | 30.00 / 0.9000 |" in text


def test_params_preset_overlay(tmp_path):
    import shutil

    repo = Path(__file__).parents[1]
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(repo / "presets", tmp_path / "presets")
    base = load_params(tmp_path / "params.yaml")
    assert base["model"]["preset"] == "cpu-default"
    paper = load_params(tmp_path / "params.yaml", {})
    text = (tmp_path / "params.yaml").read_text().replace("preset: none", "preset: paper-5d", 1)
    (tmp_path / "params.yaml").write_text(text)
    paper = load_params(tmp_path / "params.yaml")
    assert paper["model"]["preset"] == "paper-5d" and paper["pretrain"]["steps"] == 100000
    assert paper["training_sets"]["sets"]["rain200l"]["repeat"] == 300
    assert paper["finetune"]["variants"] == base["finetune"]["variants"]  # untouched keys are kept
    (tmp_path / "params.yaml").write_text(text.replace("preset: paper-5d", "preset: nosuch", 1))
    with pytest.raises(ParamsError, match="paper-5d"):
        load_params(tmp_path / "params.yaml")
