"""The typed params schema: strict types, unknown keys named with the closest valid key, cross-field rules,
composing presets, and the schema as the one place defaults live."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.params import BenchmarkEntry, Params, ParamsError, flatten, load_params

REPO = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path, text: str | None = None) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "presets", tmp_path / "presets")
    if text is not None:
        (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def test_schema_defaults_are_params_yaml():
    """params.yaml spells out the schema's defaults: no value can differ between the code and the file."""
    raw = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    defaults = flatten(Params().model_dump(by_alias=True, exclude_none=True))
    for key, value in raw.items():
        if key == "synthesize.benchmark":  # entries in the file omit their empty params / unseen=False
            value = [BenchmarkEntry(**e).model_dump() for e in value]
        if key.startswith("finetune.variants."):
            continue
        assert defaults.get(key, "<absent>") == value, f"{key}: schema {defaults.get(key)!r} != params.yaml {value!r}"
    assert set(raw) - {"finetune.variants.maskdcpt.init", "finetune.variants.maskdcpt.init_dep",
                       "finetune.variants.scratch.init", "finetune.variants.scratch.init_dep"} <= set(defaults)


@pytest.mark.parametrize("override, message", [
    ({"pretrain.stepz": 10}, "unknown parameter 'pretrain.stepz' (did you mean 'pretrain.steps'?)"),
    ({"deepspeed.bf16": "false"}, "deepspeed.bf16: Input should be a valid boolean (got 'false')"),
    ({"pretrain.steps": "abc"}, "pretrain.steps: Input should be a valid integer (got 'abc')"),
    ({"register.min_gain_db": "x"}, "register.min_gain_db: Input should be a valid number"),
    ({"pretrain.steps": 0}, "pretrain.steps: Input should be greater than 0"),
    ({"model.arch": "unet"}, "model.arch: Input should be"),
    ({"evaluate.variants": ["maskdcpt", "nosuch"]}, "evaluate.variants ['nosuch'] are not finetune.variants"),
    ({"synthesize.crop": 40}, "synthesize.crop 40 is not a multiple of 16"),
    ({"validate.psnr_lq_gt_bands": {"snow": [1, 80]}}, "keys must be task classes"),
    ({"register.model_name": "maskdcpt-nafnet-12d"}, "must end with the task '-5d'"),
])
def test_bad_values_are_errors_that_say_what(override, message):
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", override)
    assert message in str(err.value)


def test_misspelt_key_in_the_file_is_an_error(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("  grid_max_images:", "  grid_max_image:", 1)
    with pytest.raises(ParamsError, match=r"unknown parameter 'evaluate.grid_max_image' \(did you mean "
                                          r"'evaluate.grid_max_images'\?\)"):
        load_params(_project(tmp_path, text))


def test_benchmark_entries_must_be_task_classes_unless_unseen():
    entries = [{"degradation": "snow", "label": "snow"}]
    with pytest.raises(ParamsError, match=r"outside the task's classes .*\['snow'\]"):
        load_params(REPO / "params.yaml", {"synthesize.benchmark": entries})
    ok = load_params(REPO / "params.yaml", {"synthesize.benchmark": [{**entries[0], "unseen": True}]})
    assert ok["synthesize"]["benchmark"][0]["unseen"] is True


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    text, n = re.subn(r"(?m)^  lr: \S+", "  lr: 1e-4", (REPO / "params.yaml").read_text(), count=1)
    assert n == 1
    assert load_params(_project(tmp_path, text))["finetune"]["lr"] == pytest.approx(1e-4)


def test_task_group_changes_classes_benchmark_bands_and_model_name_together():
    five = load_params(REPO / "params.yaml")
    twelve = load_params(REPO / "params.yaml", {"preset": "paper-12d"})
    assert five["register"]["model_name"] == "maskdcpt-nafnet-5d"
    assert twelve["register"]["model_name"] == "maskdcpt-nafnet-12d"
    assert len(twelve["task"]["classes"]) == 13 and "gaussian_noise" not in twelve["task"]["classes"]
    classes = set(twelve["task"]["classes"])
    assert {e["degradation"] for e in twelve["synthesize"]["benchmark"]} <= classes
    assert set(twelve["validate"]["psnr_lq_gt_bands"]) <= classes
    # paper-12d builds on paper-5d (model, pre-training recipe) and replaces the 5D training sets whole
    assert twelve["model"]["preset"] == "paper-5d" and twelve["pretrain"]["steps"] == 100000
    assert "rain200l" not in twelve["training_sets"]["sets"] and "sidd" in twelve["training_sets"]["sets"]
    assert "_replace" not in twelve["training_sets"]["sets"]
    assert twelve["finetune"]["steps"] == 500000


def test_preset_loop_is_reported(tmp_path):
    path = _project(tmp_path)
    (tmp_path / "presets" / "a.yaml").write_text("base: [b]\n")
    (tmp_path / "presets" / "b.yaml").write_text("base: a\n")
    with pytest.raises(ParamsError, match="loop: a -> b -> a"):
        load_params(path, {"preset": "a"})


@pytest.mark.slow
def test_stage_with_a_misspelt_param_stops_before_running(tmp_path):
    """`dvc exp run -S pretrain.stepz=1` writes the key into params.yaml; the first stage then exits 2 naming it,
    before Prefect or MLflow start."""
    project = tmp_path / "p"
    shutil.copytree(REPO / "pipelines", project / "pipelines")
    shutil.copytree(REPO / "presets", project / "presets")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["pretrain"]["stepz"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipelines.stage", "prepare"], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown parameter 'pretrain.stepz' (did you mean 'pretrain.steps'?)" in proc.stderr
    assert not (project / "mlflow.db").exists() and not (project / "data" / "prepared").exists()
