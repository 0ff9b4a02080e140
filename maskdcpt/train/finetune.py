"""All-in-one fine-tuning of the plain (unmasked) NAFNet, from the MaskDCPT backbone or from scratch.

Recipe (docs/method.md §3.2, the official DCPT 5D fine-tune configs as proxy): L1 loss only, AdamW
(betas 0.9/0.999, wd 0) with LR 3e-4 cosine-annealed to 1e-6, EMA of the weights (decay 0.999), gradient-norm
clipping 0.01. The scratch baseline runs the identical recipe, seed and data order from a random initialisation.
The checkpoint is ``{"params": raw weights, "params_ema": EMA weights}`` with the official NAFNet key names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from maskdcpt.data.pairs import PairSet, sample_batch
from maskdcpt.data.stream import ShardIndex, StreamLoader, iter_batches
from maskdcpt.integrity import verify_sidecar, write_sidecar
from maskdcpt.losses import RESTORATION_LOSSES, restoration_loss
from maskdcpt.models import build_backbone, load_backbone_state_dict
from maskdcpt.train import engine
from maskdcpt.train.diagnostics import PerClassMeter, per_class_psnr, per_sample_l1
from maskdcpt.train.params import FinetuneParams, ModelParams, as_group


def finetune_loss(module: torch.nn.Module, batch: tuple[torch.Tensor, ...],
                  gen: torch.Generator | None = None,
                  meter: PerClassMeter | None = None, kind: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
    """One fine-tuning loss evaluation (the engine's ``compute_loss``): the pixel loss ``kind`` of
    ``module(lq)`` against ``gt`` over all pixels (``l1``, ``psnr`` or ``relative_l1``,
    :func:`maskdcpt.losses.restoration_loss`).

    ``batch`` is ``(lq, gt)`` or ``(lq, gt, labels)``, images ``[N, 3, H, W]`` in [0, 1], labels ``[N]`` int64;
    ``gen`` is unused (plain, unmasked forward). With labels and a ``meter``, each sample's L1 is added to its
    class (:mod:`maskdcpt.train.diagnostics`), whatever the loss.
    Returns ``(scalar loss computed in fp32, {"loss": value})``; raises ``ValueError`` for an unknown ``kind``.
    """
    lq, gt = batch[0], batch[1]
    out = module(lq).float()
    per_sample = per_sample_l1(out, gt)
    loss = per_sample.mean() if kind == "l1" else restoration_loss(out, gt.float(), kind, lq=lq.float())
    if meter is not None and len(batch) > 2:
        meter.update(per_sample.detach(), batch[2])
    return loss, {"loss": float(loss.detach())}


#: The last convolution of each backbone (features -> RGB, added to the input residual).
OUTPUT_HEADS = ("ending", "output", "conv_last")


def zero_output_head(net: torch.nn.Module) -> str:
    """Zero the weights and bias of the backbone's output convolution (:data:`OUTPUT_HEADS`), so that the
    network starts as the identity ``restored = lq`` (every backbone adds its input back) and fine-tuning starts
    from the LQ's PSNR instead of the LQ plus a random image. The residual branches of NAFNet's blocks already
    start at zero (``beta``/``gamma``), and pre-training never trains this head (MaskDCPT reconstructs through
    its own head), so the change applies to both the pre-trained and the random variant alike.
    Returns the head's name; raises ``ValueError`` when the backbone has none of them."""
    for name in OUTPUT_HEADS:
        head = getattr(net, name, None)
        if isinstance(head, torch.nn.Conv2d):
            with torch.no_grad():
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()
            return name
    raise ValueError(f"{type(net).__name__} has no output convolution named one of {OUTPUT_HEADS}")


def run_finetune(train_set: PairSet | StreamLoader, *, model_cfg: ModelParams | Mapping[str, Any],
                 cfg: FinetuneParams | Mapping[str, Any], ds_params: Mapping[str, Any], seed: int, out_dir: Path,
                 init: str = "random",
                 pretrained: Path | None = None, checkpoint_dir: Path | None = None,
                 on_log: Callable[[int, dict], None] | None = None, progress: bool = True,
                 val_set: PairSet | ShardIndex | None = None, class_names: Sequence[str] | None = None,
                 verify_pretrained: bool = True) -> dict[str, Any]:
    """Fine-tune and write ``out_dir/model.pt`` (``params`` and ``params_ema``) atomically, then its SHA-256 in
    ``out_dir/sha256.json``.

    Args:
        model_cfg, cfg: the ``model`` and ``finetune`` groups (:mod:`maskdcpt.train.params`; a mapping is
            validated, missing keys take the schema's defaults); ``ds_params``: the ``deepspeed`` group.
        train_set: a :class:`StreamLoader` over the training shards (batches of ``(lq, gt)``, ``batch_size`` =
            ``cfg["batch_size"]``, position checkpointed by the engine) or an in-memory :class:`PairSet`.
        init: ``pretrained`` (load ``pretrained``'s backbone weights, reporting loaded / missing / unexpected keys)
            or ``random``.
        pretrained: the ``backbone.pt`` written by pre-training (required for ``init='pretrained'``); with
            ``verify_pretrained`` its bytes are checked against the ``sha256.json`` pre-training wrote beside it.
        class_names: the task's classes; with them the per-class training L1 (``train_l1_<class>``) is logged
            every ``log_every`` steps and, with ``val_set`` (equal-size crops), the per-class validation PSNR of
            the raw weights (``val_psnr_<class>``) every ``cfg["eval_every"]`` steps; both go to ``on_log`` and
            to the summary's ``diagnostics`` (one row per logged step).

    Returns:
        A summary with steps, timing, the last loss and the init report.

    Raises:
        ValueError: unknown ``init``; FileNotFoundError: missing pre-trained file;
        maskdcpt.integrity.ChecksumError: pre-trained weights that differ from (or lack) their recorded SHA-256.
    """
    if init not in ("pretrained", "random"):
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    model_cfg, cfg = as_group(ModelParams, model_cfg), as_group(FinetuneParams, cfg)
    torch.manual_seed(seed)
    net = build_backbone(model_cfg.arch, model_cfg.preset)
    report: dict[str, Any] = {"init": init}
    if init == "pretrained":
        if pretrained is None or not Path(pretrained).is_file():
            raise FileNotFoundError(f"pre-trained backbone not found: {pretrained}")
        if verify_pretrained:
            report["pretrained_sha256"] = verify_sidecar(pretrained)
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        report.update(load_backbone_state_dict(net, state, key="params"))
    if cfg.head_init == "zeros":
        report["head_zeroed"] = zero_output_head(net)
    loss_kind = cfg.loss
    if loss_kind not in RESTORATION_LOSSES:  # the schema's Literal and the loss registry must agree
        raise ValueError(f"finetune.loss must be one of {RESTORATION_LOSSES}, got {loss_kind!r}")
    steps, lr = cfg.steps, cfg.lr

    streaming = isinstance(train_set, StreamLoader)
    if streaming:
        train_set.fields = ("lq", "gt", "labels") if class_names else ("lq", "gt")

    def make_batch(gen: torch.Generator, n: int):
        lq, gt, y = sample_batch(train_set, gen, n)
        return (lq, gt, y) if class_names else (lq, gt)

    meter = PerClassMeter(class_names) if class_names else None
    history: dict[int, dict[str, float]] = {}

    def log(step: int, values: dict[str, float]) -> None:
        values = {**values, **(meter.pop() if meter is not None else {})}
        history.setdefault(step, {"step": step}).update(values)
        if on_log:
            on_log(step, values)

    def on_eval(step: int, module: torch.nn.Module) -> None:
        if isinstance(val_set, ShardIndex):  # streamed from its shards, one batch decoded at a time
            batches = iter_batches(val_set, 16, fields=("lq", "gt", "labels"))
        else:
            batches = ((val_set.lq[i:i + 16], val_set.gt[i:i + 16], val_set.labels[i:i + 16])
                       for i in range(0, len(val_set), 16))
        values = per_class_psnr(module, batches, class_names)
        history.setdefault(step, {"step": step}).update(values)
        if on_log:
            on_log(step, values)

    evaluating = bool(class_names) and val_set is not None and cfg.eval_every > 0

    module, ema, result = engine.train(
        net, [{"params": list(net.parameters()), "lr": lr}], ds_params=ds_params,
        micro_batch=cfg.batch_size, steps=steps, seed=seed,
        make_batch=None if streaming else make_batch, data=train_set if streaming else None,
        compute_loss=lambda m, b, g: finetune_loss(m, b, g, meter, loss_kind), grad_clip=cfg.grad_clip,
        lr_lambda=engine.cosine_lambda(steps, lr, cfg.eta_min), ema_decay=cfg.ema_decay,
        checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
        on_log=log, on_eval=on_eval if evaluating else None, eval_every=cfg.eval_every,
        weight_decay=cfg.weight_decay, progress=progress)
    params = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    meta = {"arch": model_cfg.arch, "preset": model_cfg.preset, "steps": steps,
            "init": init}
    shadow = ema.shadow if ema is not None else params  # ema_decay 0: no EMA, the raw weights serve as both
    engine.atomic_torch_save({"params": params, "params_ema": shadow, "meta": meta}, Path(out_dir) / "model.pt")
    write_sidecar(out_dir, ["model.pt"])
    return {"steps": result.step, "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 2), "resumed_from": result.resumed_from,
            "data_wait_seconds": round(result.data_wait_seconds, 3),
            **({"data_epoch": result.data_position["epoch"], "data_skipped": sum(result.data_position["skipped"])}
               if result.data_position else {}),
            "train_loss": result.last.get("loss"), "init_report": report,
            "diagnostics": [history[k] for k in sorted(history)]}
