"""Great Expectations data contracts: the pair-manifest suite (validate stage) and the benchmark-result suite.

GX 1.x API with an ephemeral context (no files, no network; docs/stack.md §6). Each suite runs on a pandas
DataFrame; :func:`run_suite` returns a plain-dict report (success, statistics, every expectation with its
observed/unexpected values) that :func:`render_html` turns into a readable page.
"""

from __future__ import annotations

import html
import json
import logging
import math
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def _gx():
    import great_expectations as gx
    import great_expectations.expectations as gxe

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx, gxe


def run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> dict[str, Any]:
    """Validate ``frame`` against ``expectations`` (GX expectation objects); return a JSON-serialisable report.

    The report: ``{"suite", "success", "rows", "statistics", "results": [{"expectation", "kwargs", "success",
    "observed", "unexpected_count", "unexpected_sample"}]}``.
    """
    gx, _ = _gx()
    ctx = gx.get_context(mode="ephemeral")
    batch_def = (ctx.data_sources.add_pandas(f"{name}-source").add_dataframe_asset(f"{name}-asset")
                 .add_batch_definition_whole_dataframe("whole"))
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for exp in expectations:
        suite.add_expectation(exp)
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    items = []
    for r in result.results:
        cfg = r.expectation_config
        res = r.result or {}
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        items.append({
            "expectation": cfg.type,
            "kwargs": json.loads(json.dumps(kwargs, default=str)),
            "success": bool(r.success),
            "observed": json.loads(json.dumps(res.get("observed_value"), default=str)),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_sample": json.loads(json.dumps(res.get("partial_unexpected_list", [])[:10], default=str)),
        })
    stats = {k: (float(v) if v is not None else None) for k, v in dict(result.statistics).items()}
    return {"suite": name, "success": bool(result.success), "rows": int(len(frame)), "statistics": stats,
            "results": items}


def manifest_expectations(classes: list[str], crop: int, benchmark_sha256: list[str]) -> dict[str, list[Any]]:
    """The pair-manifest contract, as ``{suite name: expectations}``.

    * ``pairs`` (all rows): required fields non-null, ids unique, LQ differs from GT.
    * ``training`` (train/val rows): degradation and class index in the declared set, crops at least the training
      patch, no photo of the benchmark set (by sha256), every class present.
    * ``benchmark`` (benchmark rows): every class present (extra rows may test levels or types not trained on,
      class index -1).
    """
    _, gxe = _gx()
    required = ["pair_id", "split", "image_id", "image_sha256", "degradation", "class_index", "params", "seed",
                "shard", "key", "height", "width"]
    pairs = [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in required]
    pairs += [
        gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "benchmark"]),
        gxe.ExpectColumnValuesToBeInSet(column="lq_differs", value_set=[True]),
    ]
    training = [
        gxe.ExpectColumnValuesToBeInSet(column="degradation", value_set=list(classes)),
        gxe.ExpectColumnValuesToBeInSet(column="class_index", value_set=list(range(len(classes)))),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=crop),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=crop),
        gxe.ExpectColumnValuesToNotBeInSet(column="image_sha256", value_set=list(benchmark_sha256) or ["-"]),
        gxe.ExpectColumnDistinctValuesToContainSet(column="degradation", value_set=list(classes)),
    ]
    benchmark = [gxe.ExpectColumnDistinctValuesToContainSet(column="degradation", value_set=list(classes))]
    return {"pairs": pairs, "training": training, "benchmark": benchmark}


