"""The typed parameter groups of training: ``model``, ``deepspeed``, ``pretrain`` and ``finetune`` of
params.yaml, next to the code that reads them. These classes hold the only defaults; ``pipelines.params``
composes them into the schema of the whole file, and the trainers (:mod:`maskdcpt.train.pretrain`,
:mod:`maskdcpt.train.finetune`, :mod:`maskdcpt.train.engine`) accept either an instance or a plain mapping,
validated by :func:`as_group` (so a script that passes ``{"steps": 10}`` gets exactly the pipeline's defaults
for everything else, and a misspelt key is an error).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["Group", "Real", "PosInt", "NonNegInt", "NonNegFloat", "PosFloat", "Band", "as_group", "ModelParams",
           "DeepSpeedParams", "PretrainParams", "VariantParams", "FinetuneParams"]

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_float(value: Any) -> Any:
    # PyYAML (YAML 1.1) reads exponent numbers without a dot ("1e-4") as strings; take those as the numbers they
    # are. Anything else that is not a number is left for the strict check to reject.
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


Real = Annotated[float, BeforeValidator(_yaml_float)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[Real, Field(ge=0.0)]
PosFloat = Annotated[Real, Field(gt=0.0)]
Band = Annotated[list[Real], Field(min_length=2, max_length=2)]


class Group(BaseModel):
    """A params group: unknown keys are errors, values are checked strictly (no string-to-number coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


G = TypeVar("G", bound=Group)


def as_group(cls: type[G], value: G | Mapping[str, Any] | None) -> G:
    """``value`` as a ``cls`` instance: returned as is when it is one, else validated (None: all defaults).

    Raises ``pydantic.ValidationError`` for an unknown key or a value of the wrong type.
    """
    if isinstance(value, cls):
        return value
    return cls.model_validate(dict(value or {}))


class ModelParams(Group):
    arch: Literal["nafnet", "restormer", "promptir", "swinir"] = "nafnet"
    preset: str = "cpu-default"
    recon_head: Literal["token", "ending"] = "token"
    recon_blocks: NonNegInt = 1


class DeepSpeedParams(Group):
    zero_stage: Annotated[int, Field(ge=0, le=3)] = 0
    bf16: bool = False
    gradient_accumulation_steps: PosInt = 1
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    channels_last: bool = True
    launcher: str = "python -m"


class PretrainParams(Group):
    steps: PosInt = 500
    batch_size: PosInt = 8
    backbone_lr: PosFloat = 3.0e-4
    head_lr: PosFloat = 1.0e-4
    weight_decay: NonNegFloat = 0.0
    keep_ratio: Annotated[Real, Field(gt=0.0, le=1.0)] = 0.5
    alpha: NonNegFloat = 1.0
    focal_gamma: NonNegFloat = 2.0
    grad_clip: NonNegFloat = 0.0
    log_every: PosInt = 20
    #: classification accuracy on the validation pairs every N steps; 0: at the end only
    eval_every: NonNegInt = 100
    #: a resumable checkpoint every N steps; 0: at the end only
    checkpoint_every: NonNegInt = 200


class VariantParams(Group):
    init: Literal["pretrained", "random"]
    #: what DVC tracks as the variant's starting point (dvc.yaml's foreach reads it)
    init_dep: str
    #: the compute-matched baseline: trains pretrain.steps + finetune.steps
    compute_matched: bool = False


class FinetuneParams(Group):
    variants: dict[str, VariantParams] = {
        "maskdcpt": VariantParams(init="pretrained", init_dep="models/pretrain"),
        "scratch": VariantParams(init="random", init_dep="maskdcpt/models")}
    steps: PosInt = 3000
    batch_size: PosInt = 8
    lr: PosFloat = 1.0e-3
    #: l1 | psnr (per-sample -10 log10 MSE, NAFNet's) | relative_l1 (docs/method.md, README "diagnosis")
    loss: Literal["l1", "psnr", "relative_l1"] = "psnr"
    #: zeros: the output conv starts at zero, so training starts at the identity (output = LQ) | default
    head_init: Literal["zeros", "default"] = "zeros"
    #: per-class validation PSNR every N steps (MLflow + reports/finetune/); 0: off
    eval_every: NonNegInt = 100
    eta_min: NonNegFloat = 1.0e-6
    weight_decay: NonNegFloat = 0.0
    ema_decay: Annotated[Real, Field(ge=0.0, lt=1.0)] = 0.999
    grad_clip: NonNegFloat = 0.01
    log_every: PosInt = 20
    #: a resumable checkpoint every N steps; 0: at the end only
    checkpoint_every: NonNegInt = 200
