"""Resumable, parallel shard making: each shard of a plan is written atomically with a sidecar
(``<shard>.done.json``: the plan, the code fingerprint, the shard's sha256 and its manifest rows); a re-run reuses
every shard whose sidecar matches and redoes the rest. The per-sample maker is named in the context
(``ctx["maker"] = "module:function"``, returning ``(sample, row)``) so worker processes can import it."""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib
import json
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from maskdcpt.atomic import atomic_write_bytes
from maskdcpt.data.shards import write_shard
from maskdcpt.imageio import file_sha256

#: the clean images are stored at this PNG bit depth (the prepared photos are 8-bit, so this is lossless)
GT_BIT_DEPTH = 8


@functools.lru_cache(maxsize=1)
def synthesis_fingerprint() -> str:
    """sha256 over the source of the code that determines a shard's bytes (the degradation package, the pair
    recipe and synthesis, this module, :mod:`maskdcpt.data.shards`, :mod:`maskdcpt.imageio`, :mod:`maskdcpt.png`),
    plus the OpenCV and NumPy versions. Stored in each shard's sidecar; a change makes the next run redo them."""
    import cv2

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "degradations").glob("*.py")) + [root / "data" / "synthesize.py",
                                                             root / "data" / "pair_recipe.py",
                                                             root / "data" / "shard_jobs.py",
                                                             root / "data" / "shards.py", root / "imageio.py",
                                                             root / "png.py"]
    h = hashlib.sha256(f"cv2={cv2.__version__};numpy={np.__version__}".encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class ShardWriteError(OSError):
    """A shard could not be written (typically a full disk): ``str()`` names the shard, the space left there and
    that a re-run resumes, reusing every finished shard. Built as ``ShardWriteError(errno, message)`` so that it
    crosses process boundaries (worker pools) intact."""


def shard_write_error(path: Path, cause: OSError) -> ShardWriteError:
    """The :class:`ShardWriteError` for ``cause`` raised while writing shard ``path``."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.2f} MiB free there"
    except OSError:
        free = "free space unknown"
    full = "No space left on device: " if cause.errno == errno.ENOSPC else ""
    done = len(list(path.parent.glob("*.done.json")))
    return ShardWriteError(cause.errno, f"could not write shard {path} ({type(cause).__name__}: {cause}). {full}"
                                        f"{free}. {done} finished shard(s) there keep their completion records; a "
                                        "re-run reuses them and makes only the rest.")


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".done.json")


def plan_entry(spec: dict) -> dict:
    """The part of a spec that determines the shard's bytes (JSON types only)."""
    photo = spec["photo"]
    keep = {k: v for k, v in spec.items() if k not in ("photo",)}
    keep["photo"] = {k: photo.get(k) for k in ("image_id", "sha256", "png_sha256", "width", "height")}
    return json.loads(json.dumps(keep, sort_keys=True, default=str))


def shard_done(path: Path, plan: list[dict], fingerprint: str) -> list[dict] | None:
    """The recorded rows if ``path`` is a finished shard of exactly this plan and code, else ``None``."""
    side = sidecar(path)
    if not (path.is_file() and side.is_file()):
        return None
    try:
        info = json.loads(side.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("plan") != plan or info.get("fingerprint") != fingerprint:
        return None
    if info.get("sha256") != file_sha256(path):
        return None
    return info["rows"]


def make_shard(task: dict) -> tuple[int, list[dict], bool]:
    """Worker: make one shard (or reuse it when its sidecar matches). Returns ``(index, rows, made)``."""
    path, specs, ctx = Path(task["path"]), task["specs"], task["ctx"]
    plan = [plan_entry(sp) for sp in specs]
    fp = synthesis_fingerprint()
    done = None if task.get("force") else shard_done(path, plan, fp)
    if done is not None:
        return task["index"], done, False
    module, _, name = ctx["maker"].partition(":")
    make = getattr(importlib.import_module(module), name)
    rows: list[dict] = []

    def samples():
        for spec in specs:
            sample, row = make(spec, ctx)
            row["shard"] = path.name
            rows.append(row)
            yield sample

    side = sidecar(path)
    if side.exists():
        side.unlink()  # the shard is about to change: drop its stale completion marker first
    try:
        write_shard(path, samples(), lq_bit_depth=ctx["lq_bit_depth"], gt_bit_depth=GT_BIT_DEPTH)
        record = {"fingerprint": fp, "plan": plan, "sha256": file_sha256(path), "rows": rows}
        atomic_write_bytes(side, json.dumps(record, sort_keys=True).encode("utf-8"))
    except ShardWriteError:
        raise
    except OSError as e:
        raise shard_write_error(path, e) from e
    return task["index"], json.loads(json.dumps(rows)), True


def shard_tasks(out_dir: Path, split: str, specs: list[dict], shard_size: int, ctx: dict) -> list[dict]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [{"index": k, "path": str(out_dir / f"{split}-{k:05d}.tar"),
             "specs": specs[start:start + shard_size], "ctx": ctx}
            for k, start in enumerate(range(0, len(specs), shard_size))]


def write_shards(out_dir: Path, split: str, specs: list[dict], shard_size: int, ctx: dict, *,
                  workers: int = 1, progress: bool = False, resume: bool = True) -> list[dict]:
    """Make every shard of ``specs`` (index ranges of ``shard_size``), in ``workers`` processes, reusing
    finished ones when ``resume``; delete this split's shards beyond the last index. Rows in plan order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = shard_tasks(out_dir, split, specs, shard_size, ctx)
    for t in tasks:
        t["force"] = not resume
    results: dict[int, list[dict]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), unit="pair", desc=f"synthesize {split}", dynamic_ncols=True)
    try:
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                futures = [pool.submit(make_shard, t) for t in tasks]
                for fut in as_completed(futures):
                    k, rows, _ = fut.result()
                    results[k] = rows
                    if bar is not None:
                        bar.update(len(rows))
        else:
            for t in tasks:
                k, rows, _ = make_shard(t)
                results[k] = rows
                if bar is not None:
                    bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    pattern = re.compile(rf"{re.escape(split)}-(\d{{5}})\.tar(\.done\.json)?")
    for f in out_dir.iterdir():
        m = pattern.fullmatch(f.name)
        if m and int(m.group(1)) >= len(tasks):
            f.unlink()
    return [row for k in sorted(results) for row in results[k]]