def params_in_range(params_json: str, ranges: dict[str, Any]) -> bool:
    """Whether a recorded parameter JSON parses and every value lies in the degradation's declared range.

    Range forms (:attr:`maskdcpt.degradations.Degradation.param_ranges`): ``[lo, hi]``, ``{"choice": [...]}``,
    ``{"grid": [lo, hi, step]}``; fixed values and parameters without a declared range are not checked.
    """
    try:
        params = json.loads(params_json)
    except (TypeError, ValueError):
        return False
    if not isinstance(params, dict):
        return False
    for key, value in params.items():
        spec = ranges.get(key)
        if isinstance(spec, dict) and "choice" in spec:
            if value not in spec["choice"]:
                return False
        elif isinstance(spec, dict) and "grid" in spec:
            lo, hi = spec["grid"][0], spec["grid"][1]
            if not (isinstance(value, (int, float)) and lo - 1e-9 <= value <= hi + 1e-9):
                return False
        elif isinstance(spec, list) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
            if not (isinstance(value, (int, float)) and spec[0] - 1e-9 <= value <= spec[1] + 1e-9):
                return False
    return True


def tone_valid(tone_json: Any, allowed: bool) -> bool:
    """Whether a recorded ``gt_tone`` is no tone (``"{}"``, or absent: NaN) or, where ``allowed`` (training
    rows), a tone of :func:`maskdcpt.data.pair_recipe.apply_tone`: finite ``gamma`` > 0, ``contrast`` > 0 and
    ``shift``."""
    if not isinstance(tone_json, str):
        return tone_json is None or tone_json is pd.NA or (isinstance(tone_json, float) and math.isnan(tone_json))
    try:
        tone = json.loads(tone_json)
    except ValueError:
        return False
    if tone == {}:
        return True
    if not allowed or not isinstance(tone, dict) or set(tone) != {"gamma", "contrast", "shift"}:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in tone.values()):
        return False
    return tone["gamma"] > 0 and tone["contrast"] > 0


def validate_manifest(pairs: pd.DataFrame, photos: pd.DataFrame, rejections: pd.DataFrame, classes: list[str],
                      crop: int, max_rejection_rate: float, psnr_bands: dict[str, list[float]] | None = None,
                      pairs_per_class: dict[str, int] | None = None, count_tolerance: float = 0.0) -> dict[str, Any]:
    """Run the manifest contract; return ``{"success", "suites": [report...]}``.

    ``photos`` is the prepared-photo manifest (its benchmark rows give the held-out sha256 set) and
    ``rejections`` the photos rejected while preparing (the rejection rate must stay below the threshold).
    Every recorded clean-crop tone (``gt_tone``) is valid, and only training rows have one (validation and
    benchmark crops keep their photos' tone). Extended checks on the training/validation rows: seeds unique per
    split, parameters parse and lie in the registry's declared ranges, PSNR(LQ, GT) of each class inside its
    declared band (``psnr_bands``), and the pair count of each class within ``count_tolerance`` of the declared
    ``pairs_per_class`` per split.
    """
    _, gxe = _gx()
    bench_sha = sorted(set(photos.loc[photos["split"] == "benchmark", "sha256"]))
    suites = manifest_expectations(classes, crop, bench_sha)
    training = pairs[pairs["split"].isin(["train", "val"])].copy()
    frames = {"pairs": pairs, "training": training, "benchmark": pairs[pairs["split"] == "benchmark"]}
    if "gt_tone" in pairs.columns:
        frames["pairs"] = pairs.assign(tone_valid=[tone_valid(t, sp == "train")
                                                   for t, sp in zip(pairs["gt_tone"], pairs["split"])])
        suites["pairs"] = suites["pairs"] + [gxe.ExpectColumnValuesToBeInSet(column="tone_valid", value_set=[True])]
    from maskdcpt.degradations import get_degradation

    training["params_in_range"] = [params_in_range(pj, get_degradation(d).param_ranges) if d in classes else False
                                   for pj, d in zip(training["params"], training["degradation"])]
    suites["training"] = suites["training"] + [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "seed"]),
        gxe.ExpectColumnValuesToBeInSet(column="params_in_range", value_set=[True]),
    ]
    frames["training"] = training
    reports = [run_suite(name, frames[name], exps) for name, exps in suites.items()]
    for cls, band in (psnr_bands or {}).items():
        sub = training[training["degradation"] == cls]
        if len(sub):
            reports.append(run_suite(f"psnr-band-{cls}", sub, [gxe.ExpectColumnValuesToBeBetween(
                column="psnr_lq_gt", min_value=float(band[0]), max_value=float(band[1]))]))
    if pairs_per_class:
        counts = training.groupby(["split", "degradation"]).size().rename("pairs").reset_index()
        counts["expected"] = counts["split"].map(pairs_per_class)
        counts["ratio"] = counts["pairs"] / counts["expected"].clip(lower=1)
        reports.append(run_suite("class-counts", counts, [gxe.ExpectColumnValuesToBeBetween(
            column="ratio", min_value=1 - count_tolerance, max_value=1 + count_tolerance)]))
    n_rej, n_ok = len(rejections), len(photos)
    rate = pd.DataFrame({"rejection_rate": [n_rej / max(n_rej + n_ok, 1)], "accepted": [n_ok]})
    reports.append(run_suite("photos", rate, [
        gxe.ExpectColumnValuesToBeBetween(column="rejection_rate", max_value=max_rejection_rate),
        gxe.ExpectColumnValuesToBeBetween(column="accepted", min_value=1),
    ]))
    return {"success": all(r["success"] for r in reports), "suites": reports}


