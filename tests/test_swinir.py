"""SwinIR backbone: parameter counts, official key names, masking property, strict loading, overfitting."""

from __future__ import annotations

import pytest
import torch

from backbone_props import check_all_visible_equals_plain, check_masking_property, overfit_losses, randomize_
from maskdcpt.models import MaskDCPTModel, build_backbone, load_backbone_state_dict
from maskdcpt.models.swinir import SWINIR_OFFICIAL_NUM_PARAMS, SWINIR_PAPER_NUM_PARAMS


def test_paper_and_official_parameter_counts_and_keys():
    with torch.device("meta"):
        paper = build_backbone("swinir", "paper-5d")
        official = build_backbone("swinir", "official")
    # paper config (embed 180, [6]*6, heads 6, mlp 2, window 8) without / with relative position bias tables
    assert sum(p.numel() for p in paper.parameters()) == SWINIR_PAPER_NUM_PARAMS == 11_455_563
    assert sum(p.numel() for p in official.parameters()) == SWINIR_OFFICIAL_NUM_PARAMS == 11_504_163
    assert SWINIR_OFFICIAL_NUM_PARAMS - SWINIR_PAPER_NUM_PARAMS == 36 * (2 * 8 - 1) ** 2 * 6
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    want = {"conv_first.weight": (180, 3, 3, 3), "patch_embed.norm.weight": (180,),
            "layers.0.residual_group.blocks.0.attn.qkv.weight": (540, 180),
            "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": (225, 6),
            "layers.5.residual_group.blocks.5.mlp.fc1.weight": (360, 180), "layers.5.conv.weight": (180, 180, 3, 3),
            "norm.bias": (180,), "conv_after_body.weight": (180, 180, 3, 3), "conv_last.weight": (3, 180, 3, 3)}
    assert {k: shapes.get(k) for k in want} == want
    assert not any("relative_position_index" in k or "attn_mask" in k for k in shapes)  # buffers, not state
    assert not any("bias_table" in k for k in paper.state_dict())
    assert paper.pad_multiple == paper.padder_size == 8 and paper.mask_patch_size == 16
    assert paper.tap_layers == [3, 4, 5] and paper.feature_dims == [180, 180, 180] and paper.last_dim == 180


@pytest.mark.parametrize("variant", [{}, {"rel_pos_bias": True, "shift_mask": True}])
def test_masking_property_every_block(variant):
    torch.manual_seed(0)
    model = build_backbone("swinir", "tiny", **variant)
    randomize_(model)
    stages = [f"layers.{i}.residual_group.blocks.{j}" for i in range(2) for j in range(2)] + ["layers.0", "layers.1"]
    check_masking_property(model, stages)
    check_all_visible_equals_plain(model)


def test_shapes_and_errors():
    model = build_backbone("swinir", "tiny")
    x = torch.rand(2, 3, 24, 40)
    assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="padder_size=8"):
        model(torch.rand(1, 3, 20, 24))
    with pytest.raises(ValueError, match="mask_patch_size=16"):
        model.forward_features(x, torch.ones(2, 1, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of window_size"):
        build_backbone("swinir", "tiny", mask_patch_size=12)
    m4 = build_backbone("swinir", "tiny", depths=[2, 2, 2, 2], num_heads=[2, 2, 2, 2])
    last, feats = m4.forward_features(torch.rand(1, 3, 32, 48))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 32, 48), (1, 16, 16, 24)] and last.shape == (1, 16, 32, 48)


def test_strict_loading_official_file_layout():
    torch.manual_seed(0)
    src = build_backbone("swinir", "tiny", rel_pos_bias=True, shift_mask=True)
    randomize_(src, seed=5)
    sd = dict(src.state_dict())
    # what an official file carries besides the parameters: the recomputed buffers, and a DataParallel prefix
    sd_file = {f"module.{k}": v for k, v in sd.items()}
    sd_file["module.layers.0.residual_group.blocks.0.attn.relative_position_index"] = torch.zeros(64, 64).long()
    sd_file["module.layers.0.residual_group.blocks.1.attn_mask"] = torch.zeros(4, 64, 64)
    dst = build_backbone("swinir", "tiny", rel_pos_bias=True, shift_mask=True)
    rep = load_backbone_state_dict(dst, {"params": sd_file}, key="params_ema")  # no EMA: falls back
    assert rep["arch"] == "swinir" and rep["fell_back"] and rep["source_key"] == "params"
    assert len(rep["dropped_keys"]) == 2 and rep["stripped_prefixes"] == ["module."]
    assert all(torch.equal(v, sd[k]) for k, v in dst.state_dict().items())
    # the split encode_layers / decode_layers<j> layout maps onto layers.<i>
    m4 = build_backbone("swinir", "tiny", depths=[2, 2, 2, 2], num_heads=[2, 2, 2, 2])
    s4 = m4.state_dict()
    split = {k.replace("layers.0.", "encode_layers.0.", 1).replace("layers.1.", "encode_layers.1.", 1)
             .replace("layers.2.", "decode_layers0.", 1).replace("layers.3.", "decode_layers1.", 1)
             if k.startswith("layers.") else k: v for k, v in s4.items()}
    assert any(k.startswith("decode_layers1.") for k in split)
    dst4 = build_backbone("swinir", "tiny", depths=[2, 2, 2, 2], num_heads=[2, 2, 2, 2])
    load_backbone_state_dict(dst4, split, key=None)
    assert all(torch.equal(v, s4[k]) for k, v in dst4.state_dict().items())
    with pytest.raises(ValueError, match="missing"):
        load_backbone_state_dict(build_backbone("swinir", "tiny"), sd, key=None)  # bias tables unexpected


def test_maskdcpt_with_swinir_classifier_and_overfit():
    model = MaskDCPTModel(build_backbone("swinir", "tiny"), num_classes=5, recon_blocks=1)
    out = model(torch.rand(3, 3, 32, 48), generator=torch.Generator().manual_seed(0))
    assert out["logits"].shape == (3, 5) and out["restored"].shape == (3, 3, 32, 48)
    pre, fine = overfit_losses("swinir")
    assert min(pre) < 0.5 * pre[0], pre
    assert min(fine) < 0.5 * fine[0], fine
