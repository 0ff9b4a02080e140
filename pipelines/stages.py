"""The pipeline's stages, one function each, as ``dvc.yaml`` runs them (``python -m pipelines.stage NAME``).

Each stage reads ``params.yaml``, logs to its nested MLflow run (:mod:`pipelines.tracking`), and writes its DVC
outs atomically: a folder out is built in a temporary sibling and renamed into place only when the stage has
succeeded, so a failed or interrupted stage leaves nothing that DVC would take as done. Training stages resume
from their DeepSpeed checkpoints under ``.cache/checkpoints/<stage>/<config hash>`` when re-run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from maskdcpt.config import find_root, load_params

log = logging.getLogger("maskdcpt.stages")

PREPARED = Path("data/prepared")
PAIRS = Path("data/pairs")
PRETRAINED = Path("models/pretrain")
FINETUNED = Path("models/finetune")
BENCHMARK_METRICS = Path("metrics/benchmark.json")
PRETRAIN_METRICS = Path("metrics/pretrain.json")
EVAL_REPORTS = Path("reports/evaluate")
VALIDATE_REPORTS = Path("reports/validate")
REGISTER_REPORT = Path("reports/register/decision.json")


class StageFailed(RuntimeError):
    """A stage stopped the pipeline on purpose (e.g. a failed data contract); the message says why."""


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success replace ``target`` with it, on failure
    delete it (the old ``target``, if any, is left as it was)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def file_digest(*paths: Path) -> str:
    """sha256 (first 16 hex) over the bytes of ``paths`` (identifies a data version in checkpoint keys)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def rank() -> int:
    """This process's rank under a distributed launcher (``RANK``), 0 without one."""
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def _rank_output(target: Path) -> Iterator[Path]:
    """Rank 0 writes ``target`` atomically; other ranks write into a throw-away folder."""
    if rank() == 0:
        with atomic_dir(target) as tmp:
            yield tmp
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f"rank{rank()}-") as tmp:
            yield Path(tmp)


def _classes(params: dict[str, Any]) -> list[str]:
    """The task's ordered class list: ``task.classes`` when given, else the registry's list for ``task.name``."""
    from maskdcpt.degradations import task_classes

    classes = list(params["task"].get("classes") or task_classes(params["task"]["name"]))
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"task.classes must be a non-empty list of distinct names, got {classes}")
    return classes


def _metrics_logger(prefix: str = ""):
    import mlflow

    def on_log(step: int, values: dict[str, float]) -> None:
        clean = {f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(clean, step=step)
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in clean.items()))

    return on_log


def log_dataset(root: Path, manifest: pd.DataFrame, context: str) -> None:
    """Log the pair manifest as an MLflow dataset input whose digest is the DVC hash of ``data/pairs``."""
    import mlflow
    import yaml

    digest = "unknown"
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("synthesize", {}).get("outs", []):
            if out.get("path") == str(PAIRS):
                digest = str(out.get("md5", "unknown"))
    dataset = mlflow.data.from_pandas(manifest.drop(columns=["params"], errors="ignore"),
                                      source=str(root / PAIRS / "manifest.parquet"), name="pairs", digest=digest[:36])
    mlflow.log_input(dataset, context=context, tags={"dvc_md5": digest})


def _photos(root: Path) -> pd.DataFrame:
    photos = pd.read_parquet(root / PREPARED / "manifest.parquet")
    photos["path"] = [str(root / PREPARED / "images" / f"{i}.png") for i in photos["image_id"]]
    return photos


