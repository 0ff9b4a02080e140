"""The pipeline's stages, one module each (``pipelines/stages/<name>.py``), run by ``python -m pipelines.stage NAME``
as ``dvc.yaml`` declares them; ``docs/architecture.md`` follows a stage from dvc.yaml to its code.

Each stage function takes ``(params, root)`` (``finetune`` also the variant), logs to its nested MLflow run and
writes its DVC outs atomically (:func:`maskdcpt.atomic.atomic_dir`), so a failed or interrupted stage leaves
nothing that DVC would take as done. Training stages resume from their DeepSpeed checkpoints under
``.cache/checkpoints/<stage>/<config hash>``.

Stage modules are imported on demand (:func:`stage_function`), so that a stage process loads only its own code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from pipelines.stages.common import StageFailed  # noqa: F401  (re-exported)

NAMES = ("prepare", "synthesize", "validate", "pretrain", "finetune", "evaluate", "register")


def stage_function(stage: str) -> Callable[..., dict[str, Any]]:
    """The function of ``stage`` (``pipelines.stages.<stage>.<stage>``). Raises ``ValueError`` for an unknown name."""
    if stage not in NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(NAMES)}")
    return getattr(importlib.import_module(f"pipelines.stages.{stage}"), stage)
