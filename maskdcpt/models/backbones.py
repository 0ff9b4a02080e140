"""One entry point for every backbone: presets, construction and strict weight loading by architecture name.

Spec: ``docs/method.md`` §1.2 (NAFNet, ``paper-5d``), §1.7 (Restormer repo variant, ``paper``);
PromptIR (Potlapalli et al., NeurIPS 2023) and SwinIR (Liang et al., ICCVW 2021): see their modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from maskdcpt.models.nafnet import NAFNET_PRESETS, NAFNet, build_nafnet, load_state_dict_strict
from maskdcpt.models.promptir import PROMPTIR_PRESETS, PromptIR, build_promptir
from maskdcpt.models.restormer import RESTORMER_PRESETS, Restormer, build_restormer, upstream_restormer_key
from maskdcpt.models.swinir import SWINIR_PRESETS, SwinIR, build_swinir, swinir_key_map

__all__ = ["ARCHS", "BACKBONE_PRESETS", "build_backbone", "backbone_arch", "load_backbone_state_dict",
           "resolve_preset"]

#: Architecture names accepted by :func:`build_backbone` (the ``model.arch`` parameter).
ARCHS = ("nafnet", "restormer", "promptir", "swinir")

#: ``{arch: {preset: constructor kwargs}}``. NAFNet: ``paper-5d`` (67,888,835 parameters), ``cpu-default``,
#: ``tiny``; Restormer: ``paper`` (= ``paper-5d``, 26,126,644 parameters), ``cpu-default``, ``tiny``; PromptIR:
#: ``paper`` (= ``paper-5d``, 35,592,263), ``cpu-default``, ``tiny``; SwinIR: ``paper`` (= ``paper-5d``,
#: 11,455,563), ``official`` (11,504,163), ``cpu-default``, ``tiny``.
BACKBONE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "nafnet": NAFNET_PRESETS, "restormer": RESTORMER_PRESETS, "promptir": PROMPTIR_PRESETS, "swinir": SWINIR_PRESETS}

_ALIASES = {"nafnet": {"paper": "paper-5d"}, "restormer": {"paper-5d": "paper"}, "promptir": {"paper-5d": "paper"},
            "swinir": {"paper-5d": "paper"}}
_BUILDERS = {"nafnet": build_nafnet, "restormer": build_restormer, "promptir": build_promptir,
             "swinir": build_swinir}
_CLASSES = {"nafnet": NAFNet, "restormer": Restormer, "promptir": PromptIR, "swinir": SwinIR}


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
        arch: one of :data:`ARCHS` (``"nafnet"``, ``"restormer"``, ``"promptir"``, ``"swinir"``).
        preset: a name from ``BACKBONE_PRESETS[arch]`` (``paper`` / ``paper-5d`` accepted for all), or None for
            the constructor defaults (the paper configs).
        **overrides: constructor kwargs (None values ignored).

    Returns:
        a NAFNet, Restormer, PromptIR or SwinIR; all expose ``forward(inp)``, ``forward_features(inp, mask)``,
        ``check_input``, ``padder_size`` / ``pad_multiple`` (the side multiple of the input: 16, 8, 8, 8),
        ``mask_patch_size``, ``feature_dims``, ``last_dim`` and ``img_channel``.

    Raises:
        ValueError: unknown arch or preset.
    """
    preset = resolve_preset(arch, preset)
    return _BUILDERS[arch](preset, **overrides)


def pad_multiple(arch: str, preset: str | None = None) -> int:
    """The side multiple (px) an input of backbone ``arch`` / ``preset`` must have (its downsampling factor or
    window size), read from a copy built on the ``meta`` device (no memory). Raises ``ValueError`` as
    :func:`build_backbone`."""
    import torch

    with torch.device("meta"):
        return int(build_backbone(arch, preset).pad_multiple)


