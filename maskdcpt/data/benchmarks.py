"""Loaders for the paper's standard benchmark sets (Table I 5D, Table II 12D, Table III OOD noise), laid out as
their public releases ship them, from a local folder or an ``s3://`` prefix.

Nothing is downloaded from the internet: users point ``benchmarks.root`` (or ``--set name=PATH``) at their own
copies. Each set is a :class:`BenchmarkSpec` in :data:`DATASETS` with its task class (5D names, and the 12D names
of :data:`maskdcpt.degradations.TASKS`), its default folder below the root and the layout it expects
(:func:`expected_layout` prints it as a tree). :func:`load_benchmark` lists and matches the files (cheap: no
pixel is decoded) and returns a :class:`BenchmarkPairs`, which yields ``(id, lq, gt)`` pairs lazily; files that
do not match are rejection rows (``reason`` ∈ ``unmatched_lq``, ``unmatched_gt``, ``duplicate_key``,
``missing_file``, ``bad_list_line``, then at read time ``size_mismatch`` or an
:class:`~maskdcpt.imageio.ImageRejected` reason), never silently dropped. A missing set raises
:class:`BenchmarkMissing` whose message names the path and prints the expected layout.

Layouts (``<set>`` = the set's folder; subfolder names are options of the loader, defaults below)
-----------------------------------------------------------------------------------------------
``pairs_by_number`` (Rain100L, Rain100H, Rain200L train)
    ``rainy/`` (LQ) and ``norain/`` (GT). The common release names files ``rain-001.png`` / ``norain-001.png``,
    so files are matched by the **first integer in the file stem** (``int``, leading zeros ignored:
    ``rain-001`` ↔ ``norain-1``; ``norain-1x2`` (Rain200L ``rain/X2``) → 1). A stem without digits is
    matched by the whole stem.
``sots`` (SOTS-outdoor, RESIDE)
    ``hazy/<id>_<A>_<beta>.<ext>`` and ``clear/<id>.png``; the GT of a hazy file is its name up to the first
    ``_`` (maskdcpt-method.md §6.14: ``hazyname.split('_')[0] + '.png'``; any image extension is accepted for
    the GT). Several hazy images may share one GT (RESIDE); a GT used by no hazy image is ``unmatched_gt``.
``gopro`` (GoPro test/train, also HIDE-like per-scene sets)
    ``<scene>/blur/*.png`` and ``<scene>/sharp/*.png``, matched by scene and file name; id ``<scene>/<stem>``.
``pairs_by_stem`` (LOL-v1 ``eval15/low`` + ``eval15/high``, Snow100K ``synthetic`` + ``gt``, DPDD
``test_c/source`` + ``test_c/target``, SIDD, moiré, HIDE)
    one LQ folder and one GT folder (searched recursively), matched by the relative path without extension
    after removing the set's name affixes: RainDrop ``data/NNN_rain.png`` ↔ ``gt/NNN_clean.png`` (suffixes
    ``_rain``/``_clean``), LOL-v2 ``Low/low00690.png`` ↔ ``Normal/normal00690.png`` (prefixes ``low``/
    ``normal``; synthetic files share names).
``list_file`` (RealBlur-J, RealBlur-R)
    ``RealBlur_J_test_list.txt`` whose lines are ``<gt_path> <blur_path>`` relative to the set's folder.
``gt_only`` (CBSD68, Kodak24, Urban100, BSD400, WED)
    images directly in the folder, or in the first of the subfolders ``original_png``, ``original``, ``HR``,
    ``GT``, ``gt`` that exists; the LQ is synthesised deterministically (:func:`synthesize_lq`).

LQ synthesis at test time (maskdcpt-method.md §5.2, §4.3)
--------------------------------------------------------
* Gaussian noise σ: ``lq = float32(clip(float64(gt) + n, 0, 1))`` with ``n = RandomState(0).normal(0, σ/255,
  (H, W, 3))`` for **every** image: the legacy MT19937 stream of the official ``np.random.seed(0);
  np.random.normal(...)``, so the noise field is the official one bit for bit; float, clipped, not quantised.
* JPEG q: :func:`maskdcpt.degradations.jpeg_roundtrip` (cv2 ``imencode`` of the uint8 BGR image).
* Demosaic: RGGB mosaic + ``cv2`` edge-aware demosaic; ``swap_rb=True`` reproduces the official R/B swap
  (§6.11).
* Gaussian blur (Urban100): the official test draws kernels from a global RNG that depends on dataset order,
  which cannot be replayed; here ``degrade(gt, "gaussian_blur", seed=image index)``: deterministic, **not
  comparable** with the paper's number (flagged ``comparable=False``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from maskdcpt.imageio import IMAGE_EXTENSIONS, ImageRejected, read_image

__all__ = [
    "BenchmarkSpec", "BenchmarkPairs", "BenchmarkPair", "BenchmarkMissing", "DATASETS", "REJECTION_COLUMNS",
    "expected_layout", "load_benchmark", "resolve_location", "synthesize_lq", "official_test_noise",
    "first_number", "training_pairs",
]

REJECTION_COLUMNS = ["dataset", "id", "lq_path", "gt_path", "reason", "detail"]
_EXTS = {e.lower() for e in IMAGE_EXTENSIONS}
_GT_ONLY_SUBDIRS = ("original_png", "original", "HR", "GT", "gt")


class BenchmarkMissing(FileNotFoundError):
    """A benchmark set is absent or laid out differently: the message names the path and prints the expected
    tree (:func:`expected_layout`)."""


@dataclass(frozen=True)
class BenchmarkPair:
    """One test pair: ``id`` (str, unique in the set), ``lq`` and ``gt`` float32 ``(H, W, 3)`` RGB in [0, 1]."""

    id: str
    lq: np.ndarray
    gt: np.ndarray

    def __iter__(self):  # allows ``for id, lq, gt in pairs``
        return iter((self.id, self.lq, self.gt))


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark set.

    Attributes:
        name: key in :data:`DATASETS` (``rain100l``...).
        title: the paper's name (``Rain100L``).
        classes: ``{"5d": class, "12d": class}``: the task class the set scores (a task missing = not used).
        layout: loader kind (module docstring): ``pairs_by_number``, ``sots``, ``gopro``, ``pairs_by_stem``,
            ``list_file``, ``gt_only``.
        default_dir: folder below ``benchmarks.root``.
        options: loader options (subfolder names, affixes, ``synth`` spec for ``gt_only``).
        comparable: False when the LQ cannot equal the official one (numbers not comparable with the paper).
    """

    name: str
    title: str
    classes: Mapping[str, str]
    layout: str
    default_dir: str
    options: Mapping[str, Any] = field(default_factory=dict)
    comparable: bool = True


