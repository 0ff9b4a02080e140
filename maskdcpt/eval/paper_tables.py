"""Tables I / II / III of the paper: the column definitions, the paper's numbers (:data:`PAPER`) and the rendering
of our per-set results beside them. A column covering several sets (Table II) is the mean of the per-set means of
the sets present; a cell shows ``(k/n sets)`` when only some of the column's sets were evaluated. Averages of the
paper rows are recomputed from the cells (NAFNet 27.77 -> MaskDCPT 32.09 dB, as in the paper's Fig. 1).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["PAPER", "TABLES", "table_results", "render_table", "render_sets"]


def _f(x: float) -> float:
    """``x`` rounded to 4 decimals (non-finite values kept)."""
    return round(float(x), 4) if math.isfinite(float(x)) else float(x)


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


#: The paper's numbers (PSNR dB, SSIM or None; paper Tables I-III, docs/method.md §5.4). Row order = print order.
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
