"""Tables and plots of the evaluate stage's benchmark results (Markdown, matplotlib PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def noise_plot(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in columns:
        if c in frame:
            ax.plot(frame["sigma"], frame[c], marker="o", label=c)
    ax.set_xlabel("Gaussian noise sigma (0-255 scale)")
    ax.set_ylabel("PSNR (dB, RGB, float)")
    ax.set_title("PSNR against noise level (levels above 50 unseen in training)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def extra_tables(result: dict[str, Any], variants: list[str]) -> str:
    """Markdown for the extra benchmark rows (other noise levels, unseen types) and the real-photo PIQE."""
    labels = sorted({lab for v in variants for lab in result.get(v, {}).get("extra", {})})
    text = ""
    if labels:
        text += "\n### Extra rows (other noise levels, degradations unseen in training): PSNR / SSIM\n\n"
        text += "| variant | " + " | ".join(labels) + " |\n" + "|---" * (len(labels) + 1) + "|\n"
        for v in variants:
            extra = result[v].get("extra", {})
            text += f"| {v} | " + " | ".join(
                f"{extra[lab]['psnr']:.2f} / {extra[lab]['ssim']:.4f}" if lab in extra else "-" for lab in labels) + " |\n"
    if result.get("real_piqe"):
        text += "\n### Real degraded photos without ground truth: PIQE (lower is better)\n\n"
        text += "| photo | " + " | ".join(variants) + " |\n" + "|---" * (len(variants) + 1) + "|\n"
        for image_id, scores in result["real_piqe"].items():
            text += f"| {image_id} | " + " | ".join(f"{scores[v]:.2f}" for v in variants if v in scores) + " |\n"
    return text


def bar_plot(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = frame.set_index("degradation")[columns].plot.bar(figsize=(9, 4), rot=30)
    ax.set_ylabel("PSNR (dB, RGB, float)")
    ax.set_title("Benchmark PSNR per degradation")
    ax.grid(axis="y", alpha=0.3)
    plt.tight_layout()
    plt.savefig(path, dpi=100)
    plt.close()


def markdown_table(result: dict[str, Any], labels: list[str], variants: list[str]) -> str:
    """A Table-I-shaped Markdown table: variant rows, degradation columns, ``PSNR / SSIM`` cells."""
    head = "| variant | " + " | ".join(labels) + " | mean |"
    sep = "|---" * (len(labels) + 2) + "|"
    lines = [head, sep]
    for v in variants:
        cells = [f"{result[v][lab]['psnr']:.2f} / {result[v][lab]['ssim']:.4f}" for lab in [*labels, "mean"]]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if "gain_db" in result:
        lines.append("| gain (maskdcpt - scratch, dB) | "
                     + " | ".join(f"{result['gain_db'].get(lab, float('nan')):+.2f}" for lab in [*labels, "mean"])
                     + " |")
    conv = result.get("convention", {})
    lines.append("")
    lines.append("Convention: " + ", ".join(f"{k}={v}" for k, v in conv.items()))
    return "\n".join(lines) + "\n"
