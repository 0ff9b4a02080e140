"""``maskdcpt study``: does MaskDCPT help? S seeds x three variants on the same data and benchmark pairs.

Variants (each trained with the same seed ``s`` for a given seed index):

* ``maskdcpt``: MaskDCPT pre-training, then fine-tuning from the pre-trained backbone;
* ``scratch``: the same fine-tuning from random initialisation;
* ``scratch_matched``: plain training from random initialisation for ``pretrain.steps + finetune.steps`` steps, so
  that a gain of ``maskdcpt`` over it is not only the extra compute (the paper does not test this).

One seed x variant is one **run**: the real stages (``pretrain`` for ``maskdcpt``, ``finetune``, ``evaluate``) run as
subprocesses (``python -m pipelines.stage``) in the run's own working folder ``.cache/study/<key>/seed-<s>/<variant>``
with a params overlay (seed, variant) and the project's ``data/`` linked in, so runs never touch each other or the
main pipeline's outputs. A finished run is recorded atomically in ``reports/study/runs/seed-<s>/<variant>.json``
(per-image PSNR/SSIM, the run's benchmark metrics with their provenance, timings); a rerun of the study skips
recorded runs, so a killed study resumes with the unfinished ones (inside a run, a stage whose output exists is
not redone and training resumes from its DeepSpeed checkpoint).

Orchestration (Prefect): the study is the flow ``maskdcpt-study``. Without ``--pool`` each run is a task of that
flow (``--parallel N`` runs N at once on this machine). With ``--pool NAME`` each run is a flow run of the
deployment ``maskdcpt-study-run/<name>`` in the process work pool ``NAME`` (created if missing), so N workers on N
machines (``prefect worker start --pool NAME``, with the project at the same path, e.g. a shared volume) run N runs
in parallel; the study flow waits for them and aggregates. MLflow: one parent run per study (reused on resume),
one child run per seed x variant, the run's stage runs nested below it.

Outputs in ``reports/study/``: ``study.json`` (per variant and degradation PSNR/SSIM mean and std over seeds; per
comparison ``maskdcpt-scratch`` and ``maskdcpt-scratch_matched`` and per degradation and ``mean``: ``gain_db``,
``ci95`` ``[low, high]`` from a seed x image bootstrap (:mod:`maskdcpt.eval.bootstrap`) and a ``verdict``; the
provenance), ``table.md`` (also a Prefect artifact ``maskdcpt-study``) and ``gains.png`` (gains with error bars).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pipelines  # noqa: F401  (offline environment defaults before prefect/mlflow import)
from prefect import flow, get_run_logger, task

from maskdcpt.atomic import atomic_open, atomic_write_json, atomic_write_text
from maskdcpt.config import find_root

log = logging.getLogger("maskdcpt.study")

VARIANTS = ("maskdcpt", "scratch", "scratch_matched")
#: the fine-tune variant definitions the runs use (``finetune.variants`` of the overlay)
VARIANT_DEFS = {
    "maskdcpt": {"init": "pretrained", "init_dep": "models/pretrain"},
    "scratch": {"init": "random", "init_dep": "maskdcpt/models"},
    "scratch_matched": {"init": "random", "init_dep": "maskdcpt/models", "compute_matched": True},
}
COMPARISONS = (("maskdcpt", "scratch"), ("maskdcpt", "scratch_matched"))
OUT = Path("reports/study")
WORK = Path(".cache/study")
RUN_FLOW = "maskdcpt-study-run"
ENTRYPOINT = "pipelines/study.py:study_run"
#: params groups a study may not override: the runs share the project's data/pairs and choose the seed themselves
FIXED_GROUPS = ("seed", "preset", "task", "prepare", "synthesize", "validate")
#: params groups a run's result depends on (with the pairs): a change of any of them makes a new study key
KEY_GROUPS = ("task", "synthesize", "model", "deepspeed", "pretrain", "finetune", "evaluate", "training_sets")

DEFAULTS: dict[str, Any] = {"seeds": 3, "variants": list(VARIANTS), "level": 0.95, "n_boot": 10000,
                            "bootstrap_seed": 0, "overrides": {}, "out": str(OUT), "seed_base": None,
                            "parallel": 1, "pool": None, "deployment": "study-run", "timeout_s": None}


class StudyError(RuntimeError):
    """The study cannot run as asked (missing data, bad options, failed runs); the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# configuration


def study_config(root: Path, **options: Any) -> dict[str, Any]:
    """The resolved, JSON-able study configuration: ``DEFAULTS`` < ``params.yaml``'s optional ``study`` group <
    ``options``; ``seeds`` becomes the list ``seed_base + k`` (``seed_base`` defaults to params ``seed``).

    Raises:
        StudyError: unknown variants, fewer than one seed, an override of a fixed group (:data:`FIXED_GROUPS`).
    """
    from pipelines.params import load_params

    raw = _raw_params(root)
    cfg = {**DEFAULTS, **(raw.get("study") or {}), **{k: v for k, v in options.items() if v is not None}}
    overrides = dict(cfg.get("overrides") or {})
    fixed = sorted(k for k in overrides if k.split(".")[0] in FIXED_GROUPS)
    if fixed:
        raise StudyError(f"a study cannot override {fixed}: the runs share the project's data/pairs and take their "
                         "seeds from --seeds/--seed-base; change params.yaml and run `dvc repro validate` instead")
    params = load_params(root / "params.yaml", overrides)
    seeds = cfg["seeds"]
    if isinstance(seeds, int):
        if seeds < 1:
            raise StudyError(f"need at least one seed, got {seeds}")
        base = int(cfg["seed_base"] if cfg["seed_base"] is not None else params["seed"])
        seeds = [base + k for k in range(seeds)]
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise StudyError(f"seeds must be distinct and not empty, got {seeds}")
    variants = list(dict.fromkeys(cfg["variants"]))
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise StudyError(f"unknown study variants {unknown}; choose from {list(VARIANTS)}")
    if not 0 < float(cfg["level"]) < 1:
        raise StudyError(f"level must be in (0, 1), got {cfg['level']}")
    cfg.update(seeds=seeds, variants=variants, overrides=overrides, level=float(cfg["level"]),
               n_boot=int(cfg["n_boot"]), parallel=max(1, int(cfg["parallel"])))
    cfg.pop("seed_base", None)
    cfg["key"] = study_key(root, params)
    return cfg


def _raw_params(root: Path) -> dict[str, Any]:
    from maskdcpt.config import read_yaml_mapping

    path = root / "params.yaml"
    if not path.is_file():
        raise StudyError(f"no params.yaml in {root}")
    return read_yaml_mapping(path)


def _base_params(root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    from pipelines.params import load_params

    return load_params(root / "params.yaml", cfg.get("overrides") or {})


def study_key(root: Path, params: dict[str, Any]) -> str:
    """16 hex digits identifying what a run depends on besides its seed and variant: the params groups that shape
    training and scoring (:data:`KEY_GROUPS`) and the pair manifest's bytes. Changing either starts fresh runs
    (new working folders, records re-made)."""
    manifest = root / "data" / "pairs" / "manifest.parquet"
    if not manifest.is_file():
        raise StudyError(f"{manifest} not found: the study trains on the project's pairs; run "
                         "`dvc repro validate` (prepare, synthesize, validate) first")
    body = {k: params.get(k) for k in KEY_GROUPS}
    h = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
    h.update(manifest.read_bytes())
    return h.hexdigest()[:16]


def run_params(base: dict[str, Any], seed: int, variant: str) -> dict[str, Any]:
    """The params overlay of one run: ``seed``, the variant as the only fine-tune/evaluate variant (plus its
    definition, :data:`VARIANT_DEFS`), no preset (already merged), no image grids, no real-photo PIQE."""
    p = copy.deepcopy(base)
    p["seed"] = int(seed)
    p["preset"] = "none"
    p["finetune"]["variants"] = {variant: dict(VARIANT_DEFS[variant])}
    p["evaluate"]["variants"] = [variant]
    p["evaluate"]["grid_max_images"] = 0
    p["evaluate"]["real_photos"] = False
    return p


def main_labels(params: dict[str, Any]) -> list[str]:
    """The task's degradations in benchmark order (the labels the benchmark mean is over)."""
    classes = set(params["task"]["classes"])
    return [e["label"] for e in params["synthesize"]["benchmark"] if e["label"] in classes]


def record_path(root: Path, cfg: dict[str, Any], seed: int, variant: str) -> Path:
    return root / cfg["out"] / "runs" / f"seed-{seed}" / f"{variant}.json"


def read_record(root: Path, cfg: dict[str, Any], seed: int, variant: str) -> dict[str, Any] | None:
    """The finished run's record when it exists and belongs to this study key, else None."""
    path = record_path(root, cfg, seed, variant)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if rec.get("key") == cfg["key"] and rec.get("status") == "finished" else None


# ----------------------------------------------------------------------------------------------------------------
# one run


def _stage_env(root: Path, parent_run_id: str | None) -> dict[str, str]:
    from maskdcpt.config import tracking_uri

    env = dict(os.environ)
    env["MASKDCPT_PREFECT"] = "0"  # the run is the Prefect unit; its stages are plain subprocesses
    env["MLFLOW_TRACKING_URI"] = tracking_uri(root)
    env.pop("MLFLOW_RUN_ID", None)
    if parent_run_id:
        env["MASKDCPT_PARENT_RUN_ID"] = parent_run_id
    else:
        env.pop("MASKDCPT_PARENT_RUN_ID", None)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(root / ".cache" / "torch_extensions"))
    return env


