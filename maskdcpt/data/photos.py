"""Clean source photographs: the ones shipped inside installed pip packages, and a user's own folder.

Nothing is downloaded. ``docs/photos.md`` lists what the pinned packages carry; the table
:data:`PACKAGED_PHOTOS` below is that list after checking the installed files one by one (2026-11-29,
scikit-image 0.26.0, scikit-learn 1.9.1, matplotlib 3.11.2, mahotas 1.4.19, sporco 0.2.2.post1).

Split rule (fixed, leakage-proof)
---------------------------------
* ``benchmark`` (held out, never cropped into training): sporco's kodim23, monarch, sail, tulips,
  barbara and scikit-image's astronaut, chelsea, coffee, camera: 9 classic photos, a Set12/Kodak-like set.
* ``train``: every other photo in the table.
* Not used as clean photos: ``clock_motion.png`` (a *real* motion-blurred photo without ground truth,
  listed in :data:`REAL_DEGRADED_PHOTOS`) and the files in :data:`EXCLUDED_PACKAGED_FILES` (renders,
  scans of text, microscopy, tiny or synthetic images, lena, and mahotas' ``DepartmentStore.jpg``, which
  is a scanned "Where's Wally" illustration, not a photograph, and third-party artwork).

A user folder (:func:`collect_folder`) is split by file stem list and/or a sha256-based fraction.
:func:`prepare_photos` turns sources into 8-bit RGB PNGs plus a manifest and a rejections table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from maskdcpt.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageRejected,
    encode_png,
    file_sha256,
    read_image,
    atomic_write_bytes,
)
from maskdcpt.data.photo_catalog import (
    BENCHMARK_IMAGE_IDS,
    DISTRIBUTIONS,
    EXCLUDED_PACKAGED_FILES,
    PACKAGED_PHOTOS,
    REAL_DEGRADED_PHOTOS,
    PackagedPhoto,
)


__all__ = [
    "PackagedPhoto",
    "PhotoSource",
    "PACKAGED_PHOTOS",
    "REAL_DEGRADED_PHOTOS",
    "EXCLUDED_PACKAGED_FILES",
    "BENCHMARK_IMAGE_IDS",
    "DISTRIBUTIONS",
    "MANIFEST_COLUMNS",
    "REJECTION_COLUMNS",
    "package_dir",
    "package_version",
    "packaged_photos_table",
    "collect_packaged_photos",
    "collect_real_degraded_photos",
    "collect_folder",
    "prepare_photos",
]

SPLITS = ("train", "benchmark")


#: Columns of the manifest returned by :func:`prepare_photos`, in order.
MANIFEST_COLUMNS = [
    "image_id", "split", "source", "package", "version", "src_path", "sha256", "png_sha256", "path",
    "width", "height", "bytes", "licence", "mode",
]
#: Columns of the rejections table returned by :func:`prepare_photos`, in order.
REJECTION_COLUMNS = ["image_id", "split", "source", "package", "src_path", "sha256", "reason", "detail"]


@dataclass(frozen=True)
class PhotoSource:
    """A clean photo to ingest.

    ``path`` is the file on disk (absolute for packaged photos), ``source`` ``'package'`` or ``'folder'``,
    ``package``/``version`` the pip package and version (``None`` for folders), ``rel_path`` the path inside
    the package or folder, ``split`` ``'train'`` or ``'benchmark'``. ``uri`` is where the file came from when
    ``path`` is a local cache copy (e.g. ``s3://bucket/key`` for ``source='s3'``, see
    :mod:`maskdcpt.data.sources`); the manifests record it as ``src_path`` instead of the cache path.
    """

    image_id: str
    path: str
    split: str
    source: str
    package: str | None = None
    version: str | None = None
    rel_path: str = ""
    licence: str = "unknown"
    uri: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# packaged photos


def package_dir(import_name: str) -> Path | None:
    """Folder of an installed top-level package, found with ``importlib.util.find_spec`` (the package
    itself is not imported). ``None`` if it is not installed."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def package_version(import_name: str) -> str | None:
    """Installed version of the pip distribution behind ``import_name`` (``None`` if not installed)."""
    dist = DISTRIBUTIONS.get(import_name, import_name)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def packaged_photos_table() -> pd.DataFrame:
    """:data:`PACKAGED_PHOTOS` as a DataFrame (one row per photo; nothing is read from disk)."""
    return pd.DataFrame([dataclasses.asdict(p) for p in PACKAGED_PHOTOS])


