"""MLflow pyfunc serving of a restoration network: ``mlflow models serve`` / ``mlflow.pyfunc.load_model``.

:class:`RestorerPyfunc` wraps a network saved as a checkpoint artifact (``{"params", "params_ema", "meta"}``,
loaded with :func:`maskdcpt.inference.load_model`, so NAFNet shapes are inferred from the weights) and restores
images with :func:`maskdcpt.inference.restore_image` (exact output size, optional tiling).

Input/output: channel-last images. The logged signature is a float32 batch ``(N, H, W, 3)`` in [0, 1] (MLflow
enforces tensor ranks and dtypes strictly, so through ``pyfunc.load_model`` and the REST server a single image
is sent as a batch of one). Called directly, :meth:`RestorerPyfunc.predict` also accepts one ``(H, W, 3)``
image and ``uint8`` arrays and returns the same shape and dtype.

REST example (``mlflow models serve -m models:/maskdcpt-nafnet-5d@champion --env-manager local -p 5001``)::

    curl -X POST 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
         -d '{"inputs": [[[[0.1, 0.2, 0.3], ...]]]}'        # -> {"predictions": [[[[...]]]]}
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

try:  # mlflow is a pipeline dependency; maskdcpt itself imports without it
    from mlflow.exceptions import MlflowException as _MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE as _INVALID
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object
    _MlflowException = Exception
    _INVALID = None

DEFAULT_MAX_PIXELS = 4096 * 4096  # per request (all images of a batch together)


class BadImageInput(_MlflowException, ValueError):
    """A request that is not a restorable image batch. The scoring server answers HTTP 400 with this message
    (an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``); called directly it is a ``ValueError``."""

    def __init__(self, message: str):
        if _MlflowException is Exception:  # pragma: no cover
            super().__init__(message)
        else:
            super().__init__(message, error_code=_INVALID)

__all__ = ["RestorerPyfunc", "BadImageInput", "DEFAULT_MAX_PIXELS", "pyfunc_signature", "save_restorer_checkpoint",
           "log_pyfunc_model"]


class RestorerPyfunc(_PythonModel):
    """MLflow ``PythonModel`` restoring images with a network from the ``checkpoint`` artifact.

    Model config (``model_config`` of :func:`log_pyfunc_model`): ``tile`` (int or None, default None),
    ``overlap`` (default 32), ``device`` (default ``"auto"``: cuda if available), ``checkpoint_sha256`` (the
    checkpoint's SHA-256 when it was logged; verified before the weights are loaded), ``max_pixels`` (pixels per
    request, all images together; default :data:`DEFAULT_MAX_PIXELS`).
    """

    def load_context(self, context) -> None:
        """Load the ``checkpoint`` artifact after checking its SHA-256 (``ChecksumError`` when it differs; a model
        logged without one is loaded with a warning)."""
        from maskdcpt.inference import load_model
        from maskdcpt.integrity import verify_files

        cfg = dict(getattr(context, "model_config", None) or {})
        self.tile = cfg.get("tile")
        self.overlap = int(cfg.get("overlap", 32))
        self.max_pixels = int(cfg.get("max_pixels") or DEFAULT_MAX_PIXELS)
        ckpt = Path(context.artifacts["checkpoint"])
        if cfg.get("checkpoint_sha256"):
            verify_files(ckpt.parent, {ckpt.name: cfg["checkpoint_sha256"]}, what=f"checkpoint artifact {ckpt}")
        else:
            warnings.warn(f"pyfunc model logged without checkpoint_sha256: {ckpt} is loaded unverified", stacklevel=2)
        self.net = load_model(ckpt, device=cfg.get("device", "auto"))

    def predict(self, context, model_input, params=None):
        """Restore ``model_input``: ``(H, W, 3)`` or ``(N, H, W, 3)``, float32 in [0, 1] or uint8.

        Returns an array of the same shape and dtype (float32 for float input).

        Raises:
            BadImageInput: a pandas DataFrame (MLflow's JSON ``dataframe_*`` formats), another shape, a non-numeric
                or non-finite array, or more than ``max_pixels`` pixels.
        """
        from maskdcpt.inference import restore_image

        if hasattr(model_input, "to_numpy") and not isinstance(model_input, np.ndarray):
            raise BadImageInput("send the image as a tensor ('inputs' / 'instances' JSON), not as a dataframe")
        x = np.asarray(model_input)
        if x.ndim not in (3, 4) or x.shape[-1] != 3 or min(x.shape) == 0:
            raise BadImageInput(f"expected (H, W, 3) or (N, H, W, 3) images, got shape {x.shape}")
        if x.dtype.kind not in "fui":
            raise BadImageInput(f"expected float32 in [0, 1] or uint8 pixels, got dtype {x.dtype}")
        pixels = int(np.prod(x.shape[:-1]))
        if pixels > getattr(self, "max_pixels", DEFAULT_MAX_PIXELS):
            raise BadImageInput(f"{pixels} pixels in one request exceed max_pixels={self.max_pixels}; "
                                "send fewer or smaller images")
        if x.dtype.kind == "f":
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise BadImageInput("the image has NaN or infinite values")
        if x.ndim == 3:
            return restore_image(self.net, x, tile=self.tile, overlap=self.overlap)
        return np.stack([restore_image(self.net, im, tile=self.tile, overlap=self.overlap) for im in x])


def pyfunc_signature():
    """``(N, H, W, 3)`` float32 in and out (any batch and size)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3))])
    return ModelSignature(inputs=spec, outputs=spec)


