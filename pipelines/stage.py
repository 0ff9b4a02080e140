"""Command-line entry of one pipeline stage, as ``dvc.yaml`` calls it: ``python -m pipelines.stage NAME``.

:func:`run_stage` validates params.yaml against the schema (:mod:`pipelines.params`) before anything runs, opens
the stage's nested MLflow run with the params groups that dvc.yaml tracks for the stage (:func:`stage_params`),
and calls the stage's function (``pipelines/stages/<name>.py``). The stage runs as a Prefect flow
(``maskdcpt-<stage>``; ephemeral Prefect server unless ``PREFECT_API_URL`` points at one), so its state, timing
and logs are in Prefect; ``MASKDCPT_PREFECT=0`` runs it without Prefect. A stage that stops the pipeline on
purpose (a failed data contract, invalid params) exits with status 2 and its reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pipelines  # noqa: F401  (applies the offline environment defaults before prefect/mlflow import)
from maskdcpt.config import find_root

log = logging.getLogger("maskdcpt.stages")


def stage_params(stage: str, root: Path | None = None) -> list[str]:
    """The params entries dvc.yaml tracks for ``stage`` (``pretrain``, or ``finetune`` for a foreach stage), e.g.
    ``["seed", "model", "pretrain.steps"]``; the stage logs exactly these to MLflow. ``KeyError`` if absent."""
    import yaml

    stages = (yaml.safe_load((Path(root or find_root()) / "dvc.yaml").read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise KeyError(f"dvc.yaml has no stage {stage!r}")
    body = stages[stage].get("do", stages[stage])
    out = []
    for entry in body.get("params", []) or []:
        if isinstance(entry, str):
            out.append(entry)
        else:  # {params_file: [keys]}
            out.extend(k for keys in entry.values() for k in keys)
    return out


def select_params(params: dict[str, Any], entries: list[str]) -> dict[str, Any]:
    """The sub-tree of ``params`` named by dotted ``entries`` (``"pretrain.steps"`` keeps only that leaf)."""
    out: dict[str, Any] = {}
    for entry in entries:
        src, dst = params, out
        *parents, leaf = entry.split(".")
        for key in parents:
            src = src[key]
            dst = dst.setdefault(key, {})
        dst[leaf] = src[leaf]
    return out


def run_stage(stage: str, variant: str | None = None, params_path: str | None = None) -> dict[str, Any]:
    """Run one stage inside its nested MLflow run; return the stage's summary dict.

    Raises ``ValueError`` for an unknown stage or a missing ``--variant`` of ``finetune``,
    :class:`pipelines.params.ParamsError` for params that do not fit the schema (before any work).
    """
    from pipelines.params import load_params
    from pipelines.stages import stage_function
    from pipelines.stages.common import rank
    from pipelines.tracking import stage_run

    fn = stage_function(stage)
    if stage == "finetune" and not variant:
        raise ValueError("the finetune stage needs a variant (e.g. maskdcpt or scratch)")
    root = find_root()
    params = load_params(params_path or root / "params.yaml")
    args = (params, root, variant) if variant else (params, root)
    if rank() != 0:  # a non-lead rank of a distributed training stage: train, log and write nothing
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage {stage!r} runs in one process; only pretrain/finetune take a launcher")
        return fn(*args)
    run_name = f"{stage}@{variant}" if variant else stage
    t0 = time.perf_counter()
    with stage_run(run_name, params, select_params(params, stage_params(stage, root)), root) as run:
        summary = fn(*args)
        import mlflow

        seconds = time.perf_counter() - t0
        mlflow.log_metric("stage_seconds", seconds)
        log.info("stage %s done in %.1f s (MLflow run %s)", run_name, seconds, run.info.run_id)
    return summary


def stage_flow(stage: str):
    """The Prefect flow object of ``stage`` (name ``maskdcpt-<stage>``)."""
    from prefect import flow

    @flow(name=f"maskdcpt-{stage}", log_prints=True, retries=0, validate_parameters=False)
    def _flow(variant: str | None = None, params_path: str | None = None) -> dict:
        return run_stage(stage, variant, params_path)

    return _flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", help="prepare | synthesize | validate | pretrain | finetune | evaluate | register")
    parser.add_argument("--variant", default=None, help="fine-tune variant (finetune stage)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml at the project root)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipelines.params import ParamsError
    from pipelines.stages import StageFailed

    try:
        from pipelines.params import load_params

        load_params(args.params or find_root() / "params.yaml")  # invalid params stop here, before Prefect starts
        if os.environ.get("MASKDCPT_PREFECT", "1") == "0":
            summary = run_stage(args.stage, args.variant, args.params)
        else:
            summary = stage_flow(args.stage)(variant=args.variant, params_path=args.params)
    except (StageFailed, ParamsError) as exc:
        print(f"[maskdcpt] stage {args.stage} stopped the pipeline: {exc}", file=sys.stderr)
        return 2
    print(f"[maskdcpt] {args.stage}{'@' + args.variant if args.variant else ''}: "
          f"{json.dumps(summary, default=str)[:2000]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
