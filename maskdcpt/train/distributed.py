"""Process group and DeepSpeed set-up, and reading a DeepSpeed checkpoint folder back into one state dict.

Without a launcher the training runs as one gloo process on the CPU (the single-process variables are set here);
under the ``deepspeed`` launcher or ``torchrun`` the variables are already set.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from maskdcpt.train.params import DeepSpeedParams, as_group

__all__ = ["init_distributed", "shutdown_distributed", "deepspeed_config", "consolidated_state_dict"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """Initialise ``deepspeed.comm`` once; return ``(rank, world_size)``.

    Without a launcher (no ``RANK`` in the environment) it sets ``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0
    MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port>``, without which DeepSpeed falls back to MPI discovery and fails
    (docs/stack.md §2.1).
    """
    import deepspeed
    import deepspeed.comm as dist

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Barrier then destroy the process group (a clean exit; avoids the stray abort of docs/stack.md §2.3)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        with contextlib.suppress(Exception):
            tdist.barrier()
        tdist.destroy_process_group()


def deepspeed_config(ds: DeepSpeedParams | Mapping[str, Any], micro_batch: int, grad_clip: float) -> dict[str, Any]:
    """Build the DeepSpeed config from the ``deepspeed`` params group (a mapping is validated; missing keys take
    :class:`~maskdcpt.train.params.DeepSpeedParams`' defaults).

    ``train_batch_size = micro_batch x gradient_accumulation_steps x world_size`` is derived by DeepSpeed.
    ``gradient_clipping`` is always written: DeepSpeed's own default is 1.0, so leaving it out for
    ``grad_clip = 0`` would clip every step at norm 1 instead of not at all.
    Raises ``pydantic.ValidationError`` (a ``ValueError``) for a ZeRO stage outside 0-3 or an unknown key.
    """
    ds = as_group(DeepSpeedParams, ds)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "gradient_clipping": float(grad_clip) if grad_clip and grad_clip > 0 else 0.0,
    }
    return cfg


def consolidated_state_dict(checkpoint_dir: Path, tag: str | None = None) -> dict[str, Any]:
    """A consolidated fp32 ``{"params", "params_ema", "step"}`` from a checkpoint folder written by :func:`maskdcpt.train.engine.train`.

    ``params``: for ZeRO stages 1-3 the fp32 master weights gathered from every rank's optimizer partition with
    ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`` (so a bf16 run yields its fp32
    masters); for stage 0 (no partitions) the ``module`` weights of ``mp_rank_00_model_states.pt`` cast to
    float32. ``params_ema``: the EMA shadow saved in the client state (``None`` when training had no EMA; the
    EMA of a ZeRO-3 run would hold partitioned placeholders and is not supported). Runs offline, in one process,
    without ``torch.distributed``. Keys are the model's own names (no ``module.`` prefix), so the result loads
    with :func:`maskdcpt.models.load_backbone_state_dict` (use ``backbone_state_dict`` names for MaskDCPT).

    Args:
        checkpoint_dir: the ``checkpoint_dir`` given to :func:`maskdcpt.train.engine.train` (holds ``latest`` and ``step*/``).
        tag: a checkpoint tag (``step40``); default: the one named in ``latest``.

    Raises:
        FileNotFoundError: no ``latest`` file / tag folder / model-states file.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if tag is None:
        latest = checkpoint_dir / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {checkpoint_dir} (no 'latest' file)")
        tag = latest.read_text().strip()
    folder = checkpoint_dir / tag
    states = folder / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no {states.name}")
    meta = torch.load(states, map_location="cpu", weights_only=False)
    if any(folder.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        params = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
        params = {k: v.float() for k, v in params.items()}
    else:
        params = {k: v.detach().float().clone() for k, v in meta["module"].items()}
    ema = meta.get("ema")
    return {"params": params, "params_ema": (ema or {}).get("shadow"), "step": meta.get("step"), "tag": tag}
