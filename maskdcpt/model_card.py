"""What the demo page (and anyone else) shows about a model: its registry record or its checkpoint file.

:func:`model_card` collects it as a dict, :func:`card_markdown` renders it.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from maskdcpt.integrity import file_sha256

__all__ = ["model_card", "card_markdown"]

_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def model_card(spec: str, net: Any = None, tracking: str | None = None) -> dict[str, Any]:
    """What the page shows about the model.

    For a registry URI (``models:/<name>@<alias>`` or ``models:/<name>/<version>``): name, version, aliases,
    the version's tags (``decision``, ``reason``, ``benchmark_id``, ``benchmark_mean_psnr``,
    ``champion_version_before``, written by the pipeline's ``register`` stage), the benchmark table it was
    promoted on (the run's ``register/decision.json`` artifact: per-degradation PSNR of the challenger and of the
    champion before), and the git commit and ``dvc.*`` hashes tagged on the run or its parent pipeline run.
    For a checkpoint file: its path, sha256 and ``meta``. Missing pieces are left out (``notes`` says which).
    Never raises for a registry that lacks them.
    """
    card: dict[str, Any] = {"source": str(spec), "notes": []}
    info = dict(getattr(net, "maskdcpt_info", {}) or {}) if net is not None else {}
    for k in ("arch", "preset", "fast_path"):
        if info.get(k):
            card[k] = info[k]
    if net is not None:
        try:
            card["parameters"] = int(sum(p.numel() for p in net.parameters()))
        except Exception:  # noqa: BLE001 - an exotic module without parameters()
            pass
    m = _URI_RE.match(str(spec))
    if m is None:
        p = Path(str(spec))
        if p.is_file():
            card["kind"] = "checkpoint file"
            card["sha256"] = file_sha256(p)
            card["notes"].append("a checkpoint file, not a registered version: no promotion record")
        else:
            card["kind"] = "model"
        return card
    card["kind"] = "registered model"
    try:
        import mlflow
        from mlflow import MlflowClient

        from maskdcpt.config import tracking_uri

        uri = tracking or mlflow.get_tracking_uri() or tracking_uri()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = m.group("name")
        mv = (client.get_model_version_by_alias(name, m.group("alias")) if m.group("alias")
              else client.get_model_version(name, m.group("version")))
    except Exception as e:  # noqa: BLE001 - MlflowException and store errors: show what is known
        card["notes"].append(f"registry lookup failed: {type(e).__name__}: {str(e)[:200]}")
        return card
    card.update({"name": name, "version": str(mv.version), "aliases": list(getattr(mv, "aliases", []) or []),
                 "run_id": mv.run_id, "created": _ms_to_iso(getattr(mv, "creation_timestamp", None))})
    tags = dict(mv.tags or {})
    for k in ("decision", "reason", "benchmark_id", "benchmark_mean_psnr", "champion_version_before"):
        if k in tags:
            card[k] = tags[k]
    run_tags: dict[str, str] = {}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            run_tags = dict(run.data.tags)
            parent = run_tags.get("mlflow.parentRunId")
            if parent:
                run_tags = {**dict(client.get_run(parent).data.tags), **run_tags}
        except Exception as e:  # noqa: BLE001
            card["notes"].append(f"run {mv.run_id} not readable: {type(e).__name__}")
        try:
            import mlflow.artifacts

            decision = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/register/decision.json")
            card["benchmark"] = {"challenger": decision.get("challenger_psnr"),
                                 "champion_before": decision.get("champion_psnr_before"),
                                 "promoted": decision.get("promoted"), "reason": decision.get("reason")}
            card.setdefault("reason", decision.get("reason"))
            if "decision" not in card and decision.get("promoted") is not None:
                card["decision"] = "promoted" if decision["promoted"] else "rejected"
        except Exception:  # noqa: BLE001 - no decision artifact (a version registered by hand)
            card["notes"].append("no register/decision.json artifact on the version's run")
    commit = run_tags.get("git_commit") or run_tags.get("mlflow.source.git.commit")
    if commit:
        card["git_commit"] = commit
    dvc = {k[len("dvc."):]: v for k, v in sorted(run_tags.items()) if k.startswith("dvc.")}
    if dvc:
        card["dvc"] = dvc
    return card


def _ms_to_iso(ms: Any) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(ms) / 1000))


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (a key/value list, the benchmark table, DVC hashes)."""
    lines = ["### Model card", ""]
    rows = [("source", card.get("source")), ("kind", card.get("kind")), ("registered version",
            f"{card['name']} v{card['version']}" if "version" in card else None),
            ("aliases", ", ".join(card.get("aliases") or []) or None), ("created", card.get("created")),
            ("promotion decision", card.get("decision")), ("reason", card.get("reason")),
            ("benchmark id", card.get("benchmark_id")), ("benchmark mean PSNR (dB)", card.get("benchmark_mean_psnr")),
            ("champion before", card.get("champion_version_before")), ("git commit", card.get("git_commit")),
            ("run", card.get("run_id")), ("architecture", card.get("arch")), ("preset", card.get("preset")),
            ("parameters", f"{card['parameters']:,}" if "parameters" in card else None),
            ("inference path", card.get("fast_path", "eager")), ("checkpoint sha256", card.get("sha256"))]
    for k, v in rows:
        if v not in (None, ""):
            lines.append(f"- **{k}**: `{v}`" if k in ("git commit", "run", "checkpoint sha256", "benchmark id",
                                                     "source") else f"- **{k}**: {v}")
    bench = card.get("benchmark") or {}
    chal, before = bench.get("challenger") or {}, bench.get("champion_before") or {}
    if chal:
        labels = [k for k in chal if k != "mean"] + (["mean"] if "mean" in chal else [])
        lines += ["", "**Benchmark it was promoted on** (PSNR dB, benchmark pairs of the pipeline)", "",
                  "| model | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|",
                  "| this version | " + " | ".join(_fmt(chal.get(k)) for k in labels) + " |"]
        if before:
            lines.append("| champion before | " + " | ".join(_fmt(before.get(k)) for k in labels) + " |")
    if card.get("dvc"):
        lines += ["", "**DVC outputs it came from** (`dvc.lock` hashes)", ""]
        lines += [f"- `{k}`: `{v}`" for k, v in card["dvc"].items()]
    if card.get("notes"):
        lines += ["", *[f"_{n}_" for n in card["notes"]]]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{float(v):.2f}" if isinstance(v, (int, float)) and math.isfinite(float(v)) else "-"
