"""Restore and diagnose users' images: the public facade over the modules that do the work.

* :func:`load_model` (checkpoint files or MLflow model URIs) and :func:`load_checkpoint_state` /
  :func:`infer_nafnet_config`: checkpoint loading.
* :mod:`maskdcpt.restore`: :func:`pad_to_multiple`, :func:`tile_spans`, :func:`restore_image` (size-exact, tiled).
* :mod:`maskdcpt.native_io`: :class:`NativeImage`, :func:`read_image_native`, :func:`write_image_native`,
  :func:`expand_inputs`.
* :mod:`maskdcpt.classify`: :func:`load_classifier`, :func:`classify_image` (paper Sec. IV-B).

Callers may keep importing every name from here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from maskdcpt.config import tracking_uri
from maskdcpt.integrity import verify_if_recorded
from maskdcpt.restore import resolve_device

__all__ = [
    "DEFAULT_MODEL_URI",
    "REGISTERED_MODEL_NAME",
    "tracking_uri",
    "resolve_device",
    "infer_nafnet_config",
    "load_model",
    "load_checkpoint_state",
    "pad_to_multiple",
    "tile_spans",
    "restore_image",
    "restore_tensor",
    "prepare_for_inference",
    "NativeImage",
    "read_image_native",
    "write_image_native",
    "load_classifier",
    "classify_image",
    "expand_inputs",
]

#: The registered model the pipeline's ``register`` stage writes (pipelines/registry.py).
REGISTERED_MODEL_NAME = "maskdcpt-nafnet-5d"
#: Default model of ``maskdcpt restore``: the registry's champion.
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL_NAME}@champion"

_URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")
_REGISTRY_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


# --------------------------------------------------------------------------------------------------
# checkpoints and models


from maskdcpt.models.checkpoints import (  # noqa: E402  - the one checkpoint loader (moved there)
    build_restorer,
    infer_nafnet_config,
    load_checkpoint_state,
)


def _build_restorer(sd: dict[str, torch.Tensor], meta: Mapping[str, Any], arch: str | None = None) -> nn.Module:
    """Old name of :func:`maskdcpt.models.checkpoints.build_restorer` (architecture detected from the keys)."""
    return build_restorer(sd, meta, arch=arch)


def load_model(spec: str | os.PathLike, device: str | torch.device | None = "auto", key: str = "params_ema",
               tracking: str | None = None, arch: str | None = None) -> nn.Module:
    """Load a restoration network in eval mode on ``device``.

    Args:
        spec: a checkpoint file (see :func:`load_checkpoint_state`; architecture recognised from the key names:
            NAFNet, Restormer, PromptIR or SwinIR; configuration inferred from the shapes) or an MLflow model URI
            (``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``, a local MLflow model folder). MLflow models with the
            ``pytorch`` flavour are loaded with ``mlflow.pytorch.load_model``; :mod:`maskdcpt.serving` pyfunc
            models are unwrapped to their network.
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"``, ``"cuda"``...
        key: checkpoint entry to prefer (``params_ema``, the paper's evaluation weights, or ``params``).
        tracking: MLflow tracking URI for registry URIs (default: the one already set with
            ``mlflow.set_tracking_uri``, else :func:`tracking_uri`: ``$MLFLOW_TRACKING_URI`` or the project's
            ``sqlite:///<root>/mlflow.db``).
        arch: force the architecture of a checkpoint file (one of ``maskdcpt.models.ARCHS``).

    Returns:
        an ``nn.Module`` mapping ``[N, 3, H, W]`` in [0, 1] (H, W multiples of its ``padder_size``) to the
        restored image; attribute ``maskdcpt_info`` describes what was loaded.

    Raises:
        FileNotFoundError: a file path that does not exist.
        ValueError: an unreadable or unrecognised checkpoint, or an MLflow model that is not a restorer.
        maskdcpt.integrity.ChecksumError: weights whose bytes differ from their record: the ``sha256.json`` beside
            a checkpoint file (when there is one), a registry version's ``weights_sha256`` tag (names the version).
    """
    dev = resolve_device(device)
    text = str(spec)
    path = Path(text)
    if path.is_file():
        verified = verify_if_recorded(path)
        sd, meta = load_checkpoint_state(path, key=key)
        net = build_restorer(sd, meta, arch=arch)
        net.maskdcpt_info.update(source=str(path), weights_verified=verified)
    elif _URI_RE.match(text) or (path.is_dir() and (path / "MLmodel").is_file()):
        net = _load_mlflow(text, dev, tracking)
    else:
        raise FileNotFoundError(f"model not found: {text!r} is neither a checkpoint file nor an MLflow model URI")
    return net.to(dev).eval()


def _load_mlflow(uri: str, device: torch.device, tracking: str | None) -> nn.Module:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:  # keep a URI the caller already chose with mlflow.set_tracking_uri()
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
        already = is_tracking_uri_set()
    except ImportError:  # pragma: no cover - private helper moved
        already = False
    if tracking or not already:
        mlflow.set_tracking_uri(tracking or tracking_uri())
        mlflow.set_registry_uri(tracking or tracking_uri())
    try:
        expected, what = _recorded_weights(uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as e:
        raise ValueError(f"cannot resolve MLflow model {uri!r} (tracking URI {mlflow.get_tracking_uri()}): {e}") from e
    if expected is not None:  # the downloaded copy, i.e. the bytes that are loaded next
        from maskdcpt.integrity import verify_files

        verify_files(local, expected, what=what)
    import yaml

    flavors = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors", {})
    if "pytorch" in flavors:
        import mlflow.pytorch

        net = mlflow.pytorch.load_model(str(local), map_location=device)
    elif "python_function" in flavors:
        import mlflow.pyfunc

        inner = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
        net = getattr(inner, "net", None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"MLflow model {uri!r} is a pyfunc without a torch network (.net)")
    else:
        raise ValueError(f"MLflow model {uri!r} has neither a pytorch nor a python_function flavour: {sorted(flavors)}")
    info = dict(getattr(net, "maskdcpt_info", {}) or {})
    info["source"] = uri
    info["weights_verified"] = expected is not None
    net.maskdcpt_info = info
    return net


def _recorded_weights(uri: str) -> tuple[dict[str, str] | None, str]:
    """For a registry URI (``models:/name@alias``, ``models:/name/N``): the version's recorded weight checksums
    (tag :data:`maskdcpt.integrity.REGISTRY_TAG`) and a description naming the version; ``(None, ...)`` for
    other URIs and, with a warning, for a version registered without checksums."""
    m = _REGISTRY_RE.match(uri)
    if not m:
        return None, uri
    import json
    import warnings

    import mlflow

    from maskdcpt.integrity import REGISTRY_TAG, ChecksumError

    client = mlflow.MlflowClient()
    mv = (client.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
          else client.get_model_version(m["name"], m["version"]))
    what = f"registered model {mv.name} version {mv.version} ({uri})"
    raw = (mv.tags or {}).get(REGISTRY_TAG)
    if not raw:
        warnings.warn(f"{what} has no '{REGISTRY_TAG}' tag: its weights are loaded unverified", stacklevel=3)
        return None, what
    try:
        expected = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ChecksumError(f"{what}: unreadable '{REGISTRY_TAG}' tag ({e})") from e
    return expected, what


# --------------------------------------------------------------------------------------------------
# restoration, native image I/O and the degradation classifier live in their own modules (re-exported)

from maskdcpt.classify import classify_image, load_classifier  # noqa: E402
from maskdcpt.native_io import NativeImage, expand_inputs, read_image_native, write_image_native  # noqa: E402
from maskdcpt.fastpaths import prepare_for_inference  # noqa: E402
from maskdcpt.restore import pad_to_multiple, restore_image, restore_tensor, tile_spans  # noqa: E402
