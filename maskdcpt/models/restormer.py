"""Restormer backbone (the MaskDCPT repo variant) with SparK-style masked computation.

Spec: ``docs/method.md`` §1.7 (the repo's Restormer: ``nn.LayerNorm`` over channels instead of
the BiasFree/WithBias custom LN, masking points of the ``Mask*`` variant, DCPT classifier features
``decoder_level{1,2,3}`` with dims ``[96, 96, 192]``), §1.3 (masking semantics shared with NAFNet), §6 item 7.
Architecture: Zamir et al., "Restormer: Efficient Transformer for High-Resolution Image Restoration", CVPR 2022
(multi-Dconv head transposed attention "MDTA" and gated-Dconv feed-forward "GDFN", Sec. 3.1-3.2).

One module serves both phases, like :class:`~maskdcpt.models.nafnet.NAFNet`: ``Restormer.forward(inp)`` is the
plain restoration network (``output(refinement(decoder_level1(...))) + inp``); ``forward_features(inp, mask)``
is the pre-training backbone (everything except the ``output`` conv) with masked semantics when a mask is given.

Parameter names follow the MaskDCPT repo's ``restormer_arch.py`` (what its released checkpoints load into):
``patch_embed.proj.weight``, ``encoder_level1.blocks.0.norm1.weight``/``.bias``,
``encoder_level1.blocks.0.attn.{temperature,qkv.weight,qkv_dwconv.weight,project_out.weight}``,
``encoder_level1.blocks.0.ffn.{project_in,dwconv,project_out}.weight``, ``down1_2.conv.weight``,
``up4_3.conv.weight``, ``reduce_chan_level3.weight``, ``latent.blocks.*``, ``decoder_level{1,2,3}.blocks.*``,
``refinement.blocks.*``, ``output.weight``. Upstream-Restormer names (``encoder_level1.0.``, ``down1_2.body.0.``,
``norm1.body.``) are translated by :func:`upstream_restormer_key` (used by ``load_backbone_state_dict``).

Masking invariant (tested in ``tests/test_restormer.py``): with a fixed mask, no input content reaches a
masked position at any depth; visible positions carry content.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskdcpt.models.masking import level_masks
from maskdcpt.models.nafnet import LayerNorm2d, _prepare_block_mask

__all__ = [
    "RESTORMER_PRESETS",
    "RESTORMER_PAPER_NUM_PARAMS",
    "Attention",
    "FeedForward",
    "TransformerBlock",
    "TransformerBlocks",
    "OverlapPatchEmbed",
    "Downsample",
    "Upsample",
    "Restormer",
    "build_restormer",
    "upstream_restormer_key",
]

#: Parameter count of the standard Restormer (dim 48, blocks [4,6,6,8], refinement 4, heads [1,2,4,8], FFN 2.66,
#: bias False) with the repo's ``nn.LayerNorm`` (weight + bias per channel); the paper quotes 26.1 M.
#: Measured from the layer definitions (tests/test_restormer.py).
RESTORMER_PAPER_NUM_PARAMS = 26_126_644


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA; Restormer Sec. 3.1) with optional re-masking.

    ``qkv`` 1x1 (dim -> 3 dim), ``qkv_dwconv`` 3x3 depthwise (3 dim), split into q, k, v with ``num_heads``
    heads of ``dim / num_heads`` channels; q and k are L2-normalised over the spatial axis; the attention map is
    channel x channel: ``softmax(q k^T * temperature) v`` (``temperature`` learnable, shape ``(heads, 1, 1)``,
    init 1); ``project_out`` 1x1.

    Masked path (docs/method.md §1.7): ``qkv_dwconv``'s output is multiplied by the mask, so masked positions contribute
    zero to ``q k^T`` (a sum over positions) and carry ``v = 0``; the output at a masked position is therefore
    ``project_out(0)`` (= its bias, 0 with ``bias=False``): content-free.

    Shape: ``forward(x [N, dim, H, W], mask None | [N, 1, H, W] float {0,1}) -> [N, dim, H, W]``.

    Raises:
        ValueError: if ``dim`` is not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = int(num_heads)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        n, c, h, w = x.shape
        qkv = self.qkv_dwconv(self.qkv(x))
        if mask is not None:
            qkv = qkv * mask
        q, k, v = (t.reshape(n, self.num_heads, c // self.num_heads, h * w) for t in qkv.chunk(3, dim=1))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(n, c, h, w))


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN; Restormer Sec. 3.2) with optional output re-masking.

    ``project_in`` 1x1 (dim -> 2 hidden), ``dwconv`` 3x3 depthwise, ``gelu(x1) * x2``, ``project_out`` 1x1
    (hidden -> dim), hidden = ``int(dim * ffn_expansion_factor)`` (paper: 2.66). Masked path (docs/method.md §1.7):
    the output is multiplied by the mask (the depthwise conv leaks across patch borders).

    Shape: ``forward(x [N, dim, H, W], mask None | [N, 1, H, W]) -> [N, dim, H, W]``.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        out = self.project_out(F.gelu(x1) * x2)
        return out * mask if mask is not None else out


class TransformerBlock(nn.Module):
    """Restormer block: ``x = x + attn(norm1(x)); x = x + ffn(norm2(x))`` (Restormer Fig. 2).

    ``norm1``/``norm2`` are :class:`~maskdcpt.models.nafnet.LayerNorm2d` (``nn.LayerNorm`` over channels, with
    bias, eps 1e-5: the repo variant, docs/method.md §1.7). Masked path: each LN output is multiplied by the mask
    (``MaskLayerNorm2d``), the attention and FFN re-mask internally (see :class:`Attention`,
    :class:`FeedForward`), so a block maps content-free masked positions to content-free masked positions.

    Shape: ``forward(x [N, dim, H, W], mask None | [N or 1, 1, H or 1, W or 1]) -> [N, dim, H, W]``.

    Raises:
        ValueError: on a mask that does not broadcast to ``[N, 1, H, W]``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        m = _prepare_block_mask(mask, x)
        y = self.norm1(x)
        x = x + self.attn(y * m if m is not None else y, m)
        y = self.norm2(x)
        return x + self.ffn(y * m if m is not None else y, m)


