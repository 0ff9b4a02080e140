"""Streaming training data over the tar shards (:mod:`maskdcpt.data.shards`), split across ranks and DataLoader
workers, with an exactly resumable position.

Why not a library's loader: webdataset reads these shards but keeps no position to checkpoint (its maintainer
recommends resampling instead, webdataset issues #271/#234/#177); torchdata's ``StatefulDataLoader`` would
checkpoint worker state, but the order below is a pure function of ``(seed, epoch, rank, worker)``, so the
position is a few integers and resuming needs no saved iterator at all; mosaicml-streaming has a reported
multi-epoch resume bug (mosaicml/streaming #869). What is used: torch's own ``DataLoader`` (worker processes,
pinned memory), stdlib :mod:`tarfile`, OpenCV PNG decoding and boto3 (botocore retries) for ``s3://``.

Order of one epoch (``e``)
--------------------------
1. *Units*: each shard, repeated ``repeat`` times (the manifest's ``repeat`` column; 1 when absent), permuted by
   ``default_rng([seed, e, 1])``. Their samples concatenated give the epoch's ``N`` global positions.
2. *Slots*: ``world x max(1, num_workers)`` contiguous ranges ``[s N // S, (s + 1) N // S)``; slot
   ``s = rank * workers + worker``. Every sample is used exactly once per epoch across all ranks; a slot reads
   only its own shards (and at most a part of one shard at each end).
3. *Shuffle buffer*: inside a slot, samples pass a buffer of ``shuffle_buffer`` samples (emit a uniformly chosen
   one when full; ``default_rng([seed, e, 2, s, S])``). The emission order is computed on positions, not on
   images, so skipping ``c`` consumed samples decodes nothing.
4. *Augmentation*: a flip and a 90-degree rotation per sample (as :func:`maskdcpt.data.pairs.sample_batch`), and a
   random window when ``crop`` is set, from ``default_rng([seed, e, 3, global position])``.

A worker's stream runs epoch after epoch; it yields whole batches (so a batch can span two epochs). Batch ``k`` of
a rank comes from logical worker ``k mod W``; the position (:meth:`StreamLoader.state_dict`) is the number of
batches consumed and each logical worker's cursor (samples emitted, bad ones included), recorded in the
training checkpoint and restored *before* any worker starts (:meth:`StreamLoader.load_state_dict` refuses a
loader that is already iterating: workers that prefetch from step 0 would hand out the wrong batches).

Bad data: a truncated shard, a corrupt PNG member, a member out of step with the manifest or a missing
``s3://`` object raises :class:`BadSampleError` naming the shard and key; with ``on_bad_sample='skip'`` the
sample (or the rest of the shard) is skipped and counted (``state_dict()["skipped"]``). Transient S3 errors are
retried with exponential backoff (botocore standard mode, then whole-object re-reads).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from maskdcpt.data.sample_ops import augment_pair, chw_tensor, owned_nbytes, stack_unit
from maskdcpt.data.shard_index import (BadSampleError, ShardIndex, decode_member, emission_order, epoch_units,
                                       open_shard, read_members, slot_range)

log = logging.getLogger(__name__)

__all__ = ["ShardIndex", "StreamLoader", "BadSampleError", "iter_batches", "iter_samples", "emission_order",
           "slot_range", "train_loader", "split_index"]


# ------------------------------------------------------------------------------------ the per-slot stream
@dataclass
class _Sample:
    key: str
    label: int
    epoch: int
    pos: int          # global position in the epoch (the augmentation seed)
    lq: torch.Tensor  # (3, H, W) uint8 codes or float32 in [0, 1] (:func:`~maskdcpt.data.sample_ops.chw_tensor`)
    gt: torch.Tensor


@dataclass
class _SlotStream:
    """The samples of one (rank, worker) slot from a cursor on, epoch after epoch (or ``epochs`` epochs)."""

    index: ShardIndex
    seed: int
    slot: int
    slots: int
    shuffle: bool
    buffer: int
    augment: bool
    crop: int | None
    skip_bad: bool
    epochs: int | None = None
    cache_bytes: int = 0  # decoded samples kept for later epochs (first come, until full); 0: none
    skipped: int = 0
    _decoded: dict = field(default_factory=dict)  # (shard location, position) -> (lq, gt) code arrays
    _decoded_bytes: int = 0

    def epoch_length(self) -> int:
        a, b = slot_range(self.index.num_samples, self.slot, self.slots)
        return b - a

    def samples(self, cursor: int) -> Iterator[tuple[int, _Sample | None]]:
        """Yield ``(cursor after this sample, sample or None for a skipped bad one)`` from ``cursor`` on."""
        length = self.epoch_length()
        if length == 0:
            return
        epoch, t0 = divmod(cursor, length)
        while self.epochs is None or epoch < self.epochs:
            for t, sample in self._epoch(epoch, t0):
                yield epoch * length + t + 1, sample
            epoch, t0 = epoch + 1, 0

    def _epoch(self, epoch: int, t0: int) -> Iterator[tuple[int, _Sample | None]]:
        total = self.index.num_samples
        a, b = slot_range(total, self.slot, self.slots)
        units = epoch_units(self.index, self.seed, epoch, self.shuffle)
        sizes = np.array([len(self.index.shards[u].keys) for u in units], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        rng = np.random.default_rng([self.seed, epoch, 2, self.slot, self.slots]) if self.shuffle else None
        order = emission_order(b - a, self.buffer, rng)
        needed = order[t0:]
        need_set = set(int(p) for p in needed)
        # units overlapping [a, b) in order, each with the local positions it covers
        first = int(np.searchsorted(starts, a, side="right") - 1)
        raw: dict[int, tuple | None] = {}
        reader = self._reader(units, starts, first, a, b, need_set, raw)
        for t in range(t0, b - a):
            p = int(order[t])
            while p not in raw:
                try:
                    next(reader)
                except StopIteration:  # pragma: no cover - the reader covers [a, b)
                    raise RuntimeError(f"slot reader ended before position {p}") from None
            item = raw.pop(p)
            if item is None:
                yield t, None
                continue
            loc, pos, key, label, parts = item
            try:
                if parts is None:  # decoded in an earlier epoch (never modified: the views below are copied)
                    lq, gt = self._decoded[(loc, pos)]
                else:
                    lq = decode_member(loc, key, parts["lq"], "lq", codes=True)
                    gt = decode_member(loc, key, parts["gt"], "gt", codes=True)
                    self._keep(loc, pos, lq, gt)
                rs = np.random.default_rng([self.seed, epoch, 3, a + p])
                lq, gt = augment_pair(lq, gt, rs, self.augment, self.crop, loc, key)
            except BadSampleError as e:
                if not self.skip_bad:
                    raise
                self.skipped += 1
                log.warning("skipped bad sample: %s", e)
                yield t, None
                continue
            yield t, _Sample(key, label, epoch, a + p, chw_tensor(lq), chw_tensor(gt))

    def _keep(self, loc: str, pos: int, lq: np.ndarray, gt: np.ndarray) -> None:
        size = owned_nbytes(lq) + owned_nbytes(gt)
        if self._decoded_bytes + size <= self.cache_bytes:
            self._decoded[(loc, pos)] = (lq, gt)
            self._decoded_bytes += size

    def _reader(self, units, starts, first, a, b, need_set, raw) -> Iterator[None]:
        """Read the slot's units in order, putting ``raw[local position]`` for the needed positions: ``(loc, position
        in shard, key, label, member bytes or None when already decoded)``, or ``None`` for a lost sample."""
        u_i = first
        while u_i < len(units) and starts[u_i] < b:
            shard = self.index.shards[units[u_i]]
            lo, hi = max(a, int(starts[u_i])), min(b, int(starts[u_i + 1]))
            in_shard = {g - int(starts[u_i]) for g in range(lo, hi) if g - a in need_set}
            u_i += 1
            if not in_shard:
                continue  # consumed before the cursor: not even opened
            loc, start = self.index.location(shard), int(starts[u_i - 1])
            cached = {pos for pos in in_shard if (loc, pos) in self._decoded}
            for pos in cached:
                raw[start + pos - a] = (loc, pos, shard.keys[pos], shard.labels[pos], None)
            in_shard -= cached
            if not in_shard:  # every needed sample decoded before: the shard is not read
                yield None
                continue
            got: set[int] = set()
            try:
                with open_shard(self.index, shard) as f:
                    for pos, parts in read_members(f, loc, shard, in_shard, max(in_shard) + 1):
                        raw[start + pos - a] = (loc, pos, shard.keys[pos], shard.labels[pos], parts)
                        got.add(pos)
                        yield None
            except BadSampleError as e:
                if not self.skip_bad:
                    raise
                lost = in_shard - got
                self.skipped += len(lost)
                log.warning("skipped %d samples of a bad shard: %s", len(lost), e)
                for pos in lost:
                    raw[start + pos - a] = None
                yield None


# ------------------------------------------------------------------------------------------ the loader
class _BatchDataset(torch.utils.data.IterableDataset):
    """Yields whole batches of one logical worker (the DataLoader runs with ``batch_size=None``)."""

    def __init__(self, loader: "StreamLoader"):
        super().__init__()
        self.cfg = loader._config()
        self.start_batch = loader._batches
        self.cursors = list(loader._cursors)
        self.skipped = list(loader._skipped)

    def __iter__(self):
        c = self.cfg
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        nw = max(1, c["num_workers"])
        logical = (physical + self.start_batch) % nw  # physical worker 0 makes the next batch (start_batch)
        stream = _SlotStream(c["index"], c["seed"], c["rank"] * nw + logical, c["world"] * nw, c["shuffle"],
                             c["shuffle_buffer"], c["augment"], c["crop"], c["on_bad_sample"] == "skip",
                             c["epochs"], int(c["cache_mb"] * 2**20))
        stream.skipped = self.skipped[logical]
        batch: list[_Sample] = []
        for cursor, sample in stream.samples(self.cursors[logical]):
            if sample is not None:
                batch.append(sample)
            if len(batch) == c["batch_size"]:
                yield _collate(batch, logical, cursor, stream.skipped)
                batch = []
        if batch and not c["drop_last"]:
            yield _collate(batch, logical, cursor, stream.skipped)


def _collate(batch: list[_Sample], worker: int, cursor: int, skipped: int) -> dict[str, Any]:
    return {"lq": stack_unit([s.lq for s in batch]), "gt": stack_unit([s.gt for s in batch]),
            "labels": torch.tensor([s.label for s in batch], dtype=torch.long),
            "keys": [s.key for s in batch], "epochs": [s.epoch for s in batch],
            "positions": [s.pos for s in batch], "worker": worker, "cursor": cursor, "skipped": skipped}


class StreamLoader:
    """Batches of one rank streamed from a :class:`ShardIndex` (see the module docstring for the order).

    Iterating yields ``fields`` of each batch as a tuple (default ``(lq, gt, labels)``: float32 (B, 3, H, W) in
    [0, 1] twice, int64 (B,)); ``fields=None`` yields the whole dict (``keys``, ``epochs``, ``positions``, ...).

    Args:
        index: the split's shards.
        batch_size: samples per batch (per rank).
        seed: base seed of the order and the augmentation.
        rank, world: this process's rank and the number of ranks (:meth:`bind` sets them later).
        num_workers: DataLoader worker processes decoding PNGs (0: in this process).
        shuffle_buffer: samples in the per-worker shuffle buffer (0: shard order only).
        shuffle: permute shards and pass the buffer (``False``: stored order, e.g. validation).
        augment: per-sample flip / 90-degree rotation; crop: a random ``crop`` px window per sample (``None``: as
            stored; every sample of a batch must then have the same size).
        on_bad_sample: ``error`` (raise :class:`BadSampleError`) or ``skip`` (count and continue).
        epochs: stop after this many epochs (``None``: endless, for step-based training); drop_last: with
            ``epochs``, drop a last incomplete batch of each worker.
        pin_memory: pinned host batches (``"auto"``: when CUDA is available) for non-blocking copies.
        cache_mb: MiB of decoded samples each worker (or this process) keeps for later epochs, first come until
            full (0: none). Values are the decoded ones either way; memory is bounded by this, not the set size.
        timeout: seconds a worker may stay silent before the DataLoader raises (never a hang).

    Raises ``ValueError`` for invalid settings.
    """

    def __init__(self, index: ShardIndex, *, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 num_workers: int = 0, shuffle_buffer: int = 0, shuffle: bool = True, augment: bool = True,
                 crop: int | None = None, on_bad_sample: str = "error", epochs: int | None = None,
                 drop_last: bool = False, pin_memory: bool | str = "auto", timeout: float = 600.0,
                 fields: Sequence[str] | None = ("lq", "gt", "labels"), prefetch_factor: int = 2,
                 cache_mb: float = 0.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0 or shuffle_buffer < 0 or not cache_mb >= 0:
            raise ValueError("num_workers, shuffle_buffer and cache_mb must be >= 0")
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        if not index.shards or index.num_samples == 0:
            raise ValueError("the shard index is empty")
        self.index, self.batch_size, self.seed = index, int(batch_size), int(seed)
        self.num_workers, self.shuffle_buffer, self.shuffle = int(num_workers), int(shuffle_buffer), bool(shuffle)
        self.augment, self.crop, self.on_bad_sample = bool(augment), (int(crop) if crop else None), on_bad_sample
        self.epochs, self.drop_last, self.timeout = epochs, bool(drop_last), float(timeout)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.fields, self.prefetch_factor = (tuple(fields) if fields else None), int(prefetch_factor)
        self.cache_mb = float(cache_mb)
        self.rank, self.world = 0, 1
        self.bind(rank, world)
        self._iterating = False

    # -- position ---------------------------------------------------------------------------------------------
    def bind(self, rank: int, world: int) -> "StreamLoader":
        """Set this process's rank and the world size (before iterating); resets the position to the start."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.rank, self.world = int(rank), int(world)
        nw = max(1, self.num_workers)
        if self.index.num_samples < self.world * nw:
            raise ValueError(f"{self.index.num_samples} samples cannot feed {self.world} ranks x {nw} workers")
        self._batches, self._cursors, self._skipped = 0, [0] * nw, [0] * nw
        return self

    def _config(self) -> dict[str, Any]:
        return dict(index=self.index, seed=self.seed, rank=self.rank, world=self.world,
                    num_workers=self.num_workers, shuffle=self.shuffle, shuffle_buffer=self.shuffle_buffer,
                    augment=self.augment, crop=self.crop, on_bad_sample=self.on_bad_sample, epochs=self.epochs,
                    batch_size=self.batch_size, drop_last=self.drop_last, cache_mb=self.cache_mb)

    def epoch_length(self) -> int:
        """Samples of one epoch on this rank (all its workers)."""
        nw = max(1, self.num_workers)
        return sum(b - a for a, b in (slot_range(self.index.num_samples, self.rank * nw + w, self.world * nw)
                                      for w in range(nw)))

    def state_dict(self) -> dict[str, Any]:
        """The data position: batches consumed, each logical worker's cursor and skip count, the epoch reached
        (the slowest worker's), samples consumed in it, and the settings the position is valid for."""
        nw = max(1, self.num_workers)
        lengths = [b - a for a, b in (slot_range(self.index.num_samples, self.rank * nw + w, self.world * nw)
                                      for w in range(nw))]
        epochs = [c // max(n, 1) for c, n in zip(self._cursors, lengths)]
        epoch = min(epochs)
        in_epoch = sum(min(max(c - epoch * n, 0), n) for c, n in zip(self._cursors, lengths))
        return {"batches": self._batches, "cursors": list(self._cursors), "skipped": list(self._skipped),
                "epoch": epoch, "samples_in_epoch": in_epoch, "samples_consumed": int(sum(self._cursors)),
                "rank": self.rank, "world": self.world, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "seed": self.seed, "num_samples": self.index.num_samples,
                "shuffle_buffer": self.shuffle_buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`. Must be called before iterating.

        Raises ``RuntimeError`` when the loader is already iterating, ``ValueError`` when the position was
        recorded with other ranks / workers / batch size / seed / data (it would not name the same samples).
        """
        if self._iterating:
            raise RuntimeError("load_state_dict() on a StreamLoader that is already iterating: its workers "
                               "started from the old position; restore the position before iterating")
        mine = {k: v for k, v in self.state_dict().items()
                if k in ("rank", "world", "num_workers", "batch_size", "seed", "num_samples", "shuffle_buffer")}
        for k, v in mine.items():
            if k in state and state[k] != v:
                raise ValueError(f"saved data position has {k}={state[k]}, this run has {v}: resuming would "
                                 "not continue the same sample sequence")
        nw = max(1, self.num_workers)
        if len(state["cursors"]) != nw:
            raise ValueError(f"saved data position has {len(state['cursors'])} worker cursors, expected {nw}")
        self._batches = int(state["batches"])
        self._cursors = [int(c) for c in state["cursors"]]
        self._skipped = [int(s) for s in state.get("skipped", [0] * nw)]

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far on this rank (``on_bad_sample='skip'``)."""
        return int(sum(self._skipped))

    # -- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        dataset = _BatchDataset(self)
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw = dict(num_workers=self.num_workers, timeout=self.timeout, prefetch_factor=self.prefetch_factor,
                      persistent_workers=False)
        dl = torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=self.pin_memory, **kw)
        self._iterating = True
        try:
            for batch in dl:
                w = int(batch["worker"])
                self._cursors[w] = int(batch["cursor"])
                self._skipped[w] = int(batch["skipped"])
                self._batches += 1
                yield batch if self.fields is None else tuple(batch[f] for f in self.fields)
        finally:
            self._iterating = False


def iter_batches(index: ShardIndex, batch_size: int, *, fields: Sequence[str] | None = ("lq", "labels"),
                 num_workers: int = 0, on_bad_sample: str = "error") -> Iterator[Any]:
    """One pass over ``index`` in stored order, no augmentation (validation): batches of ``batch_size``."""
    return iter(StreamLoader(index, batch_size=batch_size, seed=0, shuffle=False, augment=False, epochs=1,
                             num_workers=num_workers, on_bad_sample=on_bad_sample, fields=fields))


def iter_samples(index: ShardIndex, rows=None) -> Iterator[dict[str, Any]]:
    """Every sample of ``index`` once, in stored order, as ``{"key", "lq", "gt"}`` (float32 (H, W, 3) numpy),
    one at a time (samples of any size; e.g. the benchmark pairs). Raises :class:`BadSampleError`."""
    for shard in index.shards:
        loc = index.location(shard)
        with open_shard(index, shard) as f:
            for pos, parts in read_members(f, loc, shard, set(range(len(shard.keys))), len(shard.keys)):
                key = shard.keys[pos]
                yield {"key": key, "lq": decode_member(loc, key, parts["lq"], "lq"),
                       "gt": decode_member(loc, key, parts["gt"], "gt"), "label": shard.labels[pos]}



def train_loader(manifest, shard_dir: str | os.PathLike, data_cfg: dict[str, Any], *, batch_size: int,
                 seed: int, crop: int | None = None, split: str = "train") -> StreamLoader:
    """The training :class:`StreamLoader` for the validated ``data`` params group (``num_workers``,
    ``shuffle_buffer``, ``cache_mb``, ``on_bad_sample``, ``shards``: an ``s3://`` prefix or folder of shards instead
    of ``shard_dir``, ``s3_endpoint_url``, ``timeout_s``; :mod:`pipelines.params`). ``crop``: the training patch."""
    index = split_index(manifest, shard_dir, data_cfg, split)
    return StreamLoader(index, batch_size=batch_size, seed=seed, num_workers=int(data_cfg["num_workers"]),
                        shuffle_buffer=int(data_cfg["shuffle_buffer"]), crop=crop,
                        on_bad_sample=str(data_cfg["on_bad_sample"]), timeout=float(data_cfg["timeout_s"]),
                        cache_mb=float(data_cfg["cache_mb"]))


def split_index(manifest, shard_dir: str | os.PathLike, data_cfg: dict[str, Any], split: str) -> ShardIndex:
    """The :class:`ShardIndex` of ``split`` at the ``data`` params group's shard location (``shards``, else
    ``shard_dir``)."""
    return ShardIndex.from_manifest(manifest, str(data_cfg["shards"] or shard_dir), split,
                                    s3_endpoint_url=data_cfg["s3_endpoint_url"] or None)


class SplitPairs:
    """The pairs of one split as a re-iterable stream (e.g. the benchmark for the ``evaluate`` stage): each pass
    reads the shards in order and yields one ``{manifest row fields..., "lq", "gt"}`` dict at a time (float32
    (H, W, 3) in [0, 1]; any size), so no pass holds more than one pair's images. ``len()`` is the row count.
    Raises ``ValueError`` for an empty split and :class:`BadSampleError` while iterating."""

    def __init__(self, manifest, shard_dir: str | os.PathLike, split: str, data_cfg: dict[str, Any]):
        self.index = split_index(manifest, shard_dir, data_cfg, split)
        rows = manifest[manifest["split"] == split]
        self.rows = {str(r["key"]): r for r in rows.to_dict("records")}

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in iter_samples(self.index):
            yield {**self.rows[sample["key"]], "lq": sample["lq"], "gt": sample["gt"]}
