"""The paper's evaluation protocol on the standard benchmarks, and Tables I / II / III with the paper's numbers
beside ours.

Protocol (maskdcpt-method.md §5.3; recorded in every result file)
-----------------------------------------------------------------
* Inference: the LQ (float32 RGB in [0, 1]) is reflect-padded at the bottom/right to the network's multiple
  (``padder_size``, 16 for NAFNet), run as a **whole image**, batch 1, no tiling, no self-ensemble, cropped back
  and clamped to [0, 1] (:func:`maskdcpt.eval.benchmark.restore_tensor`); weights = ``params_ema``.
* Metrics: PSNR / SSIM on RGB floats, no border crop, no quantisation, per image then averaged over the images
  of a set (``metrics.convention()``: the 5D/12D YAMLs' ``image_range: 1.0``). The uint8-rounded variant
  (``quantize="uint8"``, the OOD-denoise YAMLs' ``image_range: 255``) is computed too and is the one Table III
  reports.
* A table column covering several sets (Table II) is the mean of the per-set means of the sets present; a cell
  shows ``(k/n sets)`` when only some of the column's sets were evaluated.

Paper numbers: :data:`PAPER` (maskdcpt-method.md §5.4, VERIFIED against [P] Tables I-III). Averages of the
paper rows are recomputed from the cells (NAFNet 27.77 → MaskDCPT 32.09 dB, as in Fig. 1).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from maskdcpt import metrics

__all__ = ["PAPER", "TABLES", "PROTOCOL", "evaluate_set", "summarize_sets", "table_results", "render_table",
           "render_sets", "run_benchmark", "load_preset", "PER_IMAGE_COLUMNS"]

#: What the protocol does, stored with every result (maskdcpt-method.md §5.3).
PROTOCOL: dict[str, Any] = {
    "inference": {"pad": "reflect, bottom/right, to the network's padder_size", "whole_image": True, "tile": None,
                  "batch": 1, "self_ensemble": False, "clamp": [0.0, 1.0], "weights": "params_ema"},
    "metrics": metrics.convention(),
    "metrics_uint8": metrics.convention(quantize="uint8"),
    "average": "per image within a set; a multi-set column = mean of per-set means",
    "source": "maskdcpt-method.md §5.3 (BasicSR sr_model / psnr_ssim, test YAMLs)",
}

# Table definitions: column key -> (label, [our sets in the column], the paper's sets for that column).
TABLES: dict[str, dict[str, Any]] = {
    "table1": {
        "short": "Table I (5D)",
        "title": "Table I: 5D all-in-one (PSNR dB / SSIM; RGB float, no crop)",
        "metric": "float",
        "columns": [
            ("dehaze", "Dehaze SOTS", ["sots_outdoor"], "SOTS-outdoor"),
            ("derain", "Derain Rain100L", ["rain100l"], "Rain100L"),
            ("denoise", "Denoise CBSD68 σ25", ["cbsd68"], "CBSD68 σ=25"),
            ("deblur", "Deblur GoPro", ["gopro"], "GoPro test"),
            ("lowlight", "Low-light LOL", ["lol_v1"], "LOL-v1 eval15"),
        ],
        "compare": "NAFNet + MaskDCPT",
    },
    "table2": {
        "short": "Table II (12D)",
        "title": "Table II: 12D all-in-one (PSNR dB / SSIM; RGB float, no crop)",
        "metric": "float",
        "columns": [
            ("derain", "Derain", ["rain100l", "rain100h"], "MSPFN sets, SynRain-13k, RealRain-1k"),
            ("dehaze", "Dehaze", ["sots_outdoor"], "SOTS"),
            ("desnow", "Desnow", ["snow100k_l"], "Snow100K-L"),
            ("raindrop", "Raindrop", ["raindrop_a"], "RainDS + RainDrop"),
            ("lowlight", "Low-light", ["lol_v1", "lol_v2_real", "lol_v2_syn"], "LoL v1/v2, LSRW"),
            ("motion", "Motion deblur", ["gopro", "hide"], "GoPro, HIDE, REDS"),
            ("defocus", "Defocus", ["dpdd"], "DPDD (inputC)"),
            ("jpeg", "JPEG q50", ["urban100_jpeg50"], "Urban100"),
            ("realnoise", "Real denoise", ["sidd"], "SIDD val"),
            ("gblur", "Gaussian deblur", ["urban100_gblur"], "Urban100"),
            ("demosaic", "Demosaic", ["urban100_demosaic"], "Urban100"),
            ("demoire", "Demoiré", ["moire"], "RDNet test"),
        ],
        "compare": "MaskDCPT-NAFNet 12D",
    },
    "table3": {
        "short": "Table III (OOD noise)",
        "title": "Table III: OOD Gaussian denoising on CBSD68 (PSNR dB; uint8-rounded, RGB, no crop)",
        "metric": "uint8",
        "columns": [
            ("s15", "σ15", ["cbsd68_s15"], "BSD68 σ15"),
            ("s25", "σ25", ["cbsd68"], "BSD68 σ25"),
            ("s50", "σ50", ["cbsd68_s50"], "BSD68 σ50"),
            ("s60", "σ60 (OOD)", ["cbsd68_s60"], "BSD68 σ60"),
            ("s75", "σ75 (OOD)", ["cbsd68_s75"], "BSD68 σ75"),
        ],
        "compare": "NAFNet + MaskDCPT",
    },
}


def _cells(psnrs: Sequence[float], ssims: Sequence[float | None] | None = None) -> list[tuple[float, float | None]]:
    ssims = ssims or [None] * len(psnrs)
    return list(zip(psnrs, ssims))


#: The paper's numbers (PSNR dB, SSIM or None), maskdcpt-method.md §5.4. Row order = print order.
PAPER: dict[str, dict[str, list[tuple[float, float | None]]]] = {
    "table1": {
        "NAFNet": _cells([25.23, 35.56, 31.02, 26.53, 20.49], [0.939, 0.967, 0.883, 0.808, 0.809]),
        "NAFNet + DCPT": _cells([29.47, 35.68, 31.31, 29.22, 23.52], [0.976, 0.973, 0.886, 0.886, 0.855]),
        "NAFNet + MaskDCPT": _cells([31.40, 39.92, 31.41, 31.40, 26.31], [0.978, 0.986, 0.894, 0.920, 0.888]),
        "Restormer + MaskDCPT": _cells([32.67, 39.27, 31.29, 30.58, 26.11]),
        "PromptIR + MaskDCPT": _cells([32.71, 39.12, 31.30, 29.99, 26.30]),
        "SwinIR + MaskDCPT": _cells([29.29, 37.16, 31.13, 26.53, 21.94]),
    },
    "table2": {
        "MaskDCPT-NAFNet 12D": _cells(
            [31.93, 31.82, 30.51, 27.57, 24.35, 29.83, 25.64, 32.02, 38.68, 33.28, 38.59, 25.21],
            [0.922, 0.982, 0.909, 0.838, 0.794, 0.884, 0.809, 0.944, 0.934, 0.927, 0.992, 0.942]),
    },
    "table3": {
        "NAFNet (5D)": _cells([33.67, 31.02, 27.73, 25.90, 19.42]),
        "NAFNet + MaskDCPT": _cells([34.03, 31.41, 28.21, 26.58, 20.17]),
        "NAFNet + MaskDCPT-12D": _cells([33.91, 31.29, 28.04, 27.16, 25.86]),
    },
}

PER_IMAGE_COLUMNS = ["dataset", "class", "id", "height", "width", "psnr", "ssim", "psnr_uint8", "ssim_uint8",
                     "psnr_lq", "seconds"]


# --------------------------------------------------------------------------------------------- evaluation


def evaluate_set(net, pairs, *, device=None, save_dir: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None, task_class: str | None = None) -> pd.DataFrame:
    """Restore and score every pair of one set with the protocol above.

    Args:
        net: a restoration network (``(1, 3, H, W)`` in [0, 1] → same; ``padder_size`` attribute or 16).
        pairs: a :class:`maskdcpt.data.benchmarks.BenchmarkPairs` (yields ``(id, lq, gt)`` float32 (H, W, 3)).
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


