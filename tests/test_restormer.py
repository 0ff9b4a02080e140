"""Restormer backbone (repo variant), the generic backbone builder/loader and MaskDCPT with Restormer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskdcpt.losses import maskdcpt_loss
from maskdcpt.models import (
    BACKBONE_PRESETS,
    RESTORMER_PAPER_NUM_PARAMS,
    MaskDCPTModel,
    Restormer,
    build_backbone,
    expand_mask,
    load_backbone_state_dict,
    param_groups,
    random_patch_mask,
    upstream_restormer_key,
)


def _tiny(**kw) -> Restormer:
    torch.manual_seed(0)
    return build_backbone("restormer", "tiny", **kw)


def _randomize_(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial LN affine params, temperatures and biases so that every op does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name or name.endswith("temperature") or name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_paper_parameter_count_and_layout():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_backbone("restormer", "paper")
    n = sum(p.numel() for p in model.parameters())
    assert n == RESTORMER_PAPER_NUM_PARAMS == 26_126_644
    assert round(n / 1e6, 1) == 26.1  # Restormer paper: 26.1 M (26.13 M)
    assert model.feature_dims == [96, 96, 192] and model.last_dim == 96  # DCPT Restormer config, docs/method.md §1.7
    assert model.padder_size == 8 and model.mask_patch_size == 16
    keys = set(model.state_dict())
    for k in ("patch_embed.proj.weight", "encoder_level1.blocks.3.attn.temperature",
              "encoder_level3.blocks.5.ffn.dwconv.weight", "down1_2.conv.weight", "down3_4.conv.weight",
              "latent.blocks.7.norm2.bias", "up4_3.conv.weight", "reduce_chan_level3.weight",
              "reduce_chan_level2.weight", "decoder_level1.blocks.0.attn.qkv_dwconv.weight",
              "decoder_level3.blocks.5.norm1.weight", "refinement.blocks.3.ffn.project_out.weight",
              "output.weight"):
        assert k in keys, k
    assert "reduce_chan_level1.weight" not in keys and "output.bias" not in keys  # bias False
    assert "refinement.blocks.4.norm1.weight" not in keys
    # the paper alias builds the same network
    with torch.device("meta"):
        assert set(build_backbone("restormer", "paper-5d").state_dict()) == keys
    # FFN hidden width int(48 * 2.66) = 127
    assert model.encoder_level1.blocks[0].ffn.project_out.in_channels == 127


def test_plain_forward_shapes_and_sizes():
    model = _tiny()
    x = torch.rand(2, 3, 24, 40)  # multiples of 8 are enough without a mask
    last, feats = model.forward_features(x)
    assert last.shape == (2, 16, 24, 40)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 24, 40), (2, 16, 12, 20), (2, 32, 6, 10)]
    assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="padder_size=8"):
        model(torch.rand(1, 3, 20, 24))
    with pytest.raises(ValueError, match="mask_patch_size=16"):
        model.forward_features(x, torch.ones(2, 1, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        model.forward_features(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of 2\\*\\*3"):
        build_backbone("restormer", "tiny", mask_patch_size=4)
    with pytest.raises(ValueError, match="divisible"):
        build_backbone("restormer", "tiny", heads=[3, 2, 4, 8])


_STAGES = ["patch_embed", "encoder_level1", "down1_2", "encoder_level2", "down2_3", "encoder_level3", "down3_4",
           "latent", "up4_3", "reduce_chan_level3", "decoder_level3", "up3_2", "reduce_chan_level2",
           "decoder_level2", "up2_1", "decoder_level1", "refinement"]


def _collect(model: Restormer, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, o, name=name: out.__setitem__(name, o.clone())) for name in _STAGES]
    try:
        with torch.no_grad():
            last, feats = model.forward_features(x, mask)
    finally:
        for h in handles:
            h.remove()
    out["last"] = last
    for i, f in enumerate(feats):
        out[f"feat{i}"] = f
    assert len(out) == len(_STAGES) + 4
    return out


@pytest.mark.parametrize("patch,bias", [(16, False), (8, True)])
def test_masking_property_no_content_reaches_masked_positions(patch, bias):
    model = _tiny(mask_patch_size=patch, bias=bias)
    _randomize_(model)
    model.eval()
    g = torch.Generator().manual_seed(3)
    size = 64
    x = torch.rand(2, 3, size, size, generator=g)
    mask = random_patch_mask(2, size // patch, size // patch, generator=g)
    vis = [tuple(int(v) for v in torch.nonzero(mask[b, 0])[0]) for b in range(2)]
    hid = [tuple(int(v) for v in torch.nonzero(~mask[b, 0])[0]) for b in range(2)]
    x_pix, x_hid = x.clone(), x.clone()
    for b in range(2):
        x_pix[b, :, vis[b][0] * patch + patch // 2, vis[b][1] * patch + 1] += 1.0
        x_hid[b, :, hid[b][0] * patch + patch - 1, hid[b][1] * patch] += 5.0  # on a patch border
    x_all = torch.rand(2, 3, size, size, generator=g)

    ref = _collect(model, x, mask)
    for name, x2 in (("pixel", x_pix), ("image", x_all)):
        other = _collect(model, x2, mask)
        for level, f in ref.items():
            m = expand_mask(mask, f.shape[-2:]).bool().expand_as(f)
            assert torch.equal(f[~m], other[level][~m]), f"{name}: content reached masked positions at {level}"
            for b in range(2):
                assert not torch.equal(f[b][m[b]], other[level][b][m[b]]), f"{name}: visible unchanged at {level}"
        if not bias:  # without biases masked positions are exactly zero
            assert all(f[~expand_mask(mask, f.shape[-2:]).bool().expand_as(f)].eq(0).all() for f in ref.values())
    other = _collect(model, x_hid, mask)  # a masked pixel changes nothing anywhere
    for level, f in ref.items():
        assert torch.equal(f, other[level]), level


def test_all_visible_mask_equals_plain():
    model = _tiny()
    _randomize_(model)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, fa = model.forward_features(x)
        b, fb = model.forward_features(x, torch.ones(1, 1, 2, 2, dtype=torch.bool))
    torch.testing.assert_close(a, b)
    for u, v in zip(fa, fb):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("arch", ["nafnet", "restormer"])
def test_maskdcpt_classifier_output_for_both_backbones(arch):
    torch.manual_seed(0)
    backbone = build_backbone(arch, "tiny")
    model = MaskDCPTModel(backbone, num_classes=5, recon_blocks=1)
    assert model.mask_patch_size == 16
    assert model.classifier.feature_dims == backbone.feature_dims
    out = model(torch.rand(3, 3, 32, 48), generator=torch.Generator().manual_seed(0))
    assert out["logits"].shape == (3, 5)
    assert out["restored"].shape == (3, 3, 32, 48)
    assert out["mask"].shape == (3, 1, 2, 3) and out["mask"].flatten(1).sum(1).tolist() == [3, 3, 3]
    if arch == "restormer":  # a multiple of 8 but not of the 16-pixel mask patch is rejected with a clear error
        with pytest.raises(ValueError, match="mask_patch_size=16"):
            model(torch.rand(1, 3, 24, 32))


def test_restormer_pretraining_and_finetuning_steps_reduce_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 3, 32, 32, generator=g)
    gt = (lq * 0.8 + 0.1).clamp(0, 1)
    labels = torch.tensor([0, 2])

    model = MaskDCPTModel(build_backbone("restormer", "tiny"), num_classes=3, recon_blocks=1)
    mask = random_patch_mask(2, 2, 2, generator=g)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 1e-3))
    totals, l1s, focals = [], [], []
    for step in range(5):
        out = model(lq, mask=mask)
        total, parts = maskdcpt_loss(out["restored"], gt, out["logits"], labels)
        opt.zero_grad()
        total.backward()
        if step == 0:
            # the reconstruction and the classification terms both reach the backbone and their heads
            grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("backbone.output.")}
            missing = [n for n, gr in grads.items() if gr is None or not torch.isfinite(gr).all()]
            assert not missing, missing
            assert any(gr.abs().sum() > 0 for n, gr in grads.items() if n.startswith("classifier"))
            assert any(gr.abs().sum() > 0 for n, gr in grads.items() if n.startswith("backbone"))
        opt.step()
        totals.append(total.item())
        l1s.append(parts["l1"].item())
        focals.append(parts["focal"].item())
    assert totals[-1] < 0.9 * totals[0], totals
    assert l1s[-1] < l1s[0] and focals[-1] < focals[0], (l1s, focals)

    net = build_backbone("restormer", "tiny")
    net.load_state_dict(model.backbone_state_dict(), strict=True)  # the transfer used by fine-tuning
    for name, tensor in model.backbone_state_dict().items():
        assert torch.equal(net.state_dict()[name], tensor), name
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for step in range(5):
        loss = F.l1_loss(net(lq), gt)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
            assert not missing, missing
        opt.step()
        losses.append(loss.item())
    # every step descends (a zero, detached or sign-flipped gradient would not)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_strict_loading_official_and_upstream_names():
    src = _tiny()
    _randomize_(src, seed=5)
    sd = src.state_dict()
    dst = _tiny()
    rep = load_backbone_state_dict(dst, {"params": {k: v * 0 for k, v in sd.items()}, "params_ema": sd})
    assert rep["arch"] == "restormer" and rep["source_key"] == "params_ema" and rep["renamed_keys"] == 0
    assert all(torch.equal(v, sd[k]) for k, v in dst.state_dict().items())

    rep = load_backbone_state_dict(_tiny(), {"params": {"module." + k: v for k, v in sd.items()}}, key="params")
    assert rep["stripped_prefixes"] == ["module."]

    # upstream Restormer names (nn.Sequential stages, Down/Upsample .body.0, LayerNorm .body) are translated
    def upstream(k: str) -> str:
        import re

        k = re.sub(r"^(\w+)\.blocks\.(\d+)\.", r"\1.\2.", k)
        k = re.sub(r"^((?:down|up)\d_\d)\.conv\.", r"\1.body.0.", k)
        return re.sub(r"\.(norm[12])\.(weight|bias)$", r".\1.body.\2", k)

    up = {upstream(k): v for k, v in sd.items()}
    assert "encoder_level1.0.norm1.body.weight" in up and "down1_2.body.0.weight" in up
    assert all(upstream_restormer_key(k) in sd for k in up)
    dst = _tiny()
    rep = load_backbone_state_dict(dst, up, key=None)
    assert rep["renamed_keys"] == sum(upstream(k) != k for k in sd) > 0
    assert all(torch.equal(v, sd[k]) for k, v in dst.state_dict().items())

    # full MaskDCPT state dict: backbone. keys load, heads are ignored
    full = MaskDCPTModel(src, num_classes=3, recon_blocks=1).state_dict()
    rep = load_backbone_state_dict(_tiny(), {"params": full}, key="params")
    assert rep["ignored_keys"] and all(k.startswith(("classifier.", "recon_head.")) for k in rep["ignored_keys"])

    bad = dict(sd)
    bad.pop("latent.blocks.0.attn.temperature")
    with pytest.raises(ValueError, match=r"missing key\(s\) \[latent.blocks.0.attn.temperature\]"):
        load_backbone_state_dict(_tiny(), bad, key=None)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_backbone_state_dict(_tiny(), build_backbone("restormer", "tiny", dim=16).state_dict(), key=None)
    with pytest.raises(ValueError, match="missing"):  # a NAFNet checkpoint into a Restormer
        load_backbone_state_dict(_tiny(), build_backbone("nafnet", "tiny").state_dict(), key=None)
    with pytest.raises(ValueError, match="not a known backbone"):
        load_backbone_state_dict(torch.nn.Linear(2, 2), sd)


def test_build_backbone_names():
    assert set(BACKBONE_PRESETS) == {"nafnet", "restormer", "promptir", "swinir"}
    assert {"paper-5d", "cpu-default", "tiny"} <= set(BACKBONE_PRESETS["nafnet"])
    assert {"paper", "cpu-default", "tiny"} <= set(BACKBONE_PRESETS["restormer"])
    with torch.device("meta"):
        assert build_backbone("nafnet", "paper").width == 64  # alias of paper-5d
        assert build_backbone("restormer", "paper-5d").dim == 48  # alias of paper
    with pytest.raises(ValueError, match="unknown arch 'unet'"):
        build_backbone("unet", "tiny")
    with pytest.raises(ValueError, match="unknown restormer preset"):
        build_backbone("restormer", "huge")


def test_pretrain_builder_and_load_restorer_follow_meta_arch(tmp_path):
    from maskdcpt.eval.benchmark import load_restorer, restore_tensor
    from maskdcpt.train.engine import atomic_torch_save
    from maskdcpt.train.pretrain import build_pretrain_model

    model = build_pretrain_model({"arch": "restormer", "preset": "tiny", "recon_blocks": 1}, num_classes=5)
    assert isinstance(model.backbone, Restormer)
    with pytest.raises(ValueError, match=r"(?s)ModelParams\narch.*'nafnet', 'restormer', 'promptir' or 'swinir'"):
        build_pretrain_model({"arch": "unet", "preset": "tiny"}, num_classes=5)  # the schema names the valid ones
    with pytest.raises(ValueError, match=r"(?s)recon_blockz.*Extra inputs are not permitted"):
        build_pretrain_model({"arch": "restormer", "preset": "tiny", "recon_blockz": 1}, num_classes=5)
    sd = model.backbone_state_dict()
    atomic_torch_save({"params": sd, "params_ema": sd, "meta": {"arch": "restormer", "preset": "tiny"}},
                      tmp_path / "model.pt")
    net = load_restorer(tmp_path / "model.pt")
    assert isinstance(net, Restormer) and not net.training
    out = restore_tensor(net, torch.rand(1, 3, 21, 30))  # padded to 8, cropped back
    assert out.shape == (1, 3, 21, 30) and out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------------------------- model-summary


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "maskdcpt.cli", "model-summary", *args], capture_output=True,
                          text=True, timeout=300)


def test_model_summary_cli_json_paper_configs():
    import json

    proc = _cli("--arch", "nafnet", "--preset", "paper-5d", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout)
    assert s["parameters"] == 67_888_835
    assert sum(s["modules"].values()) == s["parameters"]
    assert list(s["modules"])[0] == "intro" and list(s["modules"])[-1] == "ending"
    assert s["input"] == [1, 3, 256, 256] and s["flops"] == 2 * s["macs"]
    assert sum(s["flops_by_module"].values()) == s["flops"]
    # NAFNet-width64 is quoted at ~63-65 GMACs at 256x256 (NAFNet paper, Fig. 1 / Table 1)
    assert 60e9 < s["macs"] < 67e9

    from maskdcpt.models.summary import model_summary

    r = model_summary("restormer", "paper-5d", size=(128, 128))
    assert r["parameters"] == RESTORMER_PAPER_NUM_PARAMS and r["preset"] == "paper"
    assert r["input"] == [1, 3, 128, 128] and sum(r["flops_by_module"].values()) == r["flops"]



def test_model_summary_command_errors_and_text(capsys):
    import argparse

    from maskdcpt.commands import model_summary

    parser = argparse.ArgumentParser()
    model_summary.register(parser.add_subparsers())

    def run(*argv):
        args = parser.parse_args(["model-summary", *argv])
        return args.func(args), capsys.readouterr()

    rc, cap = run("--arch", "nafnet", "--preset", "tiny", "--size", "24", "32")
    assert rc == 2 and "multiples of 16" in cap.err
    rc, cap = run("--arch", "restormer", "--preset", "huge")
    assert rc == 2 and "unknown restormer preset" in cap.err
    rc, cap = run("--arch", "restormer", "--preset", "tiny", "--size", "32", "32")
    assert rc == 0 and "decoder_level1" in cap.out and "2 x MACs" in cap.out


def test_flop_counter_counts_two_flops_per_mac():
    from maskdcpt.models.summary import count_flops

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(2, 3, 16, 16)
    total, _ = count_flops(lambda: conv(x))
    assert total == 2 * (2 * 8 * 16 * 16 * 3 * 9)  # 2 x (outputs x kernel MACs)
    # backward: input + weight gradients each cost one forward, also for depthwise convs (torch's built-in
    # formula ignores groups in the weight gradient; count_flops corrects it)
    for groups in (1, 8):
        c = torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        xi = torch.rand(2, 8, 16, 16, requires_grad=True)
        fwd, _ = count_flops(lambda: c(xi))
        both, _ = count_flops(lambda: c(xi).sum().backward())
        assert both == 3 * fwd == 3 * 2 * (2 * 8 * 16 * 16 * (8 // groups) * 9)
    lin = torch.nn.Linear(10, 4)
    total, _ = count_flops(lambda: lin(torch.rand(5, 10)))
    assert total == 2 * 5 * 10 * 4
