"""MaskDCPT pre-training (paper Sec. IV, docs/method.md §1-3).

The backbone (NAFNet) sees the patch-masked LQ (16x16 patches, 50 % kept, a new mask per sample and step); the
degradation-classification decoder reads the decoder-side multi-level features and the reconstruction head
restores the clean GT over all pixels. Loss ``alpha * L1(restored, GT) + Focal(logits, class, gamma=2)``.
AdamW (weight decay 0) with two constant learning rates: backbone 3e-4, heads 1e-4 (paper Sec. V).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from maskdcpt.data.pairs import PairSet, sample_batch
from maskdcpt.data.stream import ShardIndex, StreamLoader, iter_batches
from maskdcpt.integrity import write_sidecar
from maskdcpt.losses import maskdcpt_loss
from maskdcpt.models import MaskDCPTModel, build_backbone, param_groups
from maskdcpt.train import engine
from maskdcpt.train.diagnostics import PerClassMeter, classifier_predictions, confusion_matrix, per_sample_l1
from maskdcpt.train.params import ModelParams, PretrainParams, as_group


def build_pretrain_model(model_cfg: ModelParams | Mapping[str, Any], num_classes: int,
                         keep_ratio: float = 0.5) -> MaskDCPTModel:
    """The MaskDCPT pre-training network for the ``model`` params group (arch, preset, recon head; missing
    keys take :class:`~maskdcpt.train.params.ModelParams`' defaults).

    Raises ``ValueError`` for an unknown preset; ``pydantic.ValidationError`` for an unknown key or arch.
    """
    m = as_group(ModelParams, model_cfg)
    return MaskDCPTModel(build_backbone(m.arch, m.preset), num_classes=num_classes, keep_ratio=keep_ratio,
                         recon_head=m.recon_head, recon_blocks=m.recon_blocks)


def pretrain_loss(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  gen: torch.Generator, alpha: float = 1.0, gamma: float = 2.0,
                  meter: PerClassMeter | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One pre-training loss evaluation (the engine's ``compute_loss``): masked forward, ``alpha*L1 + focal``.

    Args:
        module: the (DeepSpeed-wrapped) :class:`MaskDCPTModel`; it draws the step's patch mask from ``gen``.
        batch: ``(lq [N, 3, H, W], gt [N, 3, H, W], labels [N] int64 in [0, K))``, images in [0, 1].
        gen: the step's generator (:func:`maskdcpt.train.engine.step_generator`).
        alpha, gamma: L1 weight and focal exponent (paper: 1 and 2).
        meter: when given, each sample's reconstruction L1 is added to its class (diagnostics only).

    Returns:
        ``(scalar loss, {"loss", "l1", "focal", "train_acc"})``; the loss is computed in fp32 (also under bf16).
    """
    lq, gt, y = batch
    out = module(lq, generator=gen)
    total, parts = maskdcpt_loss(out["restored"].float(), gt.float(), out["logits"].float(), y,
                                 alpha=alpha, gamma=gamma)
    acc = (out["logits"].argmax(1) == y).float().mean()
    if meter is not None:
        meter.update(per_sample_l1(out["restored"].detach(), gt), y)
    return total, {"loss": float(total.detach()), "l1": float(parts["l1"]), "focal": float(parts["focal"]),
                   "train_acc": float(acc)}


def _val_batches(pairs: PairSet | ShardIndex, batch_size: int):
    """``(lq, labels)`` batches of a validation set: slices of an in-memory :class:`PairSet`, or one ordered
    streaming pass over a :class:`ShardIndex` (one batch decoded at a time)."""
    if isinstance(pairs, ShardIndex):
        yield from iter_batches(pairs, batch_size, fields=("lq", "labels"))
        return
    for start in range(0, len(pairs), batch_size):
        yield pairs.lq[start:start + batch_size], pairs.labels[start:start + batch_size]


@torch.no_grad()
def classification_accuracy(model: MaskDCPTModel, pairs: PairSet | ShardIndex, num_classes: int, seed: int,
                            batch_size: int = 16) -> dict[str, float]:
    """Degradation-classification accuracy of ``model`` on ``pairs`` (in memory or streamed from its shards, in
    stored order) with masks from a fixed generator.

    Returns ``{"acc": overall, "acc_<k>": per class k}`` as fractions in [0, 1] (classes without samples omitted).
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    dtype = param.dtype
    correct = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    for lq, y in _val_batches(pairs, batch_size):
        lq = lq.to(device=param.device, dtype=dtype)
        pred = model(lq, generator=gen)["logits"].argmax(1).cpu()
        for k in range(num_classes):
            sel = y == k
            total[k] += sel.sum()
            correct[k] += (pred[sel] == k).sum()
    out = {"acc": float(correct.sum() / total.sum().clamp(min=1))}
    out.update({f"acc_{k}": float(correct[k] / total[k]) for k in range(num_classes) if total[k] > 0})
    return out


def run_pretrain(train_set: PairSet | StreamLoader, val_set: PairSet | ShardIndex | None, *, num_classes: int,
                 model_cfg: ModelParams | Mapping[str, Any], cfg: PretrainParams | Mapping[str, Any],
                 ds_params: Mapping[str, Any], seed: int, out_dir: Path,
                 checkpoint_dir: Path | None = None, on_log: Callable[[int, dict], None] | None = None,
                 progress: bool = True, class_names: list[str] | None = None) -> dict[str, Any]:
    """Pre-train and write ``out_dir/model.pt`` (whole network, ``params``) and ``out_dir/backbone.pt``
    (the backbone only, official NAFNet key names, ``params``) atomically, then their SHA-256 in
    ``out_dir/sha256.json`` (:func:`maskdcpt.integrity.write_sidecar`).

    ``train_set``: a :class:`StreamLoader` over the training shards (batches of ``(lq, gt, labels)``, its
    ``batch_size`` = ``cfg["batch_size"]``; the engine binds it to the rank and checkpoints its position) or an
    in-memory :class:`PairSet` (batches drawn with replacement, :func:`sample_batch`). ``val_set``: a
    :class:`ShardIndex` (streamed) or :class:`PairSet`.

    With ``class_names`` (the task's classes) the per-class reconstruction L1 (``train_l1_<class>``) is logged
    every ``log_every`` steps, and the final evaluation adds the validation confusion matrix (rows true, columns
    predicted; :mod:`maskdcpt.train.diagnostics`) to the summary as ``confusion``.

    ``model_cfg``, ``cfg``: the ``model`` and ``pretrain`` groups (:mod:`maskdcpt.train.params`; a mapping is
    validated, missing keys take the schema's defaults); ``ds_params``: the ``deepspeed`` group.

    Returns a summary: steps, seconds, images/s, last losses, final validation accuracy.
    """
    model_cfg, cfg = as_group(ModelParams, model_cfg), as_group(PretrainParams, cfg)
    torch.manual_seed(seed)
    model = build_pretrain_model(model_cfg, num_classes, cfg.keep_ratio)
    groups = param_groups(model, cfg.backbone_lr, cfg.head_lr)
    alpha, gamma = cfg.alpha, cfg.focal_gamma

    streaming = isinstance(train_set, StreamLoader)
    if streaming:
        train_set.fields = ("lq", "gt", "labels")

    def make_batch(gen: torch.Generator, n: int):
        return sample_batch(train_set, gen, n)

    meter = PerClassMeter(class_names) if class_names else None

    def compute_loss(module, batch, gen):
        return pretrain_loss(module, batch, gen, alpha=alpha, gamma=gamma, meter=meter)

    def log(step: int, values: dict[str, float]) -> None:
        if on_log:
            on_log(step, {**values, **(meter.pop() if meter is not None else {})})

    val_log: dict[str, float] = {}
    confusion: dict[str, Any] = {}

    def on_eval(step: int, module) -> None:
        if val_set is None:
            return
        acc = classification_accuracy(module, val_set, num_classes, seed)
        val_log.clear()
        val_log.update({f"val_{k}": v for k, v in acc.items()})
        if on_log:
            on_log(step, dict(val_log))
        if class_names and step == cfg.steps:
            true, pred = classifier_predictions(module, _val_batches(val_set, 16), seed)
            confusion["matrix"] = confusion_matrix(true, pred, num_classes).tolist()
        module.train()

    module, _, result = engine.train(
        model, groups, ds_params=ds_params, micro_batch=cfg.batch_size, steps=cfg.steps,
        seed=seed, make_batch=None if streaming else make_batch, data=train_set if streaming else None,
        compute_loss=compute_loss, grad_clip=cfg.grad_clip, checkpoint_dir=checkpoint_dir,
        checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every, on_log=log, on_eval=on_eval,
        eval_every=cfg.eval_every or cfg.steps, weight_decay=cfg.weight_decay, progress=progress)
    state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    backbone = {k: v.detach().float().cpu() for k, v in module.backbone_state_dict().items()}
    out_dir = Path(out_dir)
    meta = {"arch": model_cfg.arch, "preset": model_cfg.preset,
            "num_classes": num_classes, "steps": result.step}
    engine.atomic_torch_save({"params": state, "meta": meta}, out_dir / "model.pt")
    engine.atomic_torch_save({"params": backbone, "meta": meta}, out_dir / "backbone.pt")
    write_sidecar(out_dir, ["model.pt", "backbone.pt"])  # fine-tuning verifies backbone.pt against it
    return {"steps": result.step, "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 2), "resumed_from": result.resumed_from,
            "data_wait_seconds": round(result.data_wait_seconds, 3),
            **({"data_epoch": result.data_position["epoch"], "data_skipped": sum(result.data_position["skipped"])}
               if result.data_position else {}),
            **{f"train_{k}" if not k.startswith("train_") else k: v for k, v in result.last.items()},
            **val_log, **({"confusion": confusion["matrix"]} if confusion else {})}