def collect_packaged_photos(
    photos: Iterable[PackagedPhoto] = PACKAGED_PHOTOS,
) -> tuple[list[PhotoSource], list[dict]]:
    """Locate the packaged photos on this machine.

    Returns
    -------
    sources : list[PhotoSource]
        One per photo whose file exists, in table order, with ``source='package'``, absolute ``path``,
        the package's installed ``version`` and the photo's fixed ``split``.
    missing : list[dict]
        ``{"image_id", "package", "rel_path", "reason"}`` for each photo that cannot be found, with
        ``reason`` ``'package_not_installed'`` or ``'file_not_found'``. Never raises for a missing package.
    """
    sources: list[PhotoSource] = []
    missing: list[dict] = []
    dirs: dict[str, Path | None] = {}
    for p in photos:
        if p.package not in dirs:
            dirs[p.package] = package_dir(p.package)
        root = dirs[p.package]
        if root is None:
            missing.append({"image_id": p.image_id, "package": p.package, "rel_path": p.rel_path,
                            "reason": "package_not_installed"})
            continue
        f = root / p.rel_path
        if not f.is_file():
            missing.append({"image_id": p.image_id, "package": p.package, "rel_path": p.rel_path,
                            "reason": "file_not_found"})
            continue
        sources.append(PhotoSource(
            image_id=p.image_id, path=str(f.resolve()), split=p.split, source="package", package=p.package,
            version=package_version(p.package), rel_path=p.rel_path, licence=p.licence,
        ))
    return sources, missing


#: Real degraded photos without ground truth shipped by optional Debian packages (docs/photos.md §3): used when
#: installed (``apt-get install opencv-doc``), otherwise reported as missing. Absolute paths.
DEBIAN_REAL_DEGRADED_PHOTOS: tuple[dict, ...] = tuple(
    {"image_id": f"opencv-doc-{name}", "package": "opencv-doc (Debian)", "degradation": degradation,
     "abs_path": f"/usr/share/doc/opencv-doc/examples/data/{name}.jpg", "licence": "Apache-2.0/BSD package",
     "description": description}
    for name, degradation, description in (
        ("text_motion", "motion_blur", "text photographed with camera motion"),
        ("licenseplate_motion", "motion_blur", "licence plate with motion blur"),
        ("text_defocus", "defocus_blur", "out-of-focus text"),
    ))


def collect_real_degraded_photos() -> tuple[list[dict], list[dict]]:
    """Locate :data:`REAL_DEGRADED_PHOTOS` (and :data:`DEBIAN_REAL_DEGRADED_PHOTOS` when that package is
    installed): returns ``(found, missing)``; each found entry is the table row plus ``path`` (absolute) and
    ``version``."""
    found, missing = [], []
    for entry in DEBIAN_REAL_DEGRADED_PHOTOS:
        f = Path(entry["abs_path"])
        if f.is_file():
            found.append({**entry, "path": str(f), "version": "debian"})
        else:
            missing.append({**entry, "reason": "package_not_installed"})
    for entry in REAL_DEGRADED_PHOTOS:
        root = package_dir(entry["package"])
        f = None if root is None else root / entry["rel_path"]
        if f is None or not f.is_file():
            missing.append({**entry, "reason": "package_not_installed" if root is None else "file_not_found"})
        else:
            found.append({**entry, "path": str(f.resolve()), "version": package_version(entry["package"])})
    return found, missing


# --------------------------------------------------------------------------------------------------
# user folders

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_VALID_ID = re.compile(r"[A-Za-z0-9_-]+")


def _slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "img"


