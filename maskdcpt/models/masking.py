"""Patch-level random masking for MaskDCPT pre-training.

Spec: ``docs/method.md`` §1.3 (mask sampling and per-level mask resolution).

Convention used throughout :mod:`maskdcpt.models`: a mask is a **Bool** tensor ``[B, 1, h, w]`` at patch
resolution with ``True = visible/kept`` and ``False = masked``; :func:`expand_mask` turns it into a float
``{0., 1.}`` tensor at a feature resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["random_patch_mask", "expand_mask", "num_kept_patches"]


def num_kept_patches(h_patches: int, w_patches: int, keep_ratio: float = 0.5) -> int:
    """Number of visible patches per image: ``round(h * w * keep_ratio)`` (docs/method.md §1.3, ``len_keep``).

    Python's ``round`` is used (half to even), so e.g. 9 patches at 0.5 keep 4.
    """
    return int(round(h_patches * w_patches * float(keep_ratio)))


def random_patch_mask(
    batch: int,
    h_patches: int,
    w_patches: int,
    keep_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample an independent random patch mask per image with an exact number of kept patches.

    docs/method.md §1.3: ``len_keep = round(h*w*keep_ratio)`` (keep_ratio = 1 - mask_ratio, 0.5 in the paper), the
    permutation is ``torch.rand(B, h*w).argsort()`` and the first ``len_keep`` indices are kept. This is
    *not* Bernoulli masking: every image keeps exactly ``len_keep`` patches.

    Args:
        batch: B >= 1.
        h_patches, w_patches: patch grid size (H / patch, W / patch), each >= 1.
        keep_ratio: fraction of visible patches, in [0, 1].
        generator: optional ``torch.Generator``; the noise is drawn on the generator's device, so pass a
            CPU generator for device-independent masks.
        device: device of the returned mask (defaults to the generator's device, else CPU).

    Returns:
        Bool tensor ``[B, 1, h_patches, w_patches]``, True = visible.

    Raises:
        ValueError: on non-positive sizes or keep_ratio outside [0, 1].
    """
    if batch < 1 or h_patches < 1 or w_patches < 1:
        raise ValueError(f"batch, h_patches, w_patches must be >= 1, got {batch}, {h_patches}, {w_patches}")
    if not 0.0 <= float(keep_ratio) <= 1.0:
        raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
    n = h_patches * w_patches
    len_keep = num_kept_patches(h_patches, w_patches, keep_ratio)
    noise_device = generator.device if generator is not None else (device if device is not None else "cpu")
    noise = torch.rand(batch, n, generator=generator, device=noise_device)
    ids_keep = noise.argsort(dim=1)[:, :len_keep]
    flat = torch.zeros(batch, n, dtype=torch.bool, device=noise.device)
    flat.scatter_(1, ids_keep, True)
    mask = flat.view(batch, 1, h_patches, w_patches)
    if device is not None:
        mask = mask.to(device)
    return mask


def expand_mask(
    mask: torch.Tensor, size: int | Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Nearest-neighbour expand a patch mask to a feature resolution (each patch becomes an s x s block).

    docs/method.md §1.3 ("per-level mask resolution ... always equals the feature resolution").

    Args:
        mask: Bool ``[B, 1, h, w]`` (True = visible) or a float mask with values in {0, 1} (cast as is).
        size: target ``(H, W)`` or an int for a square size; H and W must be integer multiples of h and w
            (a factor of 1 returns the mask unchanged apart from dtype).
        dtype: dtype of the result (float32 by default).

    Returns:
        ``[B, 1, H, W]`` tensor of ``dtype`` with values in {0, 1}.

    Raises:
        ValueError: if ``mask`` is not 4-D with one channel or the size is not an integer multiple.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape [B, 1, h, w], got {tuple(mask.shape)}")
    if isinstance(size, int):
        size = (size, size)
    H, W = int(size[0]), int(size[1])
    h, w = mask.shape[-2:]
    if H < h or W < w or H % h or W % w:
        raise ValueError(
            f"cannot expand a mask of spatial size {(h, w)} to {(H, W)}: the target must be an integer "
            "multiple of the mask size"
        )
    out = mask.to(dtype)
    fh, fw = H // h, W // w
    if fh > 1:
        out = out.repeat_interleave(fh, dim=2)
    if fw > 1:
        out = out.repeat_interleave(fw, dim=3)
    return out


def level_masks(mask: torch.Tensor, inp: torch.Tensor, patch: int, num_levels: int) -> list[torch.Tensor]:
    """Validate a patch mask for ``inp`` and expand it to every level of a U-Net backbone.

    Args:
        mask: Bool ``[N or 1, 1, H/patch, W/patch]``, True = visible.
        inp: the backbone input ``[N, C, H, W]``.
        patch: the mask patch size in pixels (2**levels for NAFNet, 16 for Restormer).
        num_levels: number of downsamplings.

    Returns:
        ``num_levels + 1`` float masks, index ``i`` at resolution ``(H / 2**i, W / 2**i)``, dtype of ``inp``.

    Raises:
        ValueError: the mask's shape does not match the input and patch size.
    """
    n, _, h, w = inp.shape
    want = (h // patch, w // patch)
    if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[-2:]) != want or mask.shape[0] not in (1, n):
        raise ValueError(
            f"mask must have shape [{n}, 1, {want[0]}, {want[1]}] (one entry per {patch}x{patch} patch, True = "
            f"visible) for input {tuple(inp.shape)}, got {tuple(mask.shape)}"
        )
    mask = mask.to(inp.device)
    return [expand_mask(mask, (h >> i, w >> i), dtype=inp.dtype) for i in range(num_levels + 1)]
