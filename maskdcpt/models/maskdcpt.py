"""The MaskDCPT pre-training model: masked backbone (NAFNet or Restormer) + degradation classifier + recon head.

Spec: ``docs/method.md`` §1.1 (single forward pass, two heads), §1.3 (masking), §1.5
(classifier), §1.6 (reconstruction head: architecture not released), §3.1, §6 item 6 (two learning rates).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from maskdcpt.models.classifier import DegradationClassifier
from maskdcpt.models.masking import expand_mask, random_patch_mask
from maskdcpt.models.nafnet import NAFBlocks

__all__ = ["ReconstructionHead", "MaskDCPTModel", "param_groups", "RECON_HEAD_KINDS"]

RECON_HEAD_KINDS = ("token", "ending")


class ReconstructionHead(nn.Module):
    """Recon-Dec: predict the clean image from the last backbone feature F_l (paper Sec. IV-B, docs/method.md §1.6).

    The paper does not describe Recon-Dec ("following the MIM design"; docs/method.md §1.6 / §7), so two variants exist:

    * ``kind="token"`` (default, docs/method.md §1.6 recommended option, SparK-style light decoder): masked positions of
      F_l are replaced by a learnable mask token ``mask_token`` (1, width, 1, 1), then ``num_blocks`` plain
      (unmasked) :class:`NAFBlocks` at full resolution (``blocks``), then ``out`` = Conv3x3(width -> out_ch).
      Why it is the default: the masked backbone carries no content inside masked 16x16 patches (docs/method.md §1.3,
      tested invariant), so reconstructing them needs spatial context; the NAFBlocks' depthwise convs and
      global SCA pooling provide it, and the token tells the head which positions are holes.
    * ``kind="ending"``: ``out`` = a single Conv3x3(width -> out_ch), the backbone ``ending`` shape (the
      minimal reading of the released code, docs/method.md §1.6). A 3x3 conv sees at most one pixel into a patch, so
      it cannot fill masked-patch interiors (masked L1 collapses to a near-constant there); kept for
      ablation.

    Shape: ``forward(feat [B, width, H, W], mask None | [B, 1, h, w] (bool True=visible or float {0,1}, any
    resolution that H, W are integer multiples of)) -> [B, out_channels, H, W]``. ``mask`` is ignored by
    ``"ending"``; for ``"token"`` with ``mask=None`` no position is replaced.

    Raises:
        ValueError: on an unknown kind or negative ``num_blocks``.
    """

    def __init__(self, width: int, kind: str = "token", num_blocks: int = 2, out_channels: int = 3) -> None:
        super().__init__()
        if kind not in RECON_HEAD_KINDS:
            raise ValueError(f"recon head kind must be one of {RECON_HEAD_KINDS}, got {kind!r}")
        self.kind = kind
        self.width = int(width)
        if kind == "token":
            self.mask_token = nn.Parameter(torch.zeros(1, width, 1, 1))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            self.blocks = NAFBlocks(width, num_blocks)
        self.out = nn.Conv2d(width, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        if feat.dim() != 4 or feat.shape[1] != self.width:
            raise ValueError(f"expected feature [B, {self.width}, H, W], got shape {tuple(feat.shape)}")
        if self.kind == "token":
            if mask is not None:
                m = expand_mask(mask, tuple(feat.shape[-2:]), dtype=feat.dtype).to(feat.device)
                feat = feat * m + self.mask_token * (1.0 - m)
            feat = self.blocks(feat)
        return self.out(feat)


class MaskDCPTModel(nn.Module):
    """MaskDCPT pre-training model (paper Fig. 3, docs/method.md §1.1): one masked forward pass, two heads.

    ``backbone`` is a :class:`~maskdcpt.models.nafnet.NAFNet` or a :class:`~maskdcpt.models.restormer.Restormer` run through
    ``forward_features`` with a random patch mask (patch size ``backbone.mask_patch_size``: 16 for both, the
    NAFNet's ``2**4`` and the paper's default for the Transformers, docs/method.md §1.3 / §1.7; ``keep_ratio`` 0.5); its
    decoder-side features (full resolution first, channels ``backbone.feature_dims``) feed ``classifier``
    (:class:`DegradationClassifier`, docs/method.md §1.5) and its last output F_l (``backbone.last_dim`` channels) feeds
    ``recon_head`` (:class:`ReconstructionHead`, docs/method.md §1.6). The classifier sees the features as they
    are (visible content + content-free constants at masked positions, as in the released kNN code path).

    Reconstruction target (docs/method.md §2): the clean GT over all pixels. ``recon_residual`` (default False):
    whether to add the masked LQ input (``M * lq``) to the head output. Off by default: the masked input is
    zero on half of the patches, so a residual would make the head predict a residual at visible pixels
    but the absolute image at masked ones, with a discontinuity at every patch edge; docs/method.md (§1.6) also
    reads the released code as ``ending`` without ``+inp``. The fine-tuned network keeps its own global
    residual (``NAFNet.forward``).

    Args:
        backbone: the network to pre-train: anything with ``forward_features(inp, mask)``, ``check_input``,
            ``feature_dims``, ``last_dim``, ``img_channel`` and ``mask_patch_size`` (or ``padder_size``), i.e. a
            NAFNet or a Restormer. Its restoration head (``ending`` / ``output``) is unused here and
            transferred as is.
        num_classes: K (5 for 5D).
        keep_ratio: fraction of visible patches (0.5, docs/method.md §1.3).
        recon_head: ``"token"`` or ``"ending"``.
        recon_blocks: NAFBlocks in the token head.
        recon_residual: see above.
        classifier_blocks: BottleneckBlocks per classifier stage (2, docs/method.md §1.5).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        keep_ratio: float = 0.5,
        recon_head: str = "token",
        recon_blocks: int = 2,
        recon_residual: bool = False,
        classifier_blocks: int = 2,
    ) -> None:
        super().__init__()
        if not 0.0 < float(keep_ratio) <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        self.backbone = backbone
        self.classifier = DegradationClassifier(backbone.feature_dims, num_classes, blocks_per_stage=classifier_blocks)
        last_dim = int(getattr(backbone, "last_dim", getattr(backbone, "width", 0)))
        self.recon_head = ReconstructionHead(
            last_dim, kind=recon_head, num_blocks=recon_blocks, out_channels=backbone.img_channel
        )
        self.keep_ratio = float(keep_ratio)
        self.recon_residual = bool(recon_residual)
        self.mask_patch_size = int(getattr(backbone, "mask_patch_size", backbone.padder_size))

    def sample_mask(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Fresh Bool mask ``[batch, 1, height/p, width/p]`` (True = visible), p = ``mask_patch_size``."""
        p = self.mask_patch_size
        return random_patch_mask(batch, height // p, width // p, self.keep_ratio, generator=generator, device=device)

    def forward(
        self, lq: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """One pre-training forward pass.

        Args:
            lq: degraded images ``[B, 3, H, W]`` in [0, 1], H and W multiples of ``mask_patch_size``.
            mask: optional Bool ``[B, 1, H/p, W/p]`` (True = visible); if None a fresh mask is sampled per
                sample with ``generator`` (docs/method.md §1.3: new mask per sample and per forward pass).
            generator: optional ``torch.Generator`` for the mask noise.

        Returns:
            dict with ``restored`` ``[B, 3, H, W]`` (prediction of the GT, unclamped), ``logits`` ``[B, K]``,
            ``mask`` Bool ``[B, 1, H/p, W/p]``.

        Raises:
            ValueError: on an input whose H/W is not a multiple of ``mask_patch_size`` or a bad mask shape.
        """
        self.backbone.check_input(lq, masked=True)
        b, _, h, w = lq.shape
        if mask is None:
            mask = self.sample_mask(b, h, w, generator=generator, device=lq.device)
        else:
            mask = (mask if mask.dtype == torch.bool else mask != 0).to(lq.device)
        last, feats = self.backbone.forward_features(lq, mask)
        logits = self.classifier(feats)
        m_full = expand_mask(mask, (h, w), dtype=lq.dtype)
        restored = self.recon_head(last, m_full)
        if self.recon_residual:
            restored = restored + lq * m_full
        return {"restored": restored, "logits": logits, "mask": mask}

    def backbone_state_dict(self, copy_ending_from_head: bool = False) -> "OrderedDict[str, torch.Tensor]":
        """Backbone weights with the official key names (no prefix) for fine-tuning (docs/method.md §1.1, §3.2).

        Includes the backbone's restoration head (NAFNet ``ending``, Restormer ``output``; not trained in
        pre-training; docs/method.md §7: its transfer is unknown), so the result loads strictly into a plain
        backbone of the same config. With ``copy_ending_from_head=True`` and an ``"ending"`` recon head, the
        head's trained conv is copied into that head instead (docs/method.md §1.6 "copy the last conv").

        Raises:
            ValueError: if ``copy_ending_from_head`` is requested with a ``"token"`` head, or the backbone's
                head conv has no bias (Restormer, ``bias=False``) while the recon head's conv has one.
        """
        sd = OrderedDict((k, v.detach().clone()) for k, v in self.backbone.state_dict().items())
        if copy_ending_from_head:
            if self.recon_head.kind != "ending":
                raise ValueError("copy_ending_from_head needs recon_head='ending' (the token head has extra layers)")
            name = "ending" if "ending.weight" in sd else "output"
            if f"{name}.weight" not in sd:
                raise ValueError("the backbone has neither an 'ending' nor an 'output' conv to copy the head into")
            if f"{name}.bias" not in sd:
                raise ValueError(f"backbone '{name}' conv has no bias; the recon head conv cannot be copied exactly")
            sd[f"{name}.weight"] = self.recon_head.out.weight.detach().clone()
            sd[f"{name}.bias"] = self.recon_head.out.bias.detach().clone()
        return sd


def param_groups(
    model: MaskDCPTModel, backbone_lr: float = 3e-4, head_lr: float = 1e-4, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: the backbone ("encoder") and the heads (classifier + recon head).

    Paper Sec. V / docs/method.md §3.1 and §6 item 6: encoder LR 3e-4, decoders 1e-4, constant, AdamW with weight decay
    0. Only parameters with ``requires_grad`` are included. Usage: ``torch.optim.AdamW(param_groups(m))``.

    Returns:
        ``[{"name": "backbone", "params": [...], "lr": backbone_lr, "weight_decay": wd},
        {"name": "heads", "params": [...], "lr": head_lr, "weight_decay": wd}]``.
    """
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in backbone}
    heads = [p for n, p in model.named_parameters() if p.requires_grad and id(p) not in backbone_ids]
    return [
        {"name": "backbone", "params": backbone, "lr": float(backbone_lr), "weight_decay": float(weight_decay)},
        {"name": "heads", "params": heads, "lr": float(head_lr), "weight_decay": float(weight_decay)},
    ]
