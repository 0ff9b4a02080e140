"""Synthesis of degraded/clean pairs from the prepared photos, written as tar shards plus a manifest.

Seeds (docs/method.md §8: every random choice derives from a recorded seed)
-----------------------------------------------------------------------
* Training pair ``i`` of class ``c`` (position ``c`` in ``classes``) uses
  ``pair_seed = SeedSequence([seed, c, i]).generate_state(1)[0]`` (a uint32, recorded as ``seed``).
  From it, stream ``SeedSequence(pair_seed, spawn_key=(2,))`` chooses the photo (uniform over the eligible
  training photos sorted by ``image_id``) and the crop position (uniform), then
  ``degrade(crop, class, pair_seed)`` uses spawn keys 0 (parameters) and 1 (noise field). With a ``tone``
  config, spawn key 3 draws whether and how the clean crop's tone changes before it is degraded
  (:func:`~maskdcpt.data.pair_recipe.draw_tone`, recorded as ``gt_tone``).
  Pair ``i`` of a class therefore does not depend on ``pairs_per_class``, shard size, or other classes.
* Benchmark entry ``k`` (position in ``entries``) uses ``seed + k`` for **every** benchmark photo, the
  analogue of the official test code re-seeding with 0 for every image (docs/method.md §5.2).

Storage: shards ``out_dir/<split>-00000.tar``, ... (format in :mod:`maskdcpt.data.shards`); training LQ
8-bit, benchmark LQ 16-bit, GT 8-bit (exact: the prepared photos are 8-bit). Shards of the same split
left over from an earlier, larger run are deleted. The returned manifest (one row per pair,
:data:`PAIR_COLUMNS`, including the clean crop's tone ``gt_tone``) is enough to rebuild any pair with
:func:`regenerate_pair`.

Work split, workers, resume
---------------------------
The pairs of a split are planned first (cheap: photo and crop choices only), in a fixed order, and cut into
index ranges of ``shard_size`` pairs: shard ``k`` holds planned pairs ``[k·shard_size, (k+1)·shard_size)``
and depends on nothing else, so :func:`synthesize_training_shard` makes shard ``k`` of ``n`` on its own
(several machines can each make a disjoint subset) and ``workers > 1`` runs shards in a
``concurrent.futures.ProcessPoolExecutor`` (a ``tqdm`` bar shows pairs/s). Every finished shard gets a
completion sidecar ``<shard>.done.json`` written atomically *after* the shard: it holds the shard's sha256,
its plan (pair ids, seeds, photos, crops, tones, parameters), a fingerprint of the synthesis code and the manifest
rows. A later run reuses a shard only if the sidecar exists and all three match (plan, code, file hash);
otherwise the shard is made again. An interrupted run therefore resumes without redoing finished shards,
a half-written shard (no sidecar, or a temp file of an atomic write) is redone, and a re-run with the same
parameters writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from maskdcpt.data.shard_jobs import (GT_BIT_DEPTH, make_shard, plan_entry, shard_done, shard_tasks,  # noqa: F401
                                      sidecar, synthesis_fingerprint, write_shards)
from maskdcpt.data.pair_recipe import (PAIR_COLUMNS, SELECT_STREAM, apply_tone, draw_tone, load_photo,  # noqa: F401
                                       make_pair, pair_frame, pair_seed, photo_table, psnr, regenerate_pair,
                                       tone_config)
from maskdcpt.data.shards import KEY_PATTERN
from maskdcpt.degradations import TASKS, get_degradation

__all__ = [
    "PAIR_COLUMNS",
    "pair_seed",
    "synthesize_training_pairs",
    "synthesize_benchmark_pairs",
    "synthesize_training_shard",
    "plan_training_pairs",
    "synthesis_fingerprint",
    "regenerate_pair",
    "psnr",
]

def synthesize_training_pairs(
    images: pd.DataFrame,
    classes: Sequence[str],
    pairs_per_class: int,
    crop: int,
    seed: int,
    out_dir: str | os.PathLike,
    split: str = "train",
    shard_size: int = 256,
    lq_bit_depth: int = 8,
    *,
    prepared_dir: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = False,
    resume: bool = True,
    real_classes: str = "error",
    tone: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Synthesise ``pairs_per_class`` random ``crop × crop`` training pairs for every class.

    Parameters
    ----------
    images : DataFrame
        Prepared-photo manifest rows (:func:`maskdcpt.data.photos.prepare_photos`): ``image_id``, ``sha256``
        and ``path`` (the prepared 8-bit PNG; relative paths are relative to the working directory), or pass
        ``prepared_dir`` to use ``prepared_dir/images/<image_id>.png``. ``width``/``height`` are used when
        present. **Rows with ``split == 'benchmark'`` are always excluded** (no benchmark pixel reaches
        training); photos whose shorter side is below ``crop`` are skipped.
    classes : list of str
        Ordered degradation names; the position is ``class_index`` (e.g. ``TASKS["5d"]``).
    pairs_per_class : int
        Pairs per class (≥ 0).
    crop : int
        Square crop side in px.
    seed : int
        Base seed (see the module docstring for the derivation).
    out_dir : path-like
        Shards go to ``out_dir/<split>-%05d.tar``, ``shard_size`` pairs each, interleaved by class
        (pair 0 of every class, then pair 1, ...) so every shard is class-balanced.
    lq_bit_depth : 8 or 16
    workers : int
        Processes making shards in parallel (``ProcessPoolExecutor``); the output does not depend on it.
    progress : bool
        Show a ``tqdm`` bar (pairs, pairs/s).
    resume : bool
        Reuse shards whose completion sidecar matches (module docstring); ``False`` remakes every shard.
    real_classes : ``"error"`` or ``"skip"``
        What to do with classes of kind ``'real'`` (pairs from captured folders only,
        :func:`maskdcpt.data.sources.collect_real_pairs`): ``"error"`` raises ``ValueError``; ``"skip"``
        synthesises the other classes and keeps every class's index.
    tone : mapping, optional
        Random tone of the clean crops before they are degraded (``prob``, ``gamma``, ``contrast``, ``shift``;
        :func:`~maskdcpt.data.pair_recipe.draw_tone`); ``None``: crops as cut from the photo.

    Returns
    -------
    DataFrame
        Columns :data:`PAIR_COLUMNS`: ``pair_id`` (= ``key`` = ``f"{split}-{class}-{i:06d}"``), ``split``,
        ``image_id``, ``image_sha256`` (source file), ``image_png_sha256`` (prepared PNG, if known),
        ``degradation``, ``class_index``, ``params`` (JSON), ``seed`` (the pair seed), ``crop_y``,
        ``crop_x``, ``height``, ``width`` (px), ``shard`` (file name), ``key``, ``psnr_lq_gt`` (dB, float
        LQ vs GT, peak 1), ``lq_differs`` (stored LQ ≠ stored GT), ``lq_bit_depth``, ``gt_tone`` (JSON, ``{}``
        when the crop's tone is unchanged).

    Raises ``ValueError`` for unknown classes, no eligible photo, bad sizes or a bad ``tone`` config.
    """
    specs = plan_training_pairs(images, classes, pairs_per_class, crop, seed, split=split,
                                prepared_dir=prepared_dir, real_classes=real_classes, tone=tone)
    ctx = {"maker": f"{__name__}:_make_training", "split": split, "crop": int(crop), "lq_bit_depth": int(lq_bit_depth)}
    rows = write_shards(Path(out_dir), split, specs, shard_size, ctx, workers=workers, progress=progress,
                         resume=resume)
    return pair_frame(rows, PAIR_COLUMNS)


