"""SHA-256 checksums of weight files: recorded when weights are written or registered, verified before a load.

Three records, one check (:func:`verify_files`):

* a **sidecar** ``sha256.json`` beside weights a stage writes (pre-training's ``model.pt`` / ``backbone.pt``),
  checked by :func:`verify_sidecar` before fine-tuning loads them;
* the **pyfunc model config** ``checkpoint_sha256`` of a logged restorer (:mod:`maskdcpt.serving`), checked in
  ``load_context``: every ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` of it;
* the **registry tag** ``weights_sha256`` (JSON ``{relative path: sha256}`` of every weight file of the version,
  :data:`WEIGHT_SUFFIXES`), set by the register stage and checked by :func:`maskdcpt.inference.load_model` for
  ``models:/`` URIs, on the downloaded copy that is then loaded.

A mismatch or a missing file raises :class:`ChecksumError` naming what was loaded (file, model version).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

from maskdcpt.atomic import atomic_write_json

__all__ = ["ChecksumError", "WEIGHT_SUFFIXES", "SIDECAR", "REGISTRY_TAG", "file_sha256", "weight_files",
           "verify_files", "write_sidecar", "verify_sidecar", "verify_if_recorded"]

WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".onnx")
SIDECAR = "sha256.json"
REGISTRY_TAG = "weights_sha256"


class ChecksumError(ValueError):
    """Weights whose bytes differ from the recorded SHA-256 (or a recorded file that is missing)."""


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk_size`` chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def weight_files(folder: str | os.PathLike) -> dict[str, str]:
    """``{path relative to folder (POSIX): sha256}`` of every file under ``folder`` ending in a
    :data:`WEIGHT_SUFFIXES` suffix (recursive, sorted). Raises ``FileNotFoundError`` for a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)}


def verify_files(folder: str | os.PathLike, expected: Mapping[str, str], what: str) -> None:
    """Check that every file of ``expected`` (``{relative path: sha256}``) under ``folder`` has that SHA-256.

    Raises:
        ChecksumError: a file is missing or its bytes differ; the message names ``what`` (e.g. the model version)
            and the file with both digests.
    """
    folder = Path(folder)
    if not expected:
        raise ChecksumError(f"{what}: no weight checksums recorded")
    for rel, sha in sorted(expected.items()):
        path = folder / rel
        if not path.is_file():
            raise ChecksumError(f"{what}: recorded weight file {rel} is missing (looked in {folder})")
        got = file_sha256(path)
        if got != sha:
            raise ChecksumError(f"checksum mismatch for {what}: {rel} has sha256 {got}, recorded {sha}; "
                                "the weights were altered or corrupted after they were recorded")


def write_sidecar(folder: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """Record the SHA-256 of ``folder/<name>`` for each name in ``folder/sha256.json`` (atomically, after the
    weights are complete); returns the record."""
    folder = Path(folder)
    record = {name: file_sha256(folder / name) for name in sorted(names)}
    atomic_write_json(folder / SIDECAR, record)
    return record


def verify_sidecar(path: str | os.PathLike) -> str:
    """Verify ``path`` against the ``sha256.json`` beside it; returns its SHA-256.

    Raises:
        ChecksumError: no sidecar, no entry for the file, or different bytes (the message says to re-run the stage
            that wrote it).
    """
    path = Path(path)
    sidecar = path.parent / SIDECAR
    if not sidecar.is_file():
        raise ChecksumError(f"{path}: no {SIDECAR} beside it, so its weights cannot be verified; re-run the stage "
                            "that wrote them")
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ChecksumError(f"{sidecar}: unreadable checksum record ({e})") from e
    if path.name not in record:
        raise ChecksumError(f"{path}: not listed in {sidecar}")
    verify_files(path.parent, {path.name: record[path.name]}, what=str(path))
    return record[path.name]


def verify_if_recorded(path: str | os.PathLike) -> bool:
    """:func:`verify_sidecar` when a ``sha256.json`` lists ``path`` (the project's own model folders); ``False``
    (nothing to check) for a file without one, e.g. a release checkpoint. Raises ``ChecksumError`` on a mismatch."""
    path = Path(path)
    sidecar = path.parent / SIDECAR
    if not sidecar.is_file():
        return False
    try:
        listed = path.name in json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ChecksumError(f"{sidecar}: unreadable checksum record ({e})") from e
    if listed:
        verify_sidecar(path)
    return listed
