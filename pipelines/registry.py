"""MLflow model registry: log the fine-tuned model, register a version, and gate its promotion.

The registered model is the :mod:`maskdcpt.serving` pyfunc (image array in, restored array out, servable with
``mlflow models serve``); its torch network is :func:`load_registered_network`. :func:`log_restorer` logs the
plain ``mlflow.pytorch`` flavour instead, for users who want ``mlflow.pytorch.load_model``.

A new version always gets alias ``challenger``. It becomes ``champion`` when there is no champion yet, or when,
on the *same* benchmark pairs (the champion is re-evaluated on the current benchmark with the same code), its
mean PSNR beats the champion's by more than ``min_gain_db`` and no degradation loses more than ``max_drop_db``.
The decision and its reason are tags on the version; a rejected challenger stays registered.

A version is created with the tag ``maskdcpt.state=registering`` (in the same request) and set to ``registered``
once its checksums, decision and aliases are in place. A register stage killed in between leaves a version in
``registering`` that no alias points at; the next register deletes it (:func:`remove_abandoned_versions`), so
the registry never keeps a half-registered version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import maskdcpt


def model_signature():
    """Tensor signature ``(-1, 3, -1, -1)`` float32 in and out: any batch and any size (multiples of the
    network's padder size when called directly; :func:`maskdcpt.eval.benchmark.restore_tensor` pads)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))])
    return ModelSignature(inputs=spec, outputs=spec)


def log_restorer(net: torch.nn.Module, registered_name: str | None = None):
    """Log ``net`` (a plain NAFNet) as an MLflow PyTorch model under the active run; optionally register it.

    Pickle serialisation with the ``maskdcpt`` package shipped as code, explicit pip requirements (no network is
    needed to log it), a batch-2 input example and the :func:`model_signature`. Returns MLflow's ``ModelInfo``.
    """
    import mlflow.pytorch

    example = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    return mlflow.pytorch.log_model(
        net.eval(), name="model", serialization_format="pickle",
        code_paths=[str(Path(maskdcpt.__file__).parent)], pip_requirements=requirements,
        signature=model_signature(), input_example=example, registered_model_name=registered_name)


STATE_TAG = "maskdcpt.state"


def register_version(client, model_uri: str, name: str) -> str:
    """Register ``model_uri`` as a new version of ``name`` tagged ``maskdcpt.state=registering``; return it."""
    import mlflow

    mv = mlflow.register_model(model_uri, name, tags={STATE_TAG: "registering"})
    return str(mv.version)


def finish_version(client, name: str, version: str) -> None:
    """Mark ``version`` complete (``maskdcpt.state=registered``): checksums, decision and aliases are set."""
    client.set_model_version_tag(name, version, STATE_TAG, "registered")


def remove_abandoned_versions(client, name: str) -> list[str]:
    """Delete the versions of ``name`` still ``registering`` that no alias points at (left by a register stage
    that was killed); return their numbers. Versions registered by hand (no state tag) are never touched."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    removed = []
    for mv in versions:
        if (mv.tags or {}).get(STATE_TAG) == "registering" and not list(getattr(mv, "aliases", []) or []):
            client.delete_model_version(name, mv.version)
            removed.append(str(mv.version))
    return sorted(removed, key=int)


def decide(challenger: dict[str, float], champion: dict[str, float] | None, min_gain_db: float,
           max_drop_db: float) -> tuple[bool, str]:
    """The promotion rule on per-degradation PSNR dicts (must include ``mean``); returns ``(promote, reason)``."""
    if champion is None:
        return True, "no champion yet"
    gain = challenger["mean"] - champion["mean"]
    drops = {k: champion[k] - challenger[k] for k in champion if k != "mean" and k in challenger}
    worst = max(drops.items(), key=lambda kv: kv[1]) if drops else ("-", 0.0)
    if gain <= min_gain_db:
        return False, (f"mean PSNR {challenger['mean']:.3f} dB vs champion {champion['mean']:.3f} dB: gain "
                       f"{gain:+.3f} dB is not above the margin {min_gain_db:.3f} dB")
    if worst[1] > max_drop_db:
        return False, (f"{worst[0]} drops {worst[1]:.3f} dB (> tolerance {max_drop_db:.3f} dB) although the mean "
                       f"gains {gain:+.3f} dB")
    return True, (f"mean PSNR {challenger['mean']:.3f} dB beats champion {champion['mean']:.3f} dB by "
                  f"{gain:+.3f} dB; worst drop {worst[1]:.3f} dB ({worst[0]})")


def load_registered_network(uri: str) -> torch.nn.Module:
    """The torch network inside a registered restorer (pyfunc or ``mlflow.pytorch`` flavour) on the CPU, its
    weights verified against the version's recorded checksums (:func:`maskdcpt.inference.load_model`).

    Raises:
        ValueError: an unknown URI or a model that is not a restorer.
        maskdcpt.integrity.ChecksumError: weights that differ from the recorded SHA-256 (names the version).
    """
    from maskdcpt.inference import load_model

    return load_model(uri, device="cpu")


def record_weights(client, name: str, version: str, source: Path | None = None) -> dict[str, str]:
    """Hash every weight file of registered version ``name``/``version`` as the registry serves it (a fresh
    download), set them as the version's ``weights_sha256`` tag (JSON) and return them.

    With ``source`` (the checkpoint that was logged) the stored copy must have the same bytes.

    Raises:
        maskdcpt.integrity.ChecksumError: no weight file in the version, or a stored copy that differs from
            ``source`` (a corrupted upload).
    """
    import json
    import tempfile

    import mlflow

    from maskdcpt.integrity import REGISTRY_TAG, ChecksumError, file_sha256, weight_files

    what = f"registered model {name} version {version}"
    with tempfile.TemporaryDirectory(prefix="maskdcpt-register-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        files = weight_files(local)
    if not files:
        raise ChecksumError(f"{what}: no weight file found to record")
    if source is not None and file_sha256(source) not in files.values():
        raise ChecksumError(f"{what}: the stored weights differ from the logged checkpoint {source}")
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    if len(text) > 5000:  # MLflow's tag value limit
        raise ValueError(f"{what}: {len(files)} weight files do not fit in one tag")
    client.set_model_version_tag(name, version, REGISTRY_TAG, text)
    return files


def champion_version(client, name: str):
    """The registered version carrying alias ``champion``, or ``None``."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
