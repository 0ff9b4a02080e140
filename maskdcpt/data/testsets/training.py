"""The paper's training sets (a preset's ``training_sets`` group) as real pairs in tar shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from maskdcpt.data.testsets.layouts import TestSetPairs, _Entry, load_test_set
from maskdcpt.data.testsets.params import TrainingSetsParams, validated_group
from maskdcpt.data.testsets.registry import DATASETS, REJECTION_COLUMNS, TestSetMissing, TestSetPair

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
    from maskdcpt.data.pair_recipe import PAIR_COLUMNS, psnr
    from maskdcpt.degradations import TASKS
    from maskdcpt.imageio import file_sha256, quantize

    cfg = validated_group(TrainingSetsParams, preset_params.get("training_sets"), "training_sets")
    if not cfg.sets:
        raise ValueError("preset has no training_sets.sets (see presets/paper-5d.yaml)")
    missing = [k for k in ("seed", "task") if k not in preset_params]
    if missing:
        raise ValueError(f"training_pairs needs the params' {missing} (the pipeline passes validated params)")
    task = preset_params["task"]
    classes = list(task.get("classes") or TASKS[task["name"]])   # empty classes: the task's registered list
    seed = int(preset_params["seed"])
    mode, crop, shard_size = cfg.mode, cfg.crop, cfg.shard_size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    rejected: list[dict] = []
    for set_name, s in cfg.sets.items():
        layout = s.layout
        if layout not in DATASETS:
            raise ValueError(f"training set {set_name!r}: layout must be a test set name "
                             f"(maskdcpt paper-eval --list), got {layout!r}")
        cls = s.class_
        if cls not in classes:
            raise ValueError(f"training set {set_name!r}: class {cls!r} not in the task classes {classes}")
        ci, repeat = classes.index(cls), s.repeat
        base = cfg.root
        loc = s.path if s.path.startswith(("/", "s3://")) or not base else f"{base.rstrip('/')}/{s.path}"
        opts = dict(s.options)
        try:
            pairs = load_test_set(layout, loc, limit=limit, options=opts, cache_dir=cfg.cache_dir)
        except TestSetMissing as e:
            rejected.append({"dataset": set_name, "id": None, "lq_path": None, "gt_path": None,
                             "reason": "missing_set", "detail": str(e)})
            continue
        sigmas = list(s.sigmas)
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


def _with_entries(pairs: TestSetPairs) -> Iterator[tuple[_Entry, TestSetPair | None]]:
    """``(entry, pair)`` for each entry; ``pair`` is None when reading failed (then recorded as a rejection)."""
    it = iter(pairs)
    by_id = {e.id: e for e in pairs.entries}
    for pair in it:
        yield by_id[pair.id], pair