def _f(x: float) -> float:
    return round(float(x), 4) if math.isfinite(float(x)) else float(x)


def summarize_sets(per_image: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per-set means: ``{set: {"n", "psnr", "ssim", "psnr_uint8", "ssim_uint8", "psnr_lq"}}`` (PSNR dB).
    An infinite PSNR (restored == GT) makes that set's PSNR mean infinite, as in BasicSR."""
    out = {}
    for name, g in per_image.groupby("dataset", sort=False):
        out[str(name)] = {"n": int(len(g)), **{m: _f(g[m].mean()) for m in
                                                ("psnr", "ssim", "psnr_uint8", "ssim_uint8", "psnr_lq")}}
    return out


def table_results(table: str, sets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Our row of ``table`` (``table1``/``table2``/``table3``) from per-set means, with the paper's rows and the
    gap to the paper row named by the table's ``compare``.

    Returns ``{"title", "metric", "columns": [{"key", "label", "sets", "paper_sets"}], "ours": {key: {"psnr",
    "ssim", "sets_used", "complete"} or None}, "avg": {"psnr", "ssim", "columns"} or None, "paper": {row: [[psnr,
    ssim], ...]}, "paper_avg": {row: psnr}, "compare": row, "gap_db": {key: ours - paper}}``. ``avg`` is over
    the columns we have (``columns`` counts them); the paper's average is over all columns.
    """
    spec = TABLES[table]
    psnr_key, ssim_key = ("psnr_uint8", "ssim_uint8") if spec["metric"] == "uint8" else ("psnr", "ssim")
    ours: dict[str, Any] = {}
    for key, _label, names, _paper in spec["columns"]:
        used = [n for n in names if n in sets and sets[n].get("n")]
        if not used:
            ours[key] = None
            continue
        ours[key] = {"psnr": _f(np.mean([sets[n][psnr_key] for n in used])),
                     "ssim": _f(np.mean([sets[n][ssim_key] for n in used])),
                     "sets_used": used, "complete": len(used) == len(names)}
    have = [v for v in ours.values() if v]
    avg = ({"psnr": _f(np.mean([v["psnr"] for v in have])), "ssim": _f(np.mean([v["ssim"] for v in have])),
            "columns": len(have)} if have else None)
    paper = PAPER[table]
    compare = spec["compare"]
    gap = {key: _f(ours[key]["psnr"] - paper[compare][i][0])
           for i, (key, *_r) in enumerate(spec["columns"]) if ours[key]}
    if avg and avg["columns"] == len(spec["columns"]):
        gap["avg"] = _f(avg["psnr"] - np.mean([c[0] for c in paper[compare]]))
    return {"title": spec["title"], "short": spec["short"], "metric": spec["metric"],
            "columns": [{"key": k, "label": lab, "sets": names, "paper_sets": ps}
                        for k, lab, names, ps in spec["columns"]],
            "ours": ours, "avg": avg,
            "paper": {row: [list(c) for c in cells] for row, cells in paper.items()},
            "paper_avg": {row: _f(np.mean([c[0] for c in cells])) for row, cells in paper.items()},
            "compare": compare, "gap_db": gap}


def _cell(psnr: float | None, ssim: float | None) -> str:
    if psnr is None:
        return "—"
    return f"{psnr:.2f}" if ssim is None else f"{psnr:.2f} / {ssim:.3f}"


def render_table(res: Mapping[str, Any], label: str) -> str:
    """Markdown of one table result (:func:`table_results`): the paper's rows, ours (bold), then the gap in dB
    to the paper row ``res["compare"]``; missing columns show ``—``, partial columns ``(k/n sets)``."""
    cols = res["columns"]
    head = f"| {res.get('short', 'row')} | " + " | ".join(c["label"] for c in cols) + " | Avg |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for row, cells in res["paper"].items():
        has_ssim = all(c[1] is not None for c in cells)
        avg_s = float(np.mean([c[1] for c in cells])) if has_ssim else None
        lines.append(f"| paper: {row} | " + " | ".join(_cell(p, s) for p, s in cells)
                     + f" | {_cell(res['paper_avg'][row], avg_s)} |")
    ours_cells = []
    for c in cols:
        v = res["ours"][c["key"]]
        if not v:
            ours_cells.append("— (not run)")
            continue
        txt = f"**{_cell(v['psnr'], None if res['metric'] == 'uint8' else v['ssim'])}**"
        if not v["complete"]:
            txt += f" ({len(v['sets_used'])}/{len(c['sets'])} sets)"
        ours_cells.append(txt)
    avg = res["avg"]
    avg_txt = "—" if not avg else _cell(avg["psnr"], None if res["metric"] == "uint8" else avg["ssim"]) + (
        "" if avg["columns"] == len(cols) else f" ({avg['columns']}/{len(cols)} cols)")
    lines.append(f"| **ours: {label}** | " + " | ".join(ours_cells) + f" | {avg_txt} |")
    gap = res["gap_db"]
    gap_cells = [f"{gap[c['key']]:+.2f}" if c["key"] in gap else "—" for c in cols]
    gap_avg = f"{gap['avg']:+.2f}" if "avg" in gap else "—"
    lines.append(f"| gap to paper {res['compare']} (dB) | " + " | ".join(gap_cells) + f" | {gap_avg} |")
    return "\n".join(lines)


def render_sets(sets: Mapping[str, Mapping[str, Any]], skipped: Mapping[str, str]) -> str:
    """Markdown table of every evaluated set (n, float and uint8 PSNR/SSIM, input PSNR, rejections) and the
    skipped ones with their reason."""
    lines = ["| set | class | images | PSNR / SSIM (float) | PSNR / SSIM (uint8) | LQ PSNR | rejected | note |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in sets.items():
        note = "" if s.get("comparable", True) else "LQ not the official one: not comparable"
        lines.append(f"| {name} | {s.get('class', '')} | {s['n']} | {_cell(s['psnr'], s['ssim'])} | "
                     f"{_cell(s['psnr_uint8'], s['ssim_uint8'])} | {s['psnr_lq']:.2f} | {s.get('rejections', 0)} "
                     f"| {note} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | | 0 | — | — | — | | skipped: {why.splitlines()[0]} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the run


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a params preset overlay: a YAML path, or ``presets/<name>.yaml`` in the project root
    (:func:`maskdcpt.config.find_root`) or beside the installed package. ``FileNotFoundError`` lists the
    presets found."""
    import yaml

    from maskdcpt.config import find_root

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    dirs = [find_root() / "presets", Path(__file__).resolve().parents[2] / "presets"]
    for d in dirs:
        f = d / f"{name_or_path}.yaml"
        if f.is_file():
            return yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob("*.yaml")})
    raise FileNotFoundError(f"preset {name_or_path!r} not found in {[str(d) for d in dirs]} (available: {known})")


