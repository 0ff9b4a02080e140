"""MaskDCPT losses: L_total = alpha * L1(restored, gt) + FocalLoss(logits, labels).

Spec: ``docs/method.md`` §2 (paper Eq. 4-5; FocalLoss as in DCPT ``classify_loss.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FocalLoss", "focal_loss", "maskdcpt_loss", "psnr_loss", "relative_l1_loss", "restoration_loss", "RESTORATION_LOSSES"]


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


#: Fine-tuning pixel losses (params ``finetune.loss``).
RESTORATION_LOSSES = ("l1", "psnr", "relative_l1")


def psnr_loss(restored: torch.Tensor, gt: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative PSNR per sample, averaged: ``mean_i 10 log10(MSE_i + eps)`` in dB (lower is better).

    The PSNR loss of NAFNet's official training configs (Chen et al., "Simple Baselines for Image Restoration",
    ECCV 2022; ``PSNRLoss`` in its BasicSR fork): each sample's gradient is scaled by ``1 / MSE_i``, so a
    batch mixing degradations of very different error sizes (haze, low light vs. noise, rain) weighs every
    sample by its relative, not absolute, error. ``[B, C, H, W]`` twice, any range; returns a scalar.

    Raises ``ValueError`` if the shapes differ.
    """
    if restored.shape != gt.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and gt {tuple(gt.shape)} must have the same shape")
    mse = (restored - gt).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(mse + eps)).mean()


def relative_l1_loss(restored: torch.Tensor, gt: torch.Tensor, lq: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Mean over samples of ``L1(restored_i, gt_i) / max(L1(lq_i, gt_i), floor)``: the share of the input's own
    error that is left (1 for the identity, < 1 when the sample is restored), so every degradation counts by
    its relative improvement whatever the size of its error. ``[B, C, H, W]`` three times; scalar.
    Raises ``ValueError`` if the shapes differ."""
    if not (restored.shape == gt.shape == lq.shape):
        raise ValueError(f"restored {tuple(restored.shape)}, gt {tuple(gt.shape)} and lq {tuple(lq.shape)} "
                         "must have the same shape")
    err = (restored - gt).abs().flatten(1).mean(1)
    ref = (lq - gt).abs().flatten(1).mean(1).clamp(min=floor)
    return (err / ref.detach()).mean()


def restoration_loss(restored: torch.Tensor, gt: torch.Tensor, kind: str = "l1",
                     lq: torch.Tensor | None = None) -> torch.Tensor:
    """The fine-tuning pixel loss ``kind`` (:data:`RESTORATION_LOSSES`): ``l1`` (mean absolute error, the DCPT
    fine-tune configs), ``psnr`` (:func:`psnr_loss`) or ``relative_l1`` (:func:`relative_l1_loss`, needs
    ``lq``). Raises ``ValueError`` for another kind, a shape mismatch or a missing ``lq``."""
    if kind == "relative_l1":
        if lq is None:
            raise ValueError("the relative_l1 loss needs the LQ input")
        return relative_l1_loss(restored, gt, lq)
    if kind == "l1":
        if restored.shape != gt.shape:
            raise ValueError(f"restored {tuple(restored.shape)} and gt {tuple(gt.shape)} must have the same shape")
        return F.l1_loss(restored, gt, reduction="mean")
    if kind == "psnr":
        return psnr_loss(restored, gt)
    raise ValueError(f"unknown restoration loss {kind!r}; expected one of {RESTORATION_LOSSES}")
