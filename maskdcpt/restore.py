"""Size-exact restoration of one image: padding to the network's multiple, overlapping tiles, blending.

* :func:`pad_to_multiple` / :func:`network_multiple`: the one padding rule of the project (restore and the
  benchmark's evaluation both use it).
* :func:`restore_tensor`: a ``(N, 3, H, W)`` batch through the network, whole image (the paper's protocol).
* :func:`restore_image`: output shape equals input shape exactly, any size (1x1 included); large images in
  overlapping tiles blended with linear ramps, so peak memory is bounded by the tile size plus a strip of the
  image; grey, grey+alpha, RGB, RGBA; uint8, uint16 or float in, the same layout and dtype out.

Inference follows the official MaskDCPT/BasicSR test code (README "Reproducing the paper's tables"): pad
bottom/right by reflection to the network's multiple (``padder_size``, 16 for 4-level NAFNet, 8 for
Restormer), run, crop back, clamp to [0, 1]. Where a single reflection is undefined (pad not smaller than the
side, e.g. 7 -> 16, on which the official code fails) the reflection is repeated, and a 1-px side is
replicated; wherever the official single reflection is defined both give the same pixels.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


__all__ = ["resolve_device", "network_multiple", "pad_to_multiple", "tile_spans", "restore_tensor", "restore_image"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> ``cuda`` when available else ``cpu``; otherwise ``torch.device(device)``.

    Raises ``ValueError`` when CUDA is requested but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use --device cpu or auto)")
    return dev




def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``[N, C, H, W]`` at the bottom/right to multiples of ``multiple`` by reflection.

    When the pad is not smaller than the side (a single reflection is undefined there, e.g. 7 -> 16) the
    reflection is repeated on the grown tensor until the size is reached; a side of 1 px is replicated.
    Returns ``x`` itself when nothing is needed.
    """
    h, w = x.shape[-2:]
    th, tw = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    while x.shape[-2] < th or x.shape[-1] < tw:
        ch, cw = x.shape[-2:]
        ph, pw = min(th - ch, ch - 1), min(tw - cw, cw - 1)
        if (th > ch and ph == 0) or (tw > cw and pw == 0):  # a 1-px side: replicate
            x = F.pad(x, (0, tw - cw if pw == 0 else 0, 0, th - ch if ph == 0 else 0), mode="replicate")
            continue
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


