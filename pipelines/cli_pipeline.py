"""``maskdcpt pipeline``: run the retraining flow now, or schedule it on a cron.

* ``maskdcpt pipeline run``: the Prefect retraining flow (:mod:`pipelines.flows`) on this project.
* ``maskdcpt pipeline schedule --cron "0 3 * * 0"``: a deployment of that flow in a process work pool on the
  Prefect server named by ``PREFECT_API_URL`` (schedules only fire with a server: ``python -m pipelines.services up``
  or ``prefect server start``), then optionally a process worker (``--worker``) that executes the runs.
* ``maskdcpt pipeline repro``: plain ``dvc repro``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run, schedule or reproduce the pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    run = psub.add_parser("run", help="run the Prefect retraining flow now")
    run.add_argument("--project", default=None, help="project folder (default: the one holding params.yaml)")
    run.add_argument("--lock-timeout", type=float, default=6 * 3600, metavar="SECONDS",
                     help="wait this long for a retraining flow already running in the project (default 6 h)")
    run.set_defaults(func=_run)
    sched = psub.add_parser("schedule", help="deploy the retraining flow on a cron schedule (needs a server)")
    sched.add_argument("--cron", required=True, help='cron expression, UTC unless --timezone, e.g. "0 3 * * 0"')
    sched.add_argument("--timezone", default=None, help="IANA time zone of the cron, e.g. Europe/Berlin")
    sched.add_argument("--name", default="weekly-retrain", help="deployment name")
    sched.add_argument("--pool", default="maskdcpt-process", help="process work pool (created if missing)")
    sched.add_argument("--project", default=None)
    sched.add_argument("--worker", action="store_true", help="then start a process worker on the pool (blocks)")
    sched.set_defaults(func=_schedule)
    rep = psub.add_parser("repro", help="run `dvc repro` (the main job)")
    rep.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    rep.set_defaults(func=_repro)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    from pipelines.flows import RetrainBusy, retrain

    try:
        summary = retrain(project_dir=args.project, lock_timeout_s=args.lock_timeout)
    except RetrainBusy as exc:
        print(f"maskdcpt pipeline run: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _schedule(args: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print("maskdcpt pipeline schedule: PREFECT_API_URL is not set. Cron schedules only fire on a Prefect "
              "server: start one (`python -m pipelines.services up`, or `prefect server start`) and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    from pipelines.deploy import deploy_retrain

    info = deploy_retrain(cron=args.cron, name=args.name, pool=args.pool, project_dir=args.project,
                          timezone=args.timezone)
    print(json.dumps(info, indent=2, default=str))
    if args.worker:
        return subprocess.call([os.path.join(os.path.dirname(sys.executable), "prefect"), "worker", "start",
                                "--pool", args.pool, "--type", "process"])
    print(f"start a worker to execute the runs: prefect worker start --pool {args.pool}")
    return 0


def _repro(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "dvc", "repro", *args.targets])
