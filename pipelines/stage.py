"""Command-line entry of one pipeline stage, as ``dvc.yaml`` calls it: ``python -m pipelines.stage NAME``.

The stage runs as a Prefect flow (``maskdcpt-<stage>``; ephemeral Prefect server unless ``PREFECT_API_URL``
points at one), so its state, timing and logs are in Prefect; ``MASKDCPT_PREFECT=0`` runs it without Prefect.
A stage that stops the pipeline on purpose (a failed data contract) exits with status 2 and its reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import maskdcpt  # noqa: F401  (applies the offline environment defaults before prefect/mlflow import)


def stage_flow(stage: str):
    """The Prefect flow object of ``stage`` (name ``maskdcpt-<stage>``)."""
    from prefect import flow

    from pipelines.stages import run_stage

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
    from pipelines.stages import StageFailed, run_stage

    try:
        if os.environ.get("MASKDCPT_PREFECT", "1") == "0":
            summary = run_stage(args.stage, args.variant, args.params)
        else:
            summary = stage_flow(args.stage)(variant=args.variant, params_path=args.params)
    except StageFailed as exc:
        print(f"[maskdcpt] stage {args.stage} stopped the pipeline: {exc}", file=sys.stderr)
        return 2
    print(f"[maskdcpt] {args.stage}{'@' + args.variant if args.variant else ''}: "
          f"{json.dumps(summary, default=str)[:2000]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
