"""``maskdcpt study``'s configuration (:mod:`pipelines.study`): the variants, the resolved options, the study key,
each run's params overlay and where a finished run is recorded."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pipelines  # noqa: F401  (offline environment defaults before prefect/mlflow import)


log = logging.getLogger("maskdcpt.study")


VARIANTS = ("maskdcpt", "scratch", "scratch_matched")
#: the fine-tune variant definitions the runs use (``finetune.variants`` of the overlay)
VARIANT_DEFS = {
    "maskdcpt": {"init": "pretrained", "init_dep": "models/pretrain"},
    "scratch": {"init": "random", "init_dep": "maskdcpt/models"},
    "scratch_matched": {"init": "random", "init_dep": "maskdcpt/models", "compute_matched": True},
}
COMPARISONS = (("maskdcpt", "scratch"), ("maskdcpt", "scratch_matched"))
OUT = Path("reports/study")
WORK = Path(".cache/study")
RUN_FLOW = "maskdcpt-study-run"
ENTRYPOINT = "pipelines/study_runs.py:study_run"
#: params groups a study may not override: the runs share the project's data/pairs and choose the seed themselves
FIXED_GROUPS = ("seed", "preset", "task", "prepare", "synthesize", "validate")
#: params groups a run's result depends on (with the pairs): a change of any of them makes a new study key
KEY_GROUPS = ("task", "synthesize", "model", "deepspeed", "pretrain", "finetune", "evaluate", "training_sets")

class StudyError(RuntimeError):
    """The study cannot run as asked (missing data, bad options, failed runs); the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# configuration


def study_config(root: Path, *, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
                 seed_base: int | None = None, pool: str | None = None, deployment: str | None = None,
                 timeout_s: float | None = None, **study: Any) -> dict[str, Any]:
    """The resolved, JSON-able study configuration.

    ``study`` holds fields of the params group ``study`` (:class:`pipelines.params.StudyParams`: ``seeds``,
    ``variants``, ``level``, ``n_boot``, ``bootstrap_seed``, ``parallel``); a ``None`` keeps params.yaml's value,
    and the schema validates the result like any params override. ``seeds`` becomes the list ``seed_base + k``
    (``seed_base`` defaults to params ``seed``). ``out`` defaults to ``reports/study``, ``deployment`` to
    ``study-run``; ``pool`` and ``timeout_s`` select the work-pool fan-out.

    Raises:
        StudyError: an unknown option, an invalid value (the schema's message), an override of a fixed group
            (:data:`FIXED_GROUPS`), no synthesized pairs yet.
    """
    from pipelines.params import ParamsError, StudyParams, load_params

    overrides = dict(overrides or {})
    fixed = sorted(k for k in overrides if k.split(".")[0] in FIXED_GROUPS)
    if fixed:
        raise StudyError(f"a study cannot override {fixed}: the runs share the project's data/pairs and take their "
                         "seeds from --seeds/--seed-base; change params.yaml and run `dvc repro validate` instead")
    unknown = sorted(set(study) - set(StudyParams.model_fields))
    if unknown:
        raise StudyError(f"unknown study options {unknown}; choose from {sorted(StudyParams.model_fields)}")
    if not (root / "params.yaml").is_file():
        raise StudyError(f"no params.yaml in {root}")
    given = {f"study.{k}": v for k, v in study.items() if v is not None}
    try:
        params = load_params(root / "params.yaml", {**overrides, **given})
    except ParamsError as exc:
        raise StudyError(str(exc)) from None
    group = params["study"]
    base = int(seed_base if seed_base is not None else params["seed"])
    cfg = {**group, "seeds": [base + k for k in range(group["seeds"])],
           "variants": list(dict.fromkeys(group["variants"])), "overrides": overrides,
           "out": str(out if out is not None else OUT), "pool": pool,
           "deployment": deployment if deployment is not None else "study-run", "timeout_s": timeout_s}
    cfg["key"] = study_key(root, params)
    return cfg


def base_params(root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    from pipelines.params import load_params

    return load_params(root / "params.yaml", cfg["overrides"])


def study_key(root: Path, params: dict[str, Any]) -> str:
    """16 hex digits identifying what a run depends on besides its seed and variant: the params groups that shape
    training and scoring (:data:`KEY_GROUPS`) and the pair manifest's bytes. Changing either starts fresh runs
    (new working folders, records re-made)."""
    manifest = root / "data" / "pairs" / "manifest.parquet"
    if not manifest.is_file():
        raise StudyError(f"{manifest} not found: the study trains on the project's pairs; run "
                         "`dvc repro validate` (prepare, synthesize, validate) first")
    body = {k: params.get(k) for k in KEY_GROUPS}
    h = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
    h.update(manifest.read_bytes())
    return h.hexdigest()[:16]


def run_params(base: dict[str, Any], seed: int, variant: str) -> dict[str, Any]:
    """The params overlay of one run: ``seed``, the variant as the only fine-tune/evaluate variant (plus its
    definition, :data:`VARIANT_DEFS`), no preset (already merged), no image grids, no real-photo PIQE."""
    p = copy.deepcopy(base)
    p["seed"] = int(seed)
    p["preset"] = "none"
    p["finetune"]["variants"] = {variant: dict(VARIANT_DEFS[variant])}
    p["evaluate"]["variants"] = [variant]
    p["evaluate"]["grid_max_images"] = 0
    p["evaluate"]["real_photos"] = False
    return p


def main_labels(params: dict[str, Any]) -> list[str]:
    """The task's degradations in benchmark order (the labels the benchmark mean is over)."""
    classes = set(params["task"]["classes"])
    return [e["label"] for e in params["synthesize"]["benchmark"] if e["label"] in classes]


def record_path(root: Path, cfg: dict[str, Any], seed: int, variant: str) -> Path:
    return root / cfg["out"] / "runs" / f"seed-{seed}" / f"{variant}.json"


def read_record(root: Path, cfg: dict[str, Any], seed: int, variant: str) -> dict[str, Any] | None:
    """The finished run's record when it exists and belongs to this study key, else None."""
    path = record_path(root, cfg, seed, variant)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if rec.get("key") == cfg["key"] and rec.get("status") == "finished" else None