def plan_training_pairs(
    images: pd.DataFrame,
    classes: Sequence[str],
    pairs_per_class: int,
    crop: int,
    seed: int,
    *,
    split: str = "train",
    prepared_dir: str | os.PathLike | None = None,
    real_classes: str = "error",
    tone: Mapping[str, Any] | None = None,
) -> list[dict]:
    """The ordered plan of a training split: one dict per pair (``i``, ``ci``, ``c``, ``seed``, ``photo``,
    ``y``, ``x``, ``tone``), interleaved by class (pair 0 of every class, then pair 1, ...). Cheap: no pixel is read.
    Arguments and errors as :func:`synthesize_training_pairs`."""
    classes = list(classes)
    for c in classes:
        get_degradation(c)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {classes}")
    if real_classes not in ("error", "skip"):
        raise ValueError("real_classes must be 'error' or 'skip'")
    real = [c for c in classes if get_degradation(c).kind == "real"]
    if real and real_classes == "error":
        raise ValueError(f"classes {real} are real (captured) classes that cannot be synthesised; pass "
                         "real_classes='skip' and add their pairs with maskdcpt.data.sources.collect_real_pairs")
    if pairs_per_class < 0 or crop < 1:
        raise ValueError("pairs_per_class must be >= 0 and crop >= 1")
    if not KEY_PATTERN.fullmatch(split):
        raise ValueError(f"split must match {KEY_PATTERN.pattern}")
    photos = [r for r in photo_table(images, prepared_dir, keep_split=None, drop_split="benchmark")
              if min(r["width"], r["height"]) >= crop]
    if pairs_per_class > 0 and not photos:
        raise ValueError(f"no training photo has both sides >= crop={crop}")
    tone_config(tone)  # a bad config fails here, before any pair
    specs = []
    for i in range(pairs_per_class):
        for ci, c in enumerate(classes):
            if c in real:
                continue
            s = pair_seed(seed, ci, i)
            rng = np.random.default_rng(np.random.SeedSequence(s, spawn_key=(SELECT_STREAM,)))
            photo = photos[int(rng.integers(len(photos)))]
            y = int(rng.integers(0, photo["height"] - crop + 1))
            x = int(rng.integers(0, photo["width"] - crop + 1))
            specs.append({"i": i, "ci": ci, "c": c, "seed": s, "photo": photo, "y": y, "x": x,
                          "tone": draw_tone(s, tone)})
    return specs


