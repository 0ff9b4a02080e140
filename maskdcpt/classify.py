"""Degradation diagnosis with the pre-trained MaskDCPT classifier (paper Sec. IV-B): :func:`load_classifier`
reads a pre-training checkpoint, :func:`classify_image` averages the softmax over seeded random patch masks and
a few crops.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from maskdcpt.restore import pad_to_multiple, resolve_device

__all__ = ["load_classifier", "classify_image"]


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0



def load_classifier(path: str | os.PathLike, classes: list[str] | None = None,
                    device: str | torch.device | None = "auto",
                    arch: str | None = None) -> tuple[nn.Module, list[str], dict]:
    """Load the pre-trained MaskDCPT model (``models/pretrain/model.pt``) for degradation diagnosis.

    The checkpoint holds ``{"params": MaskDCPTModel state, "meta": {...}}``; the backbone (any architecture,
    recognised from the key names unless ``arch`` forces one), the number
    of classes (``classifier.fc.weight``), classifier blocks per stage and the reconstruction head kind/blocks
    are read from the weights. Class names come from ``classes`` or from ``classes.json`` beside the file;
    otherwise ``class_0..``.

    Returns:
        ``(model in eval mode on device, class names, meta)``.

    Raises:
        FileNotFoundError / ValueError: missing file, not a MaskDCPT pre-training checkpoint, or a class list
            whose length differs from the classifier's outputs.
        maskdcpt.integrity.ChecksumError: a file whose bytes differ from the ``sha256.json`` beside it.
    """
    import json

    from maskdcpt.integrity import verify_if_recorded
    from maskdcpt.models.checkpoints import build_pretrain_model_from_state, load_checkpoint_state

    path = Path(path)
    verify_if_recorded(path)
    sd, meta = load_checkpoint_state(path, key="params")
    if "classifier.fc.weight" not in sd or not any(k.startswith("backbone.") for k in sd):
        raise ValueError(f"{path} is not a MaskDCPT pre-training checkpoint (no 'backbone.*' and "
                         "'classifier.fc.weight'); pass models/pretrain/model.pt")
    model, info = build_pretrain_model_from_state(sd, meta, arch=arch)  # any backbone, detected from the keys
    cfg, num_classes, head = info["config"], info["num_classes"], info["recon_head"]
    if classes is None:
        cj = path.parent / "classes.json"
        classes = json.loads(cj.read_text()) if cj.is_file() else [f"class_{i}" for i in range(num_classes)]
    classes = [str(c) for c in classes]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a classifier with {num_classes} outputs")
    meta = {**meta, "num_classes": num_classes, "arch": info["arch"], "backbone": cfg, "recon_head": head}
    return model.to(resolve_device(device)).eval(), classes, meta


def _crop_boxes(h: int, w: int, crop: int, max_crops: int) -> list[tuple[int, int, int, int]]:
    """Up to ``max_crops`` crop boxes ``(y0, y1, x0, x1)`` on an evenly spaced grid (the whole image when it
    fits in one crop)."""
    ny = 1 if h <= crop else max(1, min(math.ceil(math.sqrt(max_crops)), math.ceil(h / crop)))
    nx = 1 if w <= crop else max(1, min(max_crops // ny, math.ceil(w / crop)))
    ys = np.linspace(0, max(0, h - crop), ny).round().astype(int)
    xs = np.linspace(0, max(0, w - crop), nx).round().astype(int)
    return [(int(y), min(h, int(y) + crop), int(x), min(w, int(x) + crop)) for y in ys for x in xs]


@torch.no_grad()
def classify_image(model: nn.Module, img: np.ndarray, classes: list[str], masks: int = 8, seed: int = 0,
                   crop: int = 128, max_crops: int = 4) -> dict[str, Any]:
    """Degradation diagnosis of one image: class probabilities averaged over random masks and crops.

    The classifier was trained on patch-masked inputs (50 % of 16x16 patches kept, paper Sec. IV-A),
    so each crop is classified under ``masks`` random masks drawn from ``torch.Generator().manual_seed(seed)``
    and the softmax probabilities are averaged over masks and crops. Crops: the whole image if it fits in
    ``crop x crop``, else up to ``max_crops`` crops on an even grid. Crops are reflect-padded to the patch size.

    Args:
        model: a :class:`~maskdcpt.models.MaskDCPTModel` (from :func:`load_classifier`).
        img: float ``(H, W, 3)`` RGB in [0, 1] (as :func:`maskdcpt.imageio.read_image` returns).
        classes: class names in label order.

    Returns:
        ``{"probabilities": {class: p}, "top": [(class, p), ...] sorted, "masks": int, "crops": int,
        "crop_size": int, "keep_ratio": float, "seed": int}``; probabilities sum to 1.

    Raises:
        ValueError: a bad image, ``masks < 1`` or ``max_crops < 1``.
    """
    from maskdcpt.models import random_patch_mask

    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if masks < 1 or max_crops < 1:
        raise ValueError("masks and max_crops must be >= 1")
    dev = next(model.parameters()).device
    p = int(model.mask_patch_size)
    crop = max(p, int(crop))
    gen = torch.Generator().manual_seed(int(seed))
    boxes = _crop_boxes(a.shape[0], a.shape[1], crop, max_crops)
    total = torch.zeros(len(classes), dtype=torch.float64)
    for y0, y1, x0, x1 in boxes:
        t = torch.from_numpy(np.ascontiguousarray(a[y0:y1, x0:x1])).permute(2, 0, 1)[None]
        t = pad_to_multiple(t, p).to(dev)
        hp, wp = t.shape[-2] // p, t.shape[-1] // p
        m = random_patch_mask(masks, hp, wp, keep_ratio=model.keep_ratio, generator=gen).to(dev)
        # the classifier head only (the reconstruction head is not needed): masked backbone -> DegCls-Dec
        _, feats = model.backbone.forward_features(t.expand(masks, -1, -1, -1), m)
        logits = model.classifier(feats)
        total += torch.softmax(logits.double(), dim=1).sum(0).cpu()
    probs = (total / total.sum()).tolist()
    table = {c: float(v) for c, v in zip(classes, probs)}
    top = sorted(table.items(), key=lambda kv: -kv[1])
    return {"probabilities": table, "top": top, "masks": int(masks), "crops": len(boxes), "crop_size": crop,
            "keep_ratio": float(model.keep_ratio), "seed": int(seed)}
