"""Loaders for the paper's public test sets (Table I 5D, Table II 12D, Table III OOD noise), laid out as
their public releases ship them, from a local folder or an ``s3://`` prefix.

Nothing is downloaded from the internet: users point ``test_sets.root`` (or ``--set name=PATH``) at their own
copies. Each set is a :class:`TestSetSpec` in :data:`DATASETS` with its task class (5D names, and the 12D names
of :data:`maskdcpt.degradations.TASKS`), its default folder below the root and the layout it expects
(:func:`expected_layout` prints it as a tree). :func:`load_test_set` lists and matches the files (cheap: no
pixel is decoded) and returns a :class:`TestSetPairs`, which yields ``(id, lq, gt)`` pairs lazily; files that
do not match are rejection rows (``reason`` ∈ ``unmatched_lq``, ``unmatched_gt``, ``duplicate_key``,
``missing_file``, ``bad_list_line``, then at read time ``size_mismatch`` or an
:class:`~maskdcpt.imageio.ImageRejected` reason), never silently dropped. A missing set raises
:class:`TestSetMissing` whose message names the path and prints the expected layout.

Layouts (``<set>`` = the set's folder; subfolder names are options of the loader, defaults below)
-----------------------------------------------------------------------------------------------
``pairs_by_number`` (Rain100L, Rain100H, Rain200L train)
    ``rainy/`` (LQ) and ``norain/`` (GT). The common release names files ``rain-001.png`` / ``norain-001.png``,
    so files are matched by the **first integer in the file stem** (``int``, leading zeros ignored:
    ``rain-001`` ↔ ``norain-1``; ``norain-1x2`` (Rain200L ``rain/X2``) → 1). A stem without digits is
    matched by the whole stem.
``sots`` (SOTS-outdoor, RESIDE)
    ``hazy/<id>_<A>_<beta>.<ext>`` and ``clear/<id>.png``; the GT of a hazy file is its name up to the first
    ``_`` (docs/method.md §6 item 14: ``hazyname.split('_')[0] + '.png'``; any image extension is accepted for
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

LQ synthesis at test time (docs/method.md §5.2, §4.3)
----------------------------------------------------
* Gaussian noise σ: ``lq = float32(clip(float64(gt) + n, 0, 1))`` with ``n = RandomState(0).normal(0, σ/255,
  (H, W, 3))`` for **every** image: the legacy MT19937 stream of the official ``np.random.seed(0);
  np.random.normal(...)``, so the noise field is the official one bit for bit; float, clipped, not quantised.
* JPEG q: :func:`maskdcpt.degradations.jpeg_roundtrip` (cv2 ``imencode`` of the uint8 BGR image).
* Demosaic: RGGB mosaic + ``cv2`` edge-aware demosaic; ``swap_rb=True`` reproduces the official R/B swap
  (docs/method.md §6 item 11).
* Gaussian blur (Urban100): the official test draws kernels from a global RNG that depends on dataset order,
  which cannot be replayed; here ``degrade(gt, "gaussian_blur", seed=image index)``: deterministic, **not
  comparable** with the paper's number (flagged ``comparable=False``).
"""

from __future__ import annotations

import importlib

# re-exported lazily (the params schema imports .params without the loaders, numpy or OpenCV)
_EXPORTS = {
    "TestSetPairs": "layouts", "expected_layout": "layouts", "first_number": "layouts", "load_test_set": "layouts",
    "resolve_location": "layouts",
    "DATASETS": "registry", "REJECTION_COLUMNS": "registry", "TestSetMissing": "registry", "TestSetPair": "registry",
    "TestSetSpec": "registry",
    "official_test_noise": "synthesis", "synthesize_lq": "synthesis",
    "training_pairs": "training",
    "TrainingSetsParams": "params", "TestSetsParams": "params", "validated_group": "params",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