def synthesize_training_shard(
    images: pd.DataFrame,
    classes: Sequence[str],
    pairs_per_class: int,
    crop: int,
    seed: int,
    out_dir: str | os.PathLike,
    k: int,
    *,
    split: str = "train",
    shard_size: int = 256,
    lq_bit_depth: int = 8,
    prepared_dir: str | os.PathLike | None = None,
    resume: bool = True,
    real_classes: str = "error",
    tone: Mapping[str, Any] | None = None,
) -> tuple[int, pd.DataFrame]:
    """Make shard ``k`` (0-based) of a training split on its own: returns ``(n_shards, rows_of_shard_k)``.

    Shard ``k`` is planned pairs ``[k·shard_size, (k+1)·shard_size)`` of :func:`plan_training_pairs`; its
    bytes are the same as in a full :func:`synthesize_training_pairs` run with the same arguments, so
    independent workers (processes, machines) can each make a disjoint set of ``k`` and a final full run
    (``resume=True``) only assembles the manifest. ``ValueError`` if ``k`` is not in ``[0, n_shards)``.
    """
    specs = plan_training_pairs(images, classes, pairs_per_class, crop, seed, split=split,
                                prepared_dir=prepared_dir, real_classes=real_classes, tone=tone)
    ctx = {"maker": f"{__name__}:_make_training", "split": split, "crop": int(crop), "lq_bit_depth": int(lq_bit_depth)}
    tasks = shard_tasks(Path(out_dir), split, specs, shard_size, ctx)
    if not 0 <= int(k) < len(tasks):
        raise ValueError(f"shard index {k} outside [0, {len(tasks)})")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    task = dict(tasks[int(k)], force=not resume)
    _, rows, _ = make_shard(task)
    return len(tasks), pair_frame(rows, PAIR_COLUMNS)


def _make_training(spec: dict, ctx: dict):
    """One training pair of the plan → ``(shard sample, manifest row)``."""
    split, crop, lq_bit_depth = ctx["split"], ctx["crop"], ctx["lq_bit_depth"]
    photo = spec["photo"]
    img = load_photo(photo["path"])
    if img.shape[:2] != (photo["height"], photo["width"]):
        raise ValueError(f"{photo['path']}: size {img.shape[1]}x{img.shape[0]} differs from the manifest")
    y, x = spec["y"], spec["x"]
    tone = spec["tone"]
    gt = apply_tone(np.ascontiguousarray(img[y:y + crop, x:x + crop]), tone)
    lq, params, p, differs = make_pair(gt, spec["c"], spec["seed"], None, lq_bit_depth)
    key = f"{split}-{spec['c']}-{spec['i']:06d}"
    row = {
        "pair_id": key, "split": split, "image_id": photo["image_id"], "image_sha256": photo["sha256"],
        "image_png_sha256": photo["png_sha256"], "degradation": spec["c"], "class_index": spec["ci"],
        "params": json.dumps(params, sort_keys=True), "seed": spec["seed"], "crop_y": y, "crop_x": x,
        "height": crop, "width": crop, "key": key, "psnr_lq_gt": p, "lq_differs": differs,
        "lq_bit_depth": lq_bit_depth, "gt_tone": json.dumps(tone, sort_keys=True),
    }
    meta = {k: row[k] for k in ("pair_id", "split", "image_id", "degradation", "class_index", "seed",
                                "crop_y", "crop_x")}
    meta["params"] = params
    if tone:
        meta["gt_tone"] = tone
    return {"key": key, "lq": lq, "gt": gt, "meta": meta}, row