def save_restorer_checkpoint(net, path: str | os.PathLike) -> Path:
    """Write ``net``'s weights as ``{"params", "params_ema", "meta"}`` (both entries the same tensors) atomically.

    ``meta`` carries ``arch`` (``nafnet`` for a :class:`~maskdcpt.models.NAFNet`, else ``net.maskdcpt_info`` /
    the class name) and, for NAFNet, the constructor configuration.
    """
    import torch

    from maskdcpt.imageio import atomic_open
    from maskdcpt.models import NAFNet

    info = dict(getattr(net, "maskdcpt_info", {}) or {})
    sd = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    if isinstance(net, NAFNet):
        meta = {"arch": "nafnet", "preset": info.get("preset"),
                "config": {"img_channel": net.img_channel, "width": net.width, "enc_blk_nums": list(net.enc_blk_nums),
                           "middle_blk_num": net.middle_blk_num, "dec_blk_nums": list(net.dec_blk_nums)}}
    else:
        meta = {"arch": info.get("arch", type(net).__name__.lower()), "preset": info.get("preset")}
    with atomic_open(path, "wb") as fh:
        torch.save({"params": sd, "params_ema": sd, "meta": meta}, fh)
    return Path(path)


def log_pyfunc_model(net_or_ckpt_path: Any, name: str = "model", registered_model_name: str | None = None,
                     tile: int | None = None, overlap: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Log a restorer as an MLflow pyfunc model under the active run (one is started if none is active).

    Args:
        net_or_ckpt_path: an ``nn.Module`` (saved with :func:`save_restorer_checkpoint`) or a checkpoint file
            (ours or a release file; copied as the ``checkpoint`` artifact).
        name: the model's artifact name.
        registered_model_name: register a new version under this name too.
        tile, overlap, max_pixels: the :class:`RestorerPyfunc` model config.

    The model ships the ``maskdcpt`` package as code, explicit pip requirements (torch, numpy, mlflow, opencv,
    pillow, scikit-image, pyyaml pinned to the installed versions, so nothing is resolved over the network;
    ``MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK`` is set by :mod:`maskdcpt`), :func:`pyfunc_signature` and a
    ``(1, 32, 32, 3)`` input example. Returns MLflow's ``ModelInfo``.

    Raises:
        FileNotFoundError: a checkpoint path that does not exist.
        ValueError: a checkpoint that :func:`maskdcpt.inference.load_model` cannot load.
    """
    import mlflow
    import mlflow.pyfunc
    import torch

    import maskdcpt
    from maskdcpt.inference import load_model
    from maskdcpt.integrity import file_sha256

    with tempfile.TemporaryDirectory(prefix="maskdcpt-pyfunc-") as tmp:
        if isinstance(net_or_ckpt_path, torch.nn.Module):
            ckpt = save_restorer_checkpoint(net_or_ckpt_path, Path(tmp) / "model.pt")
        else:
            ckpt = Path(net_or_ckpt_path)
            load_model(ckpt, device="cpu")  # fail early, with a clear error, on a bad file
        example = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
        kwargs = dict(name=name, python_model=RestorerPyfunc(), artifacts={"checkpoint": str(ckpt)},
                      code_paths=[str(Path(maskdcpt.__file__).parent)], pip_requirements=_requirements(),
                      signature=pyfunc_signature(), input_example=example,
                      model_config={"tile": tile, "overlap": int(overlap), "device": "auto",
                                    "max_pixels": int(max_pixels), "checkpoint_sha256": file_sha256(ckpt)},
                      registered_model_name=registered_model_name)
        if mlflow.active_run() is None:
            with mlflow.start_run():
                return mlflow.pyfunc.log_model(**kwargs)
        return mlflow.pyfunc.log_model(**kwargs)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("torch", "numpy", "mlflow", "opencv-python-headless", "pillow", "scikit-image", "pyyaml"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs
