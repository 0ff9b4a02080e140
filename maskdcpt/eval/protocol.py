"""The paper's evaluation protocol on the standard test sets, and Tables I / II / III with the paper's numbers
beside ours.

Protocol (docs/method.md §5.3; recorded in every result file)
-------------------------------------------------------------
* Inference: the LQ (float32 RGB in [0, 1]) is reflect-padded at the bottom/right to the network's multiple
  (``padder_size``, 16 for NAFNet), run as a **whole image**, batch 1, no tiling, no self-ensemble, cropped back
  and clamped to [0, 1] (:func:`maskdcpt.eval.benchmark.restore_tensor`); weights = ``params_ema``.
* Metrics: PSNR / SSIM on RGB floats, no border crop, no quantisation, per image then averaged over the images
  of a set (``metrics.convention()``: the 5D/12D YAMLs' ``image_range: 1.0``). The uint8-rounded variant
  (``quantize="uint8"``, the OOD-denoise YAMLs' ``image_range: 255``) is computed too and is the one Table III
  reports.
* A table column covering several sets (Table II) is the mean of the per-set means of the sets present; a cell
  shows ``(k/n sets)`` when only some of the column's sets were evaluated.

Tables and the paper's numbers: :mod:`maskdcpt.eval.paper_tables` (docs/method.md §5.4).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from maskdcpt import metrics
from maskdcpt.atomic import atomic_write_text
from maskdcpt.eval.paper_tables import TABLES, _f, render_sets, render_table, table_results

__all__ = ["PROTOCOL", "evaluate_set", "summarize_sets", "run_paper_eval", "load_preset", "PER_IMAGE_COLUMNS"]

#: What the protocol does, stored with every result (docs/method.md §5.3).
PROTOCOL: dict[str, Any] = {
    "inference": {"pad": "reflect, bottom/right, to the network's padder_size", "whole_image": True, "tile": None,
                  "batch": 1, "self_ensemble": False, "clamp": [0.0, 1.0], "weights": "params_ema"},
    "metrics": metrics.convention(),
    "metrics_uint8": metrics.convention(quantize="uint8"),
    "average": "per image within a set; a multi-set column = mean of per-set means",
    "source": "docs/method.md §5.3 (official test code: BasicSR sr_model / psnr_ssim, test YAMLs)",
}


PER_IMAGE_COLUMNS = ["dataset", "class", "id", "height", "width", "psnr", "ssim", "psnr_uint8", "ssim_uint8",
                     "psnr_lq", "seconds"]


# --------------------------------------------------------------------------------------------- evaluation


def evaluate_set(net, pairs, *, device=None, save_dir: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None, task_class: str | None = None) -> pd.DataFrame:
    """Restore and score every pair of one set with the protocol above.

    Args:
        net: a restoration network (``(1, 3, H, W)`` in [0, 1] → same; ``padder_size`` attribute or 16).
        pairs: a :class:`maskdcpt.data.testsets.TestSetPairs` (yields ``(id, lq, gt)`` float32 (H, W, 3)).
        device: torch device for the input (default: the network's).
        save_dir: if given, restored images are written there as 8-bit PNG ``<id>.png`` (``/`` → ``__``).
        progress: called with a short status line every 10 images.
        task_class: recorded in the ``class`` column (default: the set's first registered class).

    Returns one row per image, :data:`PER_IMAGE_COLUMNS` (PSNR in dB; ``psnr_lq`` = the unrestored input).
    Inference failures (``RuntimeError``, e.g. out of memory, or a non-finite output) are appended to
    ``pairs``' rejections (reason ``inference_failed``) and the image is left out.
    """
    import torch

    from maskdcpt.eval.benchmark import restore_tensor
    from maskdcpt.imageio import write_png

    p = next(net.parameters(), None)
    device = device or (p.device if p is not None else "cpu")
    cls = task_class or next(iter(pairs.spec.classes.values()))
    rows = []
    for k, (pid, lq, gt) in enumerate(pairs):
        t0 = time.perf_counter()
        try:
            x = torch.from_numpy(np.ascontiguousarray(lq)).permute(2, 0, 1)[None].to(device)
            out = restore_tensor(net, x)[0].permute(1, 2, 0).float().cpu().numpy()
            if not np.isfinite(out).all():
                raise RuntimeError("non-finite output")
        except RuntimeError as e:
            pairs._rejected.append({"dataset": pairs.name, "id": pid, "lq_path": None, "gt_path": None,
                                    "reason": "inference_failed", "detail": f"{type(e).__name__}: {e}"[:300]})
            continue
        secs = time.perf_counter() - t0
        rows.append({"dataset": pairs.name, "class": cls, "id": pid, "height": gt.shape[0], "width": gt.shape[1],
                     "psnr": metrics.psnr(out, gt), "ssim": metrics.ssim(out, gt),
                     "psnr_uint8": metrics.psnr(out, gt, quantize="uint8"),
                     "ssim_uint8": metrics.ssim(out, gt, quantize="uint8"),
                     "psnr_lq": metrics.psnr(lq, gt), "seconds": secs})
        if save_dir is not None:
            write_png(Path(save_dir) / f"{pid.replace('/', '__')}.png", out)
        if progress and (k + 1) % 10 == 0:
            progress(f"  {pairs.name}: {k + 1}/{len(pairs)}")
    return pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)




def summarize_sets(per_image: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per-set means: ``{set: {"n", "psnr", "ssim", "psnr_uint8", "ssim_uint8", "psnr_lq"}}`` (PSNR dB).
    An infinite PSNR (restored == GT) makes that set's PSNR mean infinite, as in BasicSR."""
    out = {}
    for name, g in per_image.groupby("dataset", sort=False):
        out[str(name)] = {"n": int(len(g)), **{m: _f(g[m].mean()) for m in
                                                ("psnr", "ssim", "psnr_uint8", "ssim_uint8", "psnr_lq")}}
    return out


# ------------------------------------------------------------------------------------------------ the run


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a params preset overlay: a YAML path, or ``presets/<name>.yaml`` in the project root
    (:func:`maskdcpt.config.find_root`) or beside the installed package. ``FileNotFoundError`` lists the
    presets found."""
    from maskdcpt.config import find_root, read_preset

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return read_preset(p)
    dirs = [find_root() / "presets", Path(__file__).resolve().parents[2] / "presets"]
    for d in dirs:
        f = d / f"{name_or_path}.yaml"
        if f.is_file():
            return read_preset(f)
    known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob("*.yaml")})
    raise FileNotFoundError(f"preset {name_or_path!r} not found in {[str(d) for d in dirs]} (available: {known})")


def _one_line(msg: str) -> str:
    return "; ".join(x.strip() for x in str(msg).splitlines() if x.strip()).replace("|", "/").replace(":;", ":")


def run_paper_eval(model: str, *, preset: str | Mapping[str, Any] = "paper-5d", root: str | None = None,
                  set_paths: Mapping[str, str] | None = None, only: Sequence[str] | None = None,
                  out_dir: str | os.PathLike = "reports/paper_eval", key: str = "params_ema",
                  limit: int | None = None, strict: bool = False, device: str = "auto", label: str | None = None,
                  save_images: bool = False, log: Callable[[str], None] = print,
                  arch: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on the preset's test sets and write the tables.

    Args:
        model: checkpoint (ours or an official release with ``params``/``params_ema``) or MLflow URI
            (:func:`maskdcpt.inference.load_model`).
        preset: a preset name/path (:func:`load_preset`) or its dict; its ``test_sets`` group gives ``root``,
            ``cache_dir``, ``s3_endpoint_url``, ``tables`` and ``sets`` (``{name: {"path", "options"}}``).
        root: overrides ``test_sets.root`` (folder or ``s3://`` prefix).
        set_paths: ``{set: path}`` overrides (a set not in the preset is added).
        only: evaluate only these sets.
        out_dir: where ``results.json``, ``per_image.csv``, ``rejections.csv`` and ``table.md`` go.
        key: checkpoint entry (``params_ema``, the paper's evaluation weights, or ``params``).
        limit: first N images per set (quick checks; the numbers are then not the paper's protocol).
        strict: raise on a missing set instead of skipping it.
        label: our row's name in the tables (default: the model file's stem).
        save_images: also write restored PNGs under ``out_dir/images/<set>/``.
        log: where progress and skip lines go.

    Returns the results dict written to ``results.json`` (keys ``model``, ``preset``, ``protocol``, ``sets``,
    ``skipped``, ``tables``, ``markdown``).

    Raises:
        TestSetMissing: a set is missing and ``strict``. KeyError: an unknown set name. ValueError /
        FileNotFoundError: the model cannot be loaded or the preset has no ``test_sets`` group.
    """
    from maskdcpt.data.testsets import DATASETS, TestSetMissing, expected_layout, load_test_set
    from maskdcpt.data.testsets.params import TestSetsParams, validated_group
    from maskdcpt.inference import load_model

    pre = load_preset(preset) if isinstance(preset, str) else dict(preset)
    if pre.get("test_sets") is None:
        raise ValueError(f"preset {preset if isinstance(preset, str) else '<dict>'} has no 'test_sets' group")
    bench = validated_group(TestSetsParams, pre["test_sets"], "test_sets")
    # names are checked before any model is loaded or any set evaluated
    unknown = sorted(set(bench.sets) - set(DATASETS))
    if unknown:
        raise KeyError(f"test_sets.sets: unknown test sets {unknown}; known: {sorted(DATASETS)}")
    bad_tables = [t for t in bench.tables if t not in TABLES]
    if bad_tables:
        raise ValueError(f"test_sets.tables: unknown tables {bad_tables}; known: {sorted(TABLES)}")
    sets_cfg: dict[str, dict] = {k: {"path": v.path, "options": dict(v.options)} for k, v in bench.sets.items()}
    for name, path in (set_paths or {}).items():
        if name not in DATASETS:
            raise KeyError(f"--set {name}=...: unknown test set; known: {sorted(DATASETS)}")
        sets_cfg.setdefault(name, {})["location"] = path
    if only:
        unknown = [n for n in only if n not in DATASETS]
        if unknown:
            raise KeyError(f"--only: unknown test sets {unknown}; known: {sorted(DATASETS)}")
        sets_cfg = {n: sets_cfg.get(n, {}) for n in only}
    root = root if root is not None else bench.root
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    net = load_model(model, device=device, key=key, arch=arch)  # arch: None = recognised from the keys
    info = dict(getattr(net, "maskdcpt_info", {}))
    label = label or Path(str(model)).stem
    dev = next(net.parameters()).device
    log(f"model: {info.get('source', model)} ({info.get('arch', '?')}, preset {info.get('preset')}), weights {key}, "
        f"device {dev}")

    frames, rejections = [], []
    sets: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, cfg in sets_cfg.items():
        spec = DATASETS[name]
        loc = cfg.get("location")
        if loc is None:
            rel = cfg.get("path") or spec.default_dir   # a --set or --only entry has no path
            if str(rel).startswith(("/", "s3://")):
                loc = str(rel)
            elif root:
                loc = f"{str(root).rstrip('/')}/{rel}"
            else:
                why = f"no test_sets.root and no --set {name}=PATH; expected layout: " + _one_line(
                    expected_layout(name, cfg.get("options")))
                if strict:
                    raise TestSetMissing(why)
                skipped[name] = why
                log(f"skip {name}: {why}")
                continue
        try:
            pairs = load_test_set(name, loc, limit=limit, options=cfg.get("options"),
                                  cache_dir=bench.cache_dir, endpoint_url=bench.s3_endpoint_url or None)
        except TestSetMissing as e:
            if strict:
                raise
            skipped[name] = _one_line(e)
            log(f"skip {name}: {_one_line(e)}")
            continue
        log(f"{name}: {len(pairs)} pairs from {pairs.root}" + (f" ({len(pairs.rejections)} rejected)"
                                                               if len(pairs.rejections) else ""))
        save = out / "images" / name if save_images else None
        task = str((pre.get("task") or {}).get("name", "5d"))
        frame = evaluate_set(net, pairs, save_dir=save, progress=log,
                             task_class=spec.classes.get(task) or next(iter(spec.classes.values())))
        rej = pairs.rejections
        if len(rej):
            rejections.append(rej)
            log(f"  {name}: {len(rej)} files not used: " + ", ".join(
                f"{r.reason} {r.id}" for r in rej.head(5).itertuples()) + (" ..." if len(rej) > 5 else ""))
        if not len(frame):
            skipped[name] = "no image could be evaluated (see rejections.csv)"
            continue
        frames.append(frame)
        s = summarize_sets(frame)[name]
        s.update({"title": spec.title, "class": frame["class"].iloc[0], "location": str(loc),
                  "rejections": int(len(rej)), "comparable": spec.comparable and not limit})
        sets[name] = s

    per_image = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PER_IMAGE_COLUMNS)
    tables = {}
    for t in bench.tables or ["table1"]:   # names checked above
        tables[t] = table_results(t, sets)
    md_parts = []
    for t, res in tables.items():
        md_parts.append(f"### {res['title']}\n\n" + render_table(res, label))
    md_parts.append("### Per set\n\n" + render_sets(sets, skipped))
    note = (f"Protocol: whole image, reflect-pad to the network multiple, batch 1, {key}; PSNR/SSIM on RGB, "
            "no crop, float (Tables I/II) and uint8-rounded (Table III); paper numbers: docs/method.md §5.4.")
    if limit:
        note += f" **--limit {limit}: subsets only, not comparable with the paper.**"
    markdown = "\n\n".join(md_parts) + "\n\n" + note + "\n"
    results = {"model": {"spec": str(model), "label": label, **{k: v for k, v in info.items()}},
               "preset": preset if isinstance(preset, str) else "<dict>", "weights": key, "device": str(dev),
               "limit": limit, "protocol": PROTOCOL, "sets": sets, "skipped": skipped, "tables": tables,
               "markdown": markdown}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str, allow_nan=True))
    atomic_write_text(out / "per_image.csv", per_image.to_csv(index=False))
    rej_all = pd.concat(rejections, ignore_index=True) if rejections else pd.DataFrame(
        columns=["dataset", "id", "lq_path", "gt_path", "reason", "detail"])
    atomic_write_text(out / "rejections.csv", rej_all.to_csv(index=False))
    atomic_write_text(out / "table.md", markdown)
    return results
