"""``maskdcpt study``: does MaskDCPT help? S seeds x three variants on the same data and benchmark pairs.

Variants (each trained with the same seed ``s`` for a given seed index):

* ``maskdcpt``: MaskDCPT pre-training, then fine-tuning from the pre-trained backbone;
* ``scratch``: the same fine-tuning from random initialisation;
* ``scratch_matched``: plain training from random initialisation for ``pretrain.steps + finetune.steps`` steps, so
  that a gain of ``maskdcpt`` over it is not only the extra compute (the paper does not test this).

One seed x variant is one **run**: the real stages (``pretrain`` for ``maskdcpt``, ``finetune``, ``evaluate``) run as
subprocesses (``python -m pipelines.stage``) in the run's own working folder ``.cache/study/<key>/seed-<s>/<variant>``
with a params overlay (seed, variant) and the project's ``data/`` linked in, so runs never touch each other or the
main pipeline's outputs. A finished run is recorded atomically in ``reports/study/runs/seed-<s>/<variant>.json``
(per-image PSNR/SSIM, the run's benchmark metrics with their provenance, timings); a rerun of the study skips
recorded runs, so a killed study resumes with the unfinished ones (inside a run, a stage whose output exists is
not redone and training resumes from its DeepSpeed checkpoint).

Orchestration (Prefect): the study is the flow ``maskdcpt-study``. Without ``--pool`` each run is a task of that
flow (``--parallel N`` runs N at once on this machine). With ``--pool NAME`` each run is a flow run of the
deployment ``maskdcpt-study-run/<name>`` in the process work pool ``NAME`` (created if missing), so N workers on N
machines (``prefect worker start --pool NAME``, with the project at the same path, e.g. a shared volume) run N runs
in parallel; the study flow waits for them and aggregates. MLflow: one parent run per study (reused on resume),
one child run per seed x variant, the run's stage runs nested below it.

Outputs in ``reports/study/``: ``study.json`` (per variant and degradation PSNR/SSIM mean and std over seeds; per
comparison ``maskdcpt-scratch`` and ``maskdcpt-scratch_matched`` and per degradation and ``mean``: ``gain_db``,
``ci95`` ``[low, high]`` from a seed x image bootstrap (:mod:`maskdcpt.eval.bootstrap`) and a ``verdict``; the
provenance), ``table.md`` (also a Prefect artifact ``maskdcpt-study``) and ``gains.png`` (gains with error bars).
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

import pipelines  # noqa: F401  (offline environment defaults before prefect/mlflow import)
from prefect import flow, get_run_logger

from maskdcpt.atomic import atomic_write_json
from maskdcpt.config import find_root

from pipelines.study_config import (ENTRYPOINT, OUT, RUN_FLOW, VARIANTS, StudyError, base_params, main_labels,
                                    read_record, study_config)
from pipelines.study_report import write_reports
from pipelines.study_runs import run_task

log = logging.getLogger("maskdcpt.study")


# ----------------------------------------------------------------------------------------------------------------
# the flow


def _open_parent(root: Path, cfg: dict[str, Any], params: dict[str, Any]) -> str:
    """The study's MLflow parent run: the one recorded in ``state.json`` for this key (resumed), or a new one."""
    import mlflow

    from pipelines import tracking

    exp_id = tracking.setup(params["tracking"]["experiment"], root)
    client = mlflow.MlflowClient()
    state_path = root / cfg["out"] / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("key") == cfg["key"] and state.get("parent_run_id"):
            try:
                client.get_run(state["parent_run_id"])
                client.update_run(state["parent_run_id"], status="RUNNING")
                return state["parent_run_id"]
            except Exception:  # deleted or another store
                pass
    run = client.create_run(exp_id, run_name=time.strftime("study-%Y%m%d-%H%M%S"),
                            tags={tracking.ROLE_TAG: "study", "study.key": cfg["key"],
                                  "git_commit": tracking.git_commit(root)})
    tracking.log_params(client, run.info.run_id, {f"study.{k}": v for k, v in cfg.items() if k != "overrides"}
                        | {f"override.{k}": v for k, v in cfg["overrides"].items()})
    atomic_write_json(state_path, {"key": cfg["key"], "parent_run_id": run.info.run_id})
    return run.info.run_id


def deploy_run_flow(root: Path, pool: str, name: str) -> str:
    """Create or update the deployment ``maskdcpt-study-run/<name>`` (code from ``root``) in the process work
    pool ``pool`` (created if missing); return its full name."""
    import asyncio

    from pipelines.deploy import _ensure_pool

    asyncio.run(_ensure_pool(pool))
    remote = flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    remote.deploy(name=name, work_pool_name=pool, job_variables={"working_dir": str(root)}, build=False,
                  push=False, print_next_steps=False, ignore_warnings=True)
    return f"{RUN_FLOW}/{name}"