def sha256_fraction(sha256_hex: str) -> float:
    """Map a hex sha256 to [0, 1): the first 16 hex digits as an integer divided by 16**16."""
    return int(sha256_hex[:16], 16) / float(16 ** 16)


def collect_folder(
    folder: str | os.PathLike,
    *,
    benchmark_stems: Sequence[str] = (),
    benchmark_fraction: float = 0.0,
    id_prefix: str = "folder",
    licence: str = "unknown",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[PhotoSource]:
    """List the images under ``folder`` (recursive) as :class:`PhotoSource` rows, sorted by relative path.

    Hidden files and folders (name starting with ``.``) are skipped; files are matched by extension
    (case-insensitive), decoding happens later in :func:`prepare_photos`.

    Split rule (deterministic, documented):

    1. a file whose stem (name without extension) is in ``benchmark_stems`` → ``'benchmark'``;
    2. otherwise, if ``benchmark_fraction > 0``: ``'benchmark'`` when
       ``int(sha256(file)[:16], 16) / 16**16 < benchmark_fraction``: it depends on the bytes only, so a
       renamed or moved file keeps its split and byte-identical copies share it;
    3. otherwise ``'train'``.

    ``image_id`` = ``f"{id_prefix}-{slug(relative path without extension)}"`` (``/`` and other characters
    outside ``[A-Za-z0-9_-]`` become ``_``); if two files collide (e.g. ``a.jpg`` and ``a.png``) the
    extension is appended. Raises ``FileNotFoundError`` if ``folder`` is not a directory and
    ``ValueError`` if ``benchmark_fraction`` is outside [0, 1].
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    if not 0.0 <= benchmark_fraction <= 1.0:
        raise ValueError(f"benchmark_fraction must be in [0, 1], got {benchmark_fraction}")
    exts = {e.lower() for e in extensions}
    stems = set(benchmark_stems)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in exts:
                continue
            files.append(Path(dirpath) / name)
    rels = sorted((f.relative_to(root).as_posix(), f) for f in files)
    base_ids = [f"{id_prefix}-{_slug(str(Path(r).with_suffix('')))}" for r, _ in rels]
    counts: dict[str, int] = {}
    for b in base_ids:
        counts[b] = counts.get(b, 0) + 1
    out: list[PhotoSource] = []
    for (rel, f), base in zip(rels, base_ids):
        image_id = base if counts[base] == 1 else f"{base}-{_slug(f.suffix.lower())}"
        if f.stem in stems:
            split = "benchmark"
        elif benchmark_fraction > 0 and sha256_fraction(file_sha256(f)) < benchmark_fraction:
            split = "benchmark"
        else:
            split = "train"
        out.append(PhotoSource(image_id=image_id, path=str(f.resolve()), split=split, source="folder",
                               package=None, version=None, rel_path=rel, licence=licence))
    return out


# --------------------------------------------------------------------------------------------------
# prepare


def prepare_photos(
    sources: Iterable[PhotoSource],
    out_dir: str | os.PathLike,
    *,
    min_size: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode, check, deduplicate and store clean photos as 8-bit RGB PNGs.

    Each source is read with :func:`maskdcpt.imageio.read_image` (EXIF orientation, grey → RGB, ...), then
    written atomically to ``out_dir/images/<image_id>.png`` (8-bit RGB; a file that already holds exactly
    these bytes is left untouched, so reruns do not touch mtimes). A bad file never stops the run.

    Deduplication and leakage protection: sources are processed benchmark-first (stable otherwise), so
    when a benchmark photo also appears in the training pool the *benchmark* copy is kept. A source is
    rejected as ``duplicate`` if its file sha256 equals that of an already kept source, or if its decoded
    8-bit pixels are identical to a kept one (re-encoded copy); ``detail`` names the kept ``image_id``. A
    repeated ``image_id`` with different content is rejected as ``duplicate_id``.

    Parameters
    ----------
    sources : iterable of PhotoSource
    out_dir : path-like
        Output folder (created); PNGs go to ``out_dir/images``.
    min_size, max_pixels :
        Passed to :func:`read_image` (shorter side in px; pixel budget checked before decoding).

    Returns
    -------
    manifest : DataFrame
        Columns :data:`MANIFEST_COLUMNS`, sorted by ``image_id``: ``image_id``, ``split``
        (``'train'``/``'benchmark'``), ``source`` (``'package'``/``'folder'``), ``package``, ``version``,
        ``src_path``, ``sha256`` (of the source file), ``png_sha256`` (of the written PNG), ``path`` (the
        PNG relative to ``out_dir``: ``images/<image_id>.png``, so the manifest's bytes do not depend on where
        it is built; the prepare stage writes into a temporary folder and renames it), ``width``,
        ``height`` (px, after orientation), ``bytes`` (source file size), ``licence``, ``mode`` (original
        PIL mode, e.g. ``'L'``, ``'RGB'``, ``'I;16'``).
    rejections : DataFrame
        Columns :data:`REJECTION_COLUMNS`; ``reason`` is an :class:`ImageRejected` slug or
        ``duplicate``/``duplicate_id``/``bad_split``; ``detail`` is a human-readable message.
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    srcs = list(sources)
    order = sorted(range(len(srcs)), key=lambda i: (srcs[i].split != "benchmark", i))
    rows: list[dict] = []
    rejected: list[dict] = []
    kept_by_sha: dict[str, str] = {}
    kept_by_pixels: dict[str, str] = {}
    kept_ids: set[str] = set()

    def reject(s: PhotoSource, sha: str | None, reason: str, detail: str) -> None:
        rejected.append({"image_id": s.image_id, "split": s.split, "source": s.source, "package": s.package,
                         "src_path": s.uri or s.path, "sha256": sha, "reason": reason, "detail": detail})

    for i in order:
        s = srcs[i]
        if s.split not in SPLITS:
            reject(s, None, "bad_split", f"split must be one of {SPLITS}, got {s.split!r}")
            continue
        if not _VALID_ID.fullmatch(s.image_id or ""):
            reject(s, None, "bad_image_id", "image_id must match [A-Za-z0-9_-]+")
            continue
        src = Path(s.path)
        if not src.is_file():
            reject(s, None, "not_found", "no such file")
            continue
        sha = file_sha256(src)
        if sha in kept_by_sha:
            reject(s, sha, "duplicate", f"same file bytes as kept image {kept_by_sha[sha]}")
            continue
        if s.image_id in kept_ids:
            reject(s, sha, "duplicate_id", f"image_id {s.image_id} already used by another file")
            continue
        try:
            img, mode = read_image(src, max_pixels=max_pixels, min_size=min_size, return_mode=True)
        except ImageRejected as e:
            reject(s, sha, e.reason, e.message)
            continue
        png = encode_png(img, bit_depth=8)
        # Pixel identity of the 8-bit RGB result (shape + bytes), independent of the PNG encoder.
        q = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        pix = hashlib.sha256(repr(q.shape).encode() + q.tobytes()).hexdigest()
        if pix in kept_by_pixels:
            reject(s, sha, "duplicate", f"identical pixels to kept image {kept_by_pixels[pix]}")
            continue
        dest = img_dir / f"{s.image_id}.png"
        if not (dest.is_file() and dest.stat().st_size == len(png) and dest.read_bytes() == png):
            atomic_write_bytes(dest, png)
        kept_by_sha[sha] = s.image_id
        kept_by_pixels[pix] = s.image_id
        kept_ids.add(s.image_id)
        rows.append({
            "image_id": s.image_id, "split": s.split, "source": s.source, "package": s.package,
            "version": s.version, "src_path": s.uri or s.path, "sha256": sha,
            "png_sha256": hashlib.sha256(png).hexdigest(), "path": f"{img_dir.name}/{dest.name}",
            "width": int(img.shape[1]), "height": int(img.shape[0]), "bytes": int(src.stat().st_size),
            "licence": s.licence, "mode": mode,
        })
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    manifest = manifest.astype({"width": "int64", "height": "int64", "bytes": "int64"})
    rejections = pd.DataFrame(rejected, columns=REJECTION_COLUMNS)
    return manifest, rejections
