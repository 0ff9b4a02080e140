"""The one checkpoint loader: read a file, strip prefixes, recognise the backbone from its key names, infer its
configuration from the weights' shapes, build it and load strictly.

Recognised architectures (:data:`~maskdcpt.models.backbones.ARCHS`) and their signature keys (after stripping
``module.`` / ``backbone.``):

* ``nafnet``: ``intro.weight`` and ``downs.0.weight``;
* ``restormer``: ``patch_embed.proj.weight`` and ``encoder_level1.*`` and no ``prompt1.*``;
* ``promptir``: ``patch_embed.proj.weight`` and ``prompt1.prompt_param``;
* ``swinir``: ``conv_first.weight``, ``conv_after_body.weight`` and ``layers.0.residual_group.*`` (or the split
  ``encode_layers.0.*`` layout).

``arch=...`` (``--arch`` on the command line) forces one. An unrecognised file raises ``ValueError`` listing the
known architectures and the first keys of the file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "load_checkpoint_state",
    "strip_prefixes",
    "detect_arch",
    "infer_config",
    "infer_nafnet_config",
    "build_restorer",
    "build_pretrain_model_from_state",
]

logger = logging.getLogger(__name__)

_WRAPPERS = ("params_ema", "params", "state_dict", "model")


def strip_prefixes(key: str, prefixes: tuple[str, ...] = ("module.",)) -> str:
    """``key`` without any leading ``prefixes`` (repeatedly: ``module.module.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def load_checkpoint_state(path: str | os.PathLike, key: str = "params_ema") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file: ``(state_dict, meta)``.

    Accepts ``{"params", "params_ema", "meta"}`` (ours and BasicSR/MaskDCPT releases; ``key`` picks the entry,
    falling back to the other with a logged warning), ``{"state_dict"|"model": ...}`` or a raw ``{name: tensor}``.
    Loaded with ``weights_only=True`` (no pickled code runs). ``module.`` prefixes are stripped. ``meta`` gets
    ``"weights_key"`` (the entry used, or None for a raw dict).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch checkpoint or no tensor state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign files
        raise ValueError(f"{path} is not a loadable torch checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta"), Mapping) else {}
    order = [key] + [k for k in _WRAPPERS if k != key]
    used = next((k for k in order if isinstance(obj.get(k), Mapping) and obj[k]), None)
    if used is not None and used != key and key in ("params", "params_ema"):
        logger.warning("%s has no %r entry; using %r", path, key, used)
    sd = obj[used] if used is not None else {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: no tensor state dict found (keys: {sorted(obj)[:8]})")
    meta["weights_key"] = used
    return {strip_prefixes(k): v for k, v in sd.items()}, meta


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _backbone_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone keys of a state dict: ``backbone.*`` of a whole MaskDCPT model (prefix removed), else all."""
    sd = {strip_prefixes(k): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in sd):
        return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def detect_arch(state: Mapping[str, torch.Tensor]) -> str:
    """The architecture of a (backbone or whole MaskDCPT) state dict from its key names.

    Raises:
        ValueError: no known signature matches; the message lists the known architectures and the first keys.
    """
    from maskdcpt.models.backbones import ARCHS

    sd = _backbone_part(state)
    keys = set(sd)
    if "intro.weight" in keys and "downs.0.weight" in keys:
        return "nafnet"
    if "conv_first.weight" in keys and "conv_after_body.weight" in keys and any(
            k.startswith(("layers.0.residual_group.", "encode_layers.0.")) for k in keys):
        return "swinir"
    if "patch_embed.proj.weight" in keys:
        if "prompt1.prompt_param" in keys:
            return "promptir"
        if any(k.startswith("encoder_level1.") for k in keys):
            return "restormer"
    first = ", ".join(list(sd)[:8])
    raise ValueError(
        f"unrecognised checkpoint: its keys match none of the known architectures ({', '.join(ARCHS)}: "
        "nafnet needs intro.weight + downs.0.weight; restormer patch_embed.proj.weight + encoder_level1.*; "
        "promptir patch_embed.proj.weight + prompt1.prompt_param; swinir conv_first.weight + conv_after_body.weight "
        f"+ layers.0.residual_group.*). First keys: [{first}]. Pass --arch/arch= to force one.")


def infer_nafnet_config(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """NAFNet constructor arguments read from a state dict's shapes and key names.

    ``img_channel``/``width`` from ``intro.weight`` (``[width, img_channel, 3, 3]``); the number of levels from
    ``downs.<i>``; blocks per level from ``encoders.<i>.blocks.<j>``, ``middle_blks.blocks.<j>`` and
    ``decoder<i>.blocks.<j>``. ``prefix`` (e.g. ``"backbone."``) is prepended to every key looked up.

    Raises:
        ValueError: the state dict is not a NAFNet (no ``intro.weight``).
    """
    keys = [k[len(prefix):] for k in state if k.startswith(prefix)]
    intro = state.get(prefix + "intro.weight")
    if intro is None or intro.dim() != 4:
        raise ValueError("not a NAFNet state dict: no 4-D 'intro.weight' tensor")
    levels = _count(keys, r"^downs\.(\d+)\.")
    if levels < 1:
        raise ValueError("not a NAFNet state dict: no 'downs.<i>' layers")
    enc = [_count(keys, rf"^encoders\.{i}\.blocks\.(\d+)\.") for i in range(levels)]
    dec = [_count(keys, rf"^decoder{i}\.blocks\.(\d+)\.") for i in range(levels)]
    mid = _count(keys, r"^middle_blks\.blocks\.(\d+)\.")
    return {"img_channel": int(intro.shape[1]), "width": int(intro.shape[0]), "enc_blk_nums": enc,
            "middle_blk_num": mid, "dec_blk_nums": dec}


_FFN_FACTORS = (2.66, 2.0, 2.5, 3.0, 4.0, 1.5, 1.0)


def _ffn_factor(sd: Mapping[str, torch.Tensor]) -> float:
    """The FFN expansion factor consistent with every ``ffn.project_out`` ``[dim, int(dim * f)]`` in ``sd``."""
    pairs = {(int(v.shape[0]), int(v.shape[1])) for k, v in sd.items() if k.endswith("ffn.project_out.weight")}
    if not pairs:
        raise ValueError("no 'ffn.project_out.weight' tensors: cannot infer the FFN expansion factor")
    for f in _FFN_FACTORS:
        if all(int(d * f) == h for d, h in pairs):
            return f
    d, h = min(pairs)
    return h / d + 1e-9


def _heads(sd: Mapping[str, torch.Tensor], stage: str) -> int:
    t = sd.get(f"{stage}.blocks.0.attn.temperature")
    if t is None:
        raise ValueError(f"cannot infer the heads of {stage}: no {stage}.blocks.0.attn.temperature (empty stage)")
    return int(t.shape[0])


def _restormer_like(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    from maskdcpt.models.restormer import upstream_restormer_key

    sd = {upstream_restormer_key(k): v for k, v in sd.items()}
    keys = list(sd)
    pe = sd["patch_embed.proj.weight"]
    stages = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    return {
        "inp_channels": int(pe.shape[1]), "out_channels": int(pe.shape[1]), "dim": int(pe.shape[0]),
        "num_blocks": [_count(keys, rf"^{s}\.blocks\.(\d+)\.") for s in stages],
        "num_refinement_blocks": _count(keys, r"^refinement\.blocks\.(\d+)\."),
        "heads": [_heads(sd, s) for s in stages],
        "ffn_expansion_factor": _ffn_factor(sd), "bias": "output.bias" in sd,
    }, sd


def infer_config(arch: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Constructor arguments of ``arch`` read from a backbone state dict's shapes and key names.

    SwinIR without relative position bias tables does not reveal its head counts in any shape: they come from
    ``meta["preset"]`` when it names a preset with the same ``embed_dim`` and depths, else 6 per RSTB (the paper
    configuration) when ``embed_dim`` is divisible by 6. (A preset with the same ``embed_dim`` and depths is
    tried before that.) Window size: from the bias table or ``attn_mask`` when
    present, else the preset's / 8.

    Raises:
        ValueError: unknown arch or a state dict without the keys the arch needs.
    """
    from maskdcpt.models.backbones import BACKBONE_PRESETS, resolve_preset

    meta = dict(meta or {})
    sd = _backbone_part(state)
    if arch == "nafnet":
        return infer_nafnet_config(sd)
    try:
        if arch == "restormer":
            return _restormer_like(sd)[0]
        if arch == "promptir":
            cfg, sd2 = _restormer_like(sd)
            prompts = [sd2[f"prompt{k}.prompt_param"] for k in (1, 2, 3)]
            cfg.update({
                "prompt_dims": [int(p.shape[2]) for p in prompts], "prompt_len": int(prompts[0].shape[1]),
                "prompt_sizes": [int(p.shape[3]) for p in prompts],
                "noise_heads": int(sd2["noise_level1.attn.temperature"].shape[0]),
                "unused_convs": "chnl_reduce1.weight" in sd2,
            })
            if cfg["unused_convs"]:
                cfg["unused_reduce3_dim"] = int(sd2["chnl_reduce3.weight"].shape[0])
            return cfg
        if arch == "swinir":
            from maskdcpt.models.swinir import swinir_key_map

            km = swinir_key_map(list(sd))
            buffers = {k: v for k, v in sd.items() if km[k] is None}
            sd = {km[k]: v for k, v in sd.items() if km[k] is not None}
            keys = list(sd)
            cf = sd["conv_first.weight"]
            n = _count(keys, r"^layers\.(\d+)\.")
            depths = [_count(keys, rf"^layers\.{i}\.residual_group\.blocks\.(\d+)\.") for i in range(n)]
            fc1 = sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"]
            rel = "layers.0.residual_group.blocks.0.attn.relative_position_bias_table" in sd
            cfg = {"in_chans": int(cf.shape[1]), "embed_dim": int(cf.shape[0]), "depths": depths,
                   "mlp_ratio": float(fc1.shape[0]) / float(fc1.shape[1]), "rel_pos_bias": rel,
                   "shift_mask": rel or any(k.endswith(".attn_mask") for k in buffers)}
            preset = None
            if meta.get("arch") in (None, "swinir") and meta.get("preset"):
                try:
                    preset = resolve_preset("swinir", str(meta["preset"]))
                except ValueError:
                    preset = None
            p = BACKBONE_PRESETS["swinir"].get(preset or "", {})
            if rel:
                tables = [sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"] for i in range(n)]
                cfg["num_heads"] = [int(t.shape[1]) for t in tables]
                cfg["window_size"] = (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2
            else:
                same = [q for q in ([p] if p else []) + list(BACKBONE_PRESETS["swinir"].values())
                        if q["embed_dim"] == cfg["embed_dim"] and list(q["depths"]) == depths]
                if same:
                    p = same[0]
                    cfg["num_heads"] = list(p["num_heads"])
                elif cfg["embed_dim"] % 6 == 0:
                    cfg["num_heads"] = [6] * n
                else:
                    raise ValueError("SwinIR without relative position bias tables: the head counts are not in the "
                                     "weights and no preset has this embed_dim/depths; save the checkpoint with "
                                     "meta['preset']")
                masks = [v for k, v in buffers.items() if k.endswith(".attn_mask")]
                if masks:
                    cfg["window_size"] = int(round(masks[0].shape[-1] ** 0.5))
                else:
                    cfg["window_size"] = int(p.get("window_size", 8)) if p else 8
            return cfg
    except KeyError as e:
        raise ValueError(f"not a complete {arch} state dict: missing {e}") from e
    raise ValueError(f"unknown arch {arch!r}")


def _preset_name(arch: str, cfg: Mapping[str, Any]) -> str | None:
    """The preset of ``arch`` whose every setting equals ``cfg``'s, or None."""
    from maskdcpt.models.backbones import BACKBONE_PRESETS

    def same(a: Any, b: Any) -> bool:
        if isinstance(b, (list, tuple)):
            return list(a) == list(b)
        if isinstance(b, float):
            return abs(float(a) - b) < 1e-6
        return a == b

    for name, p in BACKBONE_PRESETS[arch].items():
        if all(k in cfg and same(cfg[k], v) for k, v in p.items()):
            return name
    return None


def build_restorer(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                   arch: str | None = None) -> nn.Module:
    """Build and strictly load the plain backbone of a state dict (a backbone or a whole MaskDCPT model).

    ``arch`` forces the architecture (else :func:`detect_arch`); the configuration comes from
    :func:`infer_config`. The network gets ``maskdcpt_info = {"arch", "preset" (matching preset or None),
    "config", "load_report"}``.

    Raises:
        ValueError: unknown/unrecognised architecture, or weights that do not load strictly.
    """
    from maskdcpt.models.backbones import ARCHS, build_backbone, load_backbone_state_dict

    sd = _backbone_part(state)
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; available: {', '.join(ARCHS)}")
    arch = arch or detect_arch(sd)
    cfg = infer_config(arch, sd, meta)
    net = build_backbone(arch, None, **cfg)
    report = load_backbone_state_dict(net, sd, key=None)
    net.maskdcpt_info = {"arch": arch, "preset": _preset_name(arch, cfg), "config": cfg, "load_report": report}
    return net


def build_pretrain_model_from_state(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                                    arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and strictly load a whole :class:`~maskdcpt.models.maskdcpt.MaskDCPTModel` (backbone, degradation
    classifier, reconstruction head) from its state dict, for any backbone.

    Returns ``(model, info)`` with ``info = {"arch", "config", "num_classes", "recon_head"}``.

    Raises:
        ValueError: not a MaskDCPT pre-training state dict (no ``backbone.*`` and ``classifier.fc.weight``) or
            weights that do not load strictly.
    """
    from maskdcpt.models import MaskDCPTModel
    from maskdcpt.models.backbones import build_backbone

    meta = dict(meta or {})
    sd = {strip_prefixes(k): v for k, v in state.items()}
    if "classifier.fc.weight" not in sd or not any(k.startswith("backbone.") for k in sd):
        raise ValueError("not a MaskDCPT pre-training checkpoint (no 'backbone.*' and 'classifier.fc.weight')")
    backbone_sd = _backbone_part(sd)
    arch = arch or detect_arch(backbone_sd)
    cfg = infer_config(arch, backbone_sd, meta)
    keys = list(sd)
    num_classes = int(sd["classifier.fc.weight"].shape[0])
    cls_blocks = _count(keys, r"^classifier\.bottleneck_layers\.0\.(\d+)\.")
    head = "token" if "recon_head.mask_token" in sd else "ending"
    recon_blocks = _count(keys, r"^recon_head\.blocks\.blocks\.(\d+)\.")
    backbone = build_backbone(arch, None, **cfg)
    model = MaskDCPTModel(backbone, num_classes=num_classes, keep_ratio=float(meta.get("keep_ratio", 0.5)),
                          recon_head=head, recon_blocks=recon_blocks, classifier_blocks=cls_blocks or 2)
    from maskdcpt.models.backbones import load_backbone_state_dict

    load_backbone_state_dict(model.backbone, backbone_sd, key=None)  # official names / buffers handled
    heads = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    missing, unexpected = model.load_state_dict({**{f"backbone.{k}": v for k, v in
                                                    model.backbone.state_dict().items()}, **heads}, strict=False)
    if missing or unexpected:
        raise ValueError(f"MaskDCPT heads do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model, {"arch": arch, "config": cfg, "num_classes": num_classes, "recon_head": head}
