"""The typed ``training_sets`` and ``test_sets`` groups of a preset, next to the loaders that read them.

These classes hold the only defaults of the two groups: :mod:`pipelines.params` composes them into the schema of
params.yaml, and :func:`maskdcpt.data.testsets.training_pairs` and ``maskdcpt paper-eval``
(:func:`maskdcpt.eval.protocol.run_paper_eval`) validate a preset's raw group with :func:`validated_group`, so a
misspelt key (``test_sets.rot``) is an error there as well, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError

from maskdcpt.train.params import Group, PosInt, as_group

__all__ = ["TrainingSet", "TrainingSetsParams", "TestSetEntry", "TestSetsParams", "validated_group"]


class TrainingSet(Group):
    """One training set: a folder read with the layout of a test set (``layout``, a key of ``DATASETS``)."""

    layout: str
    path: str = ""
    class_: str = Field(alias="class")
    repeat: PosInt = 1
    #: noise levels (on the 0-255 scale) drawn per crop for a GT-only noise set
    sigmas: Annotated[list[PosInt], Field(min_length=1)] = [15, 25, 50]
    options: dict[str, Any] = {}


class TrainingSetsParams(Group):
    """The paper's training sets as real pairs (a preset names them); absent: synthetic pairs only."""

    root: str = ""
    cache_dir: str = ".cache/training_sets"
    mode: Literal["crop", "whole"] = "crop"
    crop: PosInt = 256
    shard_size: PosInt = 256
    sets: dict[str, TrainingSet] = {}


class TestSetEntry(Group):
    """One public test set of a preset: its folder below ``root`` (empty: the set's default folder)."""

    path: str = ""
    options: dict[str, Any] = {}


class TestSetsParams(Group):
    """The public test sets of ``maskdcpt paper-eval`` (a preset names them)."""

    root: str = ""
    cache_dir: str = ".cache/test_sets"
    s3_endpoint_url: str = ""
    weights: Literal["params_ema", "params"] = "params_ema"
    protocol: dict[str, str] = {}
    tables: list[str] = ["table1"]
    sets: dict[str, TestSetEntry] = {}


G = TypeVar("G", bound=Group)


def validated_group(cls: type[G], value: G | Mapping[str, Any] | None, name: str) -> G:
    """``value``, a preset's group ``name``, as a ``cls`` instance (None: every default).

    Raises ``ValueError`` when ``value`` is not a mapping, or naming ``<name>.<key>`` for an unknown key or a
    value of the wrong type.
    """
    if value is not None and not isinstance(value, (cls, Mapping)):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        return as_group(cls, value)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join([name, *map(str, e['loc'])])}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid {name} group: {problems}") from None
