"""Listing and matching a test set's files by its layout (no pixel decoded), and the lazy pair reader."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd

from maskdcpt.data.testsets.registry import (_EXTS, _GT_ONLY_SUBDIRS, DATASETS, REJECTION_COLUMNS, TestSetMissing,
                                             TestSetPair, TestSetSpec)
from maskdcpt.data.testsets.synthesis import synthesize_lq
from maskdcpt.imageio import IMAGE_EXTENSIONS, ImageRejected, read_image

def expected_layout(name: str, options: Mapping[str, Any] | None = None) -> str:
    """The folder tree a set must have, as text (what :class:`TestSetMissing` prints). ``KeyError`` for an
    unknown set."""
    spec = _spec(name)
    o = {**spec.options, **(options or {})}
    d = spec.default_dir
    if spec.layout == "pairs_by_number":
        return (f"{d}/\n  {o['lq_dir']}/rain-001.png ...   (LQ)\n  {o['gt_dir']}/norain-001.png ...   (GT; "
                "matched by the first number in the name)")
    if spec.layout == "sots":
        return f"{d}/\n  {o['lq_dir']}/<id>_<A>_<beta>.jpg ...   (LQ)\n  {o['gt_dir']}/<id>.png ...   (GT)"
    if spec.layout == "gopro":
        return f"{d}/\n  <scene>/{o['lq_dir']}/*.png   (LQ)\n  <scene>/{o['gt_dir']}/*.png   (GT, same names)"
    if spec.layout == "list_file":
        return f"{d}/\n  {o['list']}   (lines: '<gt_path> <blur_path>' relative to {d}/)\n  <the listed files>"
    if spec.layout == "gt_only":
        return (f"{d}/\n  *.png | *.jpg ...   (GT only, or in one of {'/, '.join(_GT_ONLY_SUBDIRS)}/; "
                f"LQ synthesised: {o['synth']})")
    lq = f"{o.get('lq_prefix', '')}<name>{o.get('lq_suffix', '')}.png"
    gt = f"{o.get('gt_prefix', '')}<name>{o.get('gt_suffix', '')}.png"
    return f"{d}/\n  {o['lq_dir']}/{lq} ...   (LQ)\n  {o['gt_dir']}/{gt} ...   (GT)"


def _spec(name: str) -> TestSetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown test set {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


def first_number(stem: str) -> str:
    """Matching key of ``pairs_by_number``: the first integer in ``stem`` without leading zeros
    (``"rain-001"`` → ``"1"``, ``"norain-1x2"`` → ``"1"``), or ``stem`` itself if it has no digit."""
    m = re.search(r"\d+", stem)
    return str(int(m.group(0))) if m else stem


def _images(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in it if f.is_file() and f.suffix.lower() in _EXTS
                  and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def _strip_affixes(stem: str, prefix: str, suffix: str) -> str:
    low = stem.lower()
    if prefix and low.startswith(prefix.lower()):
        stem = stem[len(prefix):]
    if suffix and stem.lower().endswith(suffix.lower()):
        stem = stem[: -len(suffix)]
    return stem


@dataclass
class _Entry:
    id: str
    gt_path: Path
    lq_path: Path | None = None
    index: int = 0


class TestSetPairs:
    """The matched pairs of one set (listing done, pixels not read yet).

    Attributes:
        name, spec, root (the local folder), options (merged loader options), entries (matched files),
        rejections (DataFrame, :data:`REJECTION_COLUMNS`; read-time failures are appended while iterating).

    Iterating yields :class:`TestSetPair` ``(id, lq, gt)`` in sorted id order, reading each file when its
    pair is reached; ``limit`` (constructor) keeps the first N entries.
    """

    def __init__(self, spec: TestSetSpec, root: Path, options: Mapping[str, Any], entries: list[_Entry],
                 rejections: list[dict]):
        self.spec, self.name, self.root, self.options = spec, spec.name, root, dict(options)
        self.entries = entries
        self._rejected = list(rejections)

    @property
    def rejections(self) -> pd.DataFrame:
        return pd.DataFrame(self._rejected, columns=REJECTION_COLUMNS)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[TestSetPair]:
        for e in self.entries:
            try:
                gt = read_image(e.gt_path, max_pixels=None)
                if e.lq_path is None:
                    lq = synthesize_lq(gt, self.options["synth"], index=e.index)
                else:
                    lq = read_image(e.lq_path, max_pixels=None)
            except ImageRejected as err:
                self._reject(e, err.reason, err.message)
                continue
            if lq.shape != gt.shape:
                self._reject(e, "size_mismatch", f"LQ {lq.shape[1]}x{lq.shape[0]} vs GT {gt.shape[1]}x{gt.shape[0]}")
                continue
            yield TestSetPair(e.id, lq, gt)

    def _reject(self, e: _Entry, reason: str, detail: str) -> None:
        self._rejected.append({"dataset": self.name, "id": e.id, "lq_path": None if e.lq_path is None else str(e.lq_path),
                               "gt_path": str(e.gt_path), "reason": reason, "detail": detail})


def _missing(spec: TestSetSpec, root: Path, options: Mapping[str, Any], why: str) -> TestSetMissing:
    return TestSetMissing(f"{spec.title} ({spec.name}) {why} at {root}; expected layout:\n"
                            f"{expected_layout(spec.name, options)}")


def _need_dir(spec, root, options, sub: str) -> Path:
    d = root / sub
    if not d.is_dir():
        raise _missing(spec, root, options, f"has no folder {sub}/")
    return d


def _match(name: str, lq: dict[str, list[Path]], gt: dict[str, list[Path]], rej: list[dict],
           many_to_one: bool = False) -> list[tuple[str, Path, Path]]:
    """Pairs of LQ and GT files sharing a key; everything else becomes a rejection row."""
    out = []
    for key, gts in sorted(gt.items()):
        if len(gts) > 1:
            rej.append({"dataset": name, "id": key, "lq_path": None, "gt_path": str(gts[0]), "reason": "duplicate_key",
                        "detail": f"several GT files share the key {key!r}: {[p.name for p in gts]}"})
        elif key not in lq:
            rej.append({"dataset": name, "id": key, "lq_path": None, "gt_path": str(gts[0]),
                        "reason": "unmatched_gt", "detail": "no LQ file for this GT"})
    for key, lqs in sorted(lq.items()):
        if key not in gt:
            for p in lqs:
                rej.append({"dataset": name, "id": key, "lq_path": str(p), "gt_path": None,
                            "reason": "unmatched_lq", "detail": "no GT file for this LQ"})
            continue
        if len(gt[key]) > 1:
            continue
        if len(lqs) > 1 and not many_to_one:
            rej.append({"dataset": name, "id": key, "lq_path": str(lqs[0]), "gt_path": str(gt[key][0]),
                        "reason": "duplicate_key", "detail": f"several LQ files share the key: {[p.name for p in lqs]}"})
            continue
        for p in lqs:
            out.append((key if len(lqs) == 1 else f"{key}/{p.stem}", p, gt[key][0]))
    return out


def _group(paths: Sequence[Path], key: Callable[[Path], str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in paths:
        out.setdefault(key(p), []).append(p)
    return out


def _list(spec: TestSetSpec, root: Path, o: Mapping[str, Any]) -> tuple[list[_Entry], list[dict]]:
    rej: list[dict] = []
    if not root.is_dir():
        raise _missing(spec, root, o, "is missing")
    lay = spec.layout
    if lay in ("pairs_by_number", "pairs_by_stem", "sots"):
        lq_dir, gt_dir = _need_dir(spec, root, o, o["lq_dir"]), _need_dir(spec, root, o, o["gt_dir"])
        if lay == "pairs_by_number":
            lk = gk = lambda p: first_number(p.stem)  # noqa: E731
            lq_k, gt_k = lk, gk
        elif lay == "sots":
            lq_k = lambda p: p.name.split("_")[0].rsplit(".", 1)[0]  # noqa: E731
            gt_k = lambda p: p.stem  # noqa: E731
        else:
            flat = bool(o.get("flatten"))

            def keyer(base: Path, prefix: str, suffix: str):
                def k(p: Path) -> str:
                    rel = Path(p.name) if flat else p.relative_to(base)
                    return (rel.parent / _strip_affixes(rel.stem, prefix, suffix)).as_posix()
                return k
            lq_k = keyer(lq_dir, o.get("lq_prefix", ""), o.get("lq_suffix", ""))
            gt_k = keyer(gt_dir, o.get("gt_prefix", ""), o.get("gt_suffix", ""))
        matched = _match(spec.name, _group(_images(lq_dir), lq_k), _group(_images(gt_dir), gt_k), rej,
                         many_to_one=(lay == "sots"))
        if lay == "sots":  # id = the hazy file's stem (several hazy images may share one GT)
            matched = [(lq_p.stem, lq_p, gt_p) for _, lq_p, gt_p in matched]
    elif lay == "gopro":
        matched = []
        scenes = sorted(d for d in root.iterdir() if d.is_dir() and (d / o["lq_dir"]).is_dir())
        if not scenes:
            raise _missing(spec, root, o, f"has no <scene>/{o['lq_dir']}/ folders")
        for sc in scenes:
            gdir = sc / o["gt_dir"]
            gts = _group(_images(gdir), lambda p: p.stem) if gdir.is_dir() else {}
            for key, lq_p, gt_p in _match(spec.name, _group(_images(sc / o["lq_dir"]), lambda p: p.stem), gts, rej):
                matched.append((f"{sc.name}/{key}", lq_p, gt_p))
            for r in rej:
                if r["id"] and "/" not in r["id"]:
                    r["id"] = f"{sc.name}/{r['id']}"
    elif lay == "list_file":
        lst = root / o["list"]
        if not lst.is_file():
            raise _missing(spec, root, o, f"has no list file {o['list']}")
        matched = []
        for n, line in enumerate(lst.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                rej.append({"dataset": spec.name, "id": f"line{n}", "lq_path": None, "gt_path": None,
                            "reason": "bad_list_line", "detail": f"line {n}: expected '<gt_path> <blur_path>': {line!r}"})
                continue
            gt_p, lq_p = root / parts[0], root / parts[1]
            pid = Path(parts[1]).with_suffix("").as_posix()
            if not gt_p.is_file() or not lq_p.is_file():
                rej.append({"dataset": spec.name, "id": pid, "lq_path": str(lq_p), "gt_path": str(gt_p),
                            "reason": "missing_file", "detail": f"{'GT' if not gt_p.is_file() else 'blur'} file "
                                                                "listed but absent"})
                continue
            matched.append((pid, lq_p, gt_p))
    elif lay == "gt_only":
        folder = root
        if not _images(root, recursive=False):
            folder = next((root / s for s in _GT_ONLY_SUBDIRS if (root / s).is_dir() and _images(root / s, False)),
                          None)
            if folder is None:
                raise _missing(spec, root, o, "has no images")
        files = _images(folder, recursive=False)
        entries = [_Entry(p.stem, p, None, i) for i, p in enumerate(files)]
        return entries, rej
    else:  # pragma: no cover - registry bug
        raise ValueError(f"unknown layout {lay!r}")
    matched.sort(key=lambda t: t[0])
    entries = [_Entry(pid, gt_p, lq_p, i) for i, (pid, lq_p, gt_p) in enumerate(matched)]
    if not entries:
        first = f"; first rejection: {rej[0]['reason']} {rej[0]['id']}" if rej else ""
        raise _missing(spec, root, o, f"has no matching LQ/GT pairs ({len(rej)} rejections{first})")
    return entries, rej


def resolve_location(location: str | os.PathLike, cache_dir: str | os.PathLike = ".cache/test_sets",
                     endpoint_url: str | None = None, client=None) -> Path:
    """A local folder for ``location``: a path as is, or an ``s3://bucket/prefix`` mirrored with
    :func:`maskdcpt.data.sources.download_s3_prefix` into ``cache_dir/<bucket>/<prefix>`` (images and ``.txt``
    list files; unchanged objects are not downloaded again). Credentials come from the environment only.

    Raises ``TestSetMissing`` when the prefix holds no object, ``ValueError`` for a malformed URI.
    """
    return mirror_location(location, cache_dir, endpoint_url, client)[0]


def mirror_location(location: str | os.PathLike, cache_dir: str | os.PathLike = ".cache/test_sets",
                    endpoint_url: str | None = None, client=None) -> tuple[Path, list[dict]]:
    """:func:`resolve_location` plus the objects that could not be fetched
    (``[{"key", "uri", "reason", "detail"}]``, :func:`maskdcpt.data.sources.download_s3_prefix`)."""
    text = str(location)
    if not text.startswith("s3://"):
        return Path(text).expanduser(), []
    from maskdcpt.data.sources import download_s3_prefix, parse_s3_uri

    bucket, prefix = parse_s3_uri(text)
    prefix = prefix.rstrip("/")
    files, failures = download_s3_prefix(f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}", cache_dir,
                                         client=client, endpoint_url=endpoint_url,
                                         extensions=tuple(IMAGE_EXTENSIONS) + (".txt",))
    if not files:
        detail = f" ({len(failures)} downloads failed: {failures[0]['detail']})" if failures else ""
        raise TestSetMissing(f"no objects under {text}{detail}")
    return Path(cache_dir) / bucket / prefix, failures


def load_test_set(name: str, location: str | os.PathLike, *, limit: int | None = None,
                   options: Mapping[str, Any] | None = None, cache_dir: str | os.PathLike = ".cache/test_sets",
                   endpoint_url: str | None = None, client=None) -> TestSetPairs:
    """List and match one set (see the module docstring for the layouts).

    Args:
        name: a key of :data:`DATASETS`.
        location: the set's own folder (e.g. ``/data/test_sets/Rain100L``) or an ``s3://`` prefix.
        limit: keep the first ``limit`` pairs in id order (quick checks).
        options: overrides of the spec's loader options (``lq_dir``, ``gt_dir``, ``synth``...).
        cache_dir, endpoint_url, client: for ``s3://`` locations (:func:`resolve_location`).

    Returns:
        :class:`TestSetPairs` (lazy; rejections recorded).

    Raises:
        KeyError: unknown set. TestSetMissing: the folder or a required subfolder/list file is absent, or
            nothing matched (the message prints the expected layout).
    """
    spec = _spec(name)
    opts = {**spec.options, **(options or {})}
    root, failed = mirror_location(location, cache_dir, endpoint_url, client)
    entries, rej = _list(spec, root, opts)
    # an object that could not be fetched is a rejection naming it, never a silently missing file
    rej = [*({"dataset": spec.name, "id": None, "lq_path": None, "gt_path": None, "reason": f["reason"],
              "detail": f"{f['uri']}: {f['detail']}"} for f in failed), *rej]
    if limit is not None:
        entries = entries[: max(0, int(limit))]
    return TestSetPairs(spec, root, opts, entries, rej)