def _launcher(params: dict[str, Any], stage: str) -> list[str]:
    words = shlex.split(params["deepspeed"]["launcher"]) if stage in ("pretrain", "finetune") else ["python", "-m"]
    if words and words[0] in ("python", "python3"):
        words[0] = sys.executable
    return words


#: runs stages one after the other in one interpreter (argv: STAGE[@VARIANT]...), printing each one's seconds
_IN_PROCESS = """
import sys, time
from pipelines.stage import main
for item in sys.argv[1:]:
    stage, _, variant = item.partition("@")
    t0 = time.perf_counter()
    rc = main([stage, *(["--variant", variant] if variant else [])])
    if rc:
        raise SystemExit(rc)
    print(f"[study] {stage} seconds {time.perf_counter() - t0:.2f}", flush=True)
"""


def _run_stages(work: Path, params: dict[str, Any], env: dict[str, str],
                stages: list[tuple[str, str | None]]) -> dict[str, float]:
    """Run ``stages`` (``(name, variant)``) in ``work``; return each one's seconds. With the plain one-process
    launcher (``python -m``) consecutive stages share one interpreter, with at most one training stage per
    interpreter (DeepSpeed keeps process-wide groups that a second engine cannot reuse); with a distributed
    launcher each stage is its own launch. Raises ``StudyError`` with the output tail."""
    seconds: dict[str, float] = {}
    plain = all(_launcher(params, s) == [sys.executable, "-m"] for s, _ in stages)
    groups: list[list[tuple[str, str | None]]] = []
    for item in stages:
        training = item[0] in ("pretrain", "finetune")
        if not plain or not groups or (training and any(s in ("pretrain", "finetune") for s, _ in groups[-1])):
            groups.append([item])
        else:
            groups[-1].append(item)
    for group in groups:
        names = [f"{s}@{v}" if v else s for s, v in group]
        if plain:
            cmd = [sys.executable, "-c", _IN_PROCESS, *names]
        else:
            (stage, variant), = group
            cmd = [*_launcher(params, stage), "pipelines.stage", stage, *(["--variant", variant] if variant else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StudyError(f"stages {names} failed in {work} (exit {proc.returncode}):"
                             f"\n{(proc.stdout + proc.stderr)[-4000:]}")
        if plain:
            for line in proc.stdout.splitlines():
                if line.startswith("[study] ") and " seconds " in line:
                    name, _, value = line[len("[study] "):].partition(" seconds ")
                    seconds[name] = round(float(value), 2)
        else:
            seconds[group[0][0]] = round(time.perf_counter() - t0, 2)
    return seconds


def _link_project(root: Path, work: Path) -> None:
    """Link the project's ``data/`` (the shared pairs, read only) and ``dvc.yaml`` (the params each stage logs)
    into the run's working folder."""
    for name in ("data", "dvc.yaml"):
        link, target = work / name, (root / name).resolve()
        if link.is_symlink() or link.exists():
            if link.resolve() != target:
                raise StudyError(f"{link} exists and is not a link to {target}")
            continue
        link.symlink_to(target, target_is_directory=target.is_dir())


def execute_run(project_dir: str, cfg: dict[str, Any], seed: int, variant: str,
                parent_run_id: str | None = None) -> dict[str, Any]:
    """Run one seed x variant (module docstring) unless it is recorded; return ``{"seed", "variant", "skipped",
    "seconds"}``. The record is written atomically last, so a killed run leaves no record.

    Raises:
        StudyError: a stage failed (its output tail is in the message).
    """
    import mlflow
    import pandas as pd

    from pipelines import tracking

    root = Path(project_dir).resolve()
    if read_record(root, cfg, seed, variant) is not None:
        return {"seed": seed, "variant": variant, "skipped": True, "seconds": 0.0}
    base = _base_params(root, cfg)
    params = run_params(base, seed, variant)
    work = root / WORK / cfg["key"] / f"seed-{seed}" / variant
    work.mkdir(parents=True, exist_ok=True)
    _link_project(root, work)
    import yaml

    atomic_write_text(work / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    exp_id = tracking.setup(params["tracking"]["experiment"], root)
    client = mlflow.MlflowClient()
    tags = {tracking.ROLE_TAG: "study-run", "study.key": cfg["key"], "study.seed": str(seed),
            "study.variant": variant, "git_commit": tracking.git_commit(root)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    child = client.create_run(exp_id, run_name=f"seed-{seed}-{variant}", tags=tags)
    client.log_param(child.info.run_id, "seed", seed)
    client.log_param(child.info.run_id, "variant", variant)
    env = _stage_env(root, child.info.run_id)
    # a stage whose (atomically written) output is there is not redone; evaluate always runs (it is cheap)
    todo: list[tuple[str, str | None]] = []
    if variant == "maskdcpt" and not ((work / "models/pretrain/backbone.pt").is_file()
                                      and (work / "metrics/pretrain.json").is_file()):
        todo.append(("pretrain", None))
    if not (work / "models/finetune" / variant / "model.pt").is_file():
        todo.append(("finetune", variant))
    todo.append(("evaluate", None))
    t0 = time.perf_counter()
    try:
        seconds = _run_stages(work, params, env, todo)
    except BaseException:
        client.set_terminated(child.info.run_id, "FAILED")
        raise
    per_image = pd.read_csv(work / "reports/evaluate/per_image.csv")
    per_image = per_image[per_image["variant"].isin([variant, "lq"])]
    bench = json.loads((work / "metrics/benchmark.json").read_text())
    pre = work / "metrics/pretrain.json"
    record = {"status": "finished", "key": cfg["key"], "seed": seed, "variant": variant,
              "labels": main_labels(params),
              "per_image": per_image[["label", "image_id", "variant", "psnr", "ssim"]].to_dict("records"),
              "benchmark": {k: bench[k] for k in (variant, "convention") if k in bench},
              "provenance": bench.get("provenance"),
              "pretrain": json.loads(pre.read_text()) if pre.is_file() else None,
              "seconds": seconds, "total_seconds": round(time.perf_counter() - t0, 2),
              "mlflow_run_id": child.info.run_id, "work_dir": str(work)}
    mean = bench.get(variant, {}).get("mean", {})
    client.log_batch(child.info.run_id, metrics=[
        mlflow.entities.Metric(f"{m}.mean", float(mean[m]), int(time.time() * 1000), 0) for m in ("psnr", "ssim")
        if m in mean])
    atomic_write_json(record_path(root, cfg, seed, variant), record)
    client.set_terminated(child.info.run_id, "FINISHED")
    return {"seed": seed, "variant": variant, "skipped": False, "seconds": record["total_seconds"]}


@task(name="study-run", task_run_name="seed-{seed}-{variant}", retries=0)
def run_task(project_dir: str, cfg: dict[str, Any], seed: int, variant: str, parent_run_id: str | None) -> dict:
    """One seed x variant as a task of the study flow (local fan-out)."""
    return execute_run(project_dir, cfg, seed, variant, parent_run_id)


@flow(name=RUN_FLOW, log_prints=True, validate_parameters=False)
def study_run(project_dir: str, cfg: dict[str, Any], seed: int, variant: str,
              parent_run_id: str | None = None) -> dict:
    """One seed x variant as its own flow run (the work-pool fan-out: the deployment's entrypoint)."""
    return execute_run(project_dir, cfg, seed, variant, parent_run_id)


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


# ----------------------------------------------------------------------------------------------------------------
# the flow


def _open_parent(root: Path, cfg: dict[str, Any], params: dict[str, Any]) -> str:
    """The study's MLflow parent run: the one recorded in ``state.json`` for this key (resumed), or a new one."""
    import mlflow

    from pipelines import tracking

    exp_id = tracking.setup(params["tracking"]["experiment"], root)
    client = mlflow.MlflowClient()
    state_path = root / cfg["out"] / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("key") == cfg["key"] and state.get("parent_run_id"):
            try:
                client.get_run(state["parent_run_id"])
                client.update_run(state["parent_run_id"], status="RUNNING")
                return state["parent_run_id"]
            except Exception:  # deleted or another store
                pass
    run = client.create_run(exp_id, run_name=time.strftime("study-%Y%m%d-%H%M%S"),
                            tags={tracking.ROLE_TAG: "study", "study.key": cfg["key"],
                                  "git_commit": tracking.git_commit(root)})
    tracking.log_params(client, run.info.run_id, {f"study.{k}": v for k, v in cfg.items() if k != "overrides"}
                        | {f"override.{k}": v for k, v in cfg["overrides"].items()})
    atomic_write_json(state_path, {"key": cfg["key"], "parent_run_id": run.info.run_id})
    return run.info.run_id


def deploy_run_flow(root: Path, pool: str, name: str) -> str:
    """Create or update the deployment ``maskdcpt-study-run/<name>`` (code from ``root``) in the process work
    pool ``pool`` (created if missing); return its full name."""
    import asyncio

    from pipelines.deploy import _ensure_pool

    asyncio.run(_ensure_pool(pool))
    remote = flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    remote.deploy(name=name, work_pool_name=pool, job_variables={"working_dir": str(root)}, build=False,
                  push=False, print_next_steps=False, ignore_warnings=True)
    return f"{RUN_FLOW}/{name}"


def _fan_out_pool(root: Path, cfg: dict[str, Any], pending: list[tuple[int, str]], parent_id: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    name = deploy_run_flow(root, cfg["pool"], cfg["deployment"])
    runs = {}
    for seed, variant in pending:
        fr = run_deployment(name, parameters={"project_dir": str(root), "cfg": cfg, "seed": seed, "variant": variant,
                                              "parent_run_id": parent_id},
                            flow_run_name=f"seed-{seed}-{variant}", timeout=0, as_subflow=True)
        runs[fr.id] = (seed, variant)
    logger.info("submitted %d runs to work pool %s (deployment %s)", len(runs), cfg["pool"], name)
    deadline = time.monotonic() + float(cfg["timeout_s"]) if cfg.get("timeout_s") else None
    states: dict[Any, Any] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(runs):
            for fid in runs:
                if fid in states:
                    continue
                fr = client.read_flow_run(fid)
                if fr.state is not None and fr.state.is_final():
                    states[fid] = fr.state
                    logger.info("run %s: %s", "seed-%s-%s" % runs[fid], fr.state.type.value)
            if deadline and time.monotonic() > deadline and len(states) < len(runs):
                raise StudyError(f"{len(runs) - len(states)} runs did not finish within {cfg['timeout_s']} s "
                                 "(are workers running on the pool?)")
            time.sleep(2.0)
    failed = [runs[f] for f, s in states.items() if not s.is_completed()]
    if failed:
        raise StudyError(f"runs failed in the work pool: {failed}; finished runs are recorded, rerun to resume")
    return [{"seed": s, "variant": v} for s, v in runs.values()]


@flow(name="maskdcpt-study", log_prints=True, validate_parameters=False)
def study(project_dir: str | None = None, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study flow (module docstring); ``cfg`` from :func:`study_config`. Returns the study result."""
    import mlflow
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    root = Path(project_dir or find_root()).resolve()
    cfg = cfg or study_config(root)
    params = _base_params(root, cfg)
    labels = main_labels(params)
    parent = _open_parent(root, cfg, params)
    client = mlflow.MlflowClient()
    status = "FAILED"
    try:
        pending = [(s, v) for s in cfg["seeds"] for v in cfg["variants"] if read_record(root, cfg, s, v) is None]
        logger.info("study %s: %d of %d runs to do", cfg["key"], len(pending), len(cfg["seeds"]) * len(cfg["variants"]))
        if pending and cfg.get("pool"):
            _fan_out_pool(root, cfg, pending, parent)
        elif pending:
            futures = [run_task.submit(str(root), cfg, s, v, parent) for s, v in pending]
            errors = []
            for fut in futures:
                try:
                    fut.result()
                except Exception as exc:  # keep the others going; finished ones are recorded
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    errors.append(" ... ".join(lines[:1] + lines[-1:]))
            if errors:
                raise StudyError(f"{len(errors)} runs failed (finished runs are recorded; rerun to resume): {errors}")
        result = write_reports(root, cfg, labels, parent)
        table = (root / cfg["out"] / "table.md").read_text()
        create_markdown_artifact(f"# MaskDCPT study\n\n{table}\n\nMLflow parent run `{parent}`\n",
                                 key="maskdcpt-study", description="seeds x variants study with bootstrap intervals")
        for name, comp in result["comparisons"].items():
            client.log_metric(parent, f"{name}.mean.gain_db", comp["mean"]["gain_db"])
        client.log_artifact(parent, str(root / cfg["out"] / "study.json"), "study")
        client.log_artifact(parent, str(root / cfg["out"] / "table.md"), "study")
        status = "FINISHED"
        return result
    finally:
        client.set_terminated(parent, status)


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to an argparse ``subparsers`` (``maskdcpt study``); sets ``func``."""
    p = subparsers.add_parser("study", help="seeds x variants study: does MaskDCPT help? (bootstrap intervals)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_run_cli)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None, help="project folder (default: the one holding params.yaml)")
    p.add_argument("--seeds", type=int, default=None, help=f"number of seeds (default {DEFAULTS['seeds']})")
    p.add_argument("--seed-base", type=int, default=None, help="first seed (default: params.yaml `seed`)")
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="default: all three")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="params override for every run, e.g. -S pretrain.steps=100 (not seed/task/data groups)")
    p.add_argument("--level", type=float, default=None, help="interval coverage (default 0.95)")
    p.add_argument("--n-boot", type=int, default=None, help="Monte Carlo bootstrap replicates (default 10000)")
    p.add_argument("--bootstrap-seed", type=int, default=None)
    p.add_argument("--out", default=None, help=f"output folder under the project (default {OUT})")
    p.add_argument("--parallel", type=int, default=None, help="runs at once on this machine (default 1)")
    p.add_argument("--pool", default=None, help="Prefect process work pool: each run is a flow run there "
                                                "(needs PREFECT_API_URL and workers: prefect worker start --pool NAME)")
    p.add_argument("--deployment", default=None, help="deployment name of the run flow (default study-run)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=None,
                   help="with --pool: give up waiting after this many seconds")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StudyError(f"override {item!r} is not KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run_cli(args: argparse.Namespace) -> int:
    from pipelines.params import ParamsError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        root = Path(args.project or find_root()).resolve()
        if args.pool and not os.environ.get("PREFECT_API_URL"):
            raise StudyError("--pool needs a Prefect server: start one (`prefect server start`) and export "
                             "PREFECT_API_URL=http://127.0.0.1:4200/api, then start workers on the pool")
        cfg = study_config(root, seeds=args.seeds, seed_base=args.seed_base, variants=args.variants,
                           overrides=_parse_overrides(args.overrides) or None, level=args.level, n_boot=args.n_boot,
                           bootstrap_seed=args.bootstrap_seed, out=args.out, parallel=args.parallel, pool=args.pool,
                           deployment=args.deployment, timeout_s=args.timeout_s)
        from prefect.task_runners import ThreadPoolTaskRunner

        # the runs are subprocesses: threads only wait on them; --parallel bounds how many run at once
        runner = study.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg["parallel"]))
        result = runner(project_dir=str(root), cfg=cfg)
    except (StudyError, ParamsError) as exc:
        print(f"[maskdcpt] study: {exc}", file=sys.stderr)
        return 2
    print((root / (cfg["out"]) / "table.md").read_text())
    print(f"[maskdcpt] study: {root / cfg['out'] / 'study.json'}; missing runs: {result['missing_runs'] or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``maskdcpt study`` as a standalone command (``python -m pipelines.study``)."""
    parser = argparse.ArgumentParser(prog="maskdcpt study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return _run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
