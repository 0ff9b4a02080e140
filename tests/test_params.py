"""The typed params schema: strict types, unknown keys named with the closest valid key, cross-field rules,
composing presets, and the schema as the one place defaults live."""
from __future__ import annotations

import json
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
    ({"model.arch": "swinir", "synthesize.crop": 44}, "synthesize.crop 44 is not a multiple of 8, the swinir"),
    ({"model.preset": "huge"}, "model.preset: "),
    ({"validate.psnr_lq_gt_bands": {"snow": [1, 80]}}, "keys must be task classes"),
    ({"register.model_name": "maskdcpt-nafnet-12d"}, "must end with the task '-5d'"),
    ({"synthesize.tone.contrast": [0.9, 0.5]}, "synthesize.tone.contrast must be [low, high] with low <= high"),
    ({"synthesize.tone.prob": 1.5}, "synthesize.tone.prob: Input should be less than or equal to 1"),
    ({"synthesize.tone.contrast": [0.5]}, "synthesize.tone.contrast: List should have at least 2 items"),
    ({"synthesize.tone.gamma": 800}, "synthesize.tone.gamma: Input should be less than or equal to 5"),
])
def test_bad_values_are_errors_that_say_what(override, message):
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", override)
    assert message in str(err.value)


@pytest.mark.parametrize("arch", ["restormer", "promptir", "swinir"])
def test_crop_check_uses_the_backbones_own_multiple(arch):
    """40 px is 5 x 8: fine for the 8-multiple backbones, refused for NAFNet's 16 (above)."""
    assert load_params(REPO / "params.yaml", {"model.arch": arch, "synthesize.crop": 40})["synthesize"]["crop"] == 40


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


def test_trainers_read_the_schema_not_their_own_defaults(tmp_path):
    """A script calling the trainers with a partial mapping gets the schema's (= params.yaml's) defaults, and a
    misspelt or mistyped key fails before any training, naming the key."""
    import pandas as pd
    import pydantic
    import torch

    from maskdcpt.data.pairs import PairSet
    from maskdcpt.train.distributed import deepspeed_config
    from maskdcpt.train.finetune import run_finetune
    from maskdcpt.train.pretrain import build_pretrain_model

    defaults = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    # finetune.head_init (zeros) and model.recon_blocks (1) once had other defaults in the trainers' code
    assert defaults["finetune"]["head_init"] == "zeros" and defaults["model"]["recon_blocks"] == 1
    pairs = PairSet(lq=torch.rand(4, 3, 32, 32), gt=torch.rand(4, 3, 32, 32), labels=torch.zeros(4, dtype=torch.long),
                    rows=pd.DataFrame({"i": range(4)}))
    # in a child process: the engine initialises torch.distributed (a listening port) for the whole process
    script = ("import json, sys, torch, pandas as pd; from pathlib import Path\n"
              "from maskdcpt.data.pairs import PairSet; from maskdcpt.train.finetune import run_finetune\n"
              "from maskdcpt.train.distributed import shutdown_distributed\n"
              "pairs = PairSet(lq=torch.rand(4, 3, 32, 32), gt=torch.rand(4, 3, 32, 32), "
              "labels=torch.zeros(4, dtype=torch.long), rows=pd.DataFrame({'i': range(4)}))\n"
              "s = run_finetune(pairs, model_cfg={'preset': 'tiny'}, cfg={'steps': 1, 'batch_size': 2}, "
              "ds_params={}, seed=0, out_dir=Path(sys.argv[1]), progress=False)\n"
              "shutdown_distributed(); print(json.dumps(s['init_report']))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ft")], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["head_zeroed"] == "ending"  # head_init: zeros, from the schema
    model = build_pretrain_model({"preset": "tiny"}, num_classes=3)
    assert len(model.recon_head.blocks.blocks) == defaults["model"]["recon_blocks"]
    with pytest.raises(pydantic.ValidationError, match="stepz"):
        run_finetune(pairs, model_cfg={"preset": "tiny"}, cfg={"stepz": 1}, ds_params={}, seed=0,
                     out_dir=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    assert deepspeed_config({}, 2, 0.0)["zero_optimization"]["stage"] == defaults["deepspeed"]["zero_stage"]
    for bad in ({"bf16": "false"}, {"zero_stage": 4}, {"channels_lst": True}):
        with pytest.raises(pydantic.ValidationError):
            deepspeed_config(bad, 2, 0.0)


def test_params_file_that_is_not_valid_yaml_is_a_params_error(tmp_path):
    """A YAML syntax error is a ParamsError naming the file and the line, not a parser traceback."""
    import pytest

    from pipelines.params import ParamsError, load_params

    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 1\npretrain: {steps: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params\.yaml is not valid YAML \(line \d+, column \d+\)"):
        load_params(bad)