def _noise(sigma: int) -> dict:
    return {"type": "gaussian_noise", "sigma": sigma}


def _build_registry() -> dict[str, BenchmarkSpec]:
    R: dict[str, BenchmarkSpec] = {}

    def add(spec: BenchmarkSpec) -> None:
        R[spec.name] = spec

    rain_opts = {"lq_dir": "rainy", "gt_dir": "norain"}
    add(BenchmarkSpec("rain100l", "Rain100L", {"5d": "rain", "12d": "rain"}, "pairs_by_number", "Rain100L", rain_opts))
    add(BenchmarkSpec("rain100h", "Rain100H", {"12d": "rain"}, "pairs_by_number", "Rain100H", rain_opts))
    add(BenchmarkSpec("sots_outdoor", "SOTS-outdoor", {"5d": "haze", "12d": "haze"}, "sots", "SOTS/outdoor",
                      {"lq_dir": "hazy", "gt_dir": "clear"}))
    add(BenchmarkSpec("gopro", "GoPro", {"5d": "motion_blur", "12d": "motion_blur"}, "gopro", "GoPro/test",
                      {"lq_dir": "blur", "gt_dir": "sharp"}))
    add(BenchmarkSpec("lol_v1", "LOL-v1", {"5d": "low_light", "12d": "low_light"}, "pairs_by_stem", "LOL",
                      {"lq_dir": "eval15/low", "gt_dir": "eval15/high"}))
    add(BenchmarkSpec("snow100k_l", "Snow100K-L", {"12d": "snow"}, "pairs_by_stem", "Snow100K-L",
                      {"lq_dir": "synthetic", "gt_dir": "gt"}))
    add(BenchmarkSpec("raindrop_a", "RainDrop test_a", {"12d": "raindrop"}, "pairs_by_stem", "RainDrop/test_a",
                      {"lq_dir": "data", "gt_dir": "gt", "lq_suffix": "_rain", "gt_suffix": "_clean"}))
    add(BenchmarkSpec("lol_v2_real", "LOL-v2 real", {"12d": "low_light"}, "pairs_by_stem", "LOL-v2",
                      {"lq_dir": "Real_captured/Test/Low", "gt_dir": "Real_captured/Test/Normal",
                       "lq_prefix": "low", "gt_prefix": "normal"}))
    add(BenchmarkSpec("lol_v2_syn", "LOL-v2 synthetic", {"12d": "low_light"}, "pairs_by_stem", "LOL-v2",
                      {"lq_dir": "Synthetic/Test/Low", "gt_dir": "Synthetic/Test/Normal"}))
    add(BenchmarkSpec("hide", "HIDE", {"12d": "motion_blur"}, "pairs_by_stem", "HIDE",
                      {"lq_dir": "test", "gt_dir": "GT", "flatten": True}))
    add(BenchmarkSpec("realblur_j", "RealBlur-J", {"12d": "motion_blur"}, "list_file", "RealBlur",
                      {"list": "RealBlur_J_test_list.txt"}))
    add(BenchmarkSpec("dpdd", "DPDD (inputC)", {"12d": "defocus_blur"}, "pairs_by_stem", "DPDD",
                      {"lq_dir": "test_c/source", "gt_dir": "test_c/target"}))
    add(BenchmarkSpec("sidd", "SIDD val", {"12d": "real_noise"}, "pairs_by_stem", "SIDD/val",
                      {"lq_dir": "noisy", "gt_dir": "gt"}))
    add(BenchmarkSpec("moire", "Moiré (RDNet test)", {"12d": "moire"}, "pairs_by_stem", "moire/test",
                      {"lq_dir": "moire", "gt_dir": "gt"}))
    for key, title, folder in (("cbsd68", "CBSD68", "CBSD68"), ("kodak", "Kodak24", "Kodak24"),
                               ("urban100", "Urban100", "Urban100")):
        for s in (15, 25, 50, 60, 75):
            name = "cbsd68" if (key, s) == ("cbsd68", 25) else f"{key}_s{s}"
            classes = {"5d": "gaussian_noise", "12d": "noise"} if s <= 50 else {"ood": "gaussian_noise"}
            add(BenchmarkSpec(name, f"{title} σ{s}", classes, "gt_only", folder, {"synth": _noise(s)}))
        add(BenchmarkSpec(f"{key}_jpeg50", f"{title} JPEG q50", {"12d": "jpeg"}, "gt_only", folder,
                          {"synth": {"type": "jpeg", "quality": 50}}))
    add(BenchmarkSpec("urban100_demosaic", "Urban100 demosaic", {"12d": "mosaic"}, "gt_only", "Urban100",
                      {"synth": {"type": "mosaic", "swap_rb": False}}))
    add(BenchmarkSpec("urban100_gblur", "Urban100 Gaussian blur", {"12d": "gaussian_blur"}, "gt_only", "Urban100",
                      {"synth": {"type": "gaussian_blur"}}, comparable=False))
    return R


