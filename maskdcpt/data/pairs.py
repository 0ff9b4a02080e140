"""In-memory paired datasets read from the synthesized shards, and the with-replacement batch sampler.

The training stages stream their data instead (:mod:`maskdcpt.data.stream`: epochs, ranks, workers, exact
resume, memory independent of the set size); these helpers remain for small in-memory experiments and the
benchmarks that compare against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch


@dataclass
class PairSet:
    """Paired images of one split.

    Attributes:
        lq, gt: float32 tensors (N, 3, H, W) in [0, 1] (equal-size crops) or lists of (3, H, W) tensors.
        labels: int64 (N,) class indices (position of the degradation in the task's class list).
        rows: the manifest rows in the same order.
    """

    lq: torch.Tensor | list[torch.Tensor]
    gt: torch.Tensor | list[torch.Tensor]
    labels: torch.Tensor
    rows: pd.DataFrame

    def __len__(self) -> int:
        return len(self.labels)


def load_pairs(manifest: pd.DataFrame, shard_dir: str | Path, split: str, stack: bool = True) -> PairSet:
    """Read every pair of ``split`` listed in ``manifest`` from its shard in ``shard_dir``.

    Raises:
        ValueError: the split has no rows, or a manifest row's key is missing from its shard.
    """
    from maskdcpt.data.shards import read_shard

    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"manifest has no pairs for split {split!r}")
    wanted: dict[str, set[str]] = {}
    for shard, key in zip(rows["shard"], rows["key"]):
        wanted.setdefault(shard, set()).add(key)
    found: dict[str, dict] = {}
    for shard, keys in wanted.items():
        for sample in read_shard(Path(shard_dir) / shard):
            if sample["key"] in keys:
                found[sample["key"]] = sample
    missing = [k for k in rows["key"] if k not in found]
    if missing:
        raise ValueError(f"{len(missing)} {split} pairs missing from their shards, e.g. {missing[:3]}")
    lq = [torch.from_numpy(found[k]["lq"]).permute(2, 0, 1).contiguous() for k in rows["key"]]
    gt = [torch.from_numpy(found[k]["gt"]).permute(2, 0, 1).contiguous() for k in rows["key"]]
    labels = torch.as_tensor(rows["class_index"].to_numpy(), dtype=torch.long)
    if stack:
        lq, gt = torch.stack(lq), torch.stack(gt)
    return PairSet(lq=lq, gt=gt, labels=labels, rows=rows)


def sample_batch(pairs: PairSet, generator: torch.Generator, batch_size: int, augment: bool = True):
    """Draw ``batch_size`` pairs (with replacement) and a shared random flip / 90-degree rotation per sample.

    Returns ``(lq, gt, labels)``: float32 (B, 3, H, W) in [0, 1] twice and int64 (B,). Square crops are assumed
    when ``augment`` rotates (the synthesized training crops are square).
    """
    idx = torch.randint(len(pairs), (batch_size,), generator=generator)
    lq, gt, y = pairs.lq[idx].clone(), pairs.gt[idx].clone(), pairs.labels[idx]
    if augment:
        flips = torch.randint(2, (batch_size,), generator=generator)
        rots = torch.randint(4, (batch_size,), generator=generator)
        for i in range(batch_size):
            if flips[i]:
                lq[i], gt[i] = lq[i].flip(-1), gt[i].flip(-1)
            if rots[i] and lq.shape[-1] == lq.shape[-2]:
                lq[i] = torch.rot90(lq[i], int(rots[i]), (-2, -1))
                gt[i] = torch.rot90(gt[i], int(rots[i]), (-2, -1))
    return lq, gt, y
