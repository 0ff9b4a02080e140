"""The restore fast paths (NHWC, ONNX Runtime, OpenVINO, torch.compile) against eager PyTorch, and the one padding
rule that evaluation and restore share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbone_props import active_nafnet
from maskdcpt.fastpaths import prepare_for_inference
from maskdcpt.models import NAFNet
from maskdcpt.restore import restore_image


@pytest.mark.parametrize("shape", [(37, 50), (5, 7), (1, 9), (16, 16)])
def test_evaluate_and_restore_share_one_padding_rule(shape):
    from maskdcpt.eval.benchmark import restore_array

    net = active_nafnet(NAFNet(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]))
    img = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    a = restore_array(net, img)
    b = restore_image(net, img)
    assert a.shape == b.shape == img.shape and np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["nhwc", "onnx", "openvino"])
def test_fast_paths_match_eager(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    net = active_nafnet(NAFNet(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]))
    fast = prepare_for_inference(net, mode)
    assert fast is not net and fast.maskdcpt_info["fast_path"] == mode
    img = np.random.default_rng(1).random((45, 70, 3), dtype=np.float32)
    for tile in (None, 32):
        ref = restore_image(net, img, tile=tile, overlap=8)
        out = restore_image(fast, img, tile=tile, overlap=8)
        assert out.shape == ref.shape and float(np.abs(out - ref).max()) <= 1e-4
    u8 = (img * 255).astype(np.uint8)
    assert np.abs(restore_image(fast, u8).astype(int) - restore_image(net, u8).astype(int)).max() <= 1
    assert prepare_for_inference(net, "eager") is net
    with pytest.raises(ValueError):
        prepare_for_inference(net, "fastest")


@pytest.mark.parametrize("arch", ["restormer", "promptir", "swinir"])
def test_nhwc_path_matches_eager_for_every_backbone(arch):
    """The NHWC copy converts only 4-D tensors (PromptIR's 5-D prompts made module.to(channels_last) raise)."""
    from backbone_props import randomize_
    from maskdcpt.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone(arch, "tiny").eval()
    randomize_(net)
    fast = prepare_for_inference(net, "nhwc")
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in fast.parameters())
    img = np.random.default_rng(3).random((29, 40, 3), dtype=np.float32)
    assert float(np.abs(restore_image(fast, img) - restore_image(net, img)).max()) <= 1e-4


@pytest.mark.slow
def test_compiled_path_matches_eager():
    net = active_nafnet(NAFNet(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]))
    fast = prepare_for_inference(net, "compile")
    img = np.random.default_rng(2).random((20, 30, 3), dtype=np.float32)
    out = restore_image(fast, img)
    assert float(np.abs(out - restore_image(net, img)).max()) <= 1e-4