def tile_spans(length: int, tile: int | None, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """1-D tile intervals ``[(start, end), ...]`` covering ``[0, length)``.

    Starts are multiples of ``multiple`` (so each tile's downsampling grid aligns with the whole image's),
    the stride is ``tile - overlap`` rounded down to ``multiple`` (at least ``multiple``), the last tile ends at
    ``length`` and may be shorter than ``tile``. ``tile=None`` or ``tile >= length`` gives one span.

    Raises:
        ValueError: ``tile < 1``, ``overlap < 0`` or ``overlap >= tile``.
    """
    if tile is None or tile >= length:
        return [(0, length)]
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    stride = max(multiple, ((tile - overlap) // multiple) * multiple)
    spans, s = [], 0
    while True:
        e = min(s + tile, length)
        spans.append((s, e))
        if e == length:
            return spans
        s += stride


def _edge_ramp(r: int) -> np.ndarray:
    """Weights of the ``r`` pixels of a tile that face its neighbour, outermost first: zero over the outer
    ``r // 4`` (the pixels a tile computes from its own border padding instead of the real neighbourhood), then a
    linear ramp up to 1. Two neighbours' zero bands never meet (``r // 4 + r // 4 <= r / 2``)."""
    m = r // 4
    ramp = np.zeros(r, dtype=np.float64)
    ramp[m:] = (np.arange(r - m) + 1.0) / (r - m + 1.0)
    return ramp


def _ramp_weights(spans: list[tuple[int, int]], overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D blending weights: 1 inside, :func:`_edge_ramp` over the ``r`` pixels that face a
    neighbouring tile (``r`` = min(overlap, actual overlap)); normalised later by their sum."""
    out = []
    for i, (s, e) in enumerate(spans):
        w = np.ones(e - s, dtype=np.float64)
        if i > 0:
            r = min(overlap, spans[i - 1][1] - s, e - s)
            if r > 0:
                w[:r] = np.minimum(w[:r], _edge_ramp(r))
        if i + 1 < len(spans):
            r = min(overlap, e - spans[i + 1][0], e - s)
            if r > 0:
                w[-r:] = np.minimum(w[-r:], _edge_ramp(r)[::-1])
        out.append(w)
    return out


@torch.no_grad()
def _run(net: nn.Module, x: np.ndarray, device: torch.device, multiple: int) -> np.ndarray:
    """One (h, w, 3) float32 [0, 1] patch through the network (pad, forward, crop, clamp)."""
    h, w = x.shape[:2]
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].to(device)
    p = next(net.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    y = net(pad_to_multiple(t, multiple).to(dtype)).float()[..., :h, :w].clamp_(0.0, 1.0)
    return y[0].permute(1, 2, 0).cpu().numpy()


def network_multiple(net: nn.Module) -> int:
    """The side multiple a network needs: ``net.pad_multiple``, else ``padder_size``, else ``window_size``,
    else 16."""
    m = (getattr(net, "pad_multiple", None) or getattr(net, "padder_size", None)
         or getattr(net, "window_size", None) or 16)
    return int(m)


_network_multiple = network_multiple  # the old private name


@torch.no_grad()
def restore_tensor(net: nn.Module, lq: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """Restore ``(N, 3, H, W)`` float images in [0, 1] whole (the paper's protocol): :func:`pad_to_multiple`
    to ``multiple`` (default :func:`network_multiple`), forward in the network's dtype, crop back to
    ``(H, W)``, clamp to [0, 1]. Returns float32 ``(N, 3, H, W)`` on the network's device."""
    multiple = int(multiple or network_multiple(net))
    h, w = lq.shape[-2:]
    p = next(net.parameters(), None)
    dtype, dev = (p.dtype, p.device) if p is not None else (torch.float32, lq.device)
    out = net(pad_to_multiple(lq.to(dev), multiple).to(dtype)).float()[..., :h, :w]
    return out.clamp_(0.0, 1.0)


def restore_image(net: nn.Module, img: np.ndarray, tile: int | None = None, overlap: int = 32,
                  device: str | torch.device | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Restore one image of any size and layout; the output has exactly the input's shape and dtype.

    Args:
        net: a restoration network (``[N, 3, H, W]`` -> same, H, W multiples of ``net.padder_size``).
        img: ``(H, W)`` or ``(H, W, 1)`` grey, ``(H, W, 2)`` grey + alpha, ``(H, W, 3)`` RGB or ``(H, W, 4)``
            RGBA; ``uint8`` (/255), ``uint16`` (/65535) or float in [0, 1] (clipped). Grey is restored as three
            identical channels and the mean of the three output channels is returned; alpha is copied through
            unchanged.
        tile: tile side in pixels (``None``: the whole image at once, as in the paper). Tiles overlap by
            ``overlap`` pixels (at least; starts are aligned to ``padder_size``) and are blended with linear
            ramps normalised to sum to one, so there are no seams. Rows are finished strip by strip: besides
            the input and output arrays, memory holds one tile's activations and one ``tile x W`` float strip.
        overlap: overlap between neighbouring tiles in pixels (``0 <= overlap < tile``).
        device: where the network runs (default: the network's device).
        progress: called as ``progress(done, total)`` after each tile (``total`` = 1 without tiling).

    Returns:
        array of ``img``'s shape; ``uint8``/``uint16`` rounded (half to even) from the clamped float result,
        float input gives float32 in [0, 1].

    Raises:
        ValueError: an empty image, an unsupported shape/dtype, non-finite values or bad tiling arguments.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return restore_image(net, arr[..., 0], tile, overlap, device, progress)[..., None]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4))):
        raise ValueError(f"expected an (H, W[, 1|2|3|4]) image, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif arr.dtype.kind == "f":
        scale = None
        if not np.isfinite(arr).all():
            raise ValueError("image contains NaN or inf")
    else:
        raise ValueError(f"unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if tile is not None and (int(tile) < 1 or overlap < 0 or overlap >= tile):
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if device is None:
        p = next(net.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    gray = arr.ndim == 2 or arr.shape[2] == 2
    color_c = 1 if gray else 3
    out = np.empty(arr.shape, dtype=arr.dtype if scale else np.float32)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        out[..., -1] = arr[..., -1] if scale else np.clip(arr[..., -1], 0, 1)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        t = arr[y0:y1, x0:x1]
        t = t[..., None] if t.ndim == 2 else t[..., :color_c]
        t = t.astype(np.float32)
        t = t / np.float32(scale) if scale else np.clip(t, 0.0, 1.0)
        return np.repeat(t, 3, axis=2) if gray else t

    def write(y0: int, y1: int, strip: np.ndarray) -> None:
        v = np.clip(strip.mean(axis=2) if gray else strip, 0.0, 1.0)  # one temporary of the strip's size
        if scale:
            v *= np.float32(scale)
            np.rint(v, out=v)  # round half to even, as maskdcpt.imageio.quantize
        if arr.ndim == 2:
            out[y0:y1] = v
        elif gray:
            out[y0:y1, :, 0] = v
        else:
            out[y0:y1, :, :3] = v

    multiple = _network_multiple(net)
    tile = None if tile is None else int(tile)
    rows, cols = tile_spans(h, tile, overlap, multiple), tile_spans(w, tile, overlap, multiple)
    if len(rows) == 1 and len(cols) == 1:
        write(0, h, _run(net, read(0, h, 0, w), dev, multiple))
        if progress is not None:
            progress(1, 1)
        return out
    wy, wx = _ramp_weights(rows, overlap), _ramp_weights(cols, overlap)
    sy, sx = np.zeros(h), np.zeros(w)
    for (s, e), wt in zip(rows, wy):
        sy[s:e] += wt
    for (s, e), wt in zip(cols, wx):
        sx[s:e] += wt
    strip_h = max(e - s for s, e in rows)
    acc = np.zeros((strip_h, w, 3), dtype=np.float32)
    acc_y0 = 0
    done, total = 0, len(rows) * len(cols)
    for (ys, ye), wyi in zip(rows, wy):
        if ys > acc_y0:  # rows above this tile row receive no further contributions: finish them
            k = ys - acc_y0
            write(acc_y0, ys, acc[:k])
            acc[: strip_h - k] = acc[k:]  # overlapping copy: numpy buffers it
            acc[strip_h - k:] = 0.0
            acc_y0 = ys
        ny = (wyi / sy[ys:ye]).astype(np.float32)[:, None, None]
        for (xs, xe), wxj in zip(cols, wx):
            y = _run(net, read(ys, ye, xs, xe), dev, multiple)
            done += 1
            if progress is not None:
                progress(done, total)
            nx = (wxj / sx[xs:xe]).astype(np.float32)[None, :, None]
            acc[ys - acc_y0: ye - acc_y0, xs:xe] += y * ny * nx
    write(acc_y0, h, acc[: h - acc_y0])
    return out
