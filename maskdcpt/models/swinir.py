"""SwinIR backbone (restoration configuration, no upsampler) with masked computation.

Architecture: Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCVW 2021 (Sec. 3.1-3.2,
Fig. 2): shallow feature extraction ``conv_first`` (3x3), deep feature extraction by residual Swin Transformer
blocks (RSTB: ``depth`` Swin Transformer layers with window / shifted-window multi-head self-attention, then a
3x3 conv, plus a residual), a LayerNorm ``norm``, ``conv_after_body`` (3x3) with a long skip to the shallow
features, and the reconstruction conv ``conv_last``. For restoration at scale 1 (denoising, all-in-one) the
output is ``x + conv_last(conv_after_body(F_deep) + F_shallow)`` on the mean-subtracted image (RGB mean
(0.4488, 0.4371, 0.4040), ``img_range`` 1), then the mean is added back.

Parameter names are the official SwinIR ones: ``conv_first``, ``patch_embed.norm``,
``layers.<i>.residual_group.blocks.<j>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``layers.<i>.conv``, ``norm``, ``conv_after_body``, ``conv_last`` (and ``attn.relative_position_bias_table`` when
``rel_pos_bias=True``). The relative position index and the shifted-window attention mask are recomputed
buffers, not parameters, and are not part of the state dict (official files that carry them load with those
entries dropped, see :func:`swinir_key_map`).

Two variants: ``rel_pos_bias=False, shift_mask=False`` (the MaskDCPT release's plain SwinIR: no relative
position bias, shifted windows wrap around without the region mask; ``paper`` preset, 11,455,563 parameters)
and ``rel_pos_bias=True, shift_mask=True`` (the original SwinIR; ``official`` preset, 11,504,163 parameters).

Masking (pre-training, 16x16 patches): the mean-subtracted input, ``conv_first``, ``patch_embed.norm``, every
LayerNorm output, every attention output (after ``proj``), every RSTB conv and ``conv_after_body`` are
multiplied by the mask; inside a window the attention only looks at visible keys (windows without a visible key
are left as they are: their queries are all masked and re-zeroed). Cyclic shifts move the mask with the tokens.
Invariant (tested in ``tests/test_swinir.py``): no input content reaches a masked position at any depth.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskdcpt.models.masking import level_masks

__all__ = [
    "SWINIR_PAPER_NUM_PARAMS",
    "SWINIR_OFFICIAL_NUM_PARAMS",
    "SWINIR_PRESETS",
    "WindowAttention",
    "SwinTransformerBlock",
    "RSTB",
    "SwinIR",
    "build_swinir",
    "swinir_key_map",
]

#: embed 180, depths [6]*6, heads [6]*6, mlp_ratio 2, window 8, no relative position bias (``paper`` preset).
SWINIR_PAPER_NUM_PARAMS = 11_455_563
#: The same with the original relative position bias tables (36 x 225 x 6 = 48,600 more; ``official`` preset).
SWINIR_OFFICIAL_NUM_PARAMS = 11_504_163

_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``[N, H, W, C] -> [N * H/ws * W/ws, ws*ws, C]`` (row-major windows)."""
    n, h, w, c = x.shape
    x = x.view(n, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _unwindows(x: torch.Tensor, ws: int, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_windows`: ``[N * nW, ws*ws, C] -> [N, H, W, C]``."""
    c = x.shape[-1]
    x = x.view(n, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


class WindowAttention(nn.Module):
    """Window multi-head self-attention (SwinIR Sec. 3.2 / Swin Transformer Eq. 4).

    ``qkv`` Linear(dim -> 3 dim, bias), scaled dot product ``softmax(q k^T / sqrt(d) + B + M) v`` per window and
    head, ``proj`` Linear(dim -> dim). ``B`` is the learnt relative position bias (``relative_position_bias_table``
    ``[(2 ws - 1)^2, heads]``, truncated-normal init, std 0.02) when ``rel_pos_bias``; ``M`` is an additive mask
    (shifted-window region mask and/or masked keys, ``-inf`` where excluded).

    Shape: ``forward(x [B_, N = ws*ws, dim], bias None | [B_ or 1, heads or 1, N, N]) -> [B_, N, dim]``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, rel_pos_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = int(dim), int(window_size), int(num_heads)
        self.rel_pos_bias = bool(rel_pos_bias)
        ws = self.window_size
        if self.rel_pos_bias:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
            rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
            self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1],
                                 persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.rel_pos_bias:
            rpb = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            rpb = rpb.view(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0).to(q.dtype)
            bias = rpb if bias is None else bias + rpb
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``, hidden ``int(dim * mlp_ratio)``: ``[..., dim] -> [..., dim]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """Swin Transformer layer: ``x = x + W-MSA(norm1(x)); x = x + mlp(norm2(x))`` (SwinIR Eq. 5-6).

    ``shift_size`` 0 (regular windows) or ``window_size // 2`` (cyclic shift by ``-shift`` before, ``+shift``
    after). With ``shift_mask`` the shifted windows get the region mask of the original Swin (tokens from
    different image regions do not attend to each other); without it they wrap around.

    Masked path: ``norm1``/``norm2`` outputs and the attention output are multiplied by the mask; attention keys at
    masked positions are excluded (``-inf``) in windows that have a visible key.

    Shape: ``forward(x [N, H, W, C], mask None | [N, H, W, 1]) -> [N, H, W, C]``; H, W multiples of the window.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, shift_size: int = 0, mlp_ratio: float = 2.0,
                 rel_pos_bias: bool = False, shift_mask: bool = False) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size}")
        self.window_size, self.shift_size, self.shift_mask = int(window_size), int(shift_size), bool(shift_mask)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, rel_pos_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._region_cache: dict[tuple, torch.Tensor] = {}

    def _region_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Additive region mask ``[nW, 1, N, N]`` (0 / -inf) of the shifted windows (Swin Transformer Sec. 3.2)."""
        key = (h, w, str(device))
        if key not in self._region_cache:
            ws, s = self.window_size, self.shift_size
            img = torch.zeros(1, h, w, 1, device=device)
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                    img[:, hs, wsl, :] = cnt
                    cnt += 1
            win = _windows(img, ws).squeeze(-1)  # [nW, N]
            diff = win[:, None, :] != win[:, :, None]
            self._region_cache[key] = torch.zeros(diff.shape, device=device).masked_fill(diff, float("-inf"))[:, None]
        return self._region_cache[key]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        n, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x)
        m = mask
        if m is not None:
            y = y * m
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            if m is not None:
                m = torch.roll(m, shifts=(-s, -s), dims=(1, 2))
        yw = _windows(y, ws)  # [N * nW, L, C]
        bias = None
        if s and self.shift_mask:
            region = self._region_mask(h, w, x.device).to(y.dtype)  # [nW, 1, L, L]
            bias = region.repeat(n, 1, 1, 1)
        if m is not None:
            mw = _windows(m, ws)[..., 0]  # [N * nW, L] in {0, 1}
            has_visible = mw.amax(dim=1, keepdim=True) > 0
            exclude = (mw == 0) & has_visible  # masked keys, only in windows with a visible key
            key_bias = torch.zeros(mw.shape, dtype=y.dtype, device=y.device).masked_fill(exclude, float("-inf"))
            key_bias = key_bias[:, None, None, :]
            bias = key_bias if bias is None else bias + key_bias
        out = self.attn(yw, bias)
        if m is not None:
            out = out * _windows(m, ws)
        out = _unwindows(out, ws, n, h, w)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        x = x + out
        y = self.norm2(x)
        if mask is not None:
            y = y * mask
        return x + self.mlp(y)


class BasicLayer(nn.Module):
    """``depth`` :class:`SwinTransformerBlock` in ``.blocks``, shifts alternating 0, ws/2 (official layout)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 rel_pos_bias: bool, shift_mask: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 rel_pos_bias, shift_mask) for i in range(depth)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        for block in self.blocks:
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer block: ``x + conv(residual_group(x))`` (SwinIR Eq. 7-8), 3x3 ``conv``.

    Masked path: the conv output is multiplied by the mask. Shape: ``[N, H, W, C] -> [N, H, W, C]`` (tokens
    channels-last), mask ``[N, H, W, 1]``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 rel_pos_bias: bool, shift_mask: bool) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio, rel_pos_bias, shift_mask)
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        y = self.residual_group(x, mask)
        y = self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if mask is not None:
            y = y * mask
        return x + y


class SwinIR(nn.Module):
    """SwinIR for restoration at scale 1 (SwinIR Fig. 2, the denoising head).

    Forward (``x`` in [0, 1], mean-subtracted: ``z = (x - mean) * img_range``)::

        f0 = conv_first(z);  t = patch_embed.norm(tokens(f0))
        for i: t = layers[i](t)                     # RSTBs
        res = conv_after_body(image(norm(t))) + f0  # "last" (input of the restoration head)
        out = (z + conv_last(res)) / img_range + mean

    Args:
        in_chans: 3 (or 1; then ``mean`` is 0).
        embed_dim: 180. depths / num_heads: per RSTB ([6]*6 / [6]*6). window_size: 8. mlp_ratio: 2.
        img_range: 1.0. rel_pos_bias / shift_mask: see the module docstring.
        mask_patch_size: pre-training mask patch (16); a multiple of ``window_size`` and of the
            classifier-feature downsampling ``2**(n_taps - 1)``.

    Attributes:
        padder_size / pad_multiple: ``window_size``: H, W of the input must be multiples of it.
        tap_layers: indices of the RSTBs whose outputs feed the degradation classifier: the latter half
            (``depth // 2 .. depth - 1``; RSTB 4-6 for six RSTBs), feature ``i`` nearest-downsampled by ``2**i``
            so that the classifier gets a full-resolution-first pyramid.
        feature_dims: ``[embed_dim] * len(tap_layers)``. last_dim: ``embed_dim``.

    Raises:
        ValueError: bad lengths or sizes, channels not divisible by heads, a bad ``mask_patch_size``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        img_range: float = 1.0,
        rel_pos_bias: bool = False,
        shift_mask: bool = False,
        mask_patch_size: int = 16,
    ) -> None:
        super().__init__()
        depths = [int(d) for d in depths]
        num_heads = [int(h) for h in num_heads]
        if not depths or len(depths) != len(num_heads) or min(depths) < 1:
            raise ValueError(f"depths and num_heads must be non-empty, of equal length, depths >= 1; got {depths}, "
                             f"{num_heads}")
        if in_chans < 1 or embed_dim < 1 or window_size < 2:
            raise ValueError(f"in_chans, embed_dim >= 1 and window_size >= 2 required, got {in_chans}, {embed_dim}, "
                             f"{window_size}")
        for i, h in enumerate(num_heads):
            if embed_dim % h:
                raise ValueError(f"RSTB {i}: embed_dim {embed_dim} not divisible by {h} heads")
        n = len(depths)
        self.tap_layers = list(range(n // 2, n))
        down = 2 ** (len(self.tap_layers) - 1)
        if mask_patch_size % window_size or mask_patch_size % down:
            raise ValueError(f"mask_patch_size must be a multiple of window_size={window_size} and of the feature "
                             f"downsampling {down}, got {mask_patch_size}")
        self.img_channel = int(in_chans)
        self.embed_dim = int(embed_dim)
        self.depths, self.num_heads = tuple(depths), tuple(num_heads)
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.img_range = float(img_range)
        self.rel_pos_bias, self.shift_mask = bool(rel_pos_bias), bool(shift_mask)
        self.padder_size = self.window_size
        self.mask_patch_size = int(mask_patch_size)
        mean = torch.tensor(_RGB_MEAN if in_chans == 3 else (0.0,) * in_chans).view(1, in_chans, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, kernel_size=3, padding=1)
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList([RSTB(embed_dim, d, h, window_size, mlp_ratio, rel_pos_bias, shift_mask)
                                     for d, h in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1)
        self.conv_last = nn.Conv2d(embed_dim, in_chans, kernel_size=3, padding=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def pad_multiple(self) -> int:
        """Side multiple of the input: ``window_size`` (8)."""
        return self.window_size

    @property
    def feature_dims(self) -> list[int]:
        """Channels of the ``forward_features`` list: ``[embed_dim] * len(tap_layers)``."""
        return [self.embed_dim] * len(self.tap_layers)

    @property
    def last_dim(self) -> int:
        """Channels of ``last``: ``embed_dim``."""
        return self.embed_dim

    def check_input(self, inp: torch.Tensor, masked: bool = False) -> None:
        """Raise ``ValueError`` unless ``inp`` is ``[N, img_channel, H, W]`` with H, W multiples of
        ``window_size`` (plain) or of ``mask_patch_size`` (``masked=True``)."""
        if inp.dim() != 4 or inp.shape[1] != self.img_channel:
            raise ValueError(f"expected input [N, {self.img_channel}, H, W], got shape {tuple(inp.shape)}")
        p = self.mask_patch_size if masked else self.padder_size
        h, w = inp.shape[-2:]
        if h % p or w % p:
            what = "mask_patch_size" if masked else "padder_size"
            raise ValueError(f"input H and W must be multiples of {what}={p}, got H={h}, W={w}; pad the input "
                             "outside the network")

    def _normalise(self, inp: torch.Tensor) -> torch.Tensor:
        return (inp - self.mean.to(inp.dtype)) * self.img_range

    def forward_features(
        self, inp: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Everything but ``conv_last`` and the global residual (the paper's "encoder") plus classifier features.

        Args:
            inp: ``[N, C, H, W]`` in [0, 1]; H, W multiples of ``window_size`` (plain) or ``mask_patch_size``.
            mask: None or Bool ``[N, 1, H/p, W/p]`` (p = ``mask_patch_size``, True = visible); float {0,1} too.

        Returns:
            ``(last, feats)``: ``last`` = ``conv_after_body(...) + conv_first(...)`` ``[N, embed_dim, H, W]``;
            ``feats[i]`` = output of RSTB ``tap_layers[i]`` as ``[N, embed_dim, H / 2**i, W / 2**i]`` (nearest,
            every ``2**i``-th position).

        Raises:
            ValueError: on a bad input or mask shape.
        """
        self.check_input(inp, masked=mask is not None)
        m = level_masks(mask, inp, self.mask_patch_size, 0)[0] if mask is not None else None  # [N, 1, H, W]
        mt = m.permute(0, 2, 3, 1) if m is not None else None  # [N, H, W, 1]
        z = self._normalise(inp)
        if m is not None:
            z = z * m
        f0 = self.conv_first(z)
        if m is not None:
            f0 = f0 * m
        t = self.patch_embed.norm(f0.permute(0, 2, 3, 1))
        if mt is not None:
            t = t * mt
        feats = []
        for i, layer in enumerate(self.layers):
            t = layer(t, mt)
            if i in self.tap_layers:
                s = 2 ** len(feats)
                feats.append(t.permute(0, 3, 1, 2)[..., ::s, ::s])
        t = self.norm(t)
        if mt is not None:
            t = t * mt
        res = self.conv_after_body(t.permute(0, 3, 1, 2))
        if m is not None:
            res = res * m
        return res + f0, feats

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Plain restoration ``(z + conv_last(last)) / img_range + mean`` for ``inp`` ``[N, C, H, W]``, H, W
        multiples of ``window_size`` (no internal padding). Returns ``[N, C, H, W]`` (not clamped)."""
        last, _ = self.forward_features(inp)
        z = self._normalise(inp)
        return (z + self.conv_last(last)) / self.img_range + self.mean.to(inp.dtype)


#: Named configurations for :func:`build_swinir`. ``paper`` (alias ``paper-5d``): the configuration the paper
#: uses (embed 180, [6]*6, heads [6]*6, mlp 2, window 8) in the MaskDCPT release variant, 11,455,563 parameters;
#: ``official``: the same with the original relative position bias and shifted-window mask, 11,504,163;
#: ``cpu-default`` and ``tiny``: small variants for CPU runs and tests.
SWINIR_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8, "mlp_ratio": 2.0,
              "rel_pos_bias": False, "shift_mask": False},
    "official": {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8, "mlp_ratio": 2.0,
                 "rel_pos_bias": True, "shift_mask": True},
    "cpu-default": {"embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [4, 4, 4, 4], "window_size": 8,
                    "mlp_ratio": 2.0, "rel_pos_bias": False, "shift_mask": False},
    "tiny": {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 2], "window_size": 8, "mlp_ratio": 2.0,
             "rel_pos_bias": False, "shift_mask": False},
}


def build_swinir(preset: str | None = None, **overrides: Any) -> SwinIR:
    """Build a :class:`SwinIR` from a preset of :data:`SWINIR_PRESETS` plus keyword overrides (None values ignored).
    ``preset=None`` uses the constructor defaults (= ``paper``). Raises ``ValueError`` on an unknown preset."""
    kwargs: dict[str, Any] = {}
    if preset is not None:
        if preset not in SWINIR_PRESETS:
            raise ValueError(f"unknown SwinIR preset {preset!r}; choose one of {sorted(SWINIR_PRESETS)}")
        kwargs.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in SWINIR_PRESETS[preset].items()})
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return SwinIR(**kwargs)


_BUFFER_SUFFIXES = (".attn.relative_position_index", ".attn_mask")


def swinir_key_map(keys: Sequence[str]) -> dict[str, str | None]:
    """Map checkpoint keys to this module's names (``None`` = drop).

    * recomputed buffers of the official release (``...attn.relative_position_index``, ``...attn_mask``) are
      dropped;
    * a split layout, ``encode_layers.<i>.`` and ``decode_layers<j>.`` (the MaskDCPT release's SwinIR), is mapped
      to ``layers.<i>.`` and ``layers.<n_enc + j>.`` (n_enc = number of ``encode_layers``);
    * other keys are unchanged.
    """
    import re

    enc = {int(m.group(1)) for k in keys if (m := re.match(r"^encode_layers\.(\d+)\.", k))}
    n_enc = max(enc) + 1 if enc else 0
    out: dict[str, str | None] = {}
    for k in keys:
        if k.endswith(_BUFFER_SUFFIXES):
            out[k] = None
            continue
        k2 = re.sub(r"^encode_layers\.(\d+)\.", r"layers.\1.", k)
        k2 = re.sub(r"^decode_layers(\d+)\.", lambda mm: f"layers.{n_enc + int(mm.group(1))}.", k2)
        out[k] = k2
    return out
