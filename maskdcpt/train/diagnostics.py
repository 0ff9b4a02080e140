"""Per-class training diagnostics: per-class training L1, per-class validation PSNR, the classifier's confusion
matrix, and their plots.

All-in-one training sums one L1 over a batch that mixes the degradation classes; these tools split that sum back
into its classes so that a class the network does not learn (or a class whose large errors dominate the sum) is
visible over the steps. Class ``k`` is the position of the degradation in ``task.classes``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from maskdcpt.atomic import atomic_write_bytes


class PerClassMeter:
    """Running per-class mean of a per-sample quantity (e.g. each sample's L1) between two :meth:`pop` calls.

    ``update(values [N], labels [N] int64 in [0, K))``; :meth:`pop` returns ``{name_k: mean}`` for the classes
    seen since the last pop (classes not seen are omitted) and resets.

    Raises ``ValueError`` when ``values`` and ``labels`` differ in length or a label is outside [0, K).
    """

    def __init__(self, class_names: Sequence[str], prefix: str = "train_l1"):
        if not class_names:
            raise ValueError("PerClassMeter needs at least one class name")
        self.names = list(class_names)
        self.prefix = prefix
        self._sum = np.zeros(len(self.names), dtype=np.float64)
        self._count = np.zeros(len(self.names), dtype=np.int64)

    def update(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        v = values.detach().float().reshape(-1).cpu().numpy().astype(np.float64)
        y = labels.detach().reshape(-1).cpu().numpy().astype(np.int64)
        if v.shape != y.shape:
            raise ValueError(f"{v.shape[0]} values but {y.shape[0]} labels")
        if y.size and (y.min() < 0 or y.max() >= len(self.names)):
            raise ValueError(f"labels must be in [0, {len(self.names)}), got {y.min()}..{y.max()}")
        np.add.at(self._sum, y, v)
        np.add.at(self._count, y, 1)

    def pop(self) -> dict[str, float]:
        out = {f"{self.prefix}_{name}": float(self._sum[k] / self._count[k])
               for k, name in enumerate(self.names) if self._count[k] > 0}
        self._sum[:] = 0.0
        self._count[:] = 0
        return out


def per_sample_l1(restored: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each sample: ``(N, C, H, W)`` twice -> ``(N,)`` float32 (the batch L1 is its mean)."""
    if restored.shape != gt.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and gt {tuple(gt.shape)} differ in shape")
    return (restored.float() - gt.float()).abs().flatten(1).mean(1)


def psnr_per_image(restored: torch.Tensor, gt: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """PSNR in dB of each image, RGB float, data range 1, no border crop: ``10 log10(1 / MSE)`` after clamping
    ``restored`` to [0, 1] (the benchmark's convention, README "Reproducing the paper's tables"). ``(N,)``."""
    if restored.shape != gt.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and gt {tuple(gt.shape)} differ in shape")
    mse = (restored.float().clamp(0, 1) - gt.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=eps))


@torch.no_grad()
def per_class_psnr(net: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                   class_names: Sequence[str], prefix: str = "val_psnr") -> dict[str, float]:
    """Mean PSNR (dB) per class of ``net``'s restorations, and of the unrestored LQ (``<prefix>_lq_<name>``).

    ``batches`` yields ``(lq, gt, labels)``: ``(N, 3, H, W)`` float in [0, 1] twice (sizes a multiple of the
    network's padding multiple, as the training crops are) and ``(N,)`` int64. The network runs in eval mode and
    is returned to its previous mode. Returns ``{f"{prefix}_{name}", f"{prefix}_lq_{name}", f"{prefix}_mean"}``
    (mean over the classes present).
    """
    was_training = net.training
    net.eval()
    param = next(net.parameters())
    sums = np.zeros((2, len(class_names)))
    counts = np.zeros(len(class_names), dtype=np.int64)
    try:
        for lq, gt, y in batches:
            out = net(lq.to(device=param.device, dtype=param.dtype)).float().cpu()
            for row, img in enumerate((out, lq)):
                np.add.at(sums[row], y.numpy(), psnr_per_image(img, gt).numpy().astype(np.float64))
            np.add.at(counts, y.numpy(), 1)
    finally:
        net.train(was_training)
    result: dict[str, float] = {}
    for k, name in enumerate(class_names):
        if counts[k]:
            result[f"{prefix}_{name}"] = float(sums[0, k] / counts[k])
            result[f"{prefix}_lq_{name}"] = float(sums[1, k] / counts[k])
    present = [result[f"{prefix}_{n}"] for n in class_names if f"{prefix}_{n}" in result]
    if present:
        result[f"{prefix}_mean"] = float(np.mean(present))
    return result


def confusion_matrix(true: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, row = true class, column = predicted class (scikit-learn's convention)."""
    from sklearn.metrics import confusion_matrix as _cm

    return _cm(np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64),
               labels=list(range(num_classes))).astype(np.int64)


def confusion_report(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-ready report of a confusion matrix: counts, per-class recall (accuracy of that class), the most
    frequent wrong prediction per class, and the overall accuracy. Raises ``ValueError`` on a shape mismatch."""
    cm = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} classes")
    rows = cm.sum(1)
    per_class = {}
    for i, name in enumerate(class_names):
        wrong = cm[i].copy()
        wrong[i] = 0
        per_class[name] = {"n": int(rows[i]), "recall": float(cm[i, i] / rows[i]) if rows[i] else None,
                           "most_confused_with": class_names[int(wrong.argmax())] if wrong.any() else None}
    total = int(cm.sum())
    return {"classes": list(class_names), "matrix": cm.tolist(), "rows": "true class", "columns": "predicted class",
            "accuracy": float(np.trace(cm) / total) if total else None, "per_class": per_class}


def plot_curves(history: Sequence[dict[str, float]], class_names: Sequence[str], path: Path,
                title: str = "") -> None:
    """Two panels over the steps: per-class training L1 (``train_l1_<name>``) and per-class validation PSNR
    (``val_psnr_<name>``, with each class's LQ PSNR dashed). ``history`` rows carry ``step`` and those keys
    (missing keys are skipped). Written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(class_names):
        c = colors[k % len(colors)]
        for ax, key in ((axes[0], f"train_l1_{name}"), (axes[1], f"val_psnr_{name}")):
            pts = [(h["step"], h[key]) for h in history if key in h and math.isfinite(h[key])]
            if pts:
                ax.plot(*zip(*pts), color=c, label=name)
        lq = [h[f"val_psnr_lq_{name}"] for h in history if f"val_psnr_lq_{name}" in h]
        if lq:
            axes[1].axhline(lq[-1], color=c, linestyle="--", linewidth=0.8)
    axes[0].set(xlabel="step", ylabel="training L1 (per class)", yscale="log")
    axes[1].set(xlabel="step", ylabel="validation PSNR dB (dashed: LQ)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> None:
    """The confusion matrix as a row-normalised heat map with the counts written in; PNG, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.0 * len(class_names) + 1.5))
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "degradation classification (validation)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


@torch.no_grad()
def classifier_predictions(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted classes of a MaskDCPT model (its forward takes ``generator=`` for the patch mask and
    returns ``{"logits"}``) over ``(lq [N, 3, H, W], labels [N])`` batches, masks drawn from one generator
    seeded with ``seed`` (as :func:`maskdcpt.train.pretrain.classification_accuracy`). The model is left in
    eval mode. Returns two int64 arrays of equal length."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    true, pred = [], []
    for lq, y in batches:
        logits = model(lq.to(device=param.device, dtype=param.dtype), generator=gen)["logits"]
        true.append(y.reshape(-1).cpu().numpy())
        pred.append(logits.argmax(1).cpu().numpy())
    if not true:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(true).astype(np.int64), np.concatenate(pred).astype(np.int64)
