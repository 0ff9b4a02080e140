"""All-in-one fine-tuning of the plain (unmasked) NAFNet, from the MaskDCPT backbone or from scratch.

Recipe (maskdcpt-method.md §3.2, the official DCPT 5D fine-tune configs as proxy): L1 loss only, AdamW
(betas 0.9/0.999, wd 0) with LR 3e-4 cosine-annealed to 1e-6, EMA of the weights (decay 0.999), gradient-norm
clipping 0.01. The scratch baseline runs the identical recipe, seed and data order from a random initialisation.
The checkpoint is ``{"params": raw weights, "params_ema": EMA weights}`` with the official NAFNet key names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from maskdcpt.data.pairs import PairSet, sample_batch
from maskdcpt.models import build_backbone, load_backbone_state_dict
from maskdcpt.train import engine


def finetune_loss(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                  gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One fine-tuning loss evaluation (the engine's ``compute_loss``): ``L1(module(lq), gt)`` over all pixels.

    ``batch`` is ``(lq, gt)``, both ``[N, 3, H, W]`` in [0, 1]; ``gen`` is unused (plain, unmasked forward).
    Returns ``(scalar loss computed in fp32, {"loss": value})``.
    """
    lq, gt = batch
    loss = F.l1_loss(module(lq).float(), gt.float())
    return loss, {"loss": float(loss.detach())}


def run_finetune(train_set: PairSet, *, model_cfg: dict[str, Any], cfg: dict[str, Any],
                 ds_params: dict[str, Any], seed: int, out_dir: Path, init: str = "random",
                 pretrained: Path | None = None, checkpoint_dir: Path | None = None,
                 on_log: Callable[[int, dict], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune and write ``out_dir/model.pt`` (``params`` and ``params_ema``) atomically.

    Args:
        init: ``pretrained`` (load ``pretrained``'s backbone weights, reporting loaded / missing / unexpected keys)
            or ``random``.
        pretrained: the ``backbone.pt`` written by pre-training (required for ``init='pretrained'``).

    Returns:
        A summary with steps, timing, the last loss and the init report.

    Raises:
        ValueError: unknown ``init``; FileNotFoundError: missing pre-trained file.
    """
    if init not in ("pretrained", "random"):
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    torch.manual_seed(seed)
    net = build_backbone(model_cfg.get("arch", "nafnet"), model_cfg.get("preset", "cpu-default"))
    report: dict[str, Any] = {"init": init}
    if init == "pretrained":
        if pretrained is None or not Path(pretrained).is_file():
            raise FileNotFoundError(f"pre-trained backbone not found: {pretrained}")
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        report.update(load_backbone_state_dict(net, state, key="params"))
    steps, lr = int(cfg["steps"]), float(cfg["lr"])

    def make_batch(gen: torch.Generator, n: int):
        lq, gt, _ = sample_batch(train_set, gen, n)
        return lq, gt

    module, ema, result = engine.train(
        net, [{"params": list(net.parameters()), "lr": lr}], ds_params=ds_params,
        micro_batch=int(cfg["batch_size"]), steps=steps, seed=seed, make_batch=make_batch,
        compute_loss=finetune_loss, grad_clip=float(cfg.get("grad_clip", 0)),
        lr_lambda=engine.cosine_lambda(steps, lr, float(cfg.get("eta_min", 1e-6))),
        ema_decay=float(cfg.get("ema_decay", 0.999)), checkpoint_dir=checkpoint_dir,
        checkpoint_every=int(cfg.get("checkpoint_every", 0)), log_every=int(cfg.get("log_every", 10)),
        on_log=on_log, weight_decay=float(cfg.get("weight_decay", 0.0)), progress=progress)
    params = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    meta = {"arch": model_cfg.get("arch", "nafnet"), "preset": model_cfg.get("preset"), "steps": steps,
            "init": init}
    engine.atomic_torch_save({"params": params, "params_ema": ema.shadow, "meta": meta}, Path(out_dir) / "model.pt")
    return {"steps": result.step, "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 2), "resumed_from": result.resumed_from,
            "train_loss": result.last.get("loss"), "init_report": report}
