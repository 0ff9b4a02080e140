"""PromptIR backbone (a Restormer-style U-Net with prompt blocks in the decoder) with masked computation.

Architecture: Potlapalli et al., "PromptIR: Prompting for All-in-One Blind Image Restoration", NeurIPS 2023
(Sec. 3, Fig. 2-3): the Restormer encoder-decoder (MDTA attention + GDFN feed-forward, Zamir et al. CVPR 2022)
with a *prompt block* at each of the three decoder levels. A prompt block is a prompt-generation module
(``promptK``: ``prompt_len`` learnable prompt components ``[prompt_dim, s, s]``, weighted by
``softmax(linear(global mean of the features))``, resized bilinearly to the feature size, then a 3x3 conv)
followed by a prompt-interaction module (concatenate features and prompt, one Transformer block
``noise_levelK``, a 1x1 conv ``reduce_noise_levelK``).

Building blocks (attention, FFN, LayerNorm over channels with bias, down/upsampling) are those of
:mod:`maskdcpt.models.restormer`, so the parameter names are the project's Restormer layout:
``patch_embed.proj.weight``, ``encoder_level1.blocks.0.norm1.weight``, ``down1_2.conv.weight``,
``latent.blocks.*``, ``prompt1.prompt_param`` / ``prompt1.linear_layer.{weight,bias}`` /
``prompt1.conv3x3.weight``, ``noise_level1.{norm1,attn,norm2,ffn}.*`` (a single block),
``reduce_noise_level1.weight``, ``reduce_chan_level{2,3}.weight``, ``decoder_level{1,2,3}.blocks.*``,
``refinement.blocks.*``, ``output.weight``. The upstream PromptIR release names (``encoder_level1.0.``,
``norm1.body.``, ``down1_2.body.0.``) are translated by
:func:`~maskdcpt.models.restormer.upstream_restormer_key`. The release also defines six 1x1 convs that its
forward pass never calls (``chnl_reduce{1,2,3}``, ``reduce_noise_channel_{1,2,3}``); they are kept (unused,
``unused_convs=True``, frozen: ``requires_grad=False``) so released checkpoints load strictly and the parameter count is the release's:
35,592,263 for the default configuration (:data:`PROMPTIR_PAPER_NUM_PARAMS`).

Masking (pre-training, 16x16 patches): as :class:`~maskdcpt.models.restormer.Restormer` (input, patch
embedding, LN outputs, ``qkv`` after its depthwise conv, FFN outputs and down/upsampling convs re-masked), and
the prompt is multiplied by the mask before and after its 3x3 conv, so the prompt (a function of a global
feature statistic) is written only at visible positions. Invariant (tested in ``tests/test_promptir.py``): with
a fixed mask no input content reaches a masked position at any depth.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskdcpt.models.masking import level_masks
from maskdcpt.models.restormer import (
    Downsample,
    OverlapPatchEmbed,
    TransformerBlock,
    TransformerBlocks,
    Upsample,
)

__all__ = ["PROMPTIR_PAPER_NUM_PARAMS", "PROMPTIR_PRESETS", "PromptGenBlock", "PromptIR", "build_promptir"]

#: Parameters of the released PromptIR default (dim 48, blocks [4,6,6,8], refinement 4, heads [1,2,4,8], FFN
#: 2.66, bias False, prompt dims [64,128,320], length 5, sizes [64,32,16], unused convs kept); the PromptIR
#: paper quotes 35.59 M. Without the six unused convs: 35,376,967.
PROMPTIR_PAPER_NUM_PARAMS = 35_592_263


class PromptGenBlock(nn.Module):
    """Prompt-generation module (PromptIR Sec. 3.1, Eq. 1).

    ``w = softmax(linear_layer(mean_{H,W}(x)))`` (``[N, prompt_len]``), ``P = sum_i w_i * prompt_param[i]``
    (``prompt_param`` ``[1, prompt_len, prompt_dim, s, s]``, uniform [0, 1) init), bilinearly resized to
    ``(H, W)``, then ``conv3x3`` (no bias). Masked path: ``P`` is multiplied by the mask before and after the
    conv, so the prompt exists at visible positions only; the global mean is taken over all positions.

    Shape: ``forward(x [N, lin_dim, H, W], mask None | [N, 1, H, W]) -> [N, prompt_dim, H, W]``.
    """

    def __init__(self, prompt_dim: int, prompt_len: int, prompt_size: int, lin_dim: int) -> None:
        super().__init__()
        if min(prompt_dim, prompt_len, prompt_size, lin_dim) < 1:
            raise ValueError("prompt_dim, prompt_len, prompt_size and lin_dim must be >= 1")
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        n, _, h, w = x.shape
        weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # [N, L]
        prompt = torch.einsum("nl,lchw->nchw", weights, self.prompt_param[0].to(weights.dtype))
        prompt = F.interpolate(prompt, (h, w), mode="bilinear", align_corners=False)
        if mask is not None:
            prompt = prompt * mask
        prompt = self.conv3x3(prompt)
        return prompt * mask if mask is not None else prompt


class PromptIR(nn.Module):
    """PromptIR U-Net (3 downsamplings) with prompt blocks at decoder levels 3, 2, 1 (PromptIR Fig. 2).

    Data flow (c = ``dim``, p_k = ``prompt_dims[k-1]``)::

        enc1 = encoder_level1(patch_embed(inp))                      # c    @ H
        enc2 = encoder_level2(down1_2(enc1))                         # 2c   @ H/2
        enc3 = encoder_level3(down2_3(enc2))                         # 4c   @ H/4
        lat  = latent(down3_4(enc3))                                 # 8c   @ H/8
        lat  = reduce_noise_level3(noise_level3(cat(lat, prompt3(lat))))      # 8c+p3 -> 4c
        dec3 = decoder_level3(reduce_chan_level3(cat(up4_3(lat), enc3)))      # (2c + 4c) -> 4c
        dec3 = reduce_noise_level2(noise_level2(cat(dec3, prompt2(dec3))))    # 4c+p2 -> 4c
        dec2 = decoder_level2(reduce_chan_level2(cat(up3_2(dec3), enc2)))     # 2c
        dec2 = reduce_noise_level1(noise_level1(cat(dec2, prompt1(dec2))))    # 2c+p1 -> 2c
        dec1 = decoder_level1(cat(up2_1(dec2), enc1))                         # 2c @ H
        out  = output(refinement(dec1)) + inp

    Args:
        inp_channels / out_channels: 3 / 3 (equal: global residual).
        dim, num_blocks, num_refinement_blocks, heads, ffn_expansion_factor, bias: as Restormer (48,
            [4,6,6,8], 4, [1,2,4,8], 2.66, False).
        prompt_dims: prompt channels at decoder levels 1, 2, 3 ([64, 128, 320]).
        prompt_len: prompt components per block (5).
        prompt_sizes: spatial size of the learnt prompts at levels 1, 2, 3 ([64, 32, 16]).
        noise_heads: heads of the ``noise_level`` blocks (default ``heads[2]``, as released).
        unused_convs: keep the release's never-called 1x1 convs (True: strict loading of released weights):
            ``chnl_reduce{1,2,3}`` (p_k -> p_1, p_2, ``unused_reduce3_dim``) and ``reduce_noise_channel_{1,2,3}``
            (c + p_1 -> c, 2c + p_2 -> 2c, 4c + ``unused_reduce3_dim`` -> 4c).
        unused_reduce3_dim: output channels of the unused ``chnl_reduce3`` (256 in the release).
        mask_patch_size: pre-training mask patch (16), a multiple of 8.

    Attributes:
        padder_size / pad_multiple: 8 (``2**3``): H, W of the plain network's input must be multiples of it.
        mask_patch_size: masked inputs need H, W multiples of it.
        feature_dims: ``[2c, 2c, 4c]`` (decoder_level1@H, decoder_level2@H/2, decoder_level3@H/4), as Restormer.
        last_dim: 2c.

    Raises:
        ValueError: bad list lengths, sizes, channels not divisible by heads, or a bad ``mask_patch_size``.
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
        prompt_dims: Sequence[int] = (64, 128, 320),
        prompt_len: int = 5,
        prompt_sizes: Sequence[int] = (64, 32, 16),
        noise_heads: int | None = None,
        unused_convs: bool = True,
        unused_reduce3_dim: int = 256,
        mask_patch_size: int = 16,
    ) -> None:
        super().__init__()
        num_blocks = [int(n) for n in num_blocks]
        heads = [int(h) for h in heads]
        prompt_dims = [int(p) for p in prompt_dims]
        prompt_sizes = [int(s) for s in prompt_sizes]
        if len(num_blocks) != 4 or len(heads) != 4 or len(prompt_dims) != 3 or len(prompt_sizes) != 3:
            raise ValueError(f"num_blocks/heads need 4 entries and prompt_dims/prompt_sizes 3, got {num_blocks}, "
                             f"{heads}, {prompt_dims}, {prompt_sizes}")
        if dim < 1 or inp_channels < 1 or out_channels != inp_channels:
            raise ValueError(f"dim >= 1 and out_channels == inp_channels required (global residual), got "
                             f"dim={dim}, inp_channels={inp_channels}, out_channels={out_channels}")
        if mask_patch_size < 8 or mask_patch_size % 8:
            raise ValueError(f"mask_patch_size must be a positive multiple of 2**3 = 8 (3 downsamplings), got "
                             f"{mask_patch_size}")
        c = int(dim)
        noise_heads = int(heads[2] if noise_heads is None else noise_heads)
        for name, ch, h in (("level 1", c, heads[0]), ("level 2", 2 * c, heads[1]), ("level 3", 4 * c, heads[2]),
                            ("latent", 8 * c, heads[3]), ("decoder_level1", 2 * c, heads[0])):
            if ch % h:
                raise ValueError(f"{name}: {ch} channels not divisible by {h} heads")
        for k, (ch, p) in enumerate(zip((2 * c, 4 * c, 8 * c), prompt_dims), start=1):
                if (ch + p) % noise_heads:
                    raise ValueError(f"noise_level{k}: {ch + p} channels not divisible by {noise_heads} heads")
        self.img_channel = int(inp_channels)
        self.dim = c
        self.num_blocks = tuple(num_blocks)
        self.num_refinement_blocks = int(num_refinement_blocks)
        self.heads = tuple(heads)
        self.ffn_expansion_factor = float(ffn_expansion_factor)
        self.bias = bool(bias)
        self.prompt_dims = tuple(prompt_dims)
        self.prompt_len = int(prompt_len)
        self.prompt_sizes = tuple(prompt_sizes)
        self.noise_heads = noise_heads
        self.unused_convs = bool(unused_convs)
        self.padder_size = 2**self.num_levels
        self.mask_patch_size = int(mask_patch_size)
        ffn = ffn_expansion_factor

        def stage(ch: int, head: int, n: int) -> TransformerBlocks:
            return TransformerBlocks(ch, head, n, ffn, bias)

        self.patch_embed = OverlapPatchEmbed(inp_channels, c, bias)
        p1, p2, p3 = prompt_dims
        s1, s2, s3 = prompt_sizes
        self.prompt1 = PromptGenBlock(p1, prompt_len, s1, 2 * c)
        self.prompt2 = PromptGenBlock(p2, prompt_len, s2, 4 * c)
        self.prompt3 = PromptGenBlock(p3, prompt_len, s3, 8 * c)
        if self.unused_convs:  # defined by the release, never called in its forward pass
            p1, p2, p3 = prompt_dims
            self.chnl_reduce1 = nn.Conv2d(p1, p1, kernel_size=1, bias=bias)
            self.chnl_reduce2 = nn.Conv2d(p2, p2, kernel_size=1, bias=bias)
            self.chnl_reduce3 = nn.Conv2d(p3, unused_reduce3_dim, kernel_size=1, bias=bias)
            self.reduce_noise_channel_1 = nn.Conv2d(c + p1, c, kernel_size=1, bias=bias)
            self.reduce_noise_channel_2 = nn.Conv2d(2 * c + p2, 2 * c, kernel_size=1, bias=bias)
            self.reduce_noise_channel_3 = nn.Conv2d(4 * c + unused_reduce3_dim, 4 * c, kernel_size=1, bias=bias)
            for name in ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3", "reduce_noise_channel_1",
                         "reduce_noise_channel_2", "reduce_noise_channel_3"):
                getattr(self, name).requires_grad_(False)  # never in the graph: keep them out of optimizers
        self.encoder_level1 = stage(c, heads[0], num_blocks[0])
        self.down1_2 = Downsample(c)
        self.encoder_level2 = stage(2 * c, heads[1], num_blocks[1])
        self.down2_3 = Downsample(2 * c)
        self.encoder_level3 = stage(4 * c, heads[2], num_blocks[2])
        self.down3_4 = Downsample(4 * c)
        self.latent = stage(8 * c, heads[3], num_blocks[3])
        self.noise_level3 = TransformerBlock(8 * c + p3, noise_heads, ffn, bias)
        self.reduce_noise_level3 = nn.Conv2d(8 * c + p3, 4 * c, kernel_size=1, bias=bias)
        self.up4_3 = Upsample(4 * c)
        self.reduce_chan_level3 = nn.Conv2d(2 * c + 4 * c, 4 * c, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(4 * c, heads[2], num_blocks[2])
        self.up3_2 = Upsample(4 * c)
        self.reduce_chan_level2 = nn.Conv2d(4 * c, 2 * c, kernel_size=1, bias=bias)
        self.noise_level2 = TransformerBlock(4 * c + p2, noise_heads, ffn, bias)
        self.reduce_noise_level2 = nn.Conv2d(4 * c + p2, 4 * c, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(2 * c, heads[1], num_blocks[1])
        self.up2_1 = Upsample(2 * c)
        self.noise_level1 = TransformerBlock(2 * c + p1, noise_heads, ffn, bias)
        self.reduce_noise_level1 = nn.Conv2d(2 * c + p1, 2 * c, kernel_size=1, bias=bias)
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
        """Side multiple of the plain network's input: ``2**3 = 8`` (three downsamplings)."""
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
            raise ValueError(f"input H and W must be multiples of {what}={p}, got H={h}, W={w}; pad the input "
                             "outside the network")

    def _prompt(self, k: int, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        """Prompt block k (generation + interaction): ``reduce_noise_levelK(noise_levelK(cat(x, promptK(x))))``."""
        prompt = getattr(self, f"prompt{k}")(x, m)
        y = getattr(self, f"noise_level{k}")(torch.cat([x, prompt], 1), m)
        return getattr(self, f"reduce_noise_level{k}")(y)

    def forward_features(
        self, inp: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Everything but the ``output`` conv (the paper's "encoder") and the decoder-side features.

        Args:
            inp: ``[N, img_channel, H, W]``; H, W multiples of 8 without a mask, of ``mask_patch_size`` with one.
            mask: None or Bool ``[N, 1, H/p, W/p]`` (p = ``mask_patch_size``, True = visible); float {0,1} too.

        Returns:
            ``(last, feats)``: ``last`` = refinement output ``[N, 2 dim, H, W]``; ``feats`` = ``[decoder_level1
            [N, 2 dim, H, W], decoder_level2 [N, 2 dim, H/2, W/2], decoder_level3 [N, 4 dim, H/4, W/4]]``.

        Raises:
            ValueError: on a bad input or mask shape.
        """
        self.check_input(inp, masked=mask is not None)
        m = level_masks(mask, inp, self.mask_patch_size, self.num_levels) if mask is not None else [None] * 4

        def mul(x: torch.Tensor, i: int) -> torch.Tensor:
            return x * m[i] if m[i] is not None else x

        enc1 = self.encoder_level1(self.patch_embed(mul(inp, 0), m[0]), m[0])
        enc2 = self.encoder_level2(self.down1_2(enc1, m[0]), m[1])
        enc3 = self.encoder_level3(self.down2_3(enc2, m[1]), m[2])
        lat = self.latent(self.down3_4(enc3, m[2]), m[3])
        lat = self._prompt(3, lat, m[3])
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat, m[3]), enc3], 1)), m[2])
        x3 = self._prompt(2, dec3, m[2])
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x3, m[2]), enc2], 1)), m[1])
        x2 = self._prompt(1, dec2, m[1])
        dec1 = self.decoder_level1(torch.cat([self.up2_1(x2, m[1]), enc1], 1), m[0])
        last = self.refinement(dec1, m[0])
        return last, [dec1, dec2, dec3]

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Plain restoration ``output(forward_features(inp)[0]) + inp``; ``inp`` ``[N, C, H, W]``, H, W multiples
        of 8 (no internal padding). Returns ``[N, C, H, W]`` (not clamped). Raises ``ValueError`` on bad shapes."""
        last, _ = self.forward_features(inp)
        return self.output(last) + inp


#: Named configurations for :func:`build_promptir`. ``paper`` (alias ``paper-5d``) is the released default
#: (35,592,263 parameters); ``cpu-default`` and ``tiny`` are small variants for CPU runs and tests.
PROMPTIR_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"dim": 48, "num_blocks": [4, 6, 6, 8], "num_refinement_blocks": 4, "heads": [1, 2, 4, 8],
              "ffn_expansion_factor": 2.66, "prompt_dims": [64, 128, 320], "prompt_len": 5,
              "prompt_sizes": [64, 32, 16], "unused_convs": True},
    "cpu-default": {"dim": 16, "num_blocks": [1, 1, 1, 2], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8],
                    "ffn_expansion_factor": 2.66, "prompt_dims": [16, 32, 64], "prompt_len": 5,
                    "prompt_sizes": [32, 16, 8], "unused_convs": False},
    "tiny": {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8],
             "ffn_expansion_factor": 2.0, "prompt_dims": [8, 16, 32], "prompt_len": 3,
             "prompt_sizes": [16, 8, 4], "unused_convs": False},
}


def build_promptir(preset: str | None = None, **overrides: Any) -> PromptIR:
    """Build a :class:`PromptIR` from a preset of :data:`PROMPTIR_PRESETS` plus keyword overrides (None values
    ignored). ``preset=None`` uses the constructor defaults (= ``paper``). Raises ``ValueError`` on an unknown
    preset."""
    kwargs: dict[str, Any] = {}
    if preset is not None:
        if preset not in PROMPTIR_PRESETS:
            raise ValueError(f"unknown PromptIR preset {preset!r}; choose one of {sorted(PROMPTIR_PRESETS)}")
        kwargs.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in PROMPTIR_PRESETS[preset].items()})
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return PromptIR(**kwargs)
