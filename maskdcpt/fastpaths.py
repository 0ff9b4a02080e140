"""Inference fast paths for a restoration network: the same function as the plain eager network (the reference
and the fallback), run faster.

* ``nhwc``: a channels-last copy (:class:`InferenceNet`);
* ``compile``: that copy through ``torch.compile`` (inductor);
* ``onnx``: the network exported to ONNX and run by ONNX Runtime's CPU provider (:class:`OnnxNet`);
* ``openvino``: the same ONNX graph compiled by OpenVINO's CPU plugin in fp32, one compiled graph per input
  shape (:class:`OpenVinoNet`).

Every path's output matches the eager network's within 1e-4 (tested; ``scripts/bench_restore.py`` checks it
on every run). :func:`prepare_for_inference` picks one by name.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from maskdcpt.layout import to_channels_last
from maskdcpt.restore import network_multiple

__all__ = ["FAST_MODES", "InferenceNet", "OnnxNet", "OpenVinoNet", "prepare_for_inference"]

FAST_MODES = ("eager", "nhwc", "compile", "onnx", "openvino")


class InferenceNet(nn.Module):
    """A restorer prepared for inference: a private copy of ``net`` in eval mode, weights and activations in
    NHWC (``channels_last``) layout, optionally fused by ``torch.compile`` (inductor).

    The function is the network's own (the same weights and operators, only the memory layout and the kernel
    fusion differ); outputs match the eager NCHW network within 1e-4 (tested, and checked by
    ``scripts/bench_restore.py``). ``forward`` takes and returns ``(N, C, H, W)`` tensors; H, W multiples of
    :attr:`pad_multiple` as for the wrapped network. ``torch.compile`` specialises on each input shape (one
    compilation per tile shape, cached for the process).

    Args:
        net: a restoration network (``[N, 3, H, W]`` -> same).
        mode: ``"nhwc"`` (layout only) or ``"compile"`` (layout + ``torch.compile``).

    Raises:
        ValueError: an unknown ``mode``.
    """

    def __init__(self, net: nn.Module, mode: str = "nhwc") -> None:
        super().__init__()
        if mode not in ("nhwc", "compile"):
            raise ValueError(f"mode must be 'nhwc' or 'compile', got {mode!r}")
        import copy

        self.inner = to_channels_last(copy.deepcopy(net).eval())
        for p in self.inner.parameters():
            p.requires_grad_(False)
        self.mode = mode
        self.pad_multiple = network_multiple(net)
        self.maskdcpt_info = {**dict(getattr(net, "maskdcpt_info", {}) or {}), "fast_path": mode}
        self._fn = torch.compile(self.inner, dynamic=False) if mode == "compile" else self.inner
        self._compiled_ok = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.contiguous(memory_format=torch.channels_last)
        if self.mode != "compile" or self._compiled_ok:
            return self._fn(x).contiguous()
        try:  # inductor reports a missing toolchain or an unsupported op only on the first call
            y = self._fn(x)
        except Exception as e:  # noqa: BLE001 - inductor raises many types
            import warnings

            warnings.warn(f"torch.compile is unusable here ({type(e).__name__}: {str(e)[:200]}); using the NHWC "
                          "eager path", RuntimeWarning, stacklevel=2)
            self.mode, self._fn = "nhwc", self.inner
            self.maskdcpt_info["fast_path"] = "nhwc"
            y = self._fn(x)
        self._compiled_ok = True
        return y.contiguous()


def prepare_for_inference(net: nn.Module, mode: str = "nhwc") -> nn.Module:
    """``net`` itself for ``mode="eager"`` (the reference path), else a fast copy (see the module docstring).

    With ``"compile"`` the first call of each input shape compiles (tens of seconds to minutes on a small
    CPU; inductor's on-disk cache makes later processes faster); if ``torch.compile`` cannot run here it falls
    back to ``"nhwc"`` with a ``RuntimeWarning``. ``"onnx"`` and ``"openvino"`` (CPU only) export the network
    once to ONNX (cached) and fall back to ``"nhwc"`` with a ``RuntimeWarning`` when their runtime is missing or
    the export fails.

    Raises:
        ValueError: a mode not in :data:`FAST_MODES`, or ``onnx`` / ``openvino`` for a network on a GPU.
    """
    if mode not in FAST_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {FAST_MODES}")
    if mode in ("onnx", "openvino"):
        p = next(net.parameters(), None)
        if p is not None and p.device.type != "cpu":
            raise ValueError(f"inference mode {mode!r} runs on the CPU; use 'nhwc' or 'compile' on a GPU")
        try:
            return OnnxNet(net) if mode == "onnx" else OpenVinoNet(net)
        except Exception as e:  # noqa: BLE001 - ImportError, or an exporter failure on an unusual network
            import warnings

            name = "ONNX Runtime" if mode == "onnx" else "OpenVINO"
            warnings.warn(f"{name} path unavailable ({type(e).__name__}: {str(e)[:200]}); using the NHWC "
                          "eager path", RuntimeWarning, stacklevel=2)
            return InferenceNet(net, "nhwc")
    return net if mode == "eager" else InferenceNet(net, mode)


class OnnxNet(nn.Module):
    """The network exported to ONNX and run by ONNX Runtime's CPU provider (graph optimisations on).

    The export (``torch.onnx.export``, dynamo exporter) has dynamic H and W in multiples of
    :attr:`pad_multiple`, so one graph serves every tile and image size; it is cached under ``cache_dir``
    (default ``$XDG_CACHE_HOME/maskdcpt/onnx`` or ``~/.cache/maskdcpt/onnx``) keyed by the sha256 of the
    weights, the network class and the torch/onnx versions. ``forward`` takes and returns float32
    ``(N, C, H, W)`` CPU tensors; outputs match the eager network within 1e-4 (tested).

    Raises:
        ImportError: onnxruntime (or the exporter's onnx/onnxscript) is not installed.
    """

    def __init__(self, net: nn.Module, cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.pad_multiple = network_multiple(net)
        self.maskdcpt_info = {**dict(getattr(net, "maskdcpt_info", {}) or {}), "fast_path": "onnx"}
        self.path = _onnx_export(net, self.pad_multiple, cache_dir)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self._input: a})[0])


def _onnx_export(net: nn.Module, multiple: int, cache_dir: str | os.PathLike | None) -> Path:
    import hashlib

    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "maskdcpt" / "onnx"
    import onnx

    h = hashlib.sha256(f"{type(net).__module__}.{type(net).__qualname__}|{torch.__version__}|{onnx.__version__}|"
                       f"{multiple}".encode())
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    path = base / f"{h.hexdigest()[:32]}.onnx"
    if path.is_file():
        return path
    import copy
    import tempfile

    base.mkdir(parents=True, exist_ok=True)
    cpu = copy.deepcopy(net).to("cpu", torch.float32).eval()
    c = int(getattr(net, "img_channel", 3))
    dh, dw = torch.export.Dim("h", min=1, max=1024), torch.export.Dim("w", min=1, max=1024)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=base)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(cpu, (torch.rand(1, c, 4 * multiple, 4 * multiple),), tmp, dynamo=True,
                              external_data=False, input_names=["inp"], output_names=["out"],
                              dynamic_shapes={"inp": {2: multiple * dh, 3: multiple * dw}}, verbose=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OpenVinoNet(nn.Module):
    """The ONNX graph of :class:`OnnxNet` compiled by OpenVINO's CPU plugin, fp32 throughout.

    ``INFERENCE_PRECISION_HINT`` is pinned to ``f32``: on CPUs with bf16 instructions OpenVINO would otherwise run
    in bf16 (about 5e-3 off the eager output instead of 4e-7). The graph is compiled for each input shape it
    meets (a static shape runs faster than the dynamic graph; compiling one takes about a second) and the
    ``max_shapes`` most recent compiled graphs are kept, so a tiled image costs at most a few compilations.
    ``forward`` takes and returns float32 ``(N, C, H, W)`` CPU tensors, H and W multiples of :attr:`pad_multiple`.

    Raises:
        ImportError: openvino (or the exporter's onnx/onnxscript) is not installed.
    """

    def __init__(self, net: nn.Module, cache_dir: str | os.PathLike | None = None, threads: int | None = None,
                 max_shapes: int = 8) -> None:
        super().__init__()
        import openvino as ov

        self.pad_multiple = network_multiple(net)
        self.maskdcpt_info = {**dict(getattr(net, "maskdcpt_info", {}) or {}), "fast_path": "openvino"}
        self.path = _onnx_export(net, self.pad_multiple, cache_dir)
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))  # read once; each shape compiles a reshaped clone
        self._config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self._requests: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self.max_shapes = int(max_shapes)

    def _request(self, shape: tuple[int, ...]):
        req = self._requests.get(shape)
        if req is None:
            model = self._model.clone()
            model.reshape({0: list(shape)})
            req = self._core.compile_model(model, "CPU", self._config).create_infer_request()
            self._requests[shape] = req
            while len(self._requests) > self.max_shapes:
                self._requests.popitem(last=False)
        else:
            self._requests.move_to_end(shape)
        return req

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._request(tuple(a.shape)).infer({0: a})[0]
        return torch.from_numpy(out.copy())  # the request owns its output buffer
