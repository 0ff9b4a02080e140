"""NAFNet backbone with the MaskDCPT key layout and SparK-style masked computation.

Spec: ``docs/method.md`` §1.2 (architecture, key names, parameter count), §1.3 (masking),
§1.4 (shapes and classifier features), §6 items 2 and 7.

One module serves both phases: ``NAFNet.forward(inp)`` is the plain restoration network used for fine-tuning
and inference (``ending(features) + inp``); ``NAFNet.forward_features(inp, mask)`` is the backbone used in
pre-training ("encoder" in the paper = the whole network without its head, docs/method.md §1.1, §6 item 1), with the
masked semantics of docs/method.md §1.3 when a mask is given. Parameter names follow the released checkpoints
(``encoders.0.blocks.0.conv1.weight``, ``middle_blks.blocks.0.beta``, ``decoder0.blocks.0.norm1.weight``,
``ups.0.0.weight``), so released / pre-trained weights load strictly.

Masking invariant (tested in ``tests/test_models.py``): with a fixed mask, no input content reaches a masked
position at any depth. Masked positions carry content-independent values (zeros or bias-driven constants,
exactly as in the released ``Mask*`` archs), visible positions carry content. See :class:`NAFBlock` for the
per-block argument and :meth:`NAFNet.forward_features` for the between-block argument.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from maskdcpt.models.masking import level_masks

__all__ = [
    "LayerNorm2d",
    "SimpleGate",
    "NAFBlock",
    "NAFBlocks",
    "NAFNet",
    "NAFNET_PRESETS",
    "PAPER_5D_NUM_PARAMS",
    "build_nafnet",
    "load_nafnet_state_dict",
    "load_state_dict_strict",
]

logger = logging.getLogger(__name__)

#: Parameter count of the paper 5D NAFNet (width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1]); docs/method.md §1.2.
PAPER_5D_NUM_PARAMS = 67_888_835

_SCA_POOL_MODES = ("all", "visible")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (docs/method.md §1.2).

    Implemented as an ``nn.LayerNorm`` subclass on the NHWC permutation, so its parameters are named
    ``weight`` / ``bias`` (shape ``[C]``) like the released checkpoints. Normalisation is per spatial
    position, hence ``LayerNorm2d(x) * m`` equals the released ``MaskLayerNorm2d(x, m)`` (docs/method.md §1.3).

    Args:
        num_channels: C.
        eps: 1e-5 for NAFNet (docs/method.md §1.2); the classifier uses 1e-6 (docs/method.md §1.5).
        elementwise_affine: learnable weight/bias (default True).

    Shape: ``[N, C, H, W] -> [N, C, H, W]``.

    Raises:
        ValueError: if the input is not 4-D.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() != 4:
            raise ValueError(f"LayerNorm2d expects [N, C, H, W], got shape {tuple(x.shape)}")
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleGate(nn.Module):
    """NAFNet SimpleGate: split channels in half, multiply, ``[N, 2C, H, W] -> [N, C, H, W]`` (docs/method.md §1.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        a, b = x.chunk(2, dim=1)
        return a * b


def _prepare_block_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Validate a per-block mask and return it as ``x.dtype`` expanded to ``[N, 1, H, W]`` (or None)."""
    if mask is None:
        return None
    n, _, h, w = x.shape
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be broadcastable to [N, 1, H, W], got shape {tuple(mask.shape)}")
    for got, want, name in zip((mask.shape[0], mask.shape[2], mask.shape[3]), (n, h, w), ("N", "H", "W")):
        if got not in (1, want):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not broadcast to the feature shape {tuple(x.shape)} "
                f"(dimension {name}); pass the mask at the feature resolution (see expand_mask)"
            )
    return mask.to(dtype=x.dtype, device=x.device).expand(n, 1, h, w)


class NAFBlock(nn.Module):
    """NAFNet block (docs/method.md §1.2) with optional masked semantics (docs/method.md §1.3).

    Plain path (``mask=None``)::

        x = sg(conv2(conv1(norm1(inp))));  x = conv3(x * sca(x));  y = inp + beta * x
        out = y + gamma * conv5(sg(conv4(norm2(y))))

    with conv1 1x1 c->2c, conv2 3x3 depthwise 2c, conv3 1x1 c->c, sca = ``Sequential(AdaptiveAvgPool2d(1),
    Conv2d(c, c, 1))`` (keys ``sca.1.weight``/``sca.1.bias``), conv4 1x1 c->2c, conv5 1x1 c->c (all with bias),
    ``beta``/``gamma`` of shape ``(1, c, 1, 1)`` initialised to zeros (so a fresh block is the identity).

    Masked path (``mask`` given, docs/method.md §1.3 / released ``MaskNAFBlock``): ``norm1`` output is multiplied by the
    mask (== ``MaskLayerNorm2d``) and the attention-branch output after ``conv3`` is multiplied by the mask,
    which removes what the 3x3 depthwise conv (and the SCA statistic) put at masked positions. The FFN branch
    is built only from per-position ops (LN, 1x1 convs, gate), so it is not re-masked.

    Why no content reaches masked positions (the project's masking invariant): at a masked position the
    attention branch contributes exactly 0, so ``y = inp`` there; the FFN then maps ``y`` position-wise. Hence
    if the block input is content-free at masked positions, so is the output (by induction over blocks; the
    network input is zeroed at masked pixels). The values there are content-independent constants, not
    zeros (biases), as in the released code.

    SCA pooling under a mask (``masked_sca_pool``): ``"all"`` (default, released behaviour) averages over all
    positions, including masked ones (which hold conv2 leakage of visible content and bias constants);
    ``"visible"`` averages over visible positions only (closer to a true submanifold/sparse pool). Either way
    the statistic only reaches masked positions through the attention branch, which is zeroed there, so the
    invariant holds in both modes; the choice only changes visible-position features. Without a mask the
    two modes are identical.

    Args:
        c: channels.
        masked_sca_pool: ``"all"`` or ``"visible"`` (see above).

    Shape: ``forward(x [N, c, H, W], mask None | [N or 1, 1, H or 1, W or 1] bool/float) -> [N, c, H, W]``.

    Raises:
        ValueError: on a mask that does not broadcast to ``[N, 1, H, W]`` or an unknown pool mode.
    """

    def __init__(self, c: int, masked_sca_pool: str = "all") -> None:
        super().__init__()
        if masked_sca_pool not in _SCA_POOL_MODES:
            raise ValueError(f"masked_sca_pool must be one of {_SCA_POOL_MODES}, got {masked_sca_pool!r}")
        dw = 2 * c  # DW_Expand = 2
        ffn = 2 * c  # FFN_Expand = 2
        self.masked_sca_pool = masked_sca_pool
        self.conv1 = nn.Conv2d(c, dw, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, kernel_size=3, padding=1, groups=dw, bias=True)
        self.conv3 = nn.Conv2d(dw // 2, c, kernel_size=1, bias=True)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, kernel_size=1, bias=True))
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, ffn, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(ffn // 2, c, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def _sca(self, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        if m is None or self.masked_sca_pool == "all":
            return self.sca(x)
        pooled = (x * m).sum(dim=(2, 3), keepdim=True) / m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        return self.sca[1](pooled)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        m = _prepare_block_mask(mask, x)
        inp = x
        x = self.norm1(x)
        if m is not None:
            x = x * m
        x = self.sg(self.conv2(self.conv1(x)))
        x = x * self._sca(x, m)
        x = self.conv3(x)
        if m is not None:
            x = x * m
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFBlocks(nn.Module):
    """A stack of ``n`` :class:`NAFBlock` (c) in a ``.blocks`` ModuleList (released key layout, docs/method.md §1.2).

    ``forward(x [N, c, H, W], mask=None) -> [N, c, H, W]``; the same mask is passed to every block. ``n`` may
    be 0 (identity).
    """

    def __init__(self, c: int, n: int, masked_sca_pool: str = "all") -> None:
        super().__init__()
        if n < 0:
            raise ValueError(f"number of blocks must be >= 0, got {n}")
        self.blocks = nn.ModuleList([NAFBlock(c, masked_sca_pool=masked_sca_pool) for _ in range(n)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        for block in self.blocks:
            x = block(x, mask)
        return x


class NAFNet(nn.Module):
    """U-shaped NAFNet (the released ``NAFNetBaseline`` layout, docs/method.md §1.2).

    Modules: ``intro`` Conv3x3(img_channel->width); per level i ``encoders[i]`` = NAFBlocks(c_i,
    enc_blk_nums[i]) and ``downs[i]`` = Conv2x2/s2(c_i->2c_i); ``middle_blks`` = NAFBlocks(c_L,
    middle_blk_num); per decoder level i ``ups[i]`` = Sequential(Conv1x1(c->2c, no bias), PixelShuffle(2))
    and attribute ``decoder{i}`` = NAFBlocks(c/2, dec_blk_nums[i]) (set with ``setattr``, not a
    ModuleList); additive skips in reverse order; ``ending`` Conv3x3(width->img_channel); output
    ``ending(x) + inp``. With c_i = width * 2**i and L = len(enc_blk_nums).

    Args:
        img_channel: input/output channels (3).
        width: channels at full resolution (64 in the paper).
        enc_blk_nums: blocks per encoder level ([1,1,1,28] in the paper 5D model).
        middle_blk_num: blocks at the bottleneck (1).
        dec_blk_nums: blocks per decoder level, deepest first ([1,1,1,1]); same length as enc_blk_nums.
        masked_sca_pool: SCA pooling in masked mode, see :class:`NAFBlock` (default ``"all"`` = released code).

    Attributes:
        padder_size: ``2 ** len(enc_blk_nums)``; H and W must be multiples of it, and it is the mask patch
            size in pre-training (docs/method.md §1.3: the patch must equal 2**(#downsamplings), 16 here).

    Raises:
        ValueError: on inconsistent level counts or non-positive width.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 64,
        enc_blk_nums: Sequence[int] = (1, 1, 1, 28),
        middle_blk_num: int = 1,
        dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
        masked_sca_pool: str = "all",
    ) -> None:
        super().__init__()
        enc_blk_nums = [int(n) for n in enc_blk_nums]
        dec_blk_nums = [int(n) for n in dec_blk_nums]
        if len(enc_blk_nums) != len(dec_blk_nums) or not enc_blk_nums:
            raise ValueError(
                f"enc_blk_nums and dec_blk_nums must be non-empty and of equal length, got {enc_blk_nums} and "
                f"{dec_blk_nums}"
            )
        if width < 1 or img_channel < 1:
            raise ValueError(f"width and img_channel must be >= 1, got {width}, {img_channel}")
        self.img_channel = int(img_channel)
        self.width = int(width)
        self.enc_blk_nums = tuple(enc_blk_nums)
        self.middle_blk_num = int(middle_blk_num)
        self.dec_blk_nums = tuple(dec_blk_nums)
        self.num_levels = len(enc_blk_nums)
        self.padder_size = 2 ** self.num_levels

        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, bias=True)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(NAFBlocks(chan, num, masked_sca_pool))
            self.downs.append(nn.Conv2d(chan, 2 * chan, kernel_size=2, stride=2, bias=True))
            chan *= 2
        self.middle_blks = NAFBlocks(chan, self.middle_blk_num, masked_sca_pool)
        for i, num in enumerate(dec_blk_nums):
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, kernel_size=1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            setattr(self, f"decoder{i}", NAFBlocks(chan, num, masked_sca_pool))
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, bias=True)

    @property
    def decoders(self) -> tuple[NAFBlocks, ...]:
        """The decoder stages ``(decoder0, ..., decoder{L-1})``, deepest (lowest resolution) first."""
        return tuple(getattr(self, f"decoder{i}") for i in range(self.num_levels))

    @property
    def feature_dims(self) -> list[int]:
        """Channels of the ``forward_features`` list, full resolution first: ``[width * 2**i for i < L]``."""
        return [self.width * 2**i for i in range(self.num_levels)]

    @property
    def last_dim(self) -> int:
        """Channels of ``last`` (the final decoder output, input of the reconstruction head): ``width``."""
        return self.width

    @property
    def pad_multiple(self) -> int:
        """Side multiple of the input (``restore`` pads to it): ``padder_size`` = 2**levels (16)."""
        return self.padder_size

    @property
    def mask_patch_size(self) -> int:
        """Pre-training mask patch size: ``padder_size`` (= 2**levels, 16; docs/method.md §1.3, §6 item 2)."""
        return self.padder_size

    def check_input(self, inp: torch.Tensor, masked: bool = False) -> None:
        """Raise ``ValueError`` unless ``inp`` is ``[N, img_channel, H, W]`` with H, W multiples of padder_size.

        ``masked`` is accepted for interface parity with :class:`~maskdcpt.models.restormer.Restormer`; for
        NAFNet the mask patch size equals ``padder_size``, so it changes nothing.
        """
        if inp.dim() != 4 or inp.shape[1] != self.img_channel:
            raise ValueError(f"expected input [N, {self.img_channel}, H, W], got shape {tuple(inp.shape)}")
        h, w = inp.shape[-2:]
        if h % self.padder_size or w % self.padder_size:
            raise ValueError(
                f"input H and W must be multiples of padder_size={self.padder_size} (2**{self.num_levels} "
                f"levels), got H={h}, W={w}; pad the input outside the network (docs/method.md §5.3)"
            )

    def _level_masks(self, mask: torch.Tensor, inp: torch.Tensor) -> list[torch.Tensor]:
        """Validate the patch mask and expand it to every level: index i has resolution (H/2**i, W/2**i)."""
        return level_masks(mask, inp, self.padder_size, self.num_levels)

    def forward_features(
        self, inp: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the backbone without ``ending`` (paper's "encoder", docs/method.md §1.1) and collect decoder features.

        Args:
            inp: ``[N, img_channel, H, W]``, H and W multiples of ``padder_size`` (images in [0, 1] in this
                project, but any real range works).
            mask: None (plain) or Bool ``[N, 1, H/p, W/p]`` (p = padder_size; True = visible). Float {0,1}
                masks are accepted as well.

        Masked semantics (docs/method.md §1.3): the input is zeroed at masked pixels; the ``intro`` output is
        re-masked (its 3x3 conv leaks across patch borders); every block gets the mask at its own
        resolution (nearest expansion). ``downs`` (2x2 stride-2) and ``ups`` (1x1 conv + PixelShuffle) are
        not re-masked: mask patches are ``p / 2**i >= 2`` pixels wide at every level above the bottleneck,
        so each stride-2 window and each PixelShuffle group lies inside a single patch and never mixes a
        masked and a visible position; additive skips join tensors that are both content-free at masked
        positions. Together with the per-block argument in :class:`NAFBlock` this gives the invariant: no
        input content reaches a masked position at any depth (tested as a property).

        Returns:
            ``(last, feats)``: ``last`` is the final decoder output ``[N, width, H, W]`` (F_l, input to the
            reconstruction head); ``feats`` are the decoder outputs ordered full resolution first,
            ``[decoder{L-1}, ..., decoder0]`` with shapes ``[N, width*2**i, H/2**i, W/2**i]`` (docs/method.md §1.4,
            the classifier inputs). ``feats[0] is last``.

        Raises:
            ValueError: on a bad input or mask shape.
        """
        self.check_input(inp)
        masks = self._level_masks(mask, inp) if mask is not None else [None] * (self.num_levels + 1)
        if masks[0] is not None:
            inp = inp * masks[0]
        x = self.intro(inp)
        if masks[0] is not None:
            x = x * masks[0]
        skips = []
        for i, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            x = encoder(x, masks[i])
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x, masks[self.num_levels])
        feats = []
        for i, (up, decoder, skip) in enumerate(zip(self.ups, self.decoders, reversed(skips))):
            x = up(x) + skip
            x = decoder(x, masks[self.num_levels - 1 - i])
            feats.append(x)
        feats.reverse()
        return x, feats

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Plain (unmasked) restoration: ``ending(forward_features(inp)[0]) + inp`` (docs/method.md §1.2).

        Args:
            inp: ``[N, img_channel, H, W]``, H and W multiples of ``padder_size`` (no internal padding).

        Returns:
            ``[N, img_channel, H, W]`` (not clamped).

        Raises:
            ValueError: if H or W is not a multiple of ``padder_size`` or the channel count is wrong.
        """
        last, _ = self.forward_features(inp)
        return self.ending(last) + inp


#: Named configurations for :func:`build_nafnet`. ``paper-5d`` is the released 5D model (docs/method.md §1.2,
#: 67,888,835 parameters); ``cpu-default`` and ``tiny`` are small variants for CPU runs and tests.
NAFNET_PRESETS: dict[str, dict[str, Any]] = {
    "paper-5d": {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]},
    "cpu-default": {"width": 16, "enc_blk_nums": [1, 1, 1, 2], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]},
    "tiny": {"width": 8, "enc_blk_nums": [1, 1, 1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]},
}


def build_nafnet(preset: str | None = None, **overrides: Any) -> NAFNet:
    """Build a :class:`NAFNet` from a named preset (see ``NAFNET_PRESETS``) plus keyword overrides.

    ``preset=None`` uses the :class:`NAFNet` defaults (= ``paper-5d``). Overrides with value None are ignored.

    Raises:
        ValueError: on an unknown preset name.
    """
    kwargs: dict[str, Any] = {}
    if preset is not None:
        if preset not in NAFNET_PRESETS:
            raise ValueError(f"unknown NAFNet preset {preset!r}; choose one of {sorted(NAFNET_PRESETS)}")
        kwargs.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in NAFNET_PRESETS[preset].items()})
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return NAFNet(**kwargs)


