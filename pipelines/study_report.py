"""``maskdcpt study``'s results (:mod:`pipelines.study`): per-variant scores over seeds, the MaskDCPT-minus-baseline
gains with seed x image bootstrap intervals, the Markdown table and the gains plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pipelines  # noqa: F401  (offline environment defaults before prefect/mlflow import)

from maskdcpt.atomic import atomic_open, atomic_write_json, atomic_write_text

log = logging.getLogger("maskdcpt.study")

from pipelines.study_config import COMPARISONS, StudyError, read_record



# ----------------------------------------------------------------------------------------------------------------
# statistics and reports


def score_arrays(records: list[dict[str, Any]], labels: list[str], metric: str) -> tuple[list[int], Any]:
    """``(seeds, array)`` of one variant's records: ``array[s, i, d]`` = ``metric`` of image ``i`` (sorted ids)
    under degradation ``labels[d]`` for ``seeds[s]``. Raises ``StudyError`` when an image x label is missing."""
    import numpy as np

    seeds = sorted(r["seed"] for r in records)
    by_seed = {r["seed"]: r for r in records}
    images = sorted({row["image_id"] for r in records for row in r["per_image"] if row["label"] in labels})
    out = np.full((len(seeds), len(images), len(labels)), np.nan)
    for s, seed in enumerate(seeds):
        rec = by_seed[seed]
        for row in rec["per_image"]:
            if row["variant"] == rec["variant"] and row["label"] in labels:
                out[s, images.index(row["image_id"]), labels.index(row["label"])] = row[metric]
    if np.isnan(out).any():
        s, i, d = np.argwhere(np.isnan(out))[0]
        raise StudyError(f"run seed {seeds[s]} / {records[0]['variant']} has no {metric} for image {images[i]!r} "
                         f"under {labels[d]!r}")
    return seeds, out


def _lq_stats(records: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    import numpy as np

    rows = [row for row in records[0]["per_image"] if row["variant"] == "lq" and row["label"] in labels]
    out = {}
    for lab in labels:
        vals = [r for r in rows if r["label"] == lab]
        out[lab] = {f"{m}_mean": float(np.mean([r[m] for r in vals])) for m in ("psnr", "ssim")}
    out["mean"] = {f"{m}_mean": float(np.mean([out[lab][f"{m}_mean"] for lab in labels])) for m in ("psnr", "ssim")}
    return out


def aggregate(records: dict[str, list[dict[str, Any]]], labels: list[str], level: float = 0.95,
              n_boot: int = 10000, bootstrap_seed: int = 0) -> dict[str, Any]:
    """The study's numbers from the finished runs' records (``{variant: [record per seed]}``): per variant and
    degradation (and ``mean``) PSNR/SSIM mean and std over seeds; per comparison (:data:`COMPARISONS`, when both
    variants ran) the paired gain on the seeds both have, with its bootstrap interval and verdict."""
    from maskdcpt.eval.bootstrap import paired_bootstrap, seed_stats

    ci_key = f"ci{round(level * 100):d}"
    keys = [*labels, "mean"]
    out: dict[str, Any] = {"labels": labels, "level": level, "variants": {}, "comparisons": {}}
    arrays: dict[str, dict[str, Any]] = {}
    for variant, recs in records.items():
        if not recs:
            continue
        arrays[variant] = {}
        entry: dict[str, Any] = {k: {} for k in keys}
        for metric in ("psnr", "ssim"):
            seeds, arr = score_arrays(recs, labels, metric)
            arrays[variant][metric] = (seeds, arr)
            st = seed_stats(arr)
            for k, mean, std in zip(keys, st["mean"], st["std"]):
                entry[k][f"{metric}_mean"], entry[k][f"{metric}_std"] = round(mean, 4), round(std, 4)
        entry["seeds"] = seeds
        out["variants"][variant] = entry
    if records:
        first = next(r for r in records.values() if r)
        out["variants"]["lq"] = _lq_stats(first, labels)
    for method, baseline in COMPARISONS:
        if method not in arrays or baseline not in arrays:
            continue
        comp: dict[str, Any] = {k: {} for k in keys}
        for metric, prefix in (("psnr", ""), ("ssim", "ssim_")):
            (sa, a), (sb, b) = arrays[method][metric], arrays[baseline][metric]
            common = sorted(set(sa) & set(sb))
            if not common:
                break
            a, b = a[[sa.index(s) for s in common]], b[[sb.index(s) for s in common]]
            r = paired_bootstrap(a, b, level=level, n_boot=n_boot, seed=bootstrap_seed)
            for d, k in enumerate(keys):
                comp[k][f"{prefix}gain{'_db' if metric == 'psnr' else ''}"] = round(r["gain"][d], 4)
                comp[k][f"{prefix}{ci_key}"] = [round(r["low"][d], 4), round(r["high"][d], 4)]
                comp[k][f"{prefix}verdict"] = r["verdict"][d]
            comp["seeds"], comp["bootstrap"] = common, {"method": r["method"], "replicates": r["replicates"]}
        out["comparisons"][f"{method}-{baseline}"] = comp
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """The study table: PSNR mean ± std over seeds per variant and degradation, then the paired gains with their
    intervals and verdicts."""
    labels, level = result["labels"], result["level"]
    ci_key = f"ci{round(level * 100):d}"
    keys = [*labels, "mean"]
    head = "| | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|\n"
    text = "### PSNR (dB) / SSIM, mean ± std over seeds\n\n" + head
    for variant, entry in result["variants"].items():
        if variant == "lq":
            cells = [f"{entry[k]['psnr_mean']:.2f} / {entry[k]['ssim_mean']:.4f}" for k in keys]
            text += "| lq | " + " | ".join(cells) + " |\n"
            continue
        cells = [f"{entry[k]['psnr_mean']:.2f} ± {entry[k]['psnr_std']:.2f} / {entry[k]['ssim_mean']:.4f} ± "
                 f"{entry[k]['ssim_std']:.4f}" for k in keys]
        text += f"| {variant} (n={len(entry['seeds'])}) | " + " | ".join(cells) + " |\n"
    if result["comparisons"]:
        text += (f"\n### Paired PSNR gain (dB) with {level:.0%} bootstrap interval (seeds x images) and verdict\n\n"
                 + head)
        for name, comp in result["comparisons"].items():
            cells = [f"{comp[k]['gain_db']:+.3f} [{comp[k][ci_key][0]:+.3f}, {comp[k][ci_key][1]:+.3f}] "
                     f"{comp[k]['verdict']}" for k in keys]
            text += f"| {name} (n={len(comp['seeds'])}) | " + " | ".join(cells) + " |\n"
    return text


def gains_plot(result: dict[str, Any], path: Path) -> None:
    """PNG: per variant PSNR mean with ± std error bars (left), paired gains with their intervals (right)."""
    import numpy as np
    from matplotlib.figure import Figure

    labels, ci_key = result["labels"], f"ci{round(result['level'] * 100):d}"
    keys = [*labels, "mean"]
    x = np.arange(len(keys))
    fig = Figure(figsize=(12, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    variants = [v for v in result["variants"] if v != "lq"]
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        e = result["variants"][v]
        ax1.bar(x + (j - (len(variants) - 1) / 2) * width, [e[k]["psnr_mean"] for k in keys], width,
                yerr=[e[k]["psnr_std"] for k in keys], capsize=3, label=v)
    ax1.set_xticks(x, keys, rotation=30, ha="right")
    ax1.set_ylabel("PSNR (dB), mean ± std over seeds")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    comps = list(result["comparisons"])
    width = 0.8 / max(1, len(comps))
    for j, name in enumerate(comps):
        c = result["comparisons"][name]
        g = np.array([c[k]["gain_db"] for k in keys])
        lo, hi = np.array([c[k][ci_key][0] for k in keys]), np.array([c[k][ci_key][1] for k in keys])
        ax2.bar(x + (j - (len(comps) - 1) / 2) * width, g, width, yerr=[g - lo, hi - g], capsize=3, label=name)
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xticks(x, keys, rotation=30, ha="right")
    ax2.set_ylabel(f"paired PSNR gain (dB), {result['level']:.0%} bootstrap interval")
    ax2.legend(fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)


def write_reports(root: Path, cfg: dict[str, Any], labels: list[str], parent_run_id: str | None) -> dict[str, Any]:
    """Aggregate the recorded runs into ``study.json``, ``table.md`` and ``gains.png`` (atomic writes); return
    the study result."""
    from maskdcpt.provenance import provenance

    records = {v: [r for s in cfg["seeds"] if (r := read_record(root, cfg, s, v)) is not None]
               for v in cfg["variants"]}
    result = aggregate(records, labels, cfg["level"], cfg["n_boot"], cfg["bootstrap_seed"])
    run_prov = {f"seed-{r['seed']}/{v}": r.get("provenance") for v, recs in records.items() for r in recs}
    distinct = {json.dumps(p, sort_keys=True) for p in run_prov.values() if p}
    result.update({
        "config": {k: cfg[k] for k in ("key", "seeds", "variants", "level", "n_boot", "bootstrap_seed", "overrides")},
        "runs": {f"seed-{r['seed']}/{v}": {"seconds": r["seconds"], "total_seconds": r["total_seconds"],
                                           "mlflow_run_id": r["mlflow_run_id"]}
                 for v, recs in records.items() for r in recs},
        "missing_runs": [f"seed-{s}/{v}" for v in cfg["variants"] for s in cfg["seeds"]
                         if read_record(root, cfg, s, v) is None],
        "mlflow_parent_run": parent_run_id,
        "provenance": provenance(device="cpu", weights_key="params_ema", inference="whole image",
                                 role="aggregation machine; each run's own provenance is in runs_provenance"),
        "runs_provenance": run_prov,
        "runs_on_one_kind_of_machine": len(distinct) <= 1,
    })
    out = root / cfg["out"]
    atomic_write_json(out / "study.json", result)
    table = markdown_table(result)
    atomic_write_text(out / "table.md", table)
    if result["comparisons"]:
        gains_plot(result, out / "gains.png")
    return result
