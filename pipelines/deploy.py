"""Deploy the retraining flow on a cron schedule into a Prefect process work pool.

The deployment's code source is this project folder (``flow.from_source``), so a process worker on the same
machine (or one with the project at the same path, e.g. a shared volume) runs ``pipelines/flows.py:retrain``
in it. Cron times are UTC unless a time zone is given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from maskdcpt.config import find_root

ENTRYPOINT = "pipelines/flows.py:retrain"


async def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            try:
                await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                pass


def deploy_retrain(cron: str, name: str = "weekly-retrain", pool: str = "maskdcpt-process",
                   project_dir: str | Path | None = None, timezone: str | None = None) -> dict[str, Any]:
    """Create or update the deployment ``maskdcpt-retrain/<name>`` with ``cron``; return its id and schedule.

    Raises ``ValueError`` for an invalid cron expression (checked by Prefect's schedule model).
    """
    from prefect import flow
    from prefect.schedules import Cron

    root = Path(project_dir or find_root()).resolve()
    asyncio.run(_ensure_pool(pool))
    remote = flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    schedule = Cron(cron, timezone=timezone) if timezone else Cron(cron)
    deployment_id = remote.deploy(name=name, work_pool_name=pool, schedules=[schedule],
                                  parameters={"project_dir": str(root)}, job_variables={"working_dir": str(root)},
                                  build=False, push=False, print_next_steps=False, ignore_warnings=True)
    return {"deployment_id": str(deployment_id), "name": f"maskdcpt-retrain/{name}", "cron": cron,
            "timezone": timezone or "UTC", "pool": pool, "project_dir": str(root)}
