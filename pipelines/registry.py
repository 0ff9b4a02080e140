"""MLflow model registry: log the fine-tuned model, register a version, and gate its promotion.

The registered model is the :mod:`maskdcpt.serving` pyfunc (image array in, restored array out, servable with
``mlflow models serve``); its torch network is :func:`load_registered_network`. :func:`log_restorer` logs the
plain ``mlflow.pytorch`` flavour instead, for users who want ``mlflow.pytorch.load_model``.

A new version always gets alias ``challenger``. It becomes ``champion`` when there is no champion yet, or when,
on the *same* benchmark pairs (the champion is re-evaluated on the current benchmark with the same code), its
mean PSNR beats the champion's by more than ``min_gain_db`` and no degradation loses more than ``max_drop_db``.
The decision and its reason are tags on the version; a rejected challenger stays registered.
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
    """The torch network inside a registered restorer: the pyfunc model's network (``unwrap_python_model().net``),
    or a plain ``mlflow.pytorch`` model. Raises ``mlflow.exceptions.MlflowException`` for an unknown URI."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(uri)
    try:
        return model.unwrap_python_model().net
    except Exception:  # an mlflow.pytorch flavour model
        import mlflow.pytorch

        return mlflow.pytorch.load_model(uri)


def champion_version(client, name: str):
    """The registered version carrying alias ``champion``, or ``None``."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
