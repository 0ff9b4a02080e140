"""Environment defaults of the orchestration stack, applied when :mod:`pipelines` is imported.

Set with ``os.environ.setdefault``, so a user's own value always wins:

* telemetry off: ``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``, ``PREFECT_SERVER_ANALYTICS_ENABLED``,
  ``DVC_NO_ANALYTICS``, ``GX_ANALYTICS_ENABLED``;
* ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`` (Prefect's 20 s is too short on 2 busy cores);
* ``PREFECT_HOME=<project>/.cache/prefect`` (the ephemeral server's SQLite lives with the project; the folder is
  created when a flow first needs it, :func:`ensure_prefect_home`);
* the library's own defaults (:func:`maskdcpt.config.library_env_defaults`).
"""

from __future__ import annotations

import os
from pathlib import Path

from maskdcpt.config import find_root, library_env_defaults, mlflow_env_defaults

ENV_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


def apply_env_defaults(root: str | os.PathLike | None = None) -> None:
    """Set the defaults listed in the module docstring (never overriding a value already set)."""
    root = Path(root) if root else find_root()
    library_env_defaults(root)
    mlflow_env_defaults()
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".cache" / "prefect"))
    ensure_prefect_home()


def ensure_prefect_home() -> None:
    """Create ``PREFECT_HOME`` (Prefect's SQLite cannot be created in a missing folder); an unwritable one is left
    for Prefect to report."""
    try:
        Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