#: name → :class:`BenchmarkSpec` of every supported set.
DATASETS: dict[str, BenchmarkSpec] = _build_registry()


# ------------------------------------------------------------------------------------------------ layouts


def expected_layout(name: str, options: Mapping[str, Any] | None = None) -> str:
    """The folder tree a set must have, as text (what :class:`BenchmarkMissing` prints). ``KeyError`` for an
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


def _spec(name: str) -> BenchmarkSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown benchmark set {name!r}; known: {sorted(DATASETS)}")
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


class BenchmarkPairs:
    """The matched pairs of one set (listing done, pixels not read yet).

    Attributes:
        name, spec, root (the local folder), options (merged loader options), entries (matched files),
        rejections (DataFrame, :data:`REJECTION_COLUMNS`; read-time failures are appended while iterating).

    Iterating yields :class:`BenchmarkPair` ``(id, lq, gt)`` in sorted id order, reading each file when its
    pair is reached; ``limit`` (constructor) keeps the first N entries.
    """

    def __init__(self, spec: BenchmarkSpec, root: Path, options: Mapping[str, Any], entries: list[_Entry],
                 rejections: list[dict]):
        self.spec, self.name, self.root, self.options = spec, spec.name, root, dict(options)
        self.entries = entries
        self._rejected = list(rejections)

    @property
    def rejections(self) -> pd.DataFrame:
        return pd.DataFrame(self._rejected, columns=REJECTION_COLUMNS)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[BenchmarkPair]:
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
            yield BenchmarkPair(e.id, lq, gt)

    def _reject(self, e: _Entry, reason: str, detail: str) -> None:
        self._rejected.append({"dataset": self.name, "id": e.id, "lq_path": None if e.lq_path is None else str(e.lq_path),
                               "gt_path": str(e.gt_path), "reason": reason, "detail": detail})


def _missing(spec: BenchmarkSpec, root: Path, options: Mapping[str, Any], why: str) -> BenchmarkMissing:
    return BenchmarkMissing(f"{spec.title} ({spec.name}) {why} at {root}; expected layout:\n"
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


def _list(spec: BenchmarkSpec, root: Path, o: Mapping[str, Any]) -> tuple[list[_Entry], list[dict]]:
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


def resolve_location(location: str | os.PathLike, cache_dir: str | os.PathLike = ".cache/benchmarks",
                     endpoint_url: str | None = None, client=None) -> Path:
    """A local folder for ``location``: a path as is, or an ``s3://bucket/prefix`` mirrored with
    :func:`maskdcpt.data.sources.download_s3_prefix` into ``cache_dir/<bucket>/<prefix>`` (images and ``.txt``
    list files; unchanged objects are not downloaded again). Credentials come from the environment only.

    Raises ``BenchmarkMissing`` when the prefix holds no object, ``ValueError`` for a malformed URI.
    """
    text = str(location)
    if not text.startswith("s3://"):
        return Path(text).expanduser()
    from maskdcpt.data.sources import download_s3_prefix, parse_s3_uri

    bucket, prefix = parse_s3_uri(text)
    prefix = prefix.rstrip("/")
    files, failures = download_s3_prefix(f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}", cache_dir,
                                         client=client, endpoint_url=endpoint_url,
                                         extensions=tuple(IMAGE_EXTENSIONS) + (".txt",))
    if not files:
        detail = f" ({len(failures)} downloads failed: {failures[0]['detail']})" if failures else ""
        raise BenchmarkMissing(f"no objects under {text}{detail}")
    return Path(cache_dir) / bucket / prefix


def load_benchmark(name: str, location: str | os.PathLike, *, limit: int | None = None,
                   options: Mapping[str, Any] | None = None, cache_dir: str | os.PathLike = ".cache/benchmarks",
                   endpoint_url: str | None = None, client=None) -> BenchmarkPairs:
    """List and match one set (see the module docstring for the layouts).

    Args:
        name: a key of :data:`DATASETS`.
        location: the set's own folder (e.g. ``/data/benchmarks/Rain100L``) or an ``s3://`` prefix.
        limit: keep the first ``limit`` pairs in id order (quick checks).
        options: overrides of the spec's loader options (``lq_dir``, ``gt_dir``, ``synth``...).
        cache_dir, endpoint_url, client: for ``s3://`` locations (:func:`resolve_location`).

    Returns:
        :class:`BenchmarkPairs` (lazy; rejections recorded).

    Raises:
        KeyError: unknown set. BenchmarkMissing: the folder or a required subfolder/list file is absent, or
            nothing matched (the message prints the expected layout).
    """
    spec = _spec(name)
    opts = {**spec.options, **(options or {})}
    root = resolve_location(location, cache_dir, endpoint_url, client)
    entries, rej = _list(spec, root, opts)
    if limit is not None:
        entries = entries[: max(0, int(limit))]
    return BenchmarkPairs(spec, root, opts, entries, rej)


# ------------------------------------------------------------------------------------------- LQ synthesis


def official_test_noise(shape: tuple[int, ...], sigma: float, seed: int = 0) -> np.ndarray:
    """The official test noise field: ``np.random.seed(seed); np.random.normal(0, sigma/255, shape)``, float64,
    drawn from a private legacy ``RandomState`` (same MT19937 + Box-Muller stream, global RNG untouched).
    ``sigma`` on the 0-255 scale (maskdcpt-method.md §5.2)."""
    return np.random.RandomState(int(seed)).normal(0.0, float(sigma) / 255.0, shape)


def synthesize_lq(gt: np.ndarray, synth: Mapping[str, Any], index: int = 0) -> np.ndarray:
    """Deterministic test-time LQ of a GT-only set (module docstring).

    Args:
        gt: float32 ``(H, W, 3)`` RGB in [0, 1].
        synth: ``{"type": "gaussian_noise", "sigma": σ (0-255 scale), "seed": 0}`` |
            ``{"type": "jpeg", "quality": q}`` | ``{"type": "mosaic", "swap_rb": bool}`` |
            ``{"type": "gaussian_blur"}`` (seeded with ``index``; not the official kernels).
        index: position of the image in the set (only the Gaussian-blur approximation uses it).

    Returns float32 ``(H, W, 3)`` in [0, 1]. Raises ``ValueError`` for an unknown type.
    """
    kind = synth.get("type")
    if kind == "gaussian_noise":
        noisy = np.asarray(gt, dtype=np.float64) + official_test_noise(gt.shape, synth["sigma"], synth.get("seed", 0))
        return np.clip(noisy, 0.0, 1.0).astype(np.float32)
    if kind == "jpeg":
        from maskdcpt.degradations import jpeg_roundtrip

        return jpeg_roundtrip(gt, int(synth.get("quality", 50)))
    if kind == "mosaic":
        from maskdcpt.degradations import bayer_rggb, demosaic

        return demosaic(bayer_rggb(gt), bool(synth.get("swap_rb", False))).astype(np.float32) / np.float32(255.0)
    if kind == "gaussian_blur":
        from maskdcpt.degradations import degrade

        return degrade(gt, "gaussian_blur", seed=int(index))[0]
    raise ValueError(f"unknown LQ synthesis {synth!r}; known types: gaussian_noise, jpeg, mosaic, gaussian_blur")


# ------------------------------------------------------------------------------------------ training pairs


def training_pairs(preset_params: Mapping[str, Any], out_dir: str | os.PathLike, *, limit: int | None = None,
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's training sets (``training_sets`` of a preset, e.g. presets/paper-5d.yaml) as real pairs in
    tar shards, with the repeat ratios applied as repetition counts.

    ``preset_params["training_sets"]`` = ``{"root": folder or s3://, "mode": "crop"|"whole", "crop": px,
    "cache_dir": ..., "sets": {name: {"layout": a DATASETS key whose layout is reused, "path": below root,
    "class": task class, "repeat": int, "options": {...}, "sigmas": [15, 25, 50] for GT-only noise sets}}}``.

    * ``mode: crop``: each pair gives ``repeat`` random ``crop``×``crop`` crops (the same window in LQ and GT;
      seed ``SeedSequence([seed, class_index, pair_index, k])``), each its own row ``...-r<k>``. Images smaller
      than the crop are rejected (``too_small``). GT-only sets get σ drawn uniformly from ``sigmas`` and noise
      ``RandomState(row seed)``, added to the crop, clipped (the official training noise is seeded per sample);
      GT-only sets of another class are degraded with ``degrade(crop, class, row seed)`` (random severity).
    * ``mode: whole``: one row per pair, the whole image, with ``repeat`` in the ``repeat`` column (a sampler
      draws the row that many times per epoch).

    Returns ``(manifest, rejections)``: the manifest has :data:`~maskdcpt.data.synthesize.PAIR_COLUMNS`
    (``split='train'``, ``class_index`` = position of the class in ``task.classes`` or the task's list, LQ
    8-bit in the shards ``train-<class>-<set>-%05d.tar``) plus ``kind`` (``real`` or ``synthetic``),
    ``dataset``, ``repeat``, ``gt_path``, ``lq_path``; rejections have :data:`REJECTION_COLUMNS`, including
    missing sets (``reason='missing_set'``, detail = the expected layout). ``limit`` caps pairs per set.

    Raises ``ValueError`` when ``training_sets`` is absent or a set names an unknown layout or class.
    """
    import json

    from maskdcpt.data.photos import _slug
    from maskdcpt.data.shards import write_shard
    from maskdcpt.data.synthesize import PAIR_COLUMNS, psnr
    from maskdcpt.degradations import TASKS
    from maskdcpt.imageio import file_sha256, quantize

    cfg = preset_params.get("training_sets")
    if not isinstance(cfg, Mapping) or not cfg.get("sets"):
        raise ValueError("preset has no training_sets.sets (see presets/paper-5d.yaml)")
    task = preset_params.get("task", {}) or {}
    classes = list(task.get("classes") or TASKS[task.get("name", "5d")])
    seed = int(preset_params.get("seed", 0))
    mode = cfg.get("mode", "crop")
    if mode not in ("crop", "whole"):
        raise ValueError(f"training_sets.mode must be crop or whole, got {mode!r}")
    crop = int(cfg.get("crop") or (preset_params.get("synthesize", {}) or {}).get("crop", 256))
    shard_size = int(cfg.get("shard_size", 256))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    rejected: list[dict] = []
    for set_name, s in cfg["sets"].items():
        layout = s.get("layout")
        if layout not in DATASETS:
            raise ValueError(f"training set {set_name!r}: layout must be a benchmark set name, got {layout!r}")
        cls = s.get("class")
        if cls not in classes:
            raise ValueError(f"training set {set_name!r}: class {cls!r} not in the task classes {classes}")
        ci, repeat = classes.index(cls), int(s.get("repeat", 1))
        base = str(cfg.get("root", "") or "")
        loc = s["path"] if str(s["path"]).startswith(("/", "s3://")) or not base else f"{base.rstrip('/')}/{s['path']}"
        opts = dict(s.get("options") or {})
        try:
            pairs = load_benchmark(layout, loc, limit=limit, options=opts,
                                   cache_dir=cfg.get("cache_dir", ".cache/benchmarks"))
        except BenchmarkMissing as e:
            rejected.append({"dataset": set_name, "id": None, "lq_path": None, "gt_path": None,
                             "reason": "missing_set", "detail": str(e)})
            continue
        sigmas = list(s.get("sigmas") or [15, 25, 50])
        synthetic = pairs.spec.layout == "gt_only"
        samples, set_rows = [], []
        for pi, (entry, pair) in enumerate(_with_entries(pairs)):
            if pair is None:
                continue
            h, w = pair.gt.shape[:2]
            if mode == "crop" and min(h, w) < crop:
                rejected.append({"dataset": set_name, "id": pair.id, "lq_path": str(entry.lq_path or ""),
                                 "gt_path": str(entry.gt_path), "reason": "too_small",
                                 "detail": f"{w}x{h} is smaller than the {crop}px crop"})
                continue
            sha = file_sha256(entry.gt_path)
            for k in range(repeat if mode == "crop" else 1):
                rs = int(np.random.SeedSequence([seed, ci, pi, k]).generate_state(1)[0])
                rng = np.random.default_rng(rs)
                if mode == "crop":
                    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
                    gt, lq = pair.gt[y:y + crop, x:x + crop], pair.lq[y:y + crop, x:x + crop]
                else:
                    y = x = 0
                    gt, lq = pair.gt, pair.lq
                params: dict[str, Any] = {}
                if synthetic and cls in ("gaussian_noise", "noise"):
                    sigma = sigmas[int(rng.integers(len(sigmas)))]
                    params = {"sigma": sigma}
                    lq = np.clip(gt.astype(np.float64) + np.random.RandomState(rs).normal(0, sigma / 255.0, gt.shape),
                                 0, 1).astype(np.float32)
                elif synthetic:
                    from maskdcpt.degradations import degrade

                    lq, params = degrade(np.ascontiguousarray(gt), cls, rs)
                key = f"train-{cls}-{_slug(set_name)}-{_slug(pair.id)}" + (f"-r{k}" if mode == "crop" else "")
                set_rows.append({
                    "pair_id": key, "split": "train", "image_id": f"{_slug(set_name)}-{_slug(pair.id)}",
                    "image_sha256": sha, "image_png_sha256": None, "degradation": cls, "class_index": ci,
                    "params": json.dumps(params, sort_keys=True), "seed": rs, "crop_y": y, "crop_x": x,
                    "height": gt.shape[0], "width": gt.shape[1], "shard": None, "key": key,
                    "psnr_lq_gt": psnr(lq, gt),
                    "lq_differs": bool(not np.array_equal(quantize(lq, 8), quantize(gt, 8))), "lq_bit_depth": 8,
                    "kind": "synthetic" if synthetic else "real", "dataset": set_name,
                    "repeat": 1 if mode == "crop" else repeat, "gt_path": str(entry.gt_path),
                    "lq_path": None if entry.lq_path is None else str(entry.lq_path)})
                samples.append({"key": key, "lq": lq, "gt": gt, "meta": {"pair_id": key, "degradation": cls,
                                                                        "dataset": set_name, **params}})
        for k0 in range(0, len(samples), shard_size):
            name = f"train-{cls}-{_slug(set_name)}-{k0 // shard_size:05d}.tar"
            write_shard(out / name, samples[k0:k0 + shard_size], lq_bit_depth=8)
            for r in set_rows[k0:k0 + shard_size]:
                r["shard"] = name
        rows.extend(set_rows)
        rejected.extend(pairs.rejections.to_dict("records"))
    cols = list(dict.fromkeys(PAIR_COLUMNS + ["shard", "kind", "dataset", "repeat", "gt_path", "lq_path"]))
    manifest = pd.DataFrame(rows, columns=cols)
    if len(manifest):
        manifest = manifest.astype({"class_index": "int64", "seed": "int64", "height": "int64", "width": "int64",
                                    "crop_y": "int64", "crop_x": "int64", "lq_bit_depth": "int64", "repeat": "int64"})
    return manifest, pd.DataFrame(rejected, columns=REJECTION_COLUMNS)


def _with_entries(pairs: BenchmarkPairs) -> Iterator[tuple[_Entry, BenchmarkPair | None]]:
    """``(entry, pair)`` for each entry; ``pair`` is None when reading failed (then recorded as a rejection)."""
    it = iter(pairs)
    by_id = {e.id: e for e in pairs.entries}
    for pair in it:
        yield by_id[pair.id], pair