def results_expectations(labels: list[str]) -> list[Any]:
    """The benchmark-result contract: finite PSNR/SSIM in plausible ranges, every degradation present."""
    _, gxe = _gx()
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="psnr"),
        gxe.ExpectColumnValuesToBeBetween(column="psnr", min_value=0.0, max_value=100.0),
        gxe.ExpectColumnValuesToBeBetween(column="ssim", min_value=-1.0, max_value=1.0),
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(labels)),
    ]


def render_html(report: dict[str, Any], title: str) -> str:
    """A self-contained HTML page of a :func:`validate_manifest`-style report (one table per suite)."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top}table{border-collapse:collapse;margin-bottom:2em}.ok{color:#070}.bad{color:#b00}"
             "</style>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Overall: <b class='{'ok' if report['success'] else 'bad'}'>"
             f"{'PASSED' if report['success'] else 'FAILED'}</b></p>"]
    for suite in report["suites"]:
        parts.append(f"<h2>Suite <code>{html.escape(suite['suite'])}</code> ({suite['rows']} rows): "
                     f"<span class='{'ok' if suite['success'] else 'bad'}'>"
                     f"{'passed' if suite['success'] else 'FAILED'}</span></h2>")
        parts.append("<table><tr><th>expectation</th><th>arguments</th><th>result</th><th>observed</th>"
                     "<th>unexpected (count / sample)</th></tr>")
        for r in suite["results"]:
            parts.append(
                "<tr><td>{}</td><td><code>{}</code></td><td class='{}'>{}</td><td>{}</td><td>{}</td></tr>".format(
                    html.escape(r["expectation"]), html.escape(json.dumps(r["kwargs"])[:300]),
                    "ok" if r["success"] else "bad", "pass" if r["success"] else "FAIL",
                    html.escape(json.dumps(r["observed"])[:200]),
                    html.escape(f"{r['unexpected_count']} / {json.dumps(r['unexpected_sample'])[:200]}"
                                if r["unexpected_count"] is not None else "")))
        parts.append("</table>")
    return "\n".join(parts)


def failure_summary(report: dict[str, Any]) -> str:
    """One line per failed expectation, for the error message that stops the pipeline."""
    lines = []
    for suite in report["suites"]:
        for r in suite["results"]:
            if not r["success"]:
                lines.append(f"{suite['suite']}: {r['expectation']} {json.dumps(r['kwargs'])[:120]} "
                             f"(unexpected {r['unexpected_count']}: {json.dumps(r['unexpected_sample'])[:120]})")
    return "\n".join(lines)
