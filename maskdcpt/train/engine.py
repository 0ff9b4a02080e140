"""The DeepSpeed training engine shared by pre-training and fine-tuning.

One training function for every scale: ``deepspeed.initialize`` wraps the model and a *torch* AdamW (passing a
torch optimizer avoids JIT-building DeepSpeed's FusedAdam on CPU, docs/stack.md §2.2; torch's own fused kernel is
used where it applies). By default it runs one
process on CPU with the gloo backend, setting the single-process variables (``RANK=0``, ``WORLD_SIZE=1``, ...)
itself; under the ``deepspeed`` launcher or ``torchrun`` the variables are already set and N processes train
data-parallel (nccl on GPUs).

Determinism and resumption: the mask (and, with ``make_batch``, the batch) of step ``s`` is drawn from
generators seeded with ``(seed, step, rank)`` only. With a streaming ``data`` loader
(:class:`maskdcpt.data.stream.StreamLoader`) each rank's position (batches consumed, worker cursors) is written
beside the checkpoint (``<tag>/data_rank<r>.json``) and restored before the loader starts its workers, so a
resumed run sees exactly the batches an uninterrupted run would have seen. Checkpoints (``engine.save_checkpoint``
on all ranks) hold the model, optimizer, LR scheduler, EMA and step; they live under a folder keyed by a hash of
the training configuration, so a changed configuration never resumes stale state.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from maskdcpt.atomic import atomic_torch_save, atomic_write_json  # noqa: F401  (atomic_torch_save: re-exported)
from maskdcpt.layout import to_channels_last
from maskdcpt.train.distributed import (consolidated_state_dict, deepspeed_config,  # noqa: F401  (re-exported)
                                        init_distributed, shutdown_distributed)
from maskdcpt.train.params import DeepSpeedParams, as_group

log = logging.getLogger(__name__)



class CheckpointWriteError(OSError):
    """A checkpoint could not be written (typically a full disk). The message names the checkpoint, the space
    left on its filesystem against the size of the last complete checkpoint, and that checkpoint (``latest``),
    which a re-run resumes from once the cause is fixed; the half-written step folder is never named by
    ``latest``."""

    def __init__(self, checkpoint_dir: Path, step: int, cause: BaseException) -> None:
        latest_file = checkpoint_dir / "latest"
        latest = latest_file.read_text().strip() if latest_file.is_file() else None
        prev = checkpoint_dir / latest if latest else None
        used = sum(f.stat().st_size for f in prev.rglob("*") if f.is_file()) if prev and prev.is_dir() else 0
        try:
            free = shutil.disk_usage(checkpoint_dir).free
        except OSError:
            free = -1
        full = getattr(cause, "errno", None) == errno.ENOSPC or (0 <= free < max(used, 1 << 20))
        space = (f"No space left on device: {free / 2**20:.2f} MiB free there, the last complete checkpoint "
                 f"takes {used / 2**20:.2f} MiB" if full else f"{free / 2**20:.1f} MiB free there")
        super().__init__(f"could not write checkpoint step{step} under {checkpoint_dir} "
                         f"({type(cause).__name__}: {str(cause)[:200]}). {space}. The last complete checkpoint is "
                         f"{latest or 'none'}; a re-run resumes from it once there is room.")


class EMA:
    """Exponential moving average of a model's floating-point weights (the ``params_ema`` of BasicSR checkpoints).

    ``ema = d * ema + (1 - d) * w`` after every optimizer step, with ``d = min(decay, (1 + n) / (10 + n))`` for the
    ``n``-th update: the usual warm-up correction, so that short CPU runs are not dominated by the random
    initialisation (with ``decay=0.999`` and no correction, 400 steps would keep 67 % of the init).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().float().clone(memory_format=torch.contiguous_format)
                       for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats_s, floats_v = [], []
        for k, v in model.state_dict().items():
            if v.dtype == torch.float32 and v.device == self.shadow[k].device:
                floats_s.append(self.shadow[k])
                floats_v.append(v.detach())
            elif v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)
        if floats_s:  # one multi-tensor kernel per op instead of two per tensor (same arithmetic)
            torch._foreach_mul_(floats_s, d)
            torch._foreach_add_(floats_s, floats_v, alpha=1 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator for step ``step`` of process ``rank``: the only randomness a step uses."""
    gen = torch.Generator()
    gen.manual_seed(((seed * 1_000_003 + step) * 1009 + rank) * 31 + stream)
    return gen


@dataclass
class TrainResult:
    """What :func:`train` returns: final step, last logged values, wall time (s), images/s, resumed-from step,
    seconds spent waiting for batches (included in ``seconds``) and the streaming loader's final position."""

    step: int
    last: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_second: float = 0.0
    resumed_from: int = 0
    data_wait_seconds: float = 0.0
    data_position: dict[str, Any] | None = None


def train(
    model: torch.nn.Module,
    param_groups: list[dict[str, Any]],
    *,
    ds_params: DeepSpeedParams | Mapping[str, Any],
    micro_batch: int,
    steps: int,
    seed: int,
    compute_loss: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    make_batch: Callable[[torch.Generator, int], Any] | None = None,
    data: Any = None,
    grad_clip: float = 0.0,
    lr_lambda: Callable[[int], float] | None = None,
    ema_decay: float | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    resume: str = "auto",
    log_every: int = 10,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[int, torch.nn.Module], None] | None = None,
    eval_every: int = 0,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> tuple[torch.nn.Module, EMA | None, TrainResult]:
    """Train ``model`` for ``steps`` optimizer steps through ``deepspeed.initialize``.

    Args:
        model: the network (its weights are updated in place through the engine).
        param_groups: AdamW parameter groups, each with its ``lr`` (e.g. backbone 3e-4, heads 1e-4).
        ds_params: the ``deepspeed`` params group (ZeRO stage, bf16, accumulation, backend, and
            ``channels_last``: 4-D batch tensors and 4-D weights in the NHWC memory layout, which oneDNN
            convolutions run ~15-25 % faster on CPU, measured by ``scripts/bench_training.py``; values are
            unchanged, and the returned module and the EMA are in the plain layout. With ZeRO 1-3, which keep
            the weights in flat buffers, only the activations are NHWC).
        micro_batch: samples per process per micro-step.
        steps: optimizer steps in total (the run resumes towards this number).
        seed: base seed; step ``s`` on rank ``r`` draws from :func:`step_generator` ``(seed, s, r)``.
        make_batch: ``(generator, micro_batch) -> batch`` (tensors in the model's expected layout); or
        data: a :class:`maskdcpt.data.stream.StreamLoader` with ``batch_size == micro_batch`` (exactly one of the
            two). The engine binds it to this rank, restores its position from the checkpoint before iterating,
            records the position with every checkpoint and reports ``data_skipped`` (bad samples skipped).
        compute_loss: ``(module, batch, generator) -> (scalar loss, {name: float})``.
        grad_clip: global gradient-norm clip (0 disables).
        lr_lambda: LR multiplier per step (a torch ``LambdaLR``); ``None`` keeps the LRs constant.
        ema_decay: keep an :class:`EMA` of the weights when given.
        checkpoint_dir: where DeepSpeed checkpoints go; ``None`` disables them.
        checkpoint_every: save every N steps (and at the end); 0 saves only at the end.
        resume: ``auto`` (resume when a checkpoint exists), ``never``, or ``must`` (fail loudly when none exists).
        on_log / on_eval: rank-0 callbacks every ``log_every`` / ``eval_every`` steps.

    Returns:
        ``(module, ema, result)``: the trained (unwrapped) module, the EMA (or ``None``), and a :class:`TrainResult`.

    Raises:
        ValueError: neither or both of ``make_batch`` / ``data``, or ``data.batch_size != micro_batch``.
        FileNotFoundError: ``resume='must'`` and no checkpoint was found (or it lacks this rank's data position).
        FloatingPointError: the loss became NaN or infinite (the step is named).
    """
    import deepspeed

    if (make_batch is None) == (data is None):
        raise ValueError("pass exactly one of make_batch and data")
    if data is not None and int(data.batch_size) != int(micro_batch):
        raise ValueError(f"data.batch_size {data.batch_size} != micro_batch {micro_batch}")
    ds_params = as_group(DeepSpeedParams, ds_params)
    rank, world = init_distributed(ds_params.dist_backend)
    if data is not None:
        data.bind(rank, world)
    cfg = deepspeed_config(ds_params, micro_batch, grad_clip)
    # ZeRO-0 in fp32: torch's multi-tensor clip_grad_norm_ at the accumulation boundary (after DeepSpeed has
    # averaged the gradients) instead of DeepSpeed's per-tensor loop; the same global-norm clipping. DeepSpeed's
    # clipping is then switched off (0.0, not left out: its default is 1.0).
    own_clip = (cfg["zero_optimization"]["stage"] == 0 and not cfg["bf16"]["enabled"]
                and cfg["gradient_clipping"] > 0)
    if own_clip:
        cfg["gradient_clipping"] = 0.0
    channels_last = ds_params.channels_last
    optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999), weight_decay=weight_decay,
                                  fused=_can_fuse_adamw(param_groups))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                           lr_scheduler=scheduler, config=cfg)
    if world == 1 and cfg["zero_optimization"]["stage"] == 0:
        # one process: nothing to average, so skip DeepSpeed's flatten / all-reduce / unflatten of every gradient
        engine.enable_backward_allreduce = False
    if channels_last and cfg["zero_optimization"]["stage"] == 0:
        # 4-D weights in NHWC too, or oneDNN converts every dense 3x3 kernel at every call (the classifier's
        # 1024x1024x3x3 kernels: ~0.7 s per paper-5d pre-training step). After initialize: DeepSpeed's initial
        # broadcast views each weight as bytes, which needs the plain layout. ZeRO 1-3 own flat weight buffers.
        # to_channels_last, not module.to(memory_format=...): that raises on PromptIR's 5-D prompt tensors
        to_channels_last(engine.module)
    accum = cfg["gradient_accumulation_steps"]
    ema = EMA(engine.module, ema_decay) if ema_decay else None
    dtype = torch.bfloat16 if cfg["bf16"]["enabled"] else torch.float32

    start = 0
    if checkpoint_dir is not None and resume != "never":
        found = (Path(checkpoint_dir) / "latest").is_file()
        if not found and resume == "must":
            raise FileNotFoundError(f"resume requested but no checkpoint in {checkpoint_dir}")
        if found:
            path, client = engine.load_checkpoint(str(checkpoint_dir))
            if path is None:
                raise FileNotFoundError(f"DeepSpeed found no loadable checkpoint in {checkpoint_dir}")
            start = int(client["step"])
            if ema is not None and client.get("ema"):
                ema.load_state_dict(client["ema"])
            if data is not None:
                tag_dir = Path(path) if Path(path).is_dir() else Path(path).parent  # DeepSpeed returns the file
                pos_file = tag_dir / f"data_rank{rank}.json"
                if not pos_file.is_file():
                    raise FileNotFoundError(f"checkpoint {path} has no data position for rank {rank} ({pos_file.name})")
                data.load_state_dict(json.loads(pos_file.read_text()))
            if rank == 0:
                log.info("resumed from %s at step %d", path, start)

    def save(step: int) -> None:
        if checkpoint_dir is None:
            return
        client = {"step": step, "ema": ema.state_dict() if ema is not None else None}
        try:
            if data is not None:  # before DeepSpeed writes `latest`: a checkpoint it names always has the position
                atomic_write_json(Path(checkpoint_dir) / f"step{step}" / f"data_rank{rank}.json", data.state_dict())
            engine.save_checkpoint(str(checkpoint_dir), tag=f"step{step}", client_state=client)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as an obscure iostream error
            raise CheckpointWriteError(Path(checkpoint_dir), step, e) from e
        if rank == 0:  # keep the newest two checkpoints
            tags = sorted((p for p in Path(checkpoint_dir).glob("step*") if p.is_dir()),
                          key=lambda p: int(p.name[4:]))
            for old in tags[:-2]:
                shutil.rmtree(old, ignore_errors=True)

    bar = None
    if progress and rank == 0 and steps > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, mininterval=2.0)
    engine.train()
    device = getattr(engine, "device", torch.device("cpu"))
    device = torch.device(device) if not isinstance(device, torch.device) else device
    stream = iter(data) if data is not None and steps > start else None
    t0, images, last, waited = time.perf_counter(), 0, {}, 0.0
    for step in range(start, steps):
        sums: dict[str, float] = {}
        for micro in range(accum):
            gen = step_generator(seed, step * accum + micro, rank)
            tw = time.perf_counter()
            batch = next(stream) if stream is not None else make_batch(gen, micro_batch)
            waited += time.perf_counter() - tw
            if device.type != "cpu":  # pinned host batches copy asynchronously
                batch = _to_device(batch, device)
            batch = _cast(batch, dtype, channels_last)
            loss, logs = compute_loss(engine, batch, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
            engine.backward(loss)
            if own_clip and engine.is_gradient_accumulation_boundary():
                torch.nn.utils.clip_grad_norm_(engine.module.parameters(), grad_clip, foreach=True)
            engine.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v) / accum
            images += micro_batch * world
        if ema is not None:
            ema.update(engine.module)
        done = step + 1
        if data is not None and data.on_bad_sample == "skip":
            sums["data_skipped"] = float(data.skipped)
        last = sums
        if bar is not None:
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{sums.get('loss', float('nan')):.4f}", img_s=f"{images / max(elapsed, 1e-9):.1f}")
            bar.update(1)
        if rank == 0 and on_log and (done % max(log_every, 1) == 0 or done == steps):
            on_log(done, {**sums, "lr": float(optimizer.param_groups[0]["lr"])})
        if rank == 0 and on_eval and eval_every and (done % eval_every == 0 or done == steps):
            engine.eval()
            with torch.no_grad():
                on_eval(done, engine.module)
            engine.train()
        if checkpoint_every and done % checkpoint_every == 0 and done != steps:
            save(done)
    if bar is not None:
        bar.close()
    if stream is not None:
        stream.close()  # stops the DataLoader workers
    if steps > start:
        save(steps)
    if channels_last and cfg["zero_optimization"]["stage"] == 0:
        engine.module.to(memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - t0
    result = TrainResult(step=steps, last=last, seconds=seconds,
                         images_per_second=images / seconds if seconds > 0 else 0.0, resumed_from=start,
                         data_wait_seconds=waited,
                         data_position=data.state_dict() if data is not None else None)
    return engine.module, ema, result


def _can_fuse_adamw(param_groups: list[dict[str, Any]]) -> bool:
    """True when torch's fused AdamW applies: every parameter floating-point on the CPU or a CUDA device.

    The fused kernel updates each tensor in one pass instead of one pass per element-wise operation (on the CPU
    about 2.5x faster for NAFNet paper-5d's 67.9 M parameters: 32 ms vs 80 ms per step); same update rule.
    """
    params = [p for group in param_groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch onto ``device`` with ``non_blocking=True`` (asynchronous from pinned host memory)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _cast(batch: Any, dtype: torch.dtype, channels_last: bool = False) -> Any:
    """Cast the floating-point tensors of a batch to ``dtype``; with ``channels_last``, 4-D floating-point tensors
    (images ``[N, C, H, W]``) also get the NHWC memory layout (same shape and values, different strides)."""
    if isinstance(batch, torch.Tensor):
        if not batch.is_floating_point():
            return batch
        if channels_last and batch.dim() == 4:
            return batch.to(dtype=dtype, memory_format=torch.channels_last)
        return batch.to(dtype)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_cast(b, dtype, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: _cast(v, dtype, channels_last) for k, v in batch.items()}
    return batch


def cosine_lambda(steps: int, base_lr: float, eta_min: float) -> Callable[[int], float]:
    """LR multiplier for cosine annealing from ``base_lr`` to ``eta_min`` over ``steps`` (DCPT fine-tune recipe)."""
    floor = eta_min / base_lr if base_lr > 0 else 0.0

    def fn(step: int) -> float:
        progress = min(step, steps) / max(steps, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn
