"""Where clean photos and real pairs come from, besides the packaged photos: an S3 prefix, and real GT/LQ
folders.

S3 (or any S3-compatible store: MinIO, Ceph, moto, ... via ``endpoint_url``)
-----------------------------------------------------------------------------
:func:`collect_s3` lists ``s3://bucket/prefix`` with the ``list_objects_v2`` paginator (any number of
pages), downloads each image object atomically (temp file + ``os.replace``) into a local cache folder
(``cache_dir/<bucket>/<key>``; an object whose size and ETag match the cache index is not downloaded again)
and returns :class:`~maskdcpt.data.photos.PhotoSource` rows that feed
:func:`~maskdcpt.data.photos.prepare_photos` exactly like a local folder; the manifests record
``s3://bucket/key`` (``PhotoSource.uri``), never the cache path. Objects that cannot be downloaded become
rejection rows; corrupt images are rejected by ``prepare_photos`` like any bad file.

Credentials come **only from the environment** (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional
``AWS_SESSION_TOKEN``; ``anonymous=True`` for public buckets); they are never logged, stored in a
manifest or written to the cache. Retries: botocore ``Config(retries={"mode": "standard",
"max_attempts": n})`` (exponential back-off on throttling and 5xx).

Real pairs
----------
:func:`collect_real_pairs` matches a GT folder and an LQ folder by file stem (or by a CSV mapping with
columns ``gt,lq``). Unmatched files, size mismatches, duplicated stems and unreadable files become
rejection rows with a reason (never silently cropped or skipped); matched pairs become a manifest with the
columns of the synthesized one (:data:`~maskdcpt.data.synthesize.PAIR_COLUMNS`) plus ``kind`` = ``'real'``,
``gt_path``/``lq_path``; ``degradation`` is the real class name (``kind == 'real'`` in the registry).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maskdcpt.data.photos import PhotoSource, REJECTION_COLUMNS, _slug, sha256_fraction
from maskdcpt.imageio import IMAGE_EXTENSIONS, ImageRejected, atomic_open, atomic_write_bytes, file_sha256, read_image

__all__ = [
    "parse_s3_uri",
    "s3_client",
    "list_s3_objects",
    "S3ListingError",
    "download_s3_prefix",
    "collect_s3",
    "collect_real_pairs",
    "REAL_PAIR_REJECTION_COLUMNS",
]

log = logging.getLogger(__name__)

_URI = re.compile(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?")
REAL_PAIR_REJECTION_COLUMNS = ["degradation", "stem", "gt_path", "lq_path", "reason", "detail"]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``"s3://bucket/some/prefix"`` → ``("bucket", "some/prefix")`` (prefix may be ``""``).
    ``ValueError`` for anything else (bucket names per the S3 naming rules)."""
    m = _URI.fullmatch(str(uri))
    if not m:
        raise ValueError(f"not an s3://bucket[/prefix] URI: {uri!r}")
    return m.group(1), m.group(2) or ""


def s3_client(endpoint_url: str | None = None, *, region: str | None = None, max_attempts: int = 5,
              anonymous: bool = False, connect_timeout: float = 10.0, read_timeout: float = 60.0):
    """A boto3 S3 client whose credentials come only from the environment.

    ``endpoint_url``: any S3-compatible endpoint (``None`` = AWS). ``region`` defaults to
    ``AWS_DEFAULT_REGION`` or ``us-east-1``. Retries: botocore standard mode with ``max_attempts`` attempts.
    Raises ``ValueError`` if ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` are not both set and
    ``anonymous`` is false (the message names the variables, never their values).
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    cfg = dict(retries={"mode": "standard", "max_attempts": int(max_attempts)},
               connect_timeout=connect_timeout, read_timeout=read_timeout)
    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if anonymous:
        return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                            config=Config(signature_version=UNSIGNED, **cfg))
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise ValueError("S3 credentials must come from the environment: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or pass anonymous=True for a public bucket)")
    session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                    aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
                                    region_name=region)
    return session.client("s3", endpoint_url=endpoint_url, config=Config(**cfg))


class S3ListingError(RuntimeError):
    """An S3 prefix could not be listed (after botocore's retries); the message names ``s3://bucket/prefix``."""


def list_s3_objects(client, bucket: str, prefix: str = "", *, page_size: int = 1000,
                    extensions: Sequence[str] | None = IMAGE_EXTENSIONS) -> list[dict]:
    """Every object under ``prefix`` via the ``list_objects_v2`` paginator (``PageSize`` = ``page_size``).

    Returns ``[{"key", "size", "etag"}]`` sorted by key; "folder" markers (keys ending in ``/``), hidden
    names (a path part starting with ``.``) and, if ``extensions`` is given, other extensions are left out.
    """
    exts = None if extensions is None else {e.lower() for e in extensions}
    out = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": int(page_size)})
    for page in pages:
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/") or any(part.startswith(".") for part in key.split("/")):
                continue
            if exts is not None and Path(key).suffix.lower() not in exts:
                continue
            out.append({"key": key, "size": int(obj["Size"]), "etag": str(obj.get("ETag", "")).strip('"')})
    return sorted(out, key=lambda o: o["key"])


def download_s3_prefix(uri: str, cache_dir: str | os.PathLike, *, client=None, endpoint_url: str | None = None,
                       page_size: int = 1000, extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
                       ) -> tuple[list[dict], list[dict]]:
    """Mirror the objects under ``uri`` into ``cache_dir/<bucket>/<key>``.

    Each object is streamed to a temporary file next to its destination and ``os.replace``-d into place, so
    an interrupted download never leaves a partial file under the final name. The cache index
    ``cache_dir/<bucket>/.s3index.json`` (key → size, ETag) lets a re-run skip unchanged objects.

    Returns ``(files, failures)``: ``files`` = ``[{"key", "uri", "path", "size", "etag", "downloaded"}]``;
    ``failures`` = ``[{"key", "uri", "reason": "download_failed", "detail"}]`` for objects that could not be
    fetched (after botocore's retries). A listing that fails raises :class:`S3ListingError` naming the bucket and
    prefix (nothing to fall back on).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client(endpoint_url)
    root = Path(cache_dir) / bucket
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / ".s3index.json"
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except (OSError, ValueError):
        index = {}
    files, failures = [], []
    try:
        objects = list_s3_objects(client, bucket, prefix, page_size=page_size, extensions=extensions)
    except (ClientError, BotoCoreError) as e:  # botocore's message names the operation, not the bucket
        raise S3ListingError(f"cannot list s3://{bucket}/{prefix}: {type(e).__name__}: {e}") from e
    for obj in objects:
        key = obj["key"]
        dest = root / key
        if ".." in Path(key).parts:
            failures.append({"key": key, "uri": f"s3://{bucket}/{key}", "reason": "bad_key",
                             "detail": "key contains '..'"})
            continue
        cached = index.get(key)
        fresh = (dest.is_file() and cached == {"size": obj["size"], "etag": obj["etag"]}
                 and dest.stat().st_size == obj["size"])
        if not fresh:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with atomic_open(dest, "wb") as f:
                    client.download_fileobj(bucket, key, f)
            except (ClientError, BotoCoreError, OSError) as e:
                failures.append({"key": key, "uri": f"s3://{bucket}/{key}", "reason": "download_failed",
                                 "detail": f"{type(e).__name__}: {e}"})
                # an older copy of a changed object must not stand in for it
                index.pop(key, None)
                dest.unlink(missing_ok=True)
                continue
            index[key] = {"size": obj["size"], "etag": obj["etag"]}
        files.append({"key": key, "uri": f"s3://{bucket}/{key}", "path": str(dest), "size": obj["size"],
                      "etag": obj["etag"], "downloaded": not fresh})
    atomic_write_bytes(index_path, json.dumps(index, sort_keys=True, indent=0).encode())
    log.info("s3 %s: %d objects (%d downloaded), %d failures", uri, len(files),
             sum(f["downloaded"] for f in files), len(failures))
    return files, failures


def collect_s3(uri: str, cache_dir: str | os.PathLike, *, client=None, endpoint_url: str | None = None,
               page_size: int = 1000, benchmark_stems: Sequence[str] = (), benchmark_fraction: float = 0.0,
               id_prefix: str = "s3", licence: str = "unknown") -> tuple[list[PhotoSource], pd.DataFrame]:
    """The images under an S3 prefix as :class:`PhotoSource` rows for ``prepare_photos``, plus rejections.

    Same split and ``image_id`` rules as :func:`maskdcpt.data.photos.collect_folder` (stem list, then the
    sha256 fraction; ``image_id = f"{id_prefix}-{slug(key below the prefix, no extension)}"``), with
    ``source='s3'``, ``path`` the cache file, ``uri`` = ``s3://bucket/key`` and ``rel_path`` the key.
    Returns ``(sources, rejections)`` with :data:`~maskdcpt.data.photos.REJECTION_COLUMNS` (download
    failures; decoding problems are found later by ``prepare_photos``).
    """
    if not 0.0 <= benchmark_fraction <= 1.0:
        raise ValueError(f"benchmark_fraction must be in [0, 1], got {benchmark_fraction}")
    bucket, prefix = parse_s3_uri(uri)
    files, failures = download_s3_prefix(uri, cache_dir, client=client, endpoint_url=endpoint_url,
                                         page_size=page_size)
    base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    rels = [f["key"][len(base):] for f in files]
    ids = [f"{id_prefix}-{_slug(str(Path(r).with_suffix('')))}" for r in rels]
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    stems = set(benchmark_stems)
    sources = []
    for f, rel, iid in zip(files, rels, ids):
        if counts[iid] > 1:
            iid = f"{iid}-{_slug(Path(rel).suffix.lower())}"
        split = "train"
        if Path(rel).stem in stems or (benchmark_fraction > 0
                                       and sha256_fraction(file_sha256(f["path"])) < benchmark_fraction):
            split = "benchmark"
        sources.append(PhotoSource(image_id=iid, path=f["path"], split=split, source="s3", rel_path=f["key"],
                                   licence=licence, uri=f["uri"]))
    rej = pd.DataFrame([{"image_id": None, "split": None, "source": "s3", "package": None, "src_path": x["uri"],
                         "sha256": None, "reason": x["reason"], "detail": x["detail"]} for x in failures],
                       columns=REJECTION_COLUMNS)
    return sources, rej


# ------------------------------------------------------------------------------------------ real pairs


def _images_by_stem(folder: Path, exts: set[str]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    by_stem: dict[str, list[Path]] = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix.lower() in exts and not any(p.startswith(".") for p in f.relative_to(folder).parts):
            by_stem.setdefault(f.relative_to(folder).with_suffix("").as_posix(), []).append(f)
    unique = {s: fs[0] for s, fs in by_stem.items() if len(fs) == 1}
    dups = {s: fs for s, fs in by_stem.items() if len(fs) > 1}
    return unique, dups


def collect_real_pairs(
    gt_dir: str | os.PathLike,
    lq_dir: str | os.PathLike,
    degradation: str,
    *,
    mapping_csv: str | os.PathLike | None = None,
    split: str = "train",
    classes: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    shard_size: int = 256,
    lq_bit_depth: int = 8,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match captured GT/LQ images into pairs of the real class ``degradation``.

    Parameters
    ----------
    gt_dir, lq_dir : path-like
        Folders searched recursively; a pair is a GT and an LQ file with the same relative path without
        extension (``a/img01.png`` ↔ ``a/img01.jpg``), unless ``mapping_csv`` is given: a CSV with columns
        ``gt`` and ``lq`` (paths relative to ``gt_dir``/``lq_dir``), one pair per row.
    degradation : str
        A registered class of kind ``'real'`` (e.g. ``real_noise``); ``ValueError`` otherwise.
    split : str
        Recorded split (``'train'``, ``'val'`` or ``'benchmark'``; pairs are never cropped here).
    classes : list of str, optional
        For ``class_index`` (position of ``degradation``; −1 if absent).
    out_dir : path-like, optional
        If given, the pairs are also written as tar shards ``out_dir/<split>-<degradation>-%05d.tar``
        (:mod:`maskdcpt.data.shards`) and the ``shard`` column is filled.

    Returns
    -------
    pairs : DataFrame
        :data:`~maskdcpt.data.synthesize.PAIR_COLUMNS` + ``kind`` (``'real'``), ``gt_path``, ``lq_path``:
        ``pair_id`` = ``key`` = ``f"{split}-{degradation}-{slug(stem)}"``, ``image_id`` = ``f"real-{slug(stem)}"``,
        ``image_sha256`` (GT file), ``params`` ``"{}"``, ``seed`` 0, ``crop_y``/``crop_x`` 0, full size,
        ``psnr_lq_gt`` (dB, peak 1, float), ``lq_differs``.
    rejections : DataFrame
        Columns :data:`REAL_PAIR_REJECTION_COLUMNS`; ``reason`` ∈ {``unmatched_gt``, ``unmatched_lq``,
        ``duplicate_stem``, ``duplicate_mapping``, ``size_mismatch``, ``missing_file``} or an
        :class:`~maskdcpt.imageio.ImageRejected` reason (``corrupt``, ``truncated``, ...).
    """
    from maskdcpt.data.shards import write_shard
    from maskdcpt.data.pair_recipe import PAIR_COLUMNS, psnr
    from maskdcpt.degradations import get_degradation
    from maskdcpt.imageio import quantize

    deg = get_degradation(degradation)
    if deg.kind != "real":
        raise ValueError(f"{degradation!r} is of kind {deg.kind!r}; real pairs need a class of kind 'real'")
    gt_dir, lq_dir = Path(gt_dir), Path(lq_dir)
    for d in (gt_dir, lq_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"not a directory: {d}")
    exts = {e.lower() for e in extensions}
    rejected: list[dict] = []

    def reject(stem, gt, lq, reason, detail):
        rejected.append({"degradation": degradation, "stem": stem, "gt_path": None if gt is None else str(gt),
                         "lq_path": None if lq is None else str(lq), "reason": reason, "detail": detail})

    candidates: list[tuple[str, Path, Path]] = []
    if mapping_csv is not None:
        m = pd.read_csv(mapping_csv, dtype=str)
        if not {"gt", "lq"} <= set(m.columns):
            raise ValueError(f"{mapping_csv}: needs columns 'gt' and 'lq', has {list(m.columns)}")
        seen_gt: set[str] = set()
        seen_lq: set[str] = set()
        for r in m.itertuples(index=False):
            gt, lq = gt_dir / str(r.gt), lq_dir / str(r.lq)
            stem = Path(str(r.lq)).with_suffix("").as_posix()
            if r.gt in seen_gt and r.lq in seen_lq:
                reject(stem, gt, lq, "duplicate_mapping", "this (gt, lq) row appears more than once")
                continue
            if r.lq in seen_lq:
                reject(stem, gt, lq, "duplicate_mapping", f"LQ {r.lq} is mapped to more than one GT")
                continue
            seen_gt.add(r.gt)
            seen_lq.add(r.lq)
            if not gt.is_file() or not lq.is_file():
                reject(stem, gt, lq, "missing_file", f"{'GT' if not gt.is_file() else 'LQ'} file does not exist")
                continue
            candidates.append((stem, gt, lq))
    else:
        gts, gdup = _images_by_stem(gt_dir, exts)
        lqs, ldup = _images_by_stem(lq_dir, exts)
        for stem, fs in sorted(gdup.items()):
            reject(stem, fs[0], None, "duplicate_stem", f"several GT files share this stem: {[f.name for f in fs]}")
        for stem, fs in sorted(ldup.items()):
            reject(stem, None, fs[0], "duplicate_stem", f"several LQ files share this stem: {[f.name for f in fs]}")
        for stem in sorted(set(gts) - set(lqs) - set(ldup)):
            reject(stem, gts[stem], None, "unmatched_gt", "no LQ file with this stem")
        for stem in sorted(set(lqs) - set(gts) - set(gdup)):
            reject(stem, None, lqs[stem], "unmatched_lq", "no GT file with this stem")
        candidates = [(s, gts[s], lqs[s]) for s in sorted(set(gts) & set(lqs))]

    classes = list(classes) if classes is not None else None
    ci = classes.index(degradation) if classes and degradation in classes else -1
    rows: list[dict] = []
    samples: list[dict] = []
    keys: set[str] = set()
    for stem, gt_path, lq_path in candidates:
        key = f"{split}-{degradation}-{_slug(stem)}"
        if key in keys:
            reject(stem, gt_path, lq_path, "duplicate_stem", f"stem slug collides with another pair ({key})")
            continue
        try:
            gt = read_image(gt_path)
            lq = read_image(lq_path)
        except ImageRejected as e:
            reject(stem, gt_path, lq_path, e.reason, e.message)
            continue
        if gt.shape != lq.shape:
            reject(stem, gt_path, lq_path, "size_mismatch",
                   f"GT {gt.shape[1]}x{gt.shape[0]} vs LQ {lq.shape[1]}x{lq.shape[0]} (not cropped)")
            continue
        keys.add(key)
        h, w = gt.shape[:2]
        rows.append({
            "pair_id": key, "split": split, "image_id": f"real-{_slug(stem)}", "image_sha256": file_sha256(gt_path),
            "image_png_sha256": None, "degradation": degradation, "class_index": ci, "params": "{}", "seed": 0,
            "crop_y": 0, "crop_x": 0, "height": h, "width": w, "shard": None, "key": key,
            "psnr_lq_gt": psnr(lq, gt), "lq_differs": bool(not np.array_equal(quantize(lq, lq_bit_depth),
                                                                                quantize(gt, 8))),
            "lq_bit_depth": lq_bit_depth, "kind": "real", "gt_path": str(gt_path), "lq_path": str(lq_path),
        })
        if out_dir is not None:
            samples.append({"key": key, "lq": lq, "gt": gt, "meta": {"pair_id": key, "degradation": degradation,
                                                                    "kind": "real", "stem": stem}})
    if out_dir is not None and samples:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k in range(0, len(samples), shard_size):
            name = f"{split}-{degradation}-{k // shard_size:05d}.tar"
            write_shard(out / name, samples[k:k + shard_size], lq_bit_depth=lq_bit_depth)
            for r in rows[k:k + shard_size]:
                r["shard"] = name
    cols = list(dict.fromkeys(PAIR_COLUMNS + ["shard", "kind", "gt_path", "lq_path"]))
    pairs = pd.DataFrame(rows, columns=cols)
    if len(pairs):
        pairs = pairs.astype({"class_index": "int64", "seed": "int64", "height": "int64", "width": "int64",
                              "crop_y": "int64", "crop_x": "int64", "lq_bit_depth": "int64"})
    return pairs, pd.DataFrame(rejected, columns=REAL_PAIR_REJECTION_COLUMNS)