class TransformerBlocks(nn.Module):
    """``n`` :class:`TransformerBlock` in a ``.blocks`` ModuleList (the repo's ``RestormerBlock`` key layout).

    ``forward(x [N, dim, H, W], mask=None) -> [N, dim, H, W]``; the same mask goes to every block; ``n`` may be 0.
    """

    def __init__(self, dim: int, num_heads: int, n: int, ffn_expansion_factor: float = 2.66,
                 bias: bool = False) -> None:
        super().__init__()
        if n < 0:
            raise ValueError(f"number of blocks must be >= 0, got {n}")
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, ffn_expansion_factor, bias) for _ in range(n)]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        for block in self.blocks:
            x = block(x, mask)
        return x


class OverlapPatchEmbed(nn.Module):
    """``proj`` Conv3x3 (in_c -> embed_dim): ``[N, in_c, H, W] -> [N, embed_dim, H, W]`` (Restormer Sec. 3).

    Masked path: the output is multiplied by the mask (``[N, 1, H, W]``), removing what the 3x3 conv leaks
    across patch borders and its bias (the NAFNet ``intro`` rule, docs/method.md §1.3).
    """

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        x = self.proj(x)
        return x * mask if mask is not None else x


class Downsample(nn.Module):
    """``conv`` 3x3 (c -> c/2, no bias) then ``PixelUnshuffle(2)``: ``[N, c, H, W] -> [N, 2c, H/2, W/2]``.

    Masked path: the conv output is multiplied by the mask at the input resolution before the unshuffle
    (docs/method.md §1.7). Each 2x2 unshuffle group lies in one mask patch when the patch is >= 2 pixels wide at this
    level, so no masked/visible mixing happens.
    """

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        if n_feat % 2:
            raise ValueError(f"Downsample needs an even channel count, got {n_feat}")
        self.conv = nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False)
        self.downsample = nn.PixelUnshuffle(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        x = self.conv(x)
        return self.downsample(x * mask if mask is not None else x)


class Upsample(nn.Module):
    """``conv`` 3x3 (c -> 2c, no bias) then ``PixelShuffle(2)``: ``[N, c, H, W] -> [N, c/2, 2H, 2W]``.

    Masked path: the conv output is multiplied by the mask at the input (low) resolution before the shuffle;
    each shuffled 2x2 group comes from one low-resolution position, so it inherits that position's mask.
    """

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False)
        self.upsample = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        x = self.conv(x)
        return self.upsample(x * mask if mask is not None else x)