def _fan_out_pool(root: Path, cfg: dict[str, Any], pending: list[tuple[int, str]], parent_id: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    name = deploy_run_flow(root, cfg["pool"], cfg["deployment"])
    runs = {}
    for seed, variant in pending:
        fr = run_deployment(name, parameters={"project_dir": str(root), "cfg": cfg, "seed": seed, "variant": variant,
                                              "parent_run_id": parent_id},
                            flow_run_name=f"seed-{seed}-{variant}", timeout=0, as_subflow=True)
        runs[fr.id] = (seed, variant)
    logger.info("submitted %d runs to work pool %s (deployment %s)", len(runs), cfg["pool"], name)
    deadline = time.monotonic() + float(cfg["timeout_s"]) if cfg["timeout_s"] else None
    states: dict[Any, Any] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(runs):
            for fid in runs:
                if fid in states:
                    continue
                fr = client.read_flow_run(fid)
                if fr.state is not None and fr.state.is_final():
                    states[fid] = fr.state
                    logger.info("run %s: %s", "seed-%s-%s" % runs[fid], fr.state.type.value)
            if deadline and time.monotonic() > deadline and len(states) < len(runs):
                raise StudyError(f"{len(runs) - len(states)} runs did not finish within {cfg['timeout_s']} s "
                                 "(are workers running on the pool?)")
            time.sleep(2.0)
    failed = [runs[f] for f, s in states.items() if not s.is_completed()]
    if failed:
        raise StudyError(f"runs failed in the work pool: {failed}; finished runs are recorded, rerun to resume")
    return [{"seed": s, "variant": v} for s, v in runs.values()]


@flow(name="maskdcpt-study", log_prints=True, validate_parameters=False)
def study(project_dir: str | None = None, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study flow (module docstring); ``cfg`` from :func:`study_config`. Returns the study result."""
    import mlflow
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    root = Path(project_dir or find_root()).resolve()
    cfg = cfg or study_config(root)
    params = base_params(root, cfg)
    labels = main_labels(params)
    parent = _open_parent(root, cfg, params)
    client = mlflow.MlflowClient()
    status = "FAILED"
    try:
        pending = [(s, v) for s in cfg["seeds"] for v in cfg["variants"] if read_record(root, cfg, s, v) is None]
        logger.info("study %s: %d of %d runs to do", cfg["key"], len(pending), len(cfg["seeds"]) * len(cfg["variants"]))
        if pending and cfg["pool"]:
            _fan_out_pool(root, cfg, pending, parent)
        elif pending:
            futures = [run_task.submit(str(root), cfg, s, v, parent) for s, v in pending]
            errors = []
            for fut in futures:
                try:
                    fut.result()
                except Exception as exc:  # keep the others going; finished ones are recorded
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    errors.append(" ... ".join(lines[:1] + lines[-1:]))
            if errors:
                raise StudyError(f"{len(errors)} runs failed (finished runs are recorded; rerun to resume): {errors}")
        result = write_reports(root, cfg, labels, parent)
        table = (root / cfg["out"] / "table.md").read_text()
        create_markdown_artifact(f"# MaskDCPT study\n\n{table}\n\nMLflow parent run `{parent}`\n",
                                 key="maskdcpt-study", description="seeds x variants study with bootstrap intervals")
        for name, comp in result["comparisons"].items():
            client.log_metric(parent, f"{name}.mean.gain_db", comp["mean"]["gain_db"])
        client.log_artifact(parent, str(root / cfg["out"] / "study.json"), "study")
        client.log_artifact(parent, str(root / cfg["out"] / "table.md"), "study")
        status = "FINISHED"
        return result
    finally:
        client.set_terminated(parent, status)


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to an argparse ``subparsers`` (``maskdcpt study``); sets ``func``."""
    p = subparsers.add_parser("study", help="seeds x variants study: does MaskDCPT help? (bootstrap intervals)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_run_cli)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None, help="project folder (default: the one holding params.yaml)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: params.yaml study.seeds)")
    p.add_argument("--seed-base", type=int, default=None, help="first seed (default: params.yaml `seed`)")
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="default: study.variants")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="params override for every run, e.g. -S pretrain.steps=100 (not seed/task/data groups)")
    p.add_argument("--level", type=float, default=None, help="interval coverage (default: study.level)")
    p.add_argument("--n-boot", type=int, default=None, help="Monte Carlo bootstrap replicates (default: study.n_boot)")
    p.add_argument("--bootstrap-seed", type=int, default=None)
    p.add_argument("--out", default=None, help=f"output folder under the project (default {OUT})")
    p.add_argument("--parallel", type=int, default=None, help="runs at once on this machine (default: study.parallel)")
    p.add_argument("--pool", default=None, help="Prefect process work pool: each run is a flow run there "
                                                "(needs PREFECT_API_URL and workers: prefect worker start --pool NAME)")
    p.add_argument("--deployment", default=None, help="deployment name of the run flow (default study-run)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=None,
                   help="with --pool: give up waiting after this many seconds")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StudyError(f"override {item!r} is not KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run_cli(args: argparse.Namespace) -> int:
    from pipelines.params import ParamsError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        root = Path(args.project or find_root()).resolve()
        if args.pool and not os.environ.get("PREFECT_API_URL"):
            raise StudyError("--pool needs a Prefect server: start one (`prefect server start`) and export "
                             "PREFECT_API_URL=http://127.0.0.1:4200/api, then start workers on the pool")
        cfg = study_config(root, seeds=args.seeds, seed_base=args.seed_base, variants=args.variants,
                           overrides=_parse_overrides(args.overrides) or None, level=args.level, n_boot=args.n_boot,
                           bootstrap_seed=args.bootstrap_seed, out=args.out, parallel=args.parallel, pool=args.pool,
                           deployment=args.deployment, timeout_s=args.timeout_s)
        from prefect.task_runners import ThreadPoolTaskRunner

        # the runs are subprocesses: threads only wait on them; --parallel bounds how many run at once
        runner = study.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg["parallel"]))
        result = runner(project_dir=str(root), cfg=cfg)
    except (StudyError, ParamsError) as exc:
        print(f"[maskdcpt] study: {exc}", file=sys.stderr)
        return 2
    print((root / (cfg["out"]) / "table.md").read_text())
    print(f"[maskdcpt] study: {root / cfg['out'] / 'study.json'}; missing runs: {result['missing_runs'] or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``maskdcpt study`` as a standalone command (``python -m pipelines.study``)."""
    parser = argparse.ArgumentParser(prog="maskdcpt study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return _run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