def _one_line(msg: str) -> str:
    return "; ".join(x.strip() for x in str(msg).splitlines() if x.strip()).replace("|", "/").replace(":;", ":")


def _atomic_text(path: Path, text: str) -> None:
    from maskdcpt.imageio import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def run_benchmark(model: str, *, preset: str | Mapping[str, Any] = "paper-5d", root: str | None = None,
                  set_paths: Mapping[str, str] | None = None, only: Sequence[str] | None = None,
                  out_dir: str | os.PathLike = "reports/benchmark", key: str = "params_ema",
                  limit: int | None = None, strict: bool = False, device: str = "auto", label: str | None = None,
                  save_images: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a checkpoint on the preset's benchmark sets and write the tables.

    Args:
        model: checkpoint (ours or an official release with ``params``/``params_ema``) or MLflow URI
            (:func:`maskdcpt.inference.load_model`).
        preset: a preset name/path (:func:`load_preset`) or its dict; its ``benchmarks`` group gives ``root``,
            ``cache_dir``, ``s3_endpoint_url``, ``tables`` and ``sets`` (``{name: {"path", "options"}}``).
        root: overrides ``benchmarks.root`` (folder or ``s3://`` prefix).
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
        BenchmarkMissing: a set is missing and ``strict``. KeyError: an unknown set name. ValueError /
        FileNotFoundError: the model cannot be loaded or the preset has no ``benchmarks`` group.
    """
    from maskdcpt.data.benchmarks import DATASETS, BenchmarkMissing, expected_layout, load_benchmark
    from maskdcpt.inference import load_model

    pre = load_preset(preset) if isinstance(preset, str) else dict(preset)
    bench = pre.get("benchmarks")
    if not isinstance(bench, Mapping):
        raise ValueError(f"preset {preset if isinstance(preset, str) else '<dict>'} has no 'benchmarks' group")
    sets_cfg: dict[str, dict] = {k: dict(v or {}) for k, v in (bench.get("sets") or {}).items()}
    for name, path in (set_paths or {}).items():
        if name not in DATASETS:
            raise KeyError(f"--set {name}=...: unknown benchmark set; known: {sorted(DATASETS)}")
        sets_cfg.setdefault(name, {})["location"] = path
    if only:
        unknown = [n for n in only if n not in DATASETS]
        if unknown:
            raise KeyError(f"unknown benchmark sets {unknown}; known: {sorted(DATASETS)}")
        sets_cfg = {n: sets_cfg.get(n, {}) for n in only}
    root = root if root is not None else (bench.get("root") or "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    net = load_model(model, device=device, key=key)
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
            rel = cfg.get("path", spec.default_dir)
            if str(rel).startswith(("/", "s3://")):
                loc = str(rel)
            elif root:
                loc = f"{str(root).rstrip('/')}/{rel}"
            else:
                why = f"no benchmarks.root and no --set {name}=PATH; expected layout: " + _one_line(
                    expected_layout(name, cfg.get("options")))
                if strict:
                    raise BenchmarkMissing(why)
                skipped[name] = why
                log(f"skip {name}: {why}")
                continue
        try:
            pairs = load_benchmark(name, loc, limit=limit, options=cfg.get("options"),
                                   cache_dir=bench.get("cache_dir", ".cache/benchmarks"),
                                   endpoint_url=bench.get("s3_endpoint_url") or None)
        except BenchmarkMissing as e:
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
    for t in bench.get("tables") or ["table1"]:
        if t not in TABLES:
            raise ValueError(f"unknown table {t!r}; known: {sorted(TABLES)}")
        tables[t] = table_results(t, sets)
    md_parts = []
    for t, res in tables.items():
        md_parts.append(f"### {res['title']}\n\n" + render_table(res, label))
    md_parts.append("### Per set\n\n" + render_sets(sets, skipped))
    note = (f"Protocol: whole image, reflect-pad to the network multiple, batch 1, {key}; PSNR/SSIM on RGB, "
            "no crop, float (Tables I/II) and uint8-rounded (Table III); paper numbers: maskdcpt-method.md §5.4.")
    if limit:
        note += f" **--limit {limit}: subsets only, not comparable with the paper.**"
    markdown = "\n\n".join(md_parts) + "\n\n" + note + "\n"
    results = {"model": {"spec": str(model), "label": label, **{k: v for k, v in info.items()}},
               "preset": preset if isinstance(preset, str) else "<dict>", "weights": key, "device": str(dev),
               "limit": limit, "protocol": PROTOCOL, "sets": sets, "skipped": skipped, "tables": tables,
               "markdown": markdown}
    _atomic_text(out / "results.json", json.dumps(results, indent=2, default=str, allow_nan=True))
    _atomic_text(out / "per_image.csv", per_image.to_csv(index=False))
    rej_all = pd.concat(rejections, ignore_index=True) if rejections else pd.DataFrame(
        columns=["dataset", "id", "lq_path", "gt_path", "reason", "detail"])
    _atomic_text(out / "rejections.csv", rej_all.to_csv(index=False))
    _atomic_text(out / "table.md", markdown)
    return results
