"""The ``evaluate`` stage: restore every benchmark pair with each variant; DVC metrics, plots and grids."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.stages.common import (BENCHMARK_METRICS, EVAL_REPORTS, FINETUNED, PAIRS, StageFailed, task_classes,
                                    write_json)
from pipelines.stages.report import bar_plot, extra_tables, markdown_table, noise_plot


def evaluate(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Restore every benchmark pair with each variant (EMA weights); write the DVC metrics, plots and grids."""
    import mlflow

    from maskdcpt.eval.benchmark import evaluate_variants, load_restorer, save_grid, summarize

    e = params["evaluate"]
    variants = {v: load_restorer(root / FINETUNED / v / "model.pt") for v in e["variants"]}
    from maskdcpt.data.stream import SplitPairs

    manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
    if not (manifest["split"] == "benchmark").any():
        raise StageFailed("the pair manifest has no benchmark pairs")
    pairs = SplitPairs(manifest, root / PAIRS, "benchmark", params["data"])  # streamed, one pair at a time
    out = root / EVAL_REPORTS
    shutil.rmtree(out, ignore_errors=True)
    (out / "grids").mkdir(parents=True)
    order = ["lq", *[v for v in ("scratch", "maskdcpt") if v in variants],
             *[v for v in variants if v not in ("scratch", "maskdcpt")]]
    shown: dict[str, int] = {}

    def with_grids():
        # one pass: evaluate_variants restores a pair (pair["outputs"]) before it asks for the next one, so the
        # grid is drawn then and no pair's images outlive their turn
        for pair in pairs:
            yield pair
            if shown.get(pair["label"], 0) < e["grid_max_images"]:
                save_grid(pair, order, out / "grids" / f"{pair['label']}__{pair['image_id']}.png")
                shown[pair["label"]] = shown.get(pair["label"], 0) + 1

    per_image = evaluate_variants(variants, with_grids())
    main = [entry["label"] for entry in params["synthesize"]["benchmark"]
            if entry["label"] in task_classes(params)]
    result = summarize(per_image, main)
    per_image.to_csv(out / "per_image.csv", index=False)
    labels = list(dict.fromkeys(per_image["label"]))
    plot_rows = [{"degradation": lab, **{v: result[v].get(lab, result[v].get("extra", {}).get(lab, {})).get("psnr")
                                         for v in ["lq", *e["variants"]]}} for lab in labels]
    pd.DataFrame(plot_rows).to_csv(out / "psnr_per_degradation.csv", index=False)
    bar_plot(pd.DataFrame(plot_rows), ["lq", *e["variants"]], out / "psnr_per_degradation.png")
    noise = _noise_levels(params, per_image)
    if not noise.empty:
        noise.to_csv(out / "psnr_vs_noise_level.csv", index=False)
        noise_plot(noise, ["lq", *e["variants"]], out / "psnr_vs_noise_level.png")
    if e["real_photos"]:
        real = real_photo_scores(variants)
        if not real.empty:
            real.to_csv(out / "real_piqe.csv", index=False)
            result["real_piqe"] = {r["image_id"]: {k: _round(r[k]) for k in real.columns if k != "image_id"}
                                   for r in real.to_dict("records")}
    (out / "table.md").write_text(markdown_table(result, main, ["lq", *e["variants"]])
                                  + extra_tables(result, ["lq", *e["variants"]]))
    result["provenance"] = _provenance(variants)
    write_json(root / BENCHMARK_METRICS, result)
    flat = {}
    for variant in ["lq", *e["variants"]]:
        for lab in [*main, "mean"]:
            for m in ("psnr", "ssim"):
                flat[f"{variant}.{lab}.{m}"] = result[variant][lab][m]
    flat.update({f"gain_db.{k}": v for k, v in result.get("gain_db", {}).items()})
    mlflow.log_metrics(flat)
    mlflow.log_artifacts(str(out), "evaluate")
    mlflow.log_artifact(str(root / BENCHMARK_METRICS), "evaluate")
    return result


def _provenance(variants: dict[str, Any]) -> dict[str, Any]:
    """What produced the benchmark numbers (:func:`maskdcpt.provenance.provenance`): EMA weights, whole image,
    the project's padding rule, on the device the restorers sit on."""
    from maskdcpt.provenance import provenance

    nets = list(variants.values())
    device = str(next(nets[0].parameters()).device) if nets else "cpu"
    return provenance(device=device, weights_key="params_ema", inference="whole image")


def _round(x: Any) -> Any:
    return round(float(x), 4) if isinstance(x, (int, float)) else x


def _noise_levels(params: dict[str, Any], per_image: pd.DataFrame) -> pd.DataFrame:
    """PSNR per Gaussian-noise level (sigma on the 0-255 scale) for each variant, seen and unseen levels."""
    sigma = {e["label"]: e["params"]["sigma"] for e in params["synthesize"]["benchmark"]
             if e["degradation"] == "gaussian_noise" and e["params"].get("sigma") is not None}
    rows = per_image[per_image["label"].isin(sigma)]
    if rows.empty:
        return pd.DataFrame()
    table = rows.groupby(["label", "variant"])["psnr"].mean().unstack("variant").reset_index()
    table.insert(0, "sigma", table["label"].map(sigma))
    return table.sort_values("sigma").drop(columns=["label"]).reset_index(drop=True)


def real_photo_scores(variants: dict[str, Any]) -> pd.DataFrame:
    """PIQE (Venkatanath et al. 2015; lower is better) of the real degraded photos without ground truth that
    the installed packages ship (e.g. scikit-image's motion-blurred ``clock_motion.png``), before (``lq``) and
    after restoration by each variant. Empty when none is installed."""
    from maskdcpt.data.photos import collect_real_degraded_photos
    from maskdcpt.eval.benchmark import restore_array
    from maskdcpt.imageio import read_image
    from maskdcpt.nr_metrics import piqe

    found, _ = collect_real_degraded_photos()
    rows = []
    for photo in found:
        img = read_image(photo["path"])
        row: dict[str, Any] = {"image_id": photo["image_id"], "degradation": photo["degradation"],
                               "lq": piqe(img)}
        for name, net in variants.items():
            out = restore_array(net, img)
            if not np.isfinite(out).all():
                raise FloatingPointError(f"variant {name!r} produced a non-finite output on {photo['image_id']}")
            row[name] = piqe(out)
        rows.append(row)
    return pd.DataFrame(rows)
