"""MaskDCPT losses: L_total = alpha * L1(restored, gt) + FocalLoss(logits, labels).

Spec: ``docs/method.md`` §2 (paper Eq. 4-5; FocalLoss as in DCPT ``classify_loss.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FocalLoss", "focal_loss", "maskdcpt_loss"]


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss, mean over the batch (docs/method.md §2).

    ``log_p = log_softmax(logits)``, ``ce_i = -log_p[i, y_i]``, ``p_t = exp(-ce_i)``,
    ``loss = mean((1 - p_t) ** gamma * ce_i)``; no class weights, no label smoothing. ``gamma = 0`` is plain
    cross-entropy.

    Args:
        logits: ``[B, K]`` unnormalised scores.
        labels: ``[B]`` integer class indices in [0, K).
        gamma: focusing parameter >= 0 (2.0 in the DCPT configs).

    Returns:
        scalar tensor.

    Raises:
        ValueError: on mismatched shapes or negative gamma.
    """
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits [B, K] and labels [B], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    log_p = F.log_softmax(logits, dim=-1)
    ce = F.nll_loss(log_p, labels.long(), reduction="none")
    if gamma == 0:
        return ce.mean()
    p_t = torch.exp(-ce)
    return ((1.0 - p_t) ** gamma * ce).mean()


class FocalLoss(nn.Module):
    """Module wrapper of :func:`focal_loss`: ``FocalLoss(gamma=2.0)(logits [B, K], labels [B]) -> scalar``."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return focal_loss(logits, labels, self.gamma)

    def extra_repr(self) -> str:  # noqa: D102
        return f"gamma={self.gamma}"


def maskdcpt_loss(
    restored: torch.Tensor,
    gt: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    gamma: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pre-training objective ``alpha * L1 + Focal`` (paper Eq. 5, alpha = 1 by default; docs/method.md §2).

    L1 is the plain mean absolute error against the clean GT over **all** pixels (masked and visible).

    Args:
        restored: ``[B, C, H, W]`` prediction; gt: same shape, clean image in [0, 1].
        logits: ``[B, K]``; labels: ``[B]`` class indices (sub-dataset index, docs/method.md §1.5).
        alpha: pixel-loss weight; gamma: focal gamma.

    Returns:
        ``(total, {"l1": ..., "focal": ...})``: ``total`` is a differentiable scalar; the dict holds detached
        scalar float tensors for logging.

    Raises:
        ValueError: if ``restored`` and ``gt`` shapes differ (or via :func:`focal_loss`).
    """
    if restored.shape != gt.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and gt {tuple(gt.shape)} must have the same shape")
    l1 = F.l1_loss(restored, gt, reduction="mean")
    focal = focal_loss(logits, labels, gamma)
    total = alpha * l1 + focal
    return total, {"l1": l1.detach(), "focal": focal.detach()}