_STRIP_PREFIXES = ("module.", "backbone.")


def _strip_prefixes(key: str) -> tuple[str, list[str]]:
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped.append(prefix)
                changed = True
    return key, stripped


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_nafnet_state_dict(
    model: nn.Module, state: Mapping[str, Any], key: str | None = "params_ema"
) -> dict[str, Any]:
    """Load NAFNet weights strictly from a raw state dict or a BasicSR-style checkpoint.

    Same as :func:`load_state_dict_strict` without key renaming (kept for the NAFNet-only callers); see there.
    """
    return load_state_dict_strict(model, state, key)


def load_state_dict_strict(
    model: nn.Module,
    state: Mapping[str, Any],
    key: str | None = "params_ema",
    rename: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Load backbone weights strictly from a raw state dict or a BasicSR-style checkpoint.

    Accepted inputs:
      * a raw ``{name: tensor}`` state dict;
      * a checkpoint dict holding ``params`` and/or ``params_ema`` (BasicSR; evaluation uses ``params_ema``,
        docs/method.md §6 item 8), or ``state_dict`` / ``model`` (generic). ``key`` selects the entry; if it is missing
        the other of ``params``/``params_ema`` is used, a warning is logged and the report says so.

    Key normalisation: leading ``module.`` (DataParallel/DDP) and ``backbone.`` prefixes are stripped. If any
    key carries a ``backbone.`` prefix (a full :class:`~maskdcpt.models.maskdcpt.MaskDCPTModel` state dict),
    only those keys are used and the others (classifier, reconstruction head) are listed in
    ``report["ignored_keys"]``.

    Args:
        model: the target (a :class:`NAFNet` or :class:`~maskdcpt.models.restormer.Restormer`).
        state: see above.
        key: preferred checkpoint entry (``"params_ema"`` default, ``"params"``, or None for raw dicts).
        rename: optional ``key -> key`` map applied after prefix stripping (e.g. upstream-Restormer names to
            the repo layout); keys it changes are counted in ``report["renamed_keys"]``.

    Returns:
        report dict: ``source_key`` (entry used or None), ``requested_key``, ``fell_back`` (bool),
        ``message`` (str or None), ``stripped_prefixes`` (sorted list), ``ignored_keys`` (list),
        ``renamed_keys`` (int), ``num_tensors`` (int).

    Raises:
        ValueError: if no state dict can be found, if keys are missing/unexpected (the first few of each are
            listed), or if shapes differ.
    """
    report: dict[str, Any] = {
        "requested_key": key,
        "source_key": None,
        "fell_back": False,
        "message": None,
        "stripped_prefixes": [],
        "ignored_keys": [],
        "renamed_keys": 0,
        "num_tensors": 0,
    }
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict or checkpoint dict, got {type(state).__name__}")

    sd: Mapping[str, Any]
    wrapper_keys = [k for k in ("params_ema", "params", "state_dict", "model") if isinstance(state.get(k), Mapping)]
    if wrapper_keys and not _is_tensor_mapping(state):
        if key is not None and key in wrapper_keys:
            chosen = key
        else:
            fallbacks = [k for k in ("params", "params_ema", "state_dict", "model") if k in wrapper_keys]
            chosen = fallbacks[0]
            if key is not None:
                report["fell_back"] = True
                report["message"] = (
                    f"checkpoint has no {key!r} entry; falling back to {chosen!r} (available: {wrapper_keys})"
                )
                logger.warning(report["message"])
        report["source_key"] = chosen
        sd = state[chosen]
    else:
        sd = state

    if not sd:
        raise ValueError("empty state dict")
    has_backbone = any("backbone." in _strip_prefixes(k)[1] for k in sd)
    cleaned: dict[str, torch.Tensor] = {}
    stripped_all: set[str] = set()
    for k, v in sd.items():
        new_k, stripped = _strip_prefixes(k)
        if has_backbone and "backbone." not in stripped:
            report["ignored_keys"].append(k)
            continue
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        stripped_all.update(stripped)
        if rename is not None:
            renamed = rename(new_k)
            report["renamed_keys"] += int(renamed != new_k)
            new_k = renamed
        if new_k in cleaned:
            raise ValueError(f"state dict key {k!r} maps to {new_k!r}, which is already present (duplicate)")
        cleaned[new_k] = v
    report["stripped_prefixes"] = sorted(stripped_all)

    expected = model.state_dict()
    missing = [k for k in expected if k not in cleaned]
    unexpected = [k for k in cleaned if k not in expected]
    if missing or unexpected:
        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f", ... (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise ValueError(
            f"state dict does not match {type(model).__name__}: {len(missing)} missing key(s) [{_few(missing)}]; "
            f"{len(unexpected)} unexpected key(s) [{_few(unexpected)}]"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(cleaned[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(cleaned[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise ValueError(f"shape mismatch for {len(mismatched)} tensor(s): " + "; ".join(mismatched[:5]))
    model.load_state_dict(cleaned, strict=True)
    report["num_tensors"] = len(cleaned)
    return report
