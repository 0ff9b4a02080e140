"""One entry point for every backbone: presets, construction and strict weight loading by architecture name.

Spec: ``shared/docs/maskdcpt-method.md`` §1.2 (NAFNet, ``paper-5d``), §1.7 (Restormer repo variant, ``paper``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from maskdcpt.models.nafnet import NAFNET_PRESETS, NAFNet, build_nafnet, load_state_dict_strict
from maskdcpt.models.restormer import RESTORMER_PRESETS, Restormer, build_restormer, upstream_restormer_key

__all__ = ["ARCHS", "BACKBONE_PRESETS", "build_backbone", "backbone_arch", "load_backbone_state_dict",
           "resolve_preset"]

#: Architecture names accepted by :func:`build_backbone` (the ``model.arch`` parameter).
ARCHS = ("nafnet", "restormer")

#: ``{arch: {preset: constructor kwargs}}``. NAFNet: ``paper-5d`` (67,888,835 parameters), ``cpu-default``,
#: ``tiny``; Restormer: ``paper`` (= ``paper-5d``, 26,126,644 parameters), ``cpu-default``, ``tiny``.
BACKBONE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {"nafnet": NAFNET_PRESETS, "restormer": RESTORMER_PRESETS}

_ALIASES = {"nafnet": {"paper": "paper-5d"}, "restormer": {"paper-5d": "paper"}}


def resolve_preset(arch: str, preset: str | None) -> str | None:
    """Canonical preset name for ``arch`` (``paper`` and ``paper-5d`` are accepted for both architectures).

    Raises:
        ValueError: unknown arch or preset (the valid names are listed).
    """
    if arch not in BACKBONE_PRESETS:
        raise ValueError(f"unknown arch {arch!r}; available: {', '.join(ARCHS)}")
    if preset is None:
        return None
    preset = _ALIASES[arch].get(preset, preset)
    if preset not in BACKBONE_PRESETS[arch]:
        raise ValueError(f"unknown {arch} preset {preset!r}; choose one of {sorted(BACKBONE_PRESETS[arch])}")
    return preset


def build_backbone(arch: str = "nafnet", preset: str | None = "cpu-default", **overrides: Any) -> nn.Module:
    """Build a backbone by architecture name and preset (plus constructor keyword overrides).

    Args:
        arch: ``"nafnet"`` or ``"restormer"``.
        preset: a name from ``BACKBONE_PRESETS[arch]`` (``paper`` / ``paper-5d`` accepted for both), or None for
            the constructor defaults (the paper configs).
        **overrides: constructor kwargs (None values ignored).

    Returns:
        a :class:`~maskdcpt.models.nafnet.NAFNet` or :class:`~maskdcpt.models.restormer.Restormer`; both expose
        ``forward(inp)``, ``forward_features(inp, mask)``, ``check_input``, ``padder_size``,
        ``mask_patch_size``, ``feature_dims``, ``last_dim`` and ``img_channel``.

    Raises:
        ValueError: unknown arch or preset.
    """
    preset = resolve_preset(arch, preset)
    if arch == "nafnet":
        return build_nafnet(preset, **overrides)
    return build_restormer(preset, **overrides)


def backbone_arch(model: nn.Module) -> str:
    """``"nafnet"`` or ``"restormer"`` for a backbone instance. Raises ``ValueError`` for anything else."""
    if isinstance(model, NAFNet):
        return "nafnet"
    if isinstance(model, Restormer):
        return "restormer"
    raise ValueError(f"not a known backbone: {type(model).__name__} (expected NAFNet or Restormer)")


def load_backbone_state_dict(
    model: nn.Module, state: Mapping[str, Any], key: str | None = "params_ema"
) -> dict[str, Any]:
    """Strictly load weights into a NAFNet or Restormer from a raw state dict or a BasicSR-style checkpoint.

    Generalises :func:`~maskdcpt.models.nafnet.load_nafnet_state_dict`: ``params``/``params_ema`` (falls back
    to the other with a logged warning; evaluation uses ``params_ema``, spec gotcha 8), ``state_dict``/``model``
    entries, leading ``module.``/``backbone.`` prefixes stripped (with ``backbone.`` present, other keys, e.g.
    the MaskDCPT heads, are ignored and listed). For a Restormer, upstream-Restormer key names
    (``encoder_level1.0.``, ``down1_2.body.0.``, ``norm1.body.``) are translated to the repo layout
    (:func:`~maskdcpt.models.restormer.upstream_restormer_key`).

    Returns:
        the report of :func:`~maskdcpt.models.nafnet.load_state_dict_strict` plus ``arch``.

    Raises:
        ValueError: unknown model type; no state dict; missing/unexpected keys (the first few of each listed);
            shape mismatches.
    """
    arch = backbone_arch(model)
    rename = upstream_restormer_key if arch == "restormer" else None
    report = load_state_dict_strict(model, state, key, rename=rename)
    report["arch"] = arch
    return report
