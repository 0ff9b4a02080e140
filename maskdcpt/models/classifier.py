"""Degradation classification decoder (DegCls-Dec) of MaskDCPT.

Spec: ``docs/method.md`` §1.5 (the DCPT ``PromptIR_NoImg_DC`` classifier: ResNet-like stages
with LayerNorm instead of BatchNorm, fed with softmax-weighted multi-level backbone features, paper Eq. 3).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from maskdcpt.models.nafnet import LayerNorm2d

__all__ = ["BottleneckBlock", "DegradationClassifier", "msra_fill"]


def msra_fill(module: nn.Module) -> None:
    """MSRA init as detectron2 ``c2_msra_fill``: kaiming-normal, fan_out, ReLU gain; bias zero (docs/method.md §1.5)."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


class BottleneckBlock(nn.Module):
    """Inverted bottleneck residual block with channels-first LayerNorm (docs/method.md §1.5).

    ``conv1`` 1x1 c->2c, ``conv2`` 3x3 2c->2c, ``conv3`` 1x1 2c->c (all bias=False, MSRA init), each followed
    by LayerNorm over channels (eps 1e-6); ReLU after the first two norms, none before the residual add,
    ReLU after the add: ``out = relu(x + norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x)))))))))``.

    Shape: ``[N, c, H, W] -> [N, c, H, W]``.
    """

    def __init__(self, c: int, expansion: int = 2) -> None:
        super().__init__()
        mid = expansion * c
        self.conv1 = nn.Conv2d(c, mid, kernel_size=1, bias=False)
        self.norm1 = LayerNorm2d(mid, eps=1e-6)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(mid, eps=1e-6)
        self.conv3 = nn.Conv2d(mid, c, kernel_size=1, bias=False)
        self.norm3 = LayerNorm2d(c, eps=1e-6)
        self.act = nn.ReLU(inplace=False)
        for conv in (self.conv1, self.conv2, self.conv3):
            msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.act(x + out)


class DegradationClassifier(nn.Module):
    """DegCls-Dec: classify the degradation from multi-level backbone features (docs/method.md §1.5, paper Eq. 3).

    Forward::

        w = softmax(mixing_weights, dim=0)            # learnable, init ones -> 1/S each
        h = 0
        for i in range(S):
            h = bottleneck_layers[i](h + w[i] * F_i)  # blocks_per_stage BottleneckBlock(c_i)
            h = downsample_layers[i](h)               # Conv1x1(c_i -> c_{i+1}, no bias) -> MaxPool2d(2) -> ReLU
        logits = fc(last_stage(h).mean(dim=(-2, -1)))  # last_stage: blocks_per_stage BottleneckBlock(c_{S-1})

    where c_S := c_{S-1} (the last downsample keeps the channels). With NAFNet 5D features
    ``[64, 128, 256, 512]`` and K=5 this is about 49.29 M parameters (docs/method.md §1.5).

    Args:
        feature_dims: channels of F_0..F_{S-1}, full resolution first (NAFNet: ``backbone.feature_dims``).
        num_classes: K >= 1 (5 for the 5D task; label = sub-dataset index, docs/method.md §1.5).
        blocks_per_stage: BottleneckBlocks per stage (2, detectron2 ``num_res_blocks``).

    Raises:
        ValueError: on empty ``feature_dims`` or ``num_classes < 1``.
    """

    def __init__(self, feature_dims: Sequence[int], num_classes: int, blocks_per_stage: int = 2) -> None:
        super().__init__()
        dims = [int(d) for d in feature_dims]
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"feature_dims must be a non-empty list of positive ints, got {feature_dims}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.feature_dims = dims
        self.num_classes = int(num_classes)
        self.mixing_weights = nn.Parameter(torch.ones(len(dims)))
        self.bottleneck_layers = nn.ModuleList()
        self.downsample_layers = nn.ModuleList()
        for i, c in enumerate(dims):
            c_next = dims[i + 1] if i + 1 < len(dims) else c
            self.bottleneck_layers.append(nn.Sequential(*[BottleneckBlock(c) for _ in range(blocks_per_stage)]))
            down = nn.Conv2d(c, c_next, kernel_size=1, bias=False)
            msra_fill(down)
            self.downsample_layers.append(nn.Sequential(down, nn.MaxPool2d(kernel_size=2, stride=2), nn.ReLU()))
        self.last_stage = nn.Sequential(*[BottleneckBlock(dims[-1]) for _ in range(blocks_per_stage)])
        self.fc = nn.Linear(dims[-1], self.num_classes)

    def _check_features(self, features: Sequence[torch.Tensor]) -> None:
        if len(features) != len(self.feature_dims):
            raise ValueError(
                f"expected {len(self.feature_dims)} feature maps (channels {self.feature_dims}, full resolution "
                f"first), got {len(features)}"
            )
        for i, (f, c) in enumerate(zip(features, self.feature_dims)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"feature {i} must be [B, {c}, H_i, W_i], got shape {tuple(f.shape)}")
            if f.shape[0] != features[0].shape[0]:
                raise ValueError(f"feature {i} has batch {f.shape[0]}, feature 0 has {features[0].shape[0]}")
            if i > 0:
                prev = features[i - 1].shape[-2:]
                want = (prev[0] // 2, prev[1] // 2)
                if tuple(f.shape[-2:]) != want:
                    raise ValueError(
                        f"feature {i} must have half the spatial size of feature {i - 1} ({want}), "
                        f"got {tuple(f.shape[-2:])}"
                    )
        last = features[-1].shape[-2:]
        if min(last) < 2:
            raise ValueError(f"the last feature map must be at least 2x2 (for MaxPool2d(2)), got {tuple(last)}")

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Classify.

        Args:
            features: list of S maps ``[B, c_i, H/2**i, W/2**i]`` (i=0 full resolution), e.g. the ``feats`` of
                :meth:`NAFNet.forward_features`.

        Returns:
            logits ``[B, num_classes]`` (unnormalised).

        Raises:
            ValueError: on a wrong number of features, wrong channels, or inconsistent spatial sizes.
        """
        self._check_features(features)
        w = torch.softmax(self.mixing_weights, dim=0)
        h: torch.Tensor | float = 0.0
        for i, f in enumerate(features):
            h = self.bottleneck_layers[i](h + w[i] * f)
            h = self.downsample_layers[i](h)
        h = self.last_stage(h).mean(dim=(-2, -1))
        return self.fc(h)

