"""Project location and YAML overlays shared by the library and the pipeline.

* :func:`find_root`: the folder holding ``params.yaml``; :func:`tracking_uri`: the MLflow store both the CLI and
  the pipeline use.
* :func:`read_preset`: a params overlay with its ``base:`` chain resolved; :func:`deep_merge`,
  :func:`set_dotted`, :func:`flatten`: the merge rules (mappings merge key by key, other values replace, a
  mapping with ``_replace: true`` replaces whole).

The typed schema and validation of ``params.yaml`` are in :mod:`pipelines.params`; the environment defaults of
the orchestration stack (telemetry off, Prefect home) in :mod:`pipelines.env`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

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


def _cuda_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def library_env_defaults(root: str | os.PathLike | None = None) -> None:
    """Defaults the training engine needs (never overriding a set value): ``DS_ACCELERATOR=cpu`` when no CUDA
    device is visible, ``TORCH_EXTENSIONS_DIR=<project>/.cache/torch_extensions`` (DeepSpeed's JIT-built CPU ops
    are compiled once and kept)."""
    if not _cuda_visible():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(root or find_root()) / ".cache" / "torch_extensions"))


def mlflow_env_defaults() -> None:
    """MLflow defaults for loading and logging models offline: telemetry off, no ``pip`` dry run when a model is
    logged, no progress bars (never overriding a set value)."""
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: ``{}``). Raises ``ValueError`` otherwise, or when the
    file is not valid YAML (the message names the file and the parser's line and column)."""
    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"{path} is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping, got {type(data).__name__}")
    return data


def read_preset(path: str | os.PathLike, keep_marks: bool = False, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset overlay with its ``base:`` presets (names in the same folder, applied first, in order) merged in;
    ``keep_marks`` keeps the ``_replace`` marks for a further merge onto params.yaml.

    Raises ``FileNotFoundError`` (listing the presets there) for a missing preset, ``ValueError`` for a loop.
    """
    path = Path(path)
    if path.stem in _seen:
        raise ValueError(f"presets inherit in a loop: {' -> '.join([*_seen, path.stem])}")
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"params preset {path.stem!r} not found: expected {path} (available: {known})")
    data = read_yaml_mapping(path)
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, read_preset(path.parent / f"{base}.yaml", True, (*_seen, path.stem)))
    merged = deep_merge(merged, data)
    return merged if keep_marks else strip_replace_marks(merged)


def strip_replace_marks(tree: Any) -> Any:
    """``tree`` without the ``_replace`` keys of its mappings."""
    if isinstance(tree, dict):
        return {k: strip_replace_marks(v) for k, v in tree.items() if k != "_replace"}
    if isinstance(tree, list):
        return [strip_replace_marks(v) for v in tree]
    return tree


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overlay`` recursively (mappings merge, other values replace; a mapping with
    ``_replace: true`` replaces whole); inputs unchanged."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and value.get("_replace"):
            out[key] = copy.deepcopy(value)  # the mark stays until the last merge (strip_replace_marks)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating missing groups (a schema then rejects
    unknown names). Raises ``ValueError`` when a parent is a value, not a group."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is a value, not a group")
    node[leaf] = value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (lists kept whole), e.g. for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