def synthesize_benchmark_pairs(
    images: pd.DataFrame,
    entries: Sequence[Mapping[str, Any]],
    seed: int,
    out_dir: str | os.PathLike,
    max_size: int | None = None,
    *,
    classes: Sequence[str] | None = None,
    split: str = "benchmark",
    shard_size: int = 256,
    lq_bit_depth: int = 16,
    prepared_dir: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = False,
    resume: bool = True,
) -> pd.DataFrame:
    """Degrade every benchmark photo with every entry (fixed seeds, whole image or a centre crop).

    Parameters
    ----------
    images : DataFrame
        Prepared-photo manifest rows as for :func:`synthesize_training_pairs`; if a ``split`` column exists
        only ``split == 'benchmark'`` rows are used. Photos are processed sorted by ``image_id``.
    entries : list of dict
        ``{"degradation": name, "params": {...} (optional, full or partial), "label": str (optional,
        default the degradation name)}``. Labels must be unique and match ``[A-Za-z0-9_-]+``.
        Example: ``{"degradation": "gaussian_noise", "params": {"sigma": 25}, "label": "gaussian_noise_s25"}``.
    seed : int
        Entry ``k`` uses the pair seed ``seed + k`` for every photo (so unspecified parameters are the same
        for all photos of one entry).
    out_dir : path-like
        Shards ``out_dir/<split>-%05d.tar``.
    max_size : int, optional
        If given, each side is reduced to ``min(side, max_size)`` rounded **down** to a multiple of 16 and
        the image is centre-cropped (offset ``(side − new)//2``); ``None`` keeps the whole image.
    classes : list of str, optional
        For ``class_index`` (position of the degradation; −1 if absent); default ``TASKS["5d"]``.
    lq_bit_depth : 8 or 16 (default 16, keeping the float protocol within 1/65535)
    workers, progress, resume :
        As for :func:`synthesize_training_pairs`.

    Returns
    -------
    DataFrame
        :data:`PAIR_COLUMNS` plus ``label``; ``pair_id`` = ``key`` = ``f"{split}-{label}-{image_id}"``.
    """
    classes = list(TASKS["5d"] if classes is None else classes)
    labels = []
    norm_entries = []
    for e in entries:
        name = e["degradation"]
        get_degradation(name)
        label = e.get("label") or name
        if not KEY_PATTERN.fullmatch(label):
            raise ValueError(f"label must match {KEY_PATTERN.pattern}, got {label!r}")
        labels.append(label)
        norm_entries.append({"degradation": name, "params": dict(e.get("params") or {}), "label": label})
    if len(set(labels)) != len(labels):
        raise ValueError(f"entry labels must be unique, got {labels}")
    if max_size is not None and max_size < 16:
        raise ValueError("max_size must be >= 16")
    photos = photo_table(images, prepared_dir, keep_split="benchmark", drop_split=None)

    specs = []
    for photo in photos:
        h, w = photo["height"], photo["width"]
        if max_size is not None:
            th, tw = min(h, max_size) // 16 * 16, min(w, max_size) // 16 * 16
            if th < 16 or tw < 16:
                raise ValueError(f"{photo['image_id']} is smaller than 16 px")
            y, x = (h - th) // 2, (w - tw) // 2
        else:
            th, tw, y, x = h, w, 0, 0
        for k, e in enumerate(norm_entries):
            specs.append({"photo": photo, "entry": e, "seed": int(seed) + k, "y": y, "x": x, "h": th, "w": tw})

    ctx = {"maker": f"{__name__}:_make_benchmark", "split": split, "classes": classes, "lq_bit_depth": int(lq_bit_depth)}
    rows = write_shards(Path(out_dir), split, specs, shard_size, ctx, workers=workers, progress=progress,
                         resume=resume)
    return pair_frame(rows, PAIR_COLUMNS + ["label", "shard"])


def _make_benchmark(spec: dict, ctx: dict):
    """One benchmark pair → ``(shard sample, manifest row)``."""
    split, classes, lq_bit_depth = ctx["split"], ctx["classes"], ctx["lq_bit_depth"]
    photo, e = spec["photo"], spec["entry"]
    img = load_photo(photo["path"])
    y, x, th, tw = spec["y"], spec["x"], spec["h"], spec["w"]
    gt = np.ascontiguousarray(img[y:y + th, x:x + tw])
    lq, params, p, differs = make_pair(gt, e["degradation"], spec["seed"], e["params"], lq_bit_depth)
    key = f"{split}-{e['label']}-{photo['image_id']}"
    ci = classes.index(e["degradation"]) if e["degradation"] in classes else -1
    row = {
        "pair_id": key, "split": split, "image_id": photo["image_id"], "image_sha256": photo["sha256"],
        "image_png_sha256": photo["png_sha256"], "degradation": e["degradation"], "class_index": ci,
        "params": json.dumps(params, sort_keys=True), "seed": spec["seed"], "crop_y": y, "crop_x": x,
        "height": th, "width": tw, "key": key, "psnr_lq_gt": p, "lq_differs": differs,
        "lq_bit_depth": lq_bit_depth, "gt_tone": "{}", "label": e["label"],
    }
    meta = {k: row[k] for k in ("pair_id", "split", "image_id", "degradation", "class_index", "seed",
                                "crop_y", "crop_x", "label")}
    meta["params"] = params
    return {"key": key, "lq": lq, "gt": gt, "meta": meta}, row
