"""Parameter and FLOP summaries of the backbones (used by ``maskdcpt model-summary`` and the benchmark scripts).

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts **2 FLOPs per
multiply-accumulate** (FLOPs = 2 x MACs) for the ops it has formulas for: convolutions, matrix products
(``mm``/``bmm``/``addmm``/``baddbmm``), scaled-dot-product attention and their backward ops. Element-wise ops,
normalisation, activations, softmax and pooling are **not** counted (they are a few percent of a conv net's
work). Papers usually quote MACs ("FLOPs" in the NAFNet / Restormer tables are MACs): divide by 2 to compare.

Correction: torch's built-in formula for ``aten.convolution_backward`` ignores ``groups`` in the weight-gradient
term, so it overcounts the backward of grouped/depthwise convolutions by the group count (17x for a 16-group
3x3 conv: measured with torch 2.13). :func:`count_flops` replaces it with ``forward conv FLOPs x (number of
requested gradients)``: the input gradient and the weight gradient each cost as many MACs as the forward conv.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["count_flops", "count_parameters", "model_summary", "format_summary"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (all, or only ``requires_grad`` ones)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Backward FLOPs of a (grouped) convolution: forward FLOPs per requested gradient (input, weight).

    ``conv_flop_count`` uses the weight shape ``[c_out, c_in / groups, k, k]``, so grouped convs are right.
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=bool(transposed))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any], depth: int = 1) -> tuple[int, dict[str, int]]:
    """Run ``fn()`` under ``FlopCounterMode`` and return ``(total FLOPs, {module path: FLOPs})``.

    FLOPs = 2 x MACs for convs and matrix products (see the module docstring for what is not counted). Backward
    passes run inside ``fn`` are counted too (with the grouped-conv correction of the module docstring). The
    breakdown has every module path (``"Global"`` is the total); ``depth`` only affects FlopCounterMode's display.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False, depth=depth,
                           custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with mode:
        fn()
    by_module = {name: int(sum(counts.values())) for name, counts in mode.get_flop_counts().items()}
    return int(mode.get_total_flops()), by_module


def model_summary(
    arch: str,
    preset: str | None,
    size: Sequence[int] = (256, 256),
    batch: int = 1,
    device: str | torch.device = "meta",
) -> dict[str, Any]:
    """Parameters (total and per top-level module) and forward FLOPs of a plain backbone.

    The network is built on the ``meta`` device by default: no memory is allocated and the FLOP count needs no
    real computation, so the 67.9 M-parameter NAFNet is summarised in well under a second.

    Args:
        arch: one of ``maskdcpt.models.ARCHS`` (``nafnet``, ``restormer``, ``promptir``, ``swinir``).
        preset: a preset of ``BACKBONE_PRESETS[arch]`` (``paper``/``paper-5d`` accepted for both).
        size: input ``(H, W)`` in pixels; must be multiples of the network's ``pad_multiple`` (16 / 8 / 8 / 8).
        batch: batch size of the counted forward pass (FLOPs scale linearly).
        device: where to build the network (``"meta"`` default, or ``"cpu"``).

    Returns:
        dict: ``arch``, ``preset`` (canonical name), ``parameters`` (int), ``trainable_parameters``,
        ``modules`` ({top-level child: parameters}, in definition order), ``input`` ([batch, C, H, W]),
        ``pad_multiple`` (int), ``flops`` (forward FLOPs, 2 x MACs), ``macs`` (flops / 2), ``gflops``, ``flops_by_module`` ({top-level
        child: FLOPs}), ``flop_convention`` (str).

    Raises:
        ValueError: unknown arch/preset, bad size or batch (with the valid values).
    """
    from maskdcpt.models.backbones import build_backbone, resolve_preset

    preset = resolve_preset(arch, preset)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"size must be two positive ints (H, W), got {size}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    h, w = int(size[0]), int(size[1])
    with torch.device(device):
        model = build_backbone(arch, preset)
    p = int(getattr(model, "pad_multiple", model.padder_size))
    if h % p or w % p:
        raise ValueError(f"--size {h} {w}: H and W must be multiples of {p} for {arch} (pad the input)")
    modules = {name: count_parameters(child) for name, child in model.named_children()}
    x = torch.zeros(batch, model.img_channel, h, w, device=device)
    model.eval()
    with torch.no_grad():
        total, by_module = count_flops(lambda: model(x), depth=2)
    flops_by_module = _top_level(by_module, type(model).__name__, list(modules))
    return {
        "arch": arch,
        "preset": preset,
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "modules": modules,
        "input": [batch, model.img_channel, h, w],
        "pad_multiple": p,
        "flops": total,
        "macs": total // 2,
        "gflops": round(total / 1e9, 3),
        "flops_by_module": flops_by_module,
        "flop_convention": "FLOPs = 2 x MACs (torch.utils.flop_counter.FlopCounterMode; convs and matrix products "
        "only, element-wise/normalisation/activation ops not counted)",
    }


def _top_level(by_module: dict[str, int], root: str, children: list[str]) -> dict[str, int]:
    """FLOPs per top-level child; a container that is never called itself (a ModuleList such as NAFNet's
    ``encoders``) gets the sum of its called children."""
    out = {}
    for child in children:
        key = f"{root}.{child}"
        if key in by_module:
            out[child] = by_module[key]
        else:
            out[child] = sum(v for k, v in by_module.items() if k.startswith(key + ".") and k.count(".") == 2)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable table of a :func:`model_summary` result."""
    n, c, h, w = summary["input"]
    lines = [
        f"{summary['arch']} / {summary['preset']}: {summary['parameters']:,} parameters "
        f"({summary['parameters'] / 1e6:.2f} M)",
        f"forward FLOPs at {n}x{c}x{h}x{w}: {summary['flops']:,} ({summary['flops'] / 1e9:.2f} GFLOPs = "
        f"{summary['macs'] / 1e9:.2f} GMACs; FLOPs = 2 x MACs)",
        "",
        f"{'module':<24}{'parameters':>14}{'GFLOPs':>12}",
    ]
    for name, count in summary["modules"].items():
        fl = summary["flops_by_module"].get(name, 0)
        lines.append(f"{name:<24}{count:>14,}{fl / 1e9:>12.3f}")
    return "\n".join(lines)
