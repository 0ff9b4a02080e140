"""Where the samples of one split are (:class:`ShardIndex`: shards in a folder or under ``s3://``), the order an
epoch visits them in, and how one shard is read (local file or a retried S3 object, checked against the
manifest). The streaming loader (:mod:`maskdcpt.data.stream`) builds on these; the order is documented there.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ShardSpec", "ShardIndex", "BadSampleError", "slot_range", "emission_order", "epoch_units",
           "open_shard", "read_members", "decode_member"]

_MEMBERS = {"lq.png": "lq", "gt.png": "gt", "json": "meta"}


class BadSampleError(ValueError):
    """A shard or one of its samples cannot be read; the message names the shard and the key."""


# ------------------------------------------------------------------------------------------------ the index
@dataclass(frozen=True)
class ShardSpec:
    """One shard: its file name, the keys in stored order, their class indices and its repeat count."""

    name: str
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    repeat: int = 1


@dataclass
class ShardIndex:
    """The samples of one split: shards under ``root`` (a folder or ``s3://bucket/prefix``) and their keys.

    Built from the pair manifest (:meth:`from_manifest`); a shard's keys are in the manifest's row order, which is
    the order in which :func:`maskdcpt.data.shards.write_shard` stored them (checked while reading).
    """

    root: str
    shards: list[ShardSpec]
    s3_endpoint_url: str | None = None

    @classmethod
    def from_manifest(cls, manifest, root: str | os.PathLike, split: str, *,
                      s3_endpoint_url: str | None = None) -> "ShardIndex":
        """The index of ``split``. Raises ``ValueError`` when the split has no rows, a row lacks its shard, or
        one shard mixes repeat counts."""
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            raise ValueError(f"manifest has no pairs for split {split!r}")
        if rows["shard"].isna().any():
            raise ValueError(f"{int(rows['shard'].isna().sum())} {split} rows have no shard")
        has_repeat = "repeat" in rows.columns
        specs = []
        for name, group in rows.groupby("shard", sort=True):
            repeat = 1
            if has_repeat:
                reps = set(int(r) for r in group["repeat"].fillna(1))
                if len(reps) != 1:
                    raise ValueError(f"shard {name}: rows with different repeat counts {sorted(reps)}")
                repeat = reps.pop()
            if repeat < 1:
                raise ValueError(f"shard {name}: repeat must be >= 1, got {repeat}")
            specs.append(ShardSpec(str(name), tuple(group["key"].astype(str)),
                                   tuple(int(c) for c in group["class_index"]), repeat))
        return cls(str(root), specs, s3_endpoint_url or None)

    @property
    def num_samples(self) -> int:
        """Samples per epoch, repeats included."""
        return sum(len(s.keys) * s.repeat for s in self.shards)

    def all_keys(self) -> list[str]:
        """Every key once per repeat (the multiset one epoch covers)."""
        return [k for s in self.shards for _ in range(s.repeat) for k in s.keys]

    def location(self, shard: ShardSpec) -> str:
        return f"{self.root.rstrip('/')}/{shard.name}"


# --------------------------------------------------------------------------------------------- the order
def slot_range(total: int, slot: int, slots: int) -> tuple[int, int]:
    """Global positions ``[start, stop)`` of ``slot`` of ``slots`` in an epoch of ``total`` samples."""
    return slot * total // slots, (slot + 1) * total // slots


def emission_order(length: int, buffer: int, rng: np.random.Generator | None) -> np.ndarray:
    """Order in which a shuffle buffer of ``buffer`` samples emits positions ``0..length-1`` read in order.

    ``buffer <= 1`` or ``rng is None``: the identity. Every emitted position is below ``t + buffer`` at emission
    step ``t`` (the reader never needs to look further ahead).
    """
    if buffer <= 1 or rng is None or length <= 1:
        return np.arange(length, dtype=np.int64)
    out = np.empty(length, dtype=np.int64)
    buf: list[int] = []
    t = 0
    draws = rng.random(length)
    for i in range(length):
        buf.append(i)
        if len(buf) >= buffer:
            j = int(draws[t] * len(buf))
            out[t] = buf[j]
            buf[j] = buf[-1]
            buf.pop()
            t += 1
    while buf:
        j = int(draws[t] * len(buf))
        out[t] = buf[j]
        buf[j] = buf[-1]
        buf.pop()
        t += 1
    return out


def epoch_units(index: ShardIndex, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard ids of epoch ``epoch`` in reading order (each repeated ``repeat`` times), shuffled when asked."""
    units = [i for i, s in enumerate(index.shards) for _ in range(s.repeat)]
    if shuffle:
        perm = np.random.default_rng([seed, epoch, 1]).permutation(len(units))
        units = [units[p] for p in perm]
    return units


# --------------------------------------------------------------------------------------------- reading
def _transient(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import (ConnectionClosedError, ConnectionError as BotoConnectionError,
                                         IncompleteReadError, ReadTimeoutError, ResponseStreamingError)
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (BotoConnectionError, ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
                            ResponseStreamingError))


_CLIENTS: dict[tuple[int, str | None], Any] = {}


def _client(endpoint: str | None):
    """One boto3 client per process and endpoint (clients are not shared across forked workers)."""
    from maskdcpt.data.sources import s3_client

    key = (os.getpid(), endpoint)
    if key not in _CLIENTS:
        _CLIENTS[key] = s3_client(endpoint or None)
    return _CLIENTS[key]


def open_shard(index: ShardIndex, shard: ShardSpec, *, attempts: int = 4, backoff: float = 0.5):
    """A readable binary file object for ``shard`` (a local file, or the whole ``s3://`` object in memory).

    S3: botocore retries each request (standard mode); a transfer that still fails mid-body is fetched again up
    to ``attempts`` times with backoff ``backoff * 2**k`` s. Raises :class:`BadSampleError` for a missing file or
    object (naming it and its first key) and after the last failed attempt.
    """
    loc = index.location(shard)
    first = shard.keys[0] if shard.keys else None
    if not loc.startswith("s3://"):
        try:
            return open(loc, "rb")
        except FileNotFoundError as e:
            raise BadSampleError(f"shard {loc} is missing (first key {first!r})") from e
    from botocore.exceptions import ClientError

    from maskdcpt.data.sources import parse_s3_uri

    bucket, key = parse_s3_uri(loc)
    for k in range(attempts):
        try:
            body = _client(index.s3_endpoint_url).get_object(Bucket=bucket, Key=key)["Body"]
            return io.BytesIO(body.read())
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"):
                raise BadSampleError(f"shard {loc}: S3 object unavailable ({code}; first key {first!r})") from e
            err = e
        except Exception as e:  # noqa: BLE001 - classified below
            if not _transient(e):
                raise
            err = e
        if k + 1 < attempts:
            log.warning("shard %s: transient S3 error (%s), retry %d/%d", loc, err, k + 1, attempts - 1)
            time.sleep(backoff * 2 ** k)
    raise BadSampleError(f"shard {loc}: S3 read failed after {attempts} attempts: {err}") from err


def read_members(fileobj, loc: str, shard: ShardSpec, wanted: set[int], stop: int) -> Iterator[tuple[int, dict]]:
    """Yield ``(position in shard, {"lq": bytes, "gt": bytes})`` for the positions in ``wanted`` (< ``stop``),
    in stored order, checking every member against the manifest's keys. Undecoded bytes only."""
    pos, current, parts = -1, None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.partition(".")
                part = _MEMBERS.get(suffix)
                if part is None:
                    raise BadSampleError(f"shard {loc}: unexpected member {member.name!r}")
                if key != current:
                    if current is not None and pos in wanted:
                        yield pos, _complete(loc, current, parts)
                    pos += 1
                    if pos >= stop:
                        return
                    if pos >= len(shard.keys) or key != shard.keys[pos]:
                        expected = shard.keys[pos] if pos < len(shard.keys) else None
                        raise BadSampleError(f"shard {loc}: member key {key!r} at position {pos}, the manifest "
                                             f"expects {expected!r} (shard and manifest out of step)")
                    current, parts = key, {}
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise BadSampleError(f"shard {loc}: key {key!r}: {member.name} truncated")
                if pos in wanted and part != "meta":
                    parts[part] = data
                elif part == "meta":
                    parts["meta"] = b""
    except tarfile.TarError as e:
        raise BadSampleError(f"shard {loc}: truncated or corrupt tar after key {current!r} "
                             f"(next expected {shard.keys[pos + 1] if pos + 1 < len(shard.keys) else None!r}): "
                             f"{e}") from e
    if current is not None and pos in wanted:
        yield pos, _complete(loc, current, parts)
    if pos + 1 < min(stop, len(shard.keys)):
        raise BadSampleError(f"shard {loc}: ends after {pos + 1} of {len(shard.keys)} samples; key "
                             f"{shard.keys[pos + 1]!r} is missing (truncated shard?)")


def _complete(loc: str, key: str, parts: dict) -> dict:
    missing = [p for p in ("lq", "gt") if p not in parts]
    if missing:
        raise BadSampleError(f"shard {loc}: key {key!r} lacks its {', '.join(m + '.png' for m in missing)}")
    return parts


def decode_member(loc: str, key: str, data: bytes, part: str, *, codes: bool = False) -> np.ndarray:
    """A pair member's PNG as (H, W, 3) RGB: float32 in [0, 1], or with ``codes`` its integer code values
    (``uint8``/``uint16``, possibly a view; :func:`maskdcpt.png.code_scale` gives the divisor). Grey is repeated to
    three channels, alpha dropped. Raises :class:`BadSampleError` naming the shard and key."""
    from maskdcpt.png import decode_png, decode_png_codes

    try:
        img = decode_png_codes(data) if codes else decode_png(data)
    except Exception as e:  # noqa: BLE001 - cv2 raises several types
        raise BadSampleError(f"shard {loc}: key {key!r}: corrupt {part}.png ({e})") from e
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise BadSampleError(f"shard {loc}: key {key!r}: {part}.png has shape {img.shape}, expected (H, W, 3)")
    return img[..., :3]
