"""WebDataset-style tar shards of degraded/clean pairs (stdlib :mod:`tarfile`, no extra dependency).

Format
------
A shard is a plain POSIX tar file (``<split>-00000.tar``, ...). Each sample is three consecutive members
sharing a key (WebDataset groups members by the part of the name before the first dot):

``<key>.lq.png``
    the degraded image, RGB PNG, 8-bit (training) or 16-bit (benchmark; keeps the float protocol within
    1/65535 of the synthesised values).
``<key>.gt.png``
    the clean image, RGB PNG, 8-bit by default (the prepared photos are 8-bit, so this is lossless).
``<key>.json``
    UTF-8 JSON object with the sample's metadata (sorted keys).

Keys match ``[A-Za-z0-9_-]+`` (no dots, no slashes) and are unique within a shard. Members carry
``mtime = 0``, uid/gid 0, mode 0644 and no user names, so a shard's bytes depend only on its samples
(stable hashes for DVC). Shards are written atomically (temp file in the same folder, fsync,
``os.replace``). Any WebDataset reader can stream them; :func:`read_shard` is the dependency-free reader.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from maskdcpt.imageio import atomic_open, decode_png, encode_png

__all__ = ["write_shard", "read_shard", "iter_shards", "KEY_PATTERN"]

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
#: zlib level of the PNG members: 1 is ~1.5× faster to write than 3 for ~4 % larger files (lossless either way).
PNG_COMPRESSION = 1
_SUFFIXES = {"lq.png": "lq", "gt.png": "gt", "json": "meta"}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    path: str | os.PathLike,
    samples: Iterable[Mapping[str, Any]],
    *,
    lq_bit_depth: int = 8,
    gt_bit_depth: int = 8,
) -> int:
    """Write ``samples`` into one tar shard at ``path`` (atomically). Returns the number of samples.

    Parameters
    ----------
    samples : iterable of dict
        ``{"key": str, "lq": float32 (H, W, 3) in [0, 1], "gt": float32 (H, W, 3) in [0, 1],
        "meta": dict (JSON-serialisable)}``. Consumed lazily (one sample in memory at a time).
    lq_bit_depth, gt_bit_depth : 8 or 16
        PNG bit depth; values are rounded to the nearest code (see :func:`maskdcpt.imageio.quantize`).

    Raises ``ValueError`` for an invalid or repeated key or a bad image; the destination is then untouched.
    """
    n = 0
    seen: set[str] = set()
    with atomic_open(path, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for s in samples:
                key = s["key"]
                if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
                    raise ValueError(f"shard key must match {KEY_PATTERN.pattern}, got {key!r}")
                if key in seen:
                    raise ValueError(f"duplicate key {key!r} in shard {path}")
                seen.add(key)
                for part in ("lq", "gt"):
                    img = np.asarray(s[part])
                    if img.ndim != 3 or img.shape[2] != 3:
                        raise ValueError(f"{key}.{part}: expected (H, W, 3), got {img.shape}")
                _add(tar, f"{key}.lq.png", encode_png(s["lq"], bit_depth=lq_bit_depth, compression=PNG_COMPRESSION))
                _add(tar, f"{key}.gt.png", encode_png(s["gt"], bit_depth=gt_bit_depth, compression=PNG_COMPRESSION))
                meta = json.dumps(dict(s.get("meta") or {}), sort_keys=True, ensure_ascii=False)
                _add(tar, f"{key}.json", meta.encode("utf-8"))
                n += 1
    return n


def read_shard(path: str | os.PathLike) -> Iterator[dict]:
    """Stream the samples of a shard written by :func:`write_shard`, in stored order.

    Yields ``{"key": str, "lq": float32 (H, W, 3), "gt": float32 (H, W, 3), "meta": dict}``; 8-bit PNGs
    decode to ``v/255``, 16-bit to ``v/65535``. Raises ``ValueError`` if a sample lacks one of its three
    members or a member name is not of the documented form.
    """
    current: dict | None = None

    def finish(sample: dict) -> dict:
        missing = [p for p in ("lq", "gt", "meta") if p not in sample]
        if missing:
            raise ValueError(f"{path}: sample {sample['key']!r} lacks {missing}")
        return sample

    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            part = _SUFFIXES.get(suffix)
            if part is None:
                raise ValueError(f"{path}: unexpected member {member.name!r}")
            data = tar.extractfile(member).read()
            if current is not None and current["key"] != key:
                yield finish(current)
                current = None
            if current is None:
                current = {"key": key}
            if part == "meta":
                current["meta"] = json.loads(data.decode("utf-8"))
            else:
                img = decode_png(data)
                if img.ndim == 2:
                    img = np.repeat(img[..., None], 3, axis=2)
                current[part] = img[..., :3]
    if current is not None:
        yield finish(current)


def iter_shards(paths: Iterable[str | os.PathLike]) -> Iterator[dict]:
    """:func:`read_shard` over several shards in the given order (sorted glob results are deterministic)."""
    for p in paths:
        yield from read_shard(Path(p))
