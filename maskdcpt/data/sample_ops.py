"""Per-sample preparation for the streaming loader (:mod:`maskdcpt.data.stream`): the flip/rotation/crop of a
decoded pair, its (3, H, W) tensor and the batch-wise scaling of integer codes to [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

from maskdcpt.data.shard_index import BadSampleError

__all__ = ["augment_pair", "chw_tensor", "stack_unit", "owned_nbytes"]


def augment_pair(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator, augment: bool, crop: int | None,
                 loc: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A random ``crop`` px window (when set) and, with ``augment``, a flip and a 90-degree rotation (square
    samples only), the same for LQ and GT, drawn from ``rng``. Views, not copies. Raises :class:`BadSampleError`
    for mismatched sizes or a sample smaller than the crop."""
    if lq.shape != gt.shape:
        raise BadSampleError(f"shard {loc}: key {key!r}: LQ {lq.shape} and GT {gt.shape} differ in size")
    if crop:
        h, w = lq.shape[:2]
        if h < crop or w < crop:
            raise BadSampleError(f"shard {loc}: key {key!r}: {w}x{h} is smaller than the {crop} px crop")
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        lq, gt = lq[y:y + crop, x:x + crop], gt[y:y + crop, x:x + crop]
    if augment:
        flip, rot = int(rng.integers(2)), int(rng.integers(4))
        if flip:
            lq, gt = lq[:, ::-1], gt[:, ::-1]
        if rot and lq.shape[0] == lq.shape[1]:
            lq, gt = np.rot90(lq, rot), np.rot90(gt, rot)
    return lq, gt


def chw_tensor(codes: np.ndarray) -> torch.Tensor:
    """(H, W, 3) code values -> (3, H, W): ``uint8`` kept (scaled batch-wise by :func:`stack_unit`), ``uint16`` as
    float32 in [0, 1]; the values of :func:`maskdcpt.png.decode_png` either way."""
    chw = np.ascontiguousarray(codes.transpose(2, 0, 1))
    if chw.dtype == np.uint8:
        return torch.from_numpy(chw)
    return torch.from_numpy(chw.astype(np.float32) / np.float32(65535))


def stack_unit(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack :func:`chw_tensor` tensors as float32 in [0, 1] (one division for a batch of 8-bit samples; the same
    IEEE quotient as a per-sample ``/ 255``)."""
    if all(t.dtype == torch.uint8 for t in images):
        return torch.stack(images).float().div_(255.0)
    return torch.stack([t.float().div_(255.0) if t.dtype == torch.uint8 else t for t in images])


def owned_nbytes(a: np.ndarray) -> int:
    """Bytes of the buffer that ``a`` (possibly a view) keeps alive."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return int(a.nbytes)
