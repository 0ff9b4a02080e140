"""What produced a metrics file: machine, numeric stack and inference protocol.

The same seed gives different numbers on different kinds of machine (SIMD paths of oneDNN/MKL, thread count,
GPU kernels), so every metrics file the pipeline writes carries :func:`provenance` under the key
``"provenance"``: CPU model and SIMD flags, torch version and build, device, threads, the checkpoint key the
weights came from and the inference mode and padding rule.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

__all__ = ["provenance", "cpu_info", "torch_build", "PADDING_RULE", "SIMD_FLAG"]

#: The padding rule of :func:`maskdcpt.restore.pad_to_multiple` (the one rule of the project).
PADDING_RULE = "reflect bottom/right to the network's multiple, crop back"

#: CPU flags that select a different numeric path in torch/oneDNN/MKL (the rest are not recorded).
SIMD_FLAG = re.compile(r"^(sse4_[12]|avx|avx2|fma|f16c|avx512.*|amx_.*|avx_vnni.*|neon|asimd.*|sve[0-9]*|sme[0-9]*)$")


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """``{"model", "flags", "logical_cpus", "machine"}``; ``flags`` are the SIMD flags (:data:`SIMD_FLAG`),
    sorted. Reads ``/proc/cpuinfo`` on Linux; elsewhere the model is :func:`platform.processor` and flags are
    empty."""
    model, flags = "", set()
    path = Path(cpuinfo)
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = {f for f in value.split() if SIMD_FLAG.match(f)}
    return {"model": model or platform.processor() or "unknown", "flags": sorted(flags),
            "logical_cpus": os.cpu_count(), "machine": platform.machine()}


def torch_build() -> dict[str, Any]:
    """torch's version, git hash, CUDA/cuDNN versions (None on a CPU build), the CPU capability dispatched to
    (e.g. ``AVX512``) and whether oneDNN (mkldnn) and MKL are compiled in."""
    import torch

    capability = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        pass
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": torch.__version__, "git": getattr(torch.version, "git_version", None),
            "cuda": torch.version.cuda, "cudnn": cudnn, "cpu_capability": capability,
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "mkl": bool(torch.backends.mkl.is_available())}


def provenance(device: str = "cpu", weights_key: str | None = "params_ema", inference: str | None = "whole image",
               padding: str | None = PADDING_RULE, **extra: Any) -> dict[str, Any]:
    """The provenance dict of a metrics file.

    Args:
        device: where the numbers were computed (``cpu``, ``cuda:0``); a CUDA device adds the GPU's name.
        weights_key: checkpoint entry the weights came from (``params_ema`` / ``params``); None for training
            metrics that are not from a saved checkpoint.
        inference: ``"whole image"`` or ``"tiles <size>/<overlap>"``; None when nothing was restored.
        padding: the padding rule (:data:`PADDING_RULE`); None when nothing was restored.
        extra: further JSON-able entries (e.g. ``precision="fp32"``).
    """
    import numpy as np
    import torch

    out: dict[str, Any] = {"cpu": cpu_info(), "torch": torch_build(), "numpy": np.__version__,
                           "python": platform.python_version(), "device": str(device),
                           "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                           "weights_key": weights_key, "inference": inference, "padding": padding}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    out.update(extra)
    return out