def backbone_arch(model: nn.Module) -> str:
    """The :data:`ARCHS` name of a backbone instance. Raises ``ValueError`` for anything else."""
    for arch, cls in _CLASSES.items():
        if type(model) is cls:
            return arch
    for arch, cls in _CLASSES.items():
        if isinstance(model, cls):
            return arch
    raise ValueError(f"not a known backbone: {type(model).__name__} (expected one of "
                     f"{', '.join(c.__name__ for c in _CLASSES.values())})")


def load_backbone_state_dict(
    model: nn.Module, state: Mapping[str, Any], key: str | None = "params_ema"
) -> dict[str, Any]:
    """Strictly load weights into any backbone of :data:`ARCHS` from a raw state dict or a BasicSR-style checkpoint.

    Generalises :func:`~maskdcpt.models.nafnet.load_nafnet_state_dict`: ``params``/``params_ema`` (falls back
    to the other with a logged warning; evaluation: ``params_ema``, docs/method.md §6 item 8), ``state_dict``/``model``
    entries, leading ``module.``/``backbone.`` prefixes stripped (with ``backbone.`` present, other keys, e.g.
    the MaskDCPT heads, are ignored and listed). For a Restormer, upstream-Restormer key names
    (``encoder_level1.0.``, ``down1_2.body.0.``, ``norm1.body.``) are translated to the repo layout
    (:func:`~maskdcpt.models.restormer.upstream_restormer_key`); the same for a PromptIR. For a SwinIR the
    recomputed buffers of official files (``relative_position_index``, ``attn_mask``) are dropped and a split
    ``encode_layers``/``decode_layers<j>`` layout is mapped to ``layers.<i>``
    (:func:`~maskdcpt.models.swinir.swinir_key_map`); dropped keys are listed in ``report["dropped_keys"]``.

    Returns:
        the report of :func:`~maskdcpt.models.nafnet.load_state_dict_strict` plus ``arch``.

    Raises:
        ValueError: unknown model type; no state dict; missing/unexpected keys (the first few of each listed);
            shape mismatches.
    """
    arch = backbone_arch(model)
    rename = upstream_restormer_key if arch in ("restormer", "promptir") else None
    dropped: list[str] = []
    if arch == "swinir":
        state, dropped = _swinir_prepare(state)
        rename = _swinir_rename(state)
    report = load_state_dict_strict(model, state, key, rename=rename)
    report["arch"] = arch
    report["dropped_keys"] = dropped
    return report


def _swinir_prepare(state: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
    """Drop SwinIR's recomputed buffers from a raw state dict or from every state dict inside a checkpoint."""
    dropped: list[str] = []

    def clean(sd: Mapping[str, Any]) -> dict[str, Any]:
        km = swinir_key_map([k.split("module.", 1)[-1] if k.startswith("module.") else k for k in sd])
        out = {}
        for k, v in sd.items():
            bare = k[len("module."):] if k.startswith("module.") else k
            if km.get(bare, bare) is None:
                dropped.append(k)
            else:
                out[k] = v
        return out

    if not isinstance(state, Mapping):
        return state, dropped
    if any(isinstance(v, Mapping) for v in state.values()):
        return {k: (clean(v) if isinstance(v, Mapping) else v) for k, v in state.items()}, sorted(set(dropped))
    return clean(state), sorted(set(dropped))


def _swinir_rename(state: Mapping[str, Any]):
    """A key -> key function mapping a split ``encode_layers``/``decode_layers<j>`` layout to ``layers.<i>``."""
    keys: list[str] = []
    for v in (state.values() if isinstance(state, Mapping) else ()):
        if isinstance(v, Mapping):
            keys.extend(v)
    if isinstance(state, Mapping):
        keys.extend(k for k, v in state.items() if not isinstance(v, Mapping))

    n_enc = len({m.group(1) for k in keys if (m := re.match(r"^(?:module\.|backbone\.)*encode_layers\.(\d+)\.", k))})

    def rename_fast(k: str) -> str:
        k = re.sub(r"^encode_layers\.(\d+)\.", r"layers.\1.", k)
        return re.sub(r"^decode_layers(\d+)\.", lambda mm: f"layers.{n_enc + int(mm.group(1))}.", k)

    return rename_fast
