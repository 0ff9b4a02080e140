"""Models: NAFNet, Restormer, PromptIR and SwinIR backbones (masked/plain), patch masking, degradation classifier, MaskDCPT wrapper.

See ``docs/method.md`` §1 for the architecture these implement.
"""

from maskdcpt.models.backbones import (
    ARCHS,
    BACKBONE_PRESETS,
    backbone_arch,
    build_backbone,
    load_backbone_state_dict,
    resolve_preset,
)
from maskdcpt.models.classifier import BottleneckBlock, DegradationClassifier
from maskdcpt.models.maskdcpt import RECON_HEAD_KINDS, MaskDCPTModel, ReconstructionHead, param_groups
from maskdcpt.models.masking import expand_mask, num_kept_patches, random_patch_mask
from maskdcpt.models.nafnet import (
    NAFNET_PRESETS,
    PAPER_5D_NUM_PARAMS,
    LayerNorm2d,
    NAFBlock,
    NAFBlocks,
    NAFNet,
    SimpleGate,
    build_nafnet,
    load_nafnet_state_dict,
    load_state_dict_strict,
)
from maskdcpt.models.promptir import PROMPTIR_PAPER_NUM_PARAMS, PromptIR, build_promptir
from maskdcpt.models.swinir import SWINIR_PAPER_NUM_PARAMS, SwinIR, build_swinir
from maskdcpt.models.restormer import (
    RESTORMER_PAPER_NUM_PARAMS,
    RESTORMER_PRESETS,
    Restormer,
    build_restormer,
    upstream_restormer_key,
)

__all__ = [
    "PROMPTIR_PAPER_NUM_PARAMS",
    "PromptIR",
    "build_promptir",
    "SWINIR_PAPER_NUM_PARAMS",
    "SwinIR",
    "build_swinir",
    "ARCHS",
    "BACKBONE_PRESETS",
    "RESTORMER_PAPER_NUM_PARAMS",
    "RESTORMER_PRESETS",
    "Restormer",
    "backbone_arch",
    "build_backbone",
    "build_restormer",
    "load_backbone_state_dict",
    "load_state_dict_strict",
    "resolve_preset",
    "upstream_restormer_key",
    "BottleneckBlock",
    "DegradationClassifier",
    "LayerNorm2d",
    "MaskDCPTModel",
    "NAFBlock",
    "NAFBlocks",
    "NAFNET_PRESETS",
    "NAFNet",
    "PAPER_5D_NUM_PARAMS",
    "RECON_HEAD_KINDS",
    "ReconstructionHead",
    "SimpleGate",
    "build_nafnet",
    "expand_mask",
    "load_nafnet_state_dict",
    "num_kept_patches",
    "param_groups",
    "random_patch_mask",
]
