"""The typed schema of ``params.yaml``: one pydantic model per group, the one place a default lives.

:func:`load_params` reads ``params.yaml``, overlays the preset chain (``preset: NAME`` → ``presets/NAME.yaml``,
whose own ``base:`` list is applied first), applies dotted overrides, and validates the result before any stage
runs: an unknown key is an error that names the closest valid key, types are strict (``"false"`` is not a bool,
``"abc"`` is not an int), and cross-field rules hold (see :class:`Params`). It returns the validated tree as a
plain dict with every default filled in, so stage code indexes it (``params["pretrain"]["steps"]``) and never
guesses a default.

Merging presets: mappings merge key by key, any other value replaces; a mapping with ``_replace: true`` replaces
the inherited mapping whole (e.g. a 12D preset's ``training_sets.sets``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from maskdcpt.config import (deep_merge, find_root, flatten, read_preset, read_yaml_mapping, set_dotted,
                             strip_replace_marks)
# the training groups live beside the trainers that read them, the training/test set groups beside their loaders;
# the rest of the file's groups are defined here
from maskdcpt.data.testsets.params import TestSetsParams, TrainingSetsParams
from maskdcpt.train.params import (Band, DeepSpeedParams, FinetuneParams, Group, ModelParams, NonNegFloat,
                                   NonNegInt, PosFloat, PosInt, PretrainParams, Real)

__all__ = ["Params", "ParamsError", "load_params", "load_typed", "deep_merge", "set_dotted", "flatten",
           "default_model_name"]

class ParamsError(ValueError):
    """params.yaml (after presets and overrides) does not fit the schema; the message lists every problem."""


class TaskParams(Group):
    name: Literal["5d", "12d", "all"] = "5d"
    #: class index = position; empty: the registry's list for ``name`` (``maskdcpt degradations --task``)
    classes: list[str] = ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"]


class PrepareParams(Group):
    source: Literal["packaged", "folder", "s3"] = "packaged"
    folder: str = ""
    s3_uri: str = ""
    s3_endpoint_url: str = ""
    benchmark_stems: list[str] = []
    benchmark_fraction: Annotated[Real, Field(ge=0.0, lt=1.0)] = 0.2
    min_size: PosInt = 128
    max_pixels: PosInt = 50_000_000

    @model_validator(mode="after")
    def _source_location(self) -> "PrepareParams":
        if self.source == "folder" and not self.folder:
            raise ValueError("prepare.source is 'folder' but prepare.folder is empty")
        if self.source == "s3" and not self.s3_uri.startswith("s3://"):
            raise ValueError(f"prepare.source is 's3' but prepare.s3_uri is not an s3:// URI: {self.s3_uri!r}")
        return self


class BenchmarkEntry(Group):
    degradation: str
    label: str
    params: dict[str, Any] = {}
    #: a degradation type not trained on (generalisation); it need not be a task class
    unseen: bool = False


def _default_benchmark() -> list[BenchmarkEntry]:
    rows = [("rain", "rain", {}), ("gaussian_noise", "gaussian_noise", {"sigma": 25}),
            ("gaussian_noise", "gaussian_noise_s15", {"sigma": 15}),
            ("gaussian_noise", "gaussian_noise_s50", {"sigma": 50}), ("haze", "haze", {}),
            ("low_light", "low_light", {}), ("motion_blur", "motion_blur", {}),
            ("gaussian_noise", "gaussian_noise_s60", {"sigma": 60}),
            ("gaussian_noise", "gaussian_noise_s75", {"sigma": 75})]
    return ([BenchmarkEntry(degradation=d, label=lab, params=p) for d, lab, p in rows]
            + [BenchmarkEntry(degradation="defocus_blur", label="defocus_blur_unseen", unseen=True)])


class ToneParams(Group):
    """Random tone of the clean training crops before they are degraded
    (:func:`maskdcpt.data.pair_recipe.draw_tone`)."""
    prob: Annotated[Real, Field(ge=0.0, le=1.0)] = 0.5
    gamma: Annotated[Real, Field(ge=0.0, le=5.0)] = 0.3
    contrast: Annotated[list[PosFloat], Field(min_length=2, max_length=2)] = [0.7, 1.0]
    shift: NonNegFloat = 0.1

    @model_validator(mode="after")
    def _ordered(self) -> "ToneParams":
        if self.contrast[0] > self.contrast[1]:
            raise ValueError(f"synthesize.tone.contrast must be [low, high] with low <= high, got {self.contrast}")
        return self


class SynthesizeParams(Group):
    crop: PosInt = 96
    train_pairs_per_class: PosInt = 192
    val_pairs_per_class: NonNegInt = 32
    shard_size: PosInt = 256
    workers: PosInt = 2
    staging_dir: str = ""
    benchmark_max_size: PosInt | None = 256
    benchmark: list[BenchmarkEntry] = Field(default_factory=_default_benchmark)
    tone: ToneParams = Field(default_factory=ToneParams)

    @model_validator(mode="after")
    def _unique_labels(self) -> "SynthesizeParams":
        labels = [e.label for e in self.benchmark]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"synthesize.benchmark labels must be unique, repeated: {dupes}")
        return self


class ValidateParams(Group):
    max_rejection_rate: Annotated[Real, Field(ge=0.0, le=1.0)] = 0.5
    count_tolerance: Annotated[Real, Field(ge=0.0, le=1.0)] = 0.0
    #: plausible PSNR(LQ, GT) in dB per class: [floor, ceiling]
    psnr_lq_gt_bands: dict[str, Band] = {
        "rain": [10.0, 80.0], "gaussian_noise": [10.0, 40.0], "haze": [2.0, 80.0], "low_light": [1.0, 80.0],
        "motion_blur": [10.0, 80.0]}

    @model_validator(mode="after")
    def _ordered_bands(self) -> "ValidateParams":
        bad = {k: v for k, v in self.psnr_lq_gt_bands.items() if not v[0] < v[1]}
        if bad:
            raise ValueError(f"validate.psnr_lq_gt_bands need floor < ceiling: {bad}")
        return self


class EvaluateParams(Group):
    variants: list[str] = ["maskdcpt", "scratch"]
    grid_max_images: NonNegInt = 3
    #: PIQE before/after on real degraded photos without GT
    real_photos: bool = True


class RegisterParams(Group):
    #: empty: ``maskdcpt-<model.arch>-<task.name>``
    model_name: str = ""
    min_gain_db: Real = 0.0
    max_drop_db: NonNegFloat = 1.0


class DataParams(Group):
    """How training, validation and evaluation read the pairs: streamed from the tar shards."""

    #: DataLoader worker processes decoding the PNGs (0: in the training process; 0 and 1 give the same
    #: batches). 0 on 2 cores, where a worker competes with the training threads; 4-8 on GPUs
    num_workers: NonNegInt = 0
    #: samples in each worker's shuffle buffer (0: shard order only)
    shuffle_buffer: NonNegInt = 256
    #: MiB of decoded training samples each worker (or the training process) keeps for later epochs (0: none)
    cache_mb: NonNegFloat = 256.0
    #: error: stop naming the shard and key | skip: count it (logged to MLflow as data_skipped)
    on_bad_sample: Literal["error", "skip"] = "error"
    #: a folder or s3:// prefix holding the shards (empty: data/pairs)
    shards: str = ""
    s3_endpoint_url: str = ""
    #: a DataLoader worker silent this long (seconds) is an error, never a hang
    timeout_s: PosFloat = 600.0


class StudyParams(Group):
    """``maskdcpt study``: seeds x variants on the same data and held-out pairs (its options override these)."""

    seeds: PosInt = 3
    variants: list[Literal["maskdcpt", "scratch", "scratch_matched"]] = ["maskdcpt", "scratch", "scratch_matched"]
    #: bootstrap interval coverage
    level: Annotated[Real, Field(gt=0.0, lt=1.0)] = 0.95
    #: Monte Carlo replicates (exact enumeration when the case is small)
    n_boot: PosInt = 10000
    bootstrap_seed: NonNegInt = 0
    #: runs at once on this machine (without a work pool)
    parallel: PosInt = 1


class TrackingParams(Group):
    experiment: str = "maskdcpt"


class Params(Group):
    """The whole of params.yaml. Cross-field rules: benchmark entries and PSNR-band keys are task classes
    (benchmark entries may be ``unseen: true``), the training crop is a multiple of the backbone's padding
    multiple, evaluate variants are fine-tune variants, and the registered model name ends with the task."""

    seed: NonNegInt = 2025
    preset: str = "none"
    task: TaskParams = TaskParams()
    prepare: PrepareParams = PrepareParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    deepspeed: DeepSpeedParams = DeepSpeedParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    tracking: TrackingParams = TrackingParams()
    data: DataParams = DataParams()
    study: StudyParams = StudyParams()
    training_sets: TrainingSetsParams | None = None
    test_sets: TestSetsParams | None = None

    def classes(self) -> list[str]:
        """The task's ordered class list (the classifier's labels)."""
        if self.task.classes:
            return list(self.task.classes)
        from maskdcpt.degradations import task_classes

        return list(task_classes(self.task.name))

    @model_validator(mode="after")
    def _cross_field(self) -> "Params":
        from maskdcpt.degradations import REGISTRY

        classes = self.classes()
        problems = []
        if len(set(classes)) != len(classes):
            problems.append(f"task.classes must be distinct, got {classes}")
        unknown = sorted(set(classes) - set(REGISTRY))
        if unknown:
            problems.append(f"task.classes names degradations the registry does not know: {unknown}")
        off = sorted({e.degradation for e in self.synthesize.benchmark if not e.unseen} - set(classes))
        if off:
            problems.append(f"synthesize.benchmark entries use degradations outside the task's classes {classes}: "
                            f"{off} (mark an entry `unseen: true` to test a type not trained on)")
        not_registered = sorted({e.degradation for e in self.synthesize.benchmark} - set(REGISTRY))
        if not_registered:
            problems.append(f"synthesize.benchmark names unknown degradations: {not_registered}")
        bands = sorted(set(self.validate_.psnr_lq_gt_bands) - set(classes))
        if bands:
            problems.append(f"validate.psnr_lq_gt_bands keys must be task classes {classes}, got extra {bands}")
        try:
            multiple = backbone_multiple(self.model.arch, self.model.preset)
        except ValueError as exc:  # an unknown preset of that backbone
            problems.append(f"model.preset: {exc}")
            multiple = 1
        if self.synthesize.crop % multiple:
            problems.append(f"synthesize.crop {self.synthesize.crop} is not a multiple of {multiple}, the "
                            f"{self.model.arch} backbone's padding multiple")
        missing = [v for v in self.evaluate.variants if v not in self.finetune.variants]
        if missing:
            problems.append(f"evaluate.variants {missing} are not finetune.variants {sorted(self.finetune.variants)}")
        if self.register_.model_name and not self.register_.model_name.endswith(f"-{self.task.name}"):
            problems.append(f"register.model_name {self.register_.model_name!r} must end with the task "
                            f"'-{self.task.name}' (or be empty for {default_model_name(self)!r})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def backbone_multiple(arch: str, preset: str) -> int:
    """The input-size multiple (px) the backbone needs: its downsampling factor or window size."""
    from maskdcpt.models.backbones import pad_multiple

    return pad_multiple(arch, preset)


def default_model_name(params: Params) -> str:
    """``maskdcpt-<arch>-<task>``, the registered model name when ``register.model_name`` is empty."""
    return f"maskdcpt-{params.model.arch}-{params.task.name}"


def _closest(loc: tuple, model: type[BaseModel]) -> str:
    """' (did you mean X?)' for an unknown key at ``loc``, walking the schema along ``loc``."""
    node: Any = model
    for part in loc[:-1]:
        fields = getattr(node, "model_fields", None)
        if fields is None:
            return ""
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return ""
        ann = field.annotation
        node = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                    None)
        if node is None:
            return ""
    names = [f.alias or n for n, f in node.model_fields.items()]
    match = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
    return f" (did you mean {'.'.join(map(str, [*loc[:-1], match[0]]))!r}?)" if match else ""


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(map(str, loc)) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown parameter {where!r}{_closest(loc, Params)}")
        else:
            got = e.get("input")
            shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
            lines.append(f"{where}: {e['msg']}{shown}")
    return f"invalid parameters in {source}:\n  " + "\n  ".join(lines)


def load_typed(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read, overlay and validate params (see the module docstring); return the typed :class:`Params`.

    Raises:
        FileNotFoundError: no params file.
        ParamsError: a preset is missing or loops, or the result does not fit the schema (every problem listed).
    """
    path = Path(path) if path else find_root() / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    try:
        raw = read_yaml_mapping(path)
    except ValueError as exc:
        raise ParamsError(str(exc)) from None
    overrides = dict(overrides or {})
    if "preset" in overrides:  # the preset chain is resolved first, the other overrides then apply on top
        raw["preset"] = overrides.pop("preset")
    preset = raw.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ParamsError(f"preset must be a name, got {preset!r}")
    if preset and preset.lower() != "none":
        try:
            overlay = read_preset(path.parent / "presets" / f"{preset}.yaml", keep_marks=True)
        except (FileNotFoundError, ValueError) as exc:
            raise ParamsError(str(exc)) from None
        raw = strip_replace_marks(deep_merge(raw, overlay))  # the preset wins over params.yaml
    for dotted, value in overrides.items():
        try:
            set_dotted(raw, dotted, value)
        except ValueError as exc:
            raise ParamsError(str(exc)) from None
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, str(path))) from None


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`load_typed` as a plain nested dict with every default filled in (YAML key names: ``validate``,
    ``class``); ``register.model_name`` resolved, ``task.classes`` resolved to the task's list when empty."""
    typed = load_typed(path, overrides)
    out = typed.model_dump(by_alias=True, mode="python")
    out["task"]["classes"] = typed.classes()
    out["register"]["model_name"] = typed.register_.model_name or default_model_name(typed)
    for group in ("training_sets", "test_sets"):
        if out.get(group) is None:
            out.pop(group, None)
    return out
