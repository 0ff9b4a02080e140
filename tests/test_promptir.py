"""PromptIR backbone: parameter count, key names, masking property, strict loading of upstream names, overfitting."""

from __future__ import annotations

import re

import pytest
import torch

from backbone_props import check_all_visible_equals_plain, check_masking_property, overfit_losses, randomize_
from maskdcpt.models import build_backbone, load_backbone_state_dict
from maskdcpt.models.promptir import PROMPTIR_PAPER_NUM_PARAMS


def test_paper_parameter_count_and_keys():
    with torch.device("meta"):
        net = build_backbone("promptir", "paper-5d")
    assert sum(p.numel() for p in net.parameters()) == PROMPTIR_PAPER_NUM_PARAMS == 35_592_263
    assert round(PROMPTIR_PAPER_NUM_PARAMS / 1e6, 2) == 35.59  # PromptIR paper: 35.59 M
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = {"patch_embed.proj.weight": (48, 3, 3, 3), "prompt1.prompt_param": (1, 5, 64, 64, 64),
            "prompt3.prompt_param": (1, 5, 320, 16, 16), "prompt2.linear_layer.weight": (5, 192),
            "noise_level3.attn.qkv.weight": (2112, 704, 1, 1), "reduce_noise_level3.weight": (192, 704, 1, 1),
            "up4_3.conv.weight": (384, 192, 3, 3), "reduce_chan_level3.weight": (192, 288, 1, 1),
            "reduce_noise_level1.weight": (96, 160, 1, 1), "latent.blocks.7.ffn.project_out.weight": (384, 1021, 1, 1),
            "chnl_reduce3.weight": (256, 320, 1, 1), "output.weight": (3, 96, 3, 3)}
    assert {k: shapes.get(k) for k in want} == want
    assert net.pad_multiple == 8 and net.mask_patch_size == 16 and net.feature_dims == [96, 96, 192]
    assert not net.chnl_reduce1.weight.requires_grad  # defined by the release but never called


def test_masking_property_every_stage():
    torch.manual_seed(0)
    model = build_backbone("promptir", "tiny")
    randomize_(model)
    stages = ["encoder_level1", "latent", "noise_level3", "reduce_noise_level3", "decoder_level3", "prompt2",
              "noise_level2", "decoder_level2", "prompt1", "noise_level1", "reduce_noise_level1", "decoder_level1",
              "refinement"]
    check_masking_property(model, stages, global_only=("prompt1", "prompt2", "prompt3"))
    check_all_visible_equals_plain(model)


def test_strict_loading_upstream_names():
    torch.manual_seed(0)
    src = build_backbone("promptir", "tiny", unused_convs=True)
    randomize_(src, seed=5)
    sd = src.state_dict()

    def upstream(k: str) -> str:  # the release's nn.Sequential stages, Down/Upsample .body.0, LayerNorm .body
        k = re.sub(r"^(\w+)\.blocks\.(\d+)\.", r"\1.\2.", k)
        k = re.sub(r"^((?:down|up)\d_\d)\.conv\.", r"\1.body.0.", k)
        return re.sub(r"\.(norm[12])\.(weight|bias)$", r".\1.body.\2", k)

    up = {"module." + upstream(k): v for k, v in sd.items()}
    assert "module.noise_level1.norm1.body.weight" in up and "module.encoder_level1.0.attn.qkv.weight" in up
    dst = build_backbone("promptir", "tiny", unused_convs=True)
    rep = load_backbone_state_dict(dst, {"params": up, "params_ema": up})
    assert rep["arch"] == "promptir" and rep["renamed_keys"] > 0
    assert all(torch.equal(v, sd[k]) for k, v in dst.state_dict().items())
    with pytest.raises(ValueError, match="unexpected"):  # the unused convs are part of the layout
        load_backbone_state_dict(build_backbone("promptir", "tiny"), up, key=None)


def test_overfit_pretraining_and_finetuning():
    # the prompt-weighted decoder learns the fixed denoising batch more slowly than NAFNet: more steps, NAFNet's lr
    pre, fine = overfit_losses("promptir", fine_steps=80, fine_lr=5e-3)
    assert min(pre) < 0.5 * pre[0], pre
    assert min(fine) < 0.5 * fine[0], fine