class Restormer(nn.Module):
    """Restormer U-Net (3 downsamplings) in the MaskDCPT repo variant (docs/method.md §1.7).

    Modules (c = ``dim``): ``patch_embed.proj`` Conv3x3(in -> c); ``encoder_level1`` (c),
    ``down1_2``, ``encoder_level2`` (2c), ``down2_3``, ``encoder_level3`` (4c), ``down3_4``, ``latent`` (8c);
    ``up4_3`` + concat skip + ``reduce_chan_level3`` Conv1x1(8c -> 4c) + ``decoder_level3`` (4c); ``up3_2`` +
    concat + ``reduce_chan_level2`` (4c -> 2c) + ``decoder_level2`` (2c); ``up2_1`` + concat (no reduction) +
    ``decoder_level1`` (2c); ``refinement`` (2c); ``output`` Conv3x3(2c -> out). Output
    ``output(refinement(...)) + inp``. Conv weights are initialised with a truncated normal (std 0.02) as in the
    repo; LN weight 1, bias 0; ``temperature`` 1.

    Args:
        inp_channels / out_channels: 3 / 3 (equal, the global residual needs it).
        dim: 48 in the paper.
        num_blocks: blocks at levels 1-4 ([4, 6, 6, 8]); decoders reuse levels 1-3.
        num_refinement_blocks: 4.
        heads: attention heads per level ([1, 2, 4, 8]); ``decoder_level1``/``refinement`` use ``heads[0]``.
        ffn_expansion_factor: 2.66.
        bias: conv bias in the attention, FFN, patch embedding, channel reduction and output convs (False).
        mask_patch_size: patch size of the pre-training mask (16, the paper's default, docs/method.md §1.7). Must be a
            multiple of ``2**3 = 8`` so that the patch is at least 1 pixel at the latent level and every
            pixel-(un)shuffle group above it lies inside one patch (docs/method.md §1.3 "patch >= 2**levels").

    Attributes:
        padder_size: 8 (``2**3``); H and W of the plain network's input must be multiples of it (test YAMLs).
        mask_patch_size: see above; masked inputs need H, W multiples of it.
        feature_dims: ``[2c, 2c, 4c]`` (decoder_level1@H, decoder_level2@H/2, decoder_level3@H/4), the DCPT
            classifier dims ``[96, 96, 192]`` for c = 48 (docs/method.md §1.7).
        last_dim: 2c, the channels of the ``last`` feature (input of the reconstruction head).

    Raises:
        ValueError: on bad list lengths, non-positive sizes, channels not divisible by heads, or a bad
            ``mask_patch_size``.
    """

    num_levels = 3

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        mask_patch_size: int = 16,
    ) -> None:
        super().__init__()
        num_blocks = [int(n) for n in num_blocks]
        heads = [int(h) for h in heads]
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"num_blocks and heads must have 4 entries, got {num_blocks} and {heads}")
        if dim < 1 or inp_channels < 1 or out_channels != inp_channels:
            raise ValueError(
                f"dim >= 1 and out_channels == inp_channels required (global residual), got dim={dim}, "
                f"inp_channels={inp_channels}, out_channels={out_channels}"
            )
        if mask_patch_size < 8 or mask_patch_size % 8:
            raise ValueError(
                f"mask_patch_size must be a positive multiple of 2**3 = 8 (3 downsamplings), got {mask_patch_size}"
            )
        for lvl, (c, h) in enumerate(zip((dim, 2 * dim, 4 * dim, 8 * dim), heads)):
            if c % h:
                raise ValueError(f"level {lvl + 1}: {c} channels not divisible by {h} heads")
        if (2 * dim) % heads[0]:
            raise ValueError(f"decoder_level1: {2 * dim} channels not divisible by {heads[0]} heads")
        self.img_channel = int(inp_channels)
        self.dim = int(dim)
        self.num_blocks = tuple(num_blocks)
        self.num_refinement_blocks = int(num_refinement_blocks)
        self.heads = tuple(heads)
        self.ffn_expansion_factor = float(ffn_expansion_factor)
        self.bias = bool(bias)
        self.padder_size = 2**self.num_levels
        self.mask_patch_size = int(mask_patch_size)

        ffn, c = ffn_expansion_factor, dim

        def stage(ch: int, head: int, n: int) -> TransformerBlocks:
            return TransformerBlocks(ch, head, n, ffn, bias)

        self.patch_embed = OverlapPatchEmbed(inp_channels, c, bias)
        self.encoder_level1 = stage(c, heads[0], num_blocks[0])
        self.down1_2 = Downsample(c)
        self.encoder_level2 = stage(2 * c, heads[1], num_blocks[1])
        self.down2_3 = Downsample(2 * c)
        self.encoder_level3 = stage(4 * c, heads[2], num_blocks[2])
        self.down3_4 = Downsample(4 * c)
        self.latent = stage(8 * c, heads[3], num_blocks[3])
        self.up4_3 = Upsample(8 * c)
        self.reduce_chan_level3 = nn.Conv2d(8 * c, 4 * c, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(4 * c, heads[2], num_blocks[2])
        self.up3_2 = Upsample(4 * c)
        self.reduce_chan_level2 = nn.Conv2d(4 * c, 2 * c, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(2 * c, heads[1], num_blocks[1])
        self.up2_1 = Upsample(2 * c)
        self.decoder_level1 = stage(2 * c, heads[0], num_blocks[0])
        self.refinement = stage(2 * c, heads[0], num_refinement_blocks)
        self.output = nn.Conv2d(2 * c, out_channels, kernel_size=3, padding=1, bias=bias)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def pad_multiple(self) -> int:
        """Side multiple of the input (``restore`` pads to it): ``padder_size`` = 2**3 (8)."""
        return self.padder_size

    @property
    def feature_dims(self) -> list[int]:
        """Channels of the ``forward_features`` list, full resolution first: ``[2 dim, 2 dim, 4 dim]``."""
        return [2 * self.dim, 2 * self.dim, 4 * self.dim]

    @property
    def last_dim(self) -> int:
        """Channels of ``last`` (the refinement output): ``2 * dim``."""
        return 2 * self.dim

    def check_input(self, inp: torch.Tensor, masked: bool = False) -> None:
        """Raise ``ValueError`` unless ``inp`` is ``[N, img_channel, H, W]`` with H, W multiples of
        ``padder_size`` (plain) or of ``mask_patch_size`` (``masked=True``)."""
        if inp.dim() != 4 or inp.shape[1] != self.img_channel:
            raise ValueError(f"expected input [N, {self.img_channel}, H, W], got shape {tuple(inp.shape)}")
        p = self.mask_patch_size if masked else self.padder_size
        h, w = inp.shape[-2:]
        if h % p or w % p:
            what = "mask_patch_size" if masked else "padder_size"
            raise ValueError(
                f"input H and W must be multiples of {what}={p}, got H={h}, W={w}; pad the input outside the "
                "network (docs/method.md §5.3)"
            )

    def _level_masks(self, mask: torch.Tensor, inp: torch.Tensor) -> list[torch.Tensor]:
        """Validate the patch mask; return it expanded to levels 0..3 (resolution ``H/2**i``)."""
        return level_masks(mask, inp, self.mask_patch_size, self.num_levels)

    def forward_features(
        self, inp: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run everything but the ``output`` conv (paper's "encoder", docs/method.md §1.1) and collect decoder features.

        Args:
            inp: ``[N, img_channel, H, W]``; H, W multiples of ``padder_size`` (8) without a mask, of
                ``mask_patch_size`` (16) with one.
            mask: None (plain) or Bool ``[N, 1, H/p, W/p]`` (p = ``mask_patch_size``, True = visible); float
                {0, 1} masks are accepted.

        Masked semantics (docs/method.md §1.3 / §1.7): the input is zeroed at masked pixels; the outputs of the patch
        embedding, of every Down/Upsample conv, of every LN, of every ``qkv`` depthwise conv and of every FFN
        are multiplied by the mask at their resolution; channel concatenation and the 1x1 ``reduce_chan`` convs
        are per-position. Hence masked positions stay content-free at every depth (exactly 0 with
        ``bias=False``), for any ``mask_patch_size`` that is a multiple of 8.

        Returns:
            ``(last, feats)``: ``last`` = refinement output ``[N, 2 dim, H, W]`` (F_l, input of the
            reconstruction head; ``forward`` applies ``output`` to it); ``feats`` = ``[decoder_level1
            [N, 2 dim, H, W], decoder_level2 [N, 2 dim, H/2, W/2], decoder_level3 [N, 4 dim, H/4, W/4]]``
            (full resolution first; the DCPT ``decoder_level`` hooks, docs/method.md §1.7).

        Raises:
            ValueError: on a bad input or mask shape.
        """
        self.check_input(inp, masked=mask is not None)
        m = self._level_masks(mask, inp) if mask is not None else [None] * (self.num_levels + 1)

        def mul(x: torch.Tensor, i: int) -> torch.Tensor:
            return x * m[i] if m[i] is not None else x

        enc1 = self.encoder_level1(self.patch_embed(mul(inp, 0), m[0]), m[0])
        enc2 = self.encoder_level2(self.down1_2(enc1, m[0]), m[1])
        enc3 = self.encoder_level3(self.down2_3(enc2, m[1]), m[2])
        lat = self.latent(self.down3_4(enc3, m[2]), m[3])
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat, m[3]), enc3], 1)), m[2])
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3, m[2]), enc2], 1)), m[1])
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2, m[1]), enc1], 1), m[0])
        last = self.refinement(dec1, m[0])
        return last, [dec1, dec2, dec3]

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Plain restoration ``output(forward_features(inp)[0]) + inp`` (docs/method.md §1.7).

        Args:
            inp: ``[N, img_channel, H, W]``, H and W multiples of ``padder_size`` (8); no internal padding.

        Returns:
            ``[N, img_channel, H, W]`` (not clamped).

        Raises:
            ValueError: on a bad input shape.
        """
        last, _ = self.forward_features(inp)
        return self.output(last) + inp


#: Named configurations for :func:`build_restormer`. ``paper`` is the standard Restormer (``build_backbone``
#: also accepts the alias ``paper-5d``)
#: (docs/method.md §1.7, 26,126,644 parameters); ``cpu-default`` and ``tiny`` are small variants for CPU runs and tests.
RESTORMER_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"dim": 48, "num_blocks": [4, 6, 6, 8], "num_refinement_blocks": 4, "heads": [1, 2, 4, 8],
              "ffn_expansion_factor": 2.66},
    "cpu-default": {"dim": 16, "num_blocks": [1, 1, 1, 2], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8],
                    "ffn_expansion_factor": 2.66},
    "tiny": {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8],
             "ffn_expansion_factor": 2.0},
}


