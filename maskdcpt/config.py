"""Project configuration: offline-friendly environment defaults and ``params.yaml`` loading.

Importing :mod:`maskdcpt` calls :func:`apply_env_defaults`, which sets (with ``os.environ.setdefault``, so a
user's own value always wins) the variables that keep the stack offline and CI-friendly:

* telemetry off: ``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``, ``PREFECT_SERVER_ANALYTICS_ENABLED``,
  ``DVC_NO_ANALYTICS``, ``GX_ANALYTICS_ENABLED``;
* ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`` (the default 20 s is too tight on 2 loaded cores);
* ``MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK`` (no ``pip install --dry-run`` when logging a model);
* ``TORCH_EXTENSIONS_DIR=<repo>/.cache/torch_extensions`` so that DeepSpeed's JIT-built CPU ops are compiled once
  and kept;
* ``PREFECT_HOME=<repo>/.cache/prefect`` so that the ephemeral Prefect server's SQLite lives with the project.

Facts from ``shared/docs/stack-probe.md``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

ENV_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
}


def find_root(start: str | os.PathLike | None = None) -> Path:
    """Return the project root: the nearest folder at or above ``start`` (default: the current directory)
    that holds ``params.yaml``; falls back to the current directory.

    Stages run by ``dvc repro`` run in the folder of ``dvc.yaml``, so this is the DVC repo root there.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    """The project's MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<root>/mlflow.db`` (``root``
    defaults to :func:`find_root`). The pipeline and the CLI share this one default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root or find_root()) / 'mlflow.db'}"


def apply_env_defaults(root: str | os.PathLike | None = None) -> None:
    """Set the offline/CI environment defaults listed in the module docstring (never overriding a set value).

    ``DS_ACCELERATOR`` is only defaulted to ``cpu`` when no CUDA device is visible, so that a GPU machine picks
    its accelerator itself.
    """
    root = Path(root) if root else find_root()
    for key, value in ENV_DEFAULTS.items():
        if key == "DS_ACCELERATOR" and _cuda_visible():
            continue
        os.environ.setdefault(key, value)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(root / ".cache" / "torch_extensions"))
    os.environ.setdefault("PREFECT_HOME", str(root / ".cache" / "prefect"))
    # Prefect's SQLite cannot be created in a missing folder ("unable to open database file")
    try:
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # an unwritable PREFECT_HOME is reported by Prefect itself when it is used


def _cuda_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``params.yaml`` (default: the project root's), overlay ``presets/<preset>.yaml`` when the file sets
    ``preset: <name>`` (e.g. ``dvc exp run -S preset=paper-5d``), then apply dotted-key ``overrides``.

    Args:
        path: the YAML file; default ``find_root()/params.yaml``.
        overrides: e.g. ``{"pretrain.steps": 10}``; a key whose parent is missing raises ``KeyError``.

    Returns:
        The nested dict of parameters.

    Raises:
        FileNotFoundError: no params file.
        ValueError: the file is not a YAML mapping.
    """
    path = Path(path) if path else find_root() / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a YAML mapping, got {type(params).__name__}")
    params = copy.deepcopy(params)
    preset = params.get("preset")
    if preset and str(preset).lower() != "none":
        overlay = path.parent / "presets" / f"{preset}.yaml"
        if not overlay.is_file():
            known = sorted(p.stem for p in (path.parent / "presets").glob("*.yaml"))
            raise FileNotFoundError(f"params preset {preset!r} not found: expected {overlay} (available: {known})")
        with open(overlay, encoding="utf-8") as fh:
            params = deep_merge(params, yaml.safe_load(fh) or {})
    for dotted, value in (overrides or {}).items():
        set_dotted(params, dotted, value)
    return params


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overlay`` recursively (dicts merge, any other value replaces); inputs unchanged."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``; raise ``KeyError`` naming a missing parent."""
    *parents, leaf = dotted.split(".")
    node = tree
    for i, key in enumerate(parents):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"unknown parameter group {'.'.join(parents[: i + 1])!r} in override {dotted!r}")
        node = node[key]
    node[leaf] = value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (lists are kept as their string form), for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