# ----------------------------------------------------------------------------------------------- stages
def prepare(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Collect the clean photos, convert them to RGB PNG, record the manifest and split train / benchmark."""
    import mlflow

    from maskdcpt.data.photos import collect_folder, collect_packaged_photos, prepare_photos

    p = params["prepare"]
    missing: list[dict] = []
    if p["source"] == "packaged":
        sources, missing = collect_packaged_photos()
    elif p["source"] == "s3":
        from maskdcpt.data.sources import collect_s3

        if not p.get("s3_uri"):
            raise ValueError("prepare.source is 's3' but prepare.s3_uri is empty")
        sources, s3_rejections = collect_s3(p["s3_uri"], root / ".cache" / "s3",
                                            endpoint_url=p.get("s3_endpoint_url") or None,
                                            benchmark_stems=list(p.get("benchmark_stems") or []),
                                            benchmark_fraction=float(p.get("benchmark_fraction", 0.2)))
        missing = s3_rejections.to_dict("records")
    elif p["source"] == "folder":
        if not p.get("folder"):
            raise ValueError("prepare.source is 'folder' but prepare.folder is empty")
        sources = collect_folder(p["folder"], benchmark_stems=list(p.get("benchmark_stems") or []),
                                 benchmark_fraction=float(p.get("benchmark_fraction", 0.2)))
    else:
        raise ValueError(f"prepare.source must be 'packaged', 'folder' or 's3', got {p['source']!r}")
    with atomic_dir(root / PREPARED) as tmp:
        manifest, rejections = prepare_photos(sources, tmp, min_size=int(p["min_size"]),
                                              max_pixels=int(p["max_pixels"]))
        if manifest.empty:
            raise StageFailed("no usable photo was found; see the rejections: "
                              + "; ".join(f"{r.get('src_path')}: {r.get('reason')}"
                                          for r in rejections.head(5).to_dict("records")))
        for split in ("train", "benchmark"):
            if not (manifest["split"] == split).any():
                raise StageFailed(f"no photo landed in the {split} split; need at least one of each")
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
        rejections.to_csv(tmp / "rejections.csv", index=False)
        if missing:
            pd.DataFrame(missing).to_csv(tmp / "missing_packages.csv", index=False)
    summary = {"photos": int(len(manifest)), "train_photos": int((manifest["split"] == "train").sum()),
               "benchmark_photos": int((manifest["split"] == "benchmark").sum()),
               "rejected": int(len(rejections)), "missing": int(len(missing))}
    mlflow.log_metrics({k: float(v) for k, v in summary.items()})
    mlflow.log_artifact(str(root / PREPARED / "manifest.parquet"), "prepare")
    mlflow.log_artifact(str(root / PREPARED / "rejections.csv"), "prepare")
    return summary


def synthesize(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make the seeded degraded/clean pairs: training and validation crops from the training pool, benchmark
    pairs from the held-out photos at fixed seeds; shards plus one Parquet manifest."""
    import mlflow

    from maskdcpt.data.synthesize import synthesize_benchmark_pairs, synthesize_training_pairs

    s, seed, classes = params["synthesize"], int(params["seed"]), _classes(params)
    photos = _photos(root)
    pool = photos[photos["split"] == "train"].reset_index(drop=True)
    held = photos[photos["split"] == "benchmark"].reset_index(drop=True)
    entries = [{k: v for k, v in e.items() if k != "unseen"} for e in s["benchmark"]]
    unknown = sorted({e["degradation"] for e in s["benchmark"] if not e.get("unseen")} - set(classes))
    if unknown:
        raise ValueError(f"benchmark entries use degradations outside task.classes: {unknown} "
                         "(mark an entry `unseen: true` to test generalisation to a type not trained on)")
    # Shards are made (and resumed) in a staging folder, then linked into the atomic output: an interrupted
    # stage keeps its finished shards, and shards made by distributed workers (pipelines.flows.synthesize_shards)
    # are reused as they are.
    staging = synthesis_staging(params, root)
    workers = int(s.get("workers", 1))
    splits = {}
    real_sets = params.get("training_sets") or {}
    if real_sets.get("root"):
        # the paper's training sets as real pairs (a preset such as presets/paper-5d.yaml names them); the
        # validation crops for classification accuracy stay synthetic
        from maskdcpt.data.benchmarks import training_pairs

        splits["train"], rejected = training_pairs(params, staging)
        if len(rejected):
            rejected.to_csv(staging / "training_sets_rejections.csv", index=False)
            log.warning("%d training-set pairs rejected, see %s", len(rejected),
                        staging / "training_sets_rejections.csv")
    for split in ("train", "val"):
        if split in splits:
            continue
        args = training_split_args(params, root, split)
        splits[split] = synthesize_training_pairs(pool, classes=classes, crop=int(s["crop"]), out_dir=staging,
                                                  shard_size=int(s["shard_size"]), workers=workers, split=split,
                                                  pairs_per_class=args["pairs_per_class"], seed=args["seed"])
    bench = synthesize_benchmark_pairs(held, entries, seed=seed + 2, out_dir=staging,
                                       max_size=s.get("benchmark_max_size"), workers=workers)
    bench["class_index"] = [classes.index(d) if d in classes else -1 for d in bench["degradation"]]
    train, val = splits["train"], splits["val"]
    manifest = pd.concat([train, val, bench], ignore_index=True)
    with atomic_dir(root / PAIRS) as tmp:
        for shard in manifest["shard"].unique():
            _link_or_copy(staging / shard, tmp / shard)
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
    counts = manifest.groupby(["split", "degradation"]).size()
    band = manifest.groupby("degradation")["psnr_lq_gt"].agg(["min", "median", "max"]).round(2)
    mlflow.log_metrics({f"pairs_{sp}_{d}": float(n) for (sp, d), n in counts.items()})
    mlflow.log_dict(band.to_dict(orient="index"), "synthesize/psnr_lq_gt_band.json")
    mlflow.log_artifact(str(root / PAIRS / "manifest.parquet"), "synthesize")
    return {"pairs": int(len(manifest)), "train": int(len(train)), "val": int(len(val)),
            "benchmark": int(len(bench))}


def synthesis_staging(params: dict[str, Any], root: Path) -> Path:
    """The folder where synthesis shards are made and resumed (``synthesize.staging_dir``, default
    ``.cache/synthesis``; a shared folder when several machines make shards)."""
    staging = Path(params["synthesize"].get("staging_dir") or root / ".cache" / "synthesis")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def training_split_args(params: dict[str, Any], root: Path, split: str) -> dict[str, Any]:
    """The synthesis arguments of a training split: ``pairs_per_class`` and its base ``seed``
    (train: ``seed``, val: ``seed + 1``)."""
    s, seed = params["synthesize"], int(params["seed"])
    if split == "train":
        return {"pairs_per_class": int(s["train_pairs_per_class"]), "seed": seed}
    if split == "val":
        return {"pairs_per_class": int(s["val_pairs_per_class"]), "seed": seed + 1}
    raise ValueError(f"training split must be train or val, got {split!r}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def validate(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Run the Great Expectations manifest contract; a failure writes the report and stops the pipeline."""
    import mlflow

    from pipelines.gx_suites import failure_summary, render_html, validate_manifest

    pairs = pd.read_parquet(root / PAIRS / "manifest.parquet")
    photos = pd.read_parquet(root / PREPARED / "manifest.parquet")
    rej_path = root / PREPARED / "rejections.csv"
    rejections = pd.read_csv(rej_path) if rej_path.stat().st_size > 1 else pd.DataFrame()
    v, syn = params["validate"], params["synthesize"]
    # with the paper's real training sets, the train counts follow their repeat ratios, not pairs_per_class
    real_training = bool((params.get("training_sets") or {}).get("root"))
    report = validate_manifest(pairs, photos, rejections, _classes(params), int(syn["crop"]),
                               float(v["max_rejection_rate"]), psnr_bands=v.get("psnr_lq_gt_bands") or {},
                               pairs_per_class={"val": int(syn["val_pairs_per_class"])} if real_training
                               else {"train": int(syn["train_pairs_per_class"]),
                                     "val": int(syn["val_pairs_per_class"])},
                               count_tolerance=float(v.get("count_tolerance", 0.0)))
    out = root / VALIDATE_REPORTS
    write_json(out / "report.json", report)
    (out / "report.html").write_text(render_html(report, "maskdcpt: pair manifest validation"))
    mlflow.log_artifact(str(out / "report.json"), "validate")
    mlflow.log_artifact(str(out / "report.html"), "validate")
    n_fail = sum(not r["success"] for s in report["suites"] for r in s["results"])
    mlflow.log_metrics({"gx_success": float(report["success"]), "gx_failed_expectations": float(n_fail)})
    if not report["success"]:
        raise StageFailed(f"the pair manifest failed its data contract ({n_fail} expectation(s)); report: "
                          f"{out / 'report.html'}\n{failure_summary(report)}")
    return {"success": True, "expectations": sum(len(s["results"]) for s in report["suites"])}


def _checkpoint_dir(root: Path, stage: str, key: Any) -> Path:
    from maskdcpt.train.engine import config_hash

    return root / ".cache" / "checkpoints" / stage / config_hash(key)


def pretrain(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """MaskDCPT pre-training through DeepSpeed; writes ``models/pretrain/{model,backbone}.pt``."""
    import mlflow

    from maskdcpt.data.pairs import load_pairs
    from maskdcpt.train.engine import shutdown_distributed
    from maskdcpt.train.pretrain import run_pretrain

    manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
    train = load_pairs(manifest, root / PAIRS, "train")
    val = load_pairs(manifest, root / PAIRS, "val") if (manifest["split"] == "val").any() else None
    classes = _classes(params)
    key = {"model": params["model"], "pretrain": params["pretrain"], "deepspeed": params["deepspeed"],
           "seed": params["seed"], "data": file_digest(root / PAIRS / "manifest.parquet")}
    lead = rank() == 0
    if lead:
        log_dataset(root, manifest, "training")
    ckpt = _checkpoint_dir(root, "pretrain", key)
    with _rank_output(root / PRETRAINED) as tmp:
        summary = run_pretrain(train, val, num_classes=len(classes), model_cfg=params["model"],
                               cfg=params["pretrain"], ds_params=params["deepspeed"], seed=int(params["seed"]),
                               out_dir=tmp, checkpoint_dir=ckpt, on_log=_metrics_logger() if lead else None)
        write_json(tmp / "classes.json", classes)
    shutdown_distributed()
    summary["classes"] = classes
    if not lead:
        return summary
    write_json(root / PRETRAIN_METRICS, {k: v for k, v in summary.items() if k != "classes"})
    mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary


def finetune(params: dict[str, Any], root: Path, variant: str) -> dict[str, Any]:
    """Fine-tune one variant (``maskdcpt`` from the pre-trained backbone, ``scratch`` from random init)."""
    import mlflow

    from maskdcpt.data.pairs import load_pairs
    from maskdcpt.train.engine import shutdown_distributed
    from maskdcpt.train.finetune import run_finetune

    variants = params["finetune"]["variants"]
    if variant not in variants:
        raise ValueError(f"unknown fine-tune variant {variant!r}; params.yaml declares {sorted(variants)}")
    init = variants[variant]["init"]
    cfg = dict(params["finetune"])
    if variants[variant].get("compute_matched"):
        # the compute-matched baseline: as many steps as pre-training + fine-tuning together (issue #4)
        cfg["steps"] = int(cfg["steps"]) + int(params["pretrain"]["steps"])
    manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
    train = load_pairs(manifest, root / PAIRS, "train")
    pretrained = root / PRETRAINED / "backbone.pt"
    key = {"model": params["model"], "finetune": params["finetune"], "deepspeed": params["deepspeed"],
           "seed": params["seed"], "variant": variant, "data": file_digest(root / PAIRS / "manifest.parquet"),
           "init": file_digest(pretrained) if init == "pretrained" else "random"}
    lead = rank() == 0
    if lead:
        log_dataset(root, manifest, "training")
    ckpt = _checkpoint_dir(root, f"finetune-{variant}", key)
    with _rank_output(root / FINETUNED / variant) as tmp:
        summary = run_finetune(train, model_cfg=params["model"], cfg=cfg,
                               ds_params=params["deepspeed"], seed=int(params["seed"]), out_dir=tmp, init=init,
                               pretrained=pretrained if init == "pretrained" else None, checkpoint_dir=ckpt,
                               on_log=_metrics_logger() if lead else None)
        write_json(tmp / "summary.json", summary)
    shutdown_distributed()
    if not lead:
        return summary
    mlflow.log_dict(summary["init_report"], "finetune/init_report.json")
    mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary


def _benchmark_pairs(root: Path) -> list[dict[str, Any]]:
    from maskdcpt.data.shards import read_shard

    manifest = pd.read_parquet(root / PAIRS / "manifest.parquet")
    rows = manifest[manifest["split"] == "benchmark"].reset_index(drop=True)
    if rows.empty:
        raise StageFailed("the pair manifest has no benchmark pairs")
    samples: dict[str, dict] = {}
    for shard in rows["shard"].unique():
        for s in read_shard(root / PAIRS / shard):
            samples[s["key"]] = s
    pairs = []
    for r in rows.to_dict("records"):
        s = samples[r["key"]]
        pairs.append({"pair_id": r["pair_id"], "label": r["label"], "degradation": r["degradation"],
                      "image_id": r["image_id"], "lq": s["lq"], "gt": s["gt"]})
    return pairs


def evaluate(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Restore every benchmark pair with each variant (EMA weights); write the DVC metrics, plots and grids."""
    import mlflow

    from maskdcpt.eval.benchmark import evaluate_variants, load_restorer, save_grid, summarize

    e = params["evaluate"]
    variants = {v: load_restorer(root / FINETUNED / v / "model.pt") for v in e["variants"]}
    pairs = _benchmark_pairs(root)
    per_image = evaluate_variants(variants, pairs)
    main = [entry["label"] for entry in params["synthesize"]["benchmark"]
            if entry["label"] in _classes(params)]
    result = summarize(per_image, main)
    out = root / EVAL_REPORTS
    shutil.rmtree(out, ignore_errors=True)
    (out / "grids").mkdir(parents=True)
    per_image.to_csv(out / "per_image.csv", index=False)
    labels = list(dict.fromkeys(per_image["label"]))
    plot_rows = [{"degradation": lab, **{v: result[v].get(lab, result[v].get("extra", {}).get(lab, {})).get("psnr")
                                         for v in ["lq", *e["variants"]]}} for lab in labels]
    pd.DataFrame(plot_rows).to_csv(out / "psnr_per_degradation.csv", index=False)
    _bar_plot(pd.DataFrame(plot_rows), ["lq", *e["variants"]], out / "psnr_per_degradation.png")
    order = ["lq", *[v for v in ("scratch", "maskdcpt") if v in variants],
             *[v for v in variants if v not in ("scratch", "maskdcpt")]]
    shown: dict[str, int] = {}
    for pair in pairs:
        if shown.get(pair["label"], 0) < int(e.get("grid_max_images", 1)):
            save_grid(pair, order, out / "grids" / f"{pair['label']}__{pair['image_id']}.png")
            shown[pair["label"]] = shown.get(pair["label"], 0) + 1
    noise = _noise_levels(params, per_image)
    if not noise.empty:
        noise.to_csv(out / "psnr_vs_noise_level.csv", index=False)
        _noise_plot(noise, ["lq", *e["variants"]], out / "psnr_vs_noise_level.png")
    if e.get("real_photos", True):
        real = real_photo_scores(variants)
        if not real.empty:
            real.to_csv(out / "real_piqe.csv", index=False)
            result["real_piqe"] = {r["image_id"]: {k: _round(r[k]) for k in real.columns if k != "image_id"}
                                   for r in real.to_dict("records")}
    (out / "table.md").write_text(markdown_table(result, main, ["lq", *e["variants"]])
                                  + _extra_tables(result, ["lq", *e["variants"]]))
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


def _round(x: Any) -> Any:
    return round(float(x), 4) if isinstance(x, (int, float)) else x


def _noise_levels(params: dict[str, Any], per_image: pd.DataFrame) -> pd.DataFrame:
    """PSNR per Gaussian-noise level (sigma on the 0-255 scale) for each variant, seen and unseen levels."""
    sigma = {e["label"]: e.get("params", {}).get("sigma") for e in params["synthesize"]["benchmark"]
             if e["degradation"] == "gaussian_noise" and e.get("params", {}).get("sigma") is not None}
    rows = per_image[per_image["label"].isin(sigma)]
    if rows.empty:
        return pd.DataFrame()
    table = rows.groupby(["label", "variant"])["psnr"].mean().unstack("variant").reset_index()
    table.insert(0, "sigma", table["label"].map(sigma))
    return table.sort_values("sigma").drop(columns=["label"]).reset_index(drop=True)


def _noise_plot(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
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


def _extra_tables(result: dict[str, Any], variants: list[str]) -> str:
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


def _bar_plot(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
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


def results_contract(root: Path, labels: list[str]) -> dict[str, Any]:
    """The Great Expectations contract on the per-image benchmark results of the MaskDCPT variant: finite PSNR and
    SSIM in range, every degradation present (``{"success", "suites": [...]}``)."""
    from pipelines.gx_suites import results_expectations, run_suite

    frame = pd.read_csv(root / EVAL_REPORTS / "per_image.csv")
    frame = frame[frame["variant"] == "maskdcpt"]
    report = run_suite("results", frame, results_expectations(labels))
    return {"success": report["success"], "suites": [report]}


def register(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Log the fine-tuned MaskDCPT model, register a version (alias ``challenger``), gate ``champion``."""
    import mlflow

    from maskdcpt.eval.benchmark import evaluate_variants, summarize
    from pipelines.gx_suites import failure_summary
    from maskdcpt.serving import log_pyfunc_model
    from pipelines.registry import champion_version, decide, load_registered_network
    from pipelines.tracking import end_pipeline

    r = params["register"]
    name = r["model_name"]
    result = json.loads((root / BENCHMARK_METRICS).read_text())
    main = [entry["label"] for entry in params["synthesize"]["benchmark"] if entry["label"] in _classes(params)]
    challenger = {lab: result["maskdcpt"][lab]["psnr"] for lab in [*main, "mean"]}
    bench_id = file_digest(root / PAIRS / "manifest.parquet")
    client = mlflow.MlflowClient()
    previous = champion_version(client, name)
    champion = None
    if previous is not None:
        champ_net = load_registered_network(f"models:/{name}@champion")
        champ_eval = summarize(evaluate_variants({"champion": champ_net}, _benchmark_pairs(root)), main)
        champion = {lab: champ_eval["champion"][lab]["psnr"] for lab in [*main, "mean"]}
    info = log_pyfunc_model(root / FINETUNED / "maskdcpt" / "model.pt", registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "challenger", version)
    promote, reason = decide(challenger, champion, float(r["min_gain_db"]), float(r["max_drop_db"]))
    contract = results_contract(root, main)
    write_json(root / REGISTER_REPORT.parent / "results_contract.json", contract)
    mlflow.log_dict(contract, "register/results_contract.json")
    if not contract["success"]:
        promote, reason = False, "benchmark results failed their data contract: " + failure_summary(contract)[:500]
    tags = {"decision": "promoted" if promote else "rejected", "reason": reason, "benchmark_id": bench_id,
            "benchmark_mean_psnr": f"{challenger['mean']:.4f}",
            "champion_version_before": str(previous.version) if previous is not None else "none"}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    if promote:
        client.set_registered_model_alias(name, "champion", version)
    decision = {"model_name": name, "version": version, "promoted": promote, "reason": reason,
                "challenger_psnr": challenger, "champion_psnr_before": champion,
                "champion_version_before": tags["champion_version_before"],
                "champion_version": version if promote else (str(previous.version) if previous is not None else None),
                "model_uri": f"models:/{name}@champion", "benchmark_id": bench_id}
    write_json(root / REGISTER_REPORT, decision)
    mlflow.log_dict(decision, "register/decision.json")
    mlflow.set_tags({"decision": tags["decision"], "registered_version": version})
    end_pipeline("FINISHED")
    return decision


STAGES = {"prepare": prepare, "synthesize": synthesize, "validate": validate, "pretrain": pretrain,
          "finetune": finetune, "evaluate": evaluate, "register": register}
SECTIONS = {"prepare": ["seed", "prepare"], "synthesize": ["seed", "task", "synthesize"],
            "validate": ["task", "validate"], "pretrain": ["seed", "task", "model", "deepspeed", "pretrain"],
            "finetune": ["seed", "model", "deepspeed", "finetune"], "evaluate": ["evaluate"],
            "register": ["register"]}


def run_stage(stage: str, variant: str | None = None, params_path: str | None = None) -> dict[str, Any]:
    """Run one stage inside its nested MLflow run; return the stage's summary dict.

    Raises ``ValueError`` for an unknown stage or a missing ``--variant`` of ``finetune``.
    """
    from pipelines.tracking import stage_run

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
    if stage == "finetune" and not variant:
        raise ValueError("the finetune stage needs a variant (e.g. maskdcpt or scratch)")
    root = find_root()
    params = load_params(params_path or root / "params.yaml")
    run_name = f"{stage}@{variant}" if variant else stage
    t0 = time.perf_counter()
    if rank() != 0:  # a non-lead rank of a distributed training stage: train, log and write nothing
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage {stage!r} runs in one process; only pretrain/finetune take a launcher")
        return STAGES[stage](params, root, variant) if variant else STAGES[stage](params, root)
    with stage_run(run_name, params, SECTIONS[stage], root) as run:
        summary = STAGES[stage](params, root, variant) if variant else STAGES[stage](params, root)
        import mlflow

        mlflow.log_metric("stage_seconds", time.perf_counter() - t0)
        log.info("stage %s done in %.1f s (MLflow run %s)", run_name, time.perf_counter() - t0, run.info.run_id)
    return summary
