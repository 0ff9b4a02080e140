"""Memory layout of a network's weights (NHWC for oneDNN's fast convolution paths)."""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

__all__ = ["to_channels_last"]


def to_channels_last(module: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer of ``module`` in NHWC (``channels_last``) layout, in place; tensors of
    other ranks (biases, LayerNorm weights, PromptIR's 5-D prompt components, SwinIR's tables) stay as they are.

    Values are unchanged. ``module.to(memory_format=torch.channels_last)`` raises ``RuntimeError`` on the first
    5-D tensor, so it cannot be used for PromptIR. Returns ``module``.
    """
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module