def build_restormer(preset: str | None = None, **overrides: Any) -> Restormer:
    """Build a :class:`Restormer` from a named preset (``RESTORMER_PRESETS``) plus keyword overrides.

    ``preset=None`` uses the :class:`Restormer` defaults (= ``paper``). Overrides with value None are ignored.

    Raises:
        ValueError: on an unknown preset name.
    """
    kwargs: dict[str, Any] = {}
    if preset is not None:
        if preset not in RESTORMER_PRESETS:
            raise ValueError(f"unknown Restormer preset {preset!r}; choose one of {sorted(RESTORMER_PRESETS)}")
        kwargs.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in RESTORMER_PRESETS[preset].items()})
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return Restormer(**kwargs)


_UPSTREAM_STAGES = r"(encoder_level[123]|latent|decoder_level[123]|refinement)"


def upstream_restormer_key(key: str) -> str:
    """Translate an upstream-Restormer (Zamir et al. release) key to this module's (repo variant) layout.

    ``encoder_level1.0.x`` -> ``encoder_level1.blocks.0.x`` (``nn.Sequential`` -> ``.blocks`` ModuleList),
    ``down1_2.body.0.weight`` -> ``down1_2.conv.weight`` (same for ``up*``), ``norm1.body.weight`` ->
    ``norm1.weight`` (WithBias LN; a BiasFree upstream checkpoint has no LN bias and will fail strict
    loading with a "missing key" error). Other keys are returned unchanged.
    """
    key = re.sub(rf"^{_UPSTREAM_STAGES}\.(\d+)\.", r"\1.blocks.\2.", key)
    key = re.sub(r"^((?:down|up)\d_\d)\.body\.0\.", r"\1.conv.", key)
    key = re.sub(r"\.(norm[12])\.body\.", r".\1.", key)
    return key
