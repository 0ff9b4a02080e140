"""Data side of maskdcpt: clean photos (:mod:`.photos`), S3 and real-pair sources (:mod:`.sources`), tar shards
(:mod:`.shards`) and degraded/clean pair synthesis (:mod:`.synthesize`).

The public names below are re-exported lazily, so ``import maskdcpt.data`` stays cheap (pandas and
OpenCV are imported only when a function that needs them is first used).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # photos
    "PackagedPhoto": "photos",
    "PhotoSource": "photos",
    "PACKAGED_PHOTOS": "photos",
    "REAL_DEGRADED_PHOTOS": "photos",
    "EXCLUDED_PACKAGED_FILES": "photos",
    "BENCHMARK_IMAGE_IDS": "photos",
    "MANIFEST_COLUMNS": "photos",
    "REJECTION_COLUMNS": "photos",
    "package_dir": "photos",
    "package_version": "photos",
    "packaged_photos_table": "photos",
    "collect_packaged_photos": "photos",
    "collect_real_degraded_photos": "photos",
    "collect_folder": "photos",
    "prepare_photos": "photos",
    # shards
    "write_shard": "shards",
    "read_shard": "shards",
    "iter_shards": "shards",
    # synthesis
    "PAIR_COLUMNS": "synthesize",
    "synthesize_training_pairs": "synthesize",
    "synthesize_benchmark_pairs": "synthesize",
    "regenerate_pair": "synthesize",
    "pair_seed": "synthesize",
    "plan_training_pairs": "synthesize",
    "synthesize_training_shard": "synthesize",
    # sources
    "collect_s3": "sources",
    "download_s3_prefix": "sources",
    "s3_client": "sources",
    "collect_real_pairs": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
