"""Tests for maskdcpt.models and maskdcpt.losses (the paper's Sec. III: NAFNet backbone, masking, classifier, L1 + focal)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from maskdcpt.losses import FocalLoss, focal_loss, maskdcpt_loss
from maskdcpt.models import (
    NAFNET_PRESETS,
    PAPER_5D_NUM_PARAMS,
    DegradationClassifier,
    LayerNorm2d,
    MaskDCPTModel,
    NAFBlock,
    NAFNet,
    ReconstructionHead,
    build_nafnet,
    expand_mask,
    load_nafnet_state_dict,
    param_groups,
    random_patch_mask,
)


def _tiny(**kw) -> NAFNet:
    torch.manual_seed(0)
    return build_nafnet("tiny", **kw)


def _randomize_(model: torch.nn.Module, seed: int = 1) -> None:
    """Make beta/gamma (zero at init) and LN affine params non-trivial so every block does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif ".norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


# --------------------------------------------------------------------------------------------- backbone


def test_paper_5d_parameter_count():
    model = build_nafnet("paper-5d")
    assert sum(p.numel() for p in model.parameters()) == PAPER_5D_NUM_PARAMS == 67_888_835
    assert model.padder_size == 16
    assert build_nafnet().enc_blk_nums == tuple(NAFNET_PRESETS["paper-5d"]["enc_blk_nums"])


def test_official_key_names():
    keys = set(build_nafnet("paper-5d").state_dict())
    for k in (
        "intro.weight",
        "encoders.0.blocks.0.conv1.weight",
        "encoders.0.blocks.0.sca.1.weight",
        "encoders.0.blocks.0.norm1.weight",
        "encoders.3.blocks.27.gamma",
        "downs.3.weight",
        "middle_blks.blocks.0.beta",
        "ups.0.0.weight",
        "decoder0.blocks.0.conv1.weight",
        "decoder0.blocks.0.norm1.weight",
        "decoder3.blocks.0.conv5.bias",
        "ending.weight",
    ):
        assert k in keys, k
    assert "ups.0.0.bias" not in keys
    assert not any(k.startswith("decoders.") for k in keys)
    assert "encoders.3.blocks.28.gamma" not in keys


def test_plain_forward_shapes_and_identity_init():
    model = _tiny()
    x = torch.rand(2, 3, 32, 48)
    last, feats = model.forward_features(x)
    assert last.shape == (2, 8, 32, 48)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 48), (2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6)]
    assert feats[0] is last
    assert model(x).shape == x.shape
    # identity init: beta/gamma start at zero, so every fresh NAFBlock returns its input unchanged (no scaled
    # residual leaks in), at every level of the U-Net
    blocks = [m for m in model.modules() if isinstance(m, NAFBlock)]
    assert len(blocks) == sum(model.enc_blk_nums) + model.middle_blk_num + sum(model.dec_blk_nums)
    seen = []

    def check(block, args, out):
        seen.append(torch.equal(out, args[0]))

    hooks = [b.register_forward_hook(check) for b in blocks]
    try:
        model(x)
        assert seen and all(seen) and len(seen) == len(blocks)
        # the check can fail: a block with non-zero beta/gamma is no longer the identity
        seen.clear()
        _randomize_(model)
        model(x)
        assert not any(seen)
    finally:
        for h in hooks:
            h.remove()


def test_forward_rejects_bad_sizes():
    model = _tiny()
    with pytest.raises(ValueError, match="multiples of padder_size=16"):
        model(torch.rand(1, 3, 40, 32))
    with pytest.raises(ValueError, match="multiples of padder_size"):
        model.forward_features(torch.rand(1, 3, 32, 24))
    with pytest.raises(ValueError, match="mask must have shape"):
        model.forward_features(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 4, 4, dtype=torch.bool))
    mdl = MaskDCPTModel(model, num_classes=3, recon_blocks=1)
    with pytest.raises(ValueError):
        mdl(torch.rand(1, 3, 40, 32))


def test_layernorm2d_matches_manual():
    ln = LayerNorm2d(4)
    x = torch.randn(2, 4, 3, 5)
    mu = x.mean(1, keepdim=True)
    var = x.var(1, keepdim=True, unbiased=False)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5))
    assert set(dict(ln.named_parameters())) == {"weight", "bias"}


# --------------------------------------------------------------------------------------------- masking


def test_random_patch_mask_exact_keep_count():
    g = torch.Generator().manual_seed(0)
    m = random_patch_mask(6, 4, 6, keep_ratio=0.5, generator=g)
    assert m.dtype == torch.bool and m.shape == (6, 1, 4, 6)
    assert m.flatten(1).sum(1).tolist() == [12] * 6
    assert len({tuple(row.tolist()) for row in m.flatten(1)}) > 1  # a fresh mask per sample
    m2 = random_patch_mask(3, 16, 16, keep_ratio=0.25, generator=g)
    assert m2.flatten(1).sum(1).tolist() == [64] * 3
    m3 = random_patch_mask(2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m3, random_patch_mask(2, 8, 8, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        random_patch_mask(1, 4, 4, keep_ratio=1.5)


def test_expand_mask():
    m = torch.tensor([[[[True, False], [False, True]]]])
    e = expand_mask(m, (4, 6))
    assert e.dtype == torch.float32 and e.shape == (1, 1, 4, 6)
    assert e[0, 0, :2, :3].eq(1).all() and e[0, 0, :2, 3:].eq(0).all() and e[0, 0, 2:, 3:].eq(1).all()
    with pytest.raises(ValueError, match="integer"):
        expand_mask(m, (5, 4))


def _collect(model: NAFNet, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of every encoder, down, middle, up and decoder stage of a masked forward."""
    out: dict[str, torch.Tensor] = {}
    names = [f"encoders.{i}" for i in range(4)] + [f"downs.{i}" for i in range(4)] + ["middle_blks"]
    names += [f"ups.{i}" for i in range(4)] + [f"decoder{i}" for i in range(4)]
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(lambda _m, _i, o, name=name: out.__setitem__(name, o.clone())))
    try:
        with torch.no_grad():
            last, feats = model.forward_features(x, mask)
    finally:
        for h in handles:
            h.remove()
    out["last"] = last
    assert len(out) == len(names) + 1
    return out


@pytest.mark.parametrize("sca_pool", ["all", "visible"])
def test_masking_property_no_content_reaches_masked_positions(sca_pool):
    model = _tiny(masked_sca_pool=sca_pool)
    _randomize_(model)
    model.eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 64, generator=g)
    mask = random_patch_mask(2, 4, 4, generator=g)  # 16x16 patches, 8 of 16 visible per image
    # a pixel in the interior of a visible patch and one inside a masked patch, for each sample
    vis = [tuple(int(v) for v in torch.nonzero(mask[b, 0])[0]) for b in range(2)]
    hid = [tuple(int(v) for v in torch.nonzero(~mask[b, 0])[0]) for b in range(2)]
    x_pix = x.clone()
    x_hid = x.clone()
    for b in range(2):
        x_pix[b, :, vis[b][0] * 16 + 7, vis[b][1] * 16 + 9] += 1.0
        x_hid[b, :, hid[b][0] * 16 + 3, hid[b][1] * 16 + 15] += 5.0
    x_all = torch.rand(2, 3, 64, 64, generator=g)

    ref = _collect(model, x, mask)
    for name, x2 in (("pixel", x_pix), ("image", x_all)):
        other = _collect(model, x2, mask)
        for level, f in ref.items():
            m = expand_mask(mask, f.shape[-2:]).bool().expand_as(f)
            assert torch.equal(f[~m], other[level][~m]), f"{name}: content reached masked positions at {level}"
            for b in range(2):
                assert not torch.equal(f[b][m[b]], other[level][b][m[b]]), f"{name}: visible unchanged at {level}"
    # perturbing a masked pixel changes nothing anywhere
    other = _collect(model, x_hid, mask)
    for level, f in ref.items():
        assert torch.equal(f, other[level]), level


def test_masked_forward_without_mask_equals_all_visible():
    model = _tiny()
    _randomize_(model)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, _ = model.forward_features(x)
        b, _ = model.forward_features(x, torch.ones(1, 1, 2, 2, dtype=torch.bool))
    torch.testing.assert_close(a, b)


def test_nafblock_rejects_bad_mask():
    block = NAFBlock(4)
    with pytest.raises(ValueError, match="broadcast"):
        block(torch.rand(1, 4, 8, 8), torch.ones(1, 1, 4, 4))


# --------------------------------------------------------------------------------------------- loading


def test_load_params_ema_strict_and_prefixes(caplog):
    src_a, src_b = _tiny(), _tiny()
    _randomize_(src_a, seed=5)
    _randomize_(src_b, seed=6)
    ckpt = {"params": src_a.state_dict(), "params_ema": src_b.state_dict()}

    dst = _tiny()
    rep = load_nafnet_state_dict(dst, ckpt)
    assert rep["source_key"] == "params_ema" and not rep["fell_back"]
    assert rep["num_tensors"] == len(dst.state_dict())
    assert all(torch.equal(v, src_b.state_dict()[k]) for k, v in dst.state_dict().items())

    rep = load_nafnet_state_dict(dst, ckpt, key="params")
    assert all(torch.equal(v, src_a.state_dict()[k]) for k, v in dst.state_dict().items())

    prefixed = {"module." + k: v for k, v in src_b.state_dict().items()}
    rep = load_nafnet_state_dict(_tiny(), {"params": prefixed}, key="params")
    assert rep["stripped_prefixes"] == ["module."]

    with caplog.at_level(logging.WARNING, logger="maskdcpt.models.nafnet"):
        rep = load_nafnet_state_dict(_tiny(), {"params": src_a.state_dict()})
    assert rep["fell_back"] and rep["source_key"] == "params"
    assert "params_ema" in rep["message"]
    assert any("params_ema" in r.getMessage() for r in caplog.records)

    rep = load_nafnet_state_dict(_tiny(), src_a.state_dict())  # raw state dict
    assert rep["source_key"] is None


def test_load_rejects_mismatch():
    sd = _tiny().state_dict()
    sd.pop("encoders.0.blocks.0.conv1.weight")
    sd["bogus.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing key\(s\) \[encoders.0.blocks.0.conv1.weight\].*bogus.weight"):
        load_nafnet_state_dict(_tiny(), {"params": sd}, key="params")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_nafnet_state_dict(_tiny(), build_nafnet("tiny", width=16).state_dict())
    with pytest.raises(ValueError, match="missing"):
        load_nafnet_state_dict(build_nafnet("cpu-default"), _tiny().state_dict())


def test_backbone_state_dict_transfers_to_plain_nafnet():
    model = MaskDCPTModel(_tiny(), num_classes=3, recon_blocks=1)
    _randomize_(model)
    sd = model.backbone_state_dict()
    assert "ending.weight" in sd and "encoders.0.blocks.0.conv1.weight" in sd
    assert not any(k.startswith(("backbone.", "module.", "classifier", "recon_head")) for k in sd)
    plain = _tiny()
    plain.load_state_dict(sd, strict=True)
    # a full pre-training state dict (backbone. prefix) also loads; heads are reported as ignored
    rep = load_nafnet_state_dict(_tiny(), {"params": model.state_dict()}, key="params")
    assert rep["ignored_keys"] and all(k.startswith(("classifier.", "recon_head.")) for k in rep["ignored_keys"])
    with pytest.raises(ValueError):
        model.backbone_state_dict(copy_ending_from_head=True)
    model_e = MaskDCPTModel(_tiny(), num_classes=3, recon_head="ending")
    sd_e = model_e.backbone_state_dict(copy_ending_from_head=True)
    assert torch.equal(sd_e["ending.weight"], model_e.recon_head.out.weight)


# --------------------------------------------------------------------------------------------- heads


def test_classifier_shapes_and_validation():
    backbone = _tiny()
    clf = DegradationClassifier(backbone.feature_dims, num_classes=5)
    _, feats = backbone.forward_features(torch.rand(2, 3, 32, 32))
    assert clf(feats).shape == (2, 5)
    torch.testing.assert_close(torch.softmax(clf.mixing_weights, 0), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        clf(feats[:3])
    with pytest.raises(ValueError, match="must be"):
        clf([feats[0], feats[0], feats[2], feats[3]])


def test_paper_classifier_parameter_count():
    clf = DegradationClassifier([64, 128, 256, 512], num_classes=5)
    assert round(sum(p.numel() for p in clf.parameters()) / 1e6, 2) == 49.29  # docs/method.md §1.5


def test_reconstruction_head_variants():
    feat = torch.rand(2, 8, 32, 32)
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    tok = ReconstructionHead(8, "token", num_blocks=1)
    out = tok(feat, mask)
    assert out.shape == (2, 3, 32, 32)
    # all positions masked: the output no longer depends on the feature
    assert torch.equal(out, tok(torch.rand(2, 8, 32, 32), mask))
    end = ReconstructionHead(8, "ending")
    assert end(feat).shape == (2, 3, 32, 32)
    assert sum(p.numel() for p in end.parameters()) == 8 * 3 * 9 + 3
    with pytest.raises(ValueError):
        ReconstructionHead(8, "linear")


def test_maskdcpt_forward_outputs():
    model = MaskDCPTModel(_tiny(), num_classes=4, recon_blocks=1)
    g = torch.Generator().manual_seed(0)
    out = model(torch.rand(3, 3, 32, 64), generator=g)
    assert out["restored"].shape == (3, 3, 32, 64)
    assert out["logits"].shape == (3, 4)
    assert out["mask"].shape == (3, 1, 2, 4) and out["mask"].dtype == torch.bool
    assert out["mask"].flatten(1).sum(1).tolist() == [4, 4, 4]
    groups = param_groups(model, 3e-4, 1e-4)
    assert [gr["lr"] for gr in groups] == [3e-4, 1e-4]
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for gr in groups for p in gr["params"]) == n_all
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.backbone.parameters())


def test_pretraining_step_reduces_loss():
    torch.manual_seed(0)
    model = MaskDCPTModel(build_nafnet("tiny"), num_classes=3, recon_blocks=1)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 3, 32, 32, generator=g)
    gt = (lq * 0.8 + 0.1).clamp(0, 1)
    labels = torch.tensor([0, 2])
    mask = random_patch_mask(2, 2, 2, generator=g)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 1e-3))
    losses, l1s, focals = [], [], []
    for step in range(6):
        out = model(lq, mask=mask)
        total, parts = maskdcpt_loss(out["restored"], gt, out["logits"], labels)
        assert set(parts) == {"l1", "focal"} and not parts["l1"].requires_grad
        opt.zero_grad()
        total.backward()
        if step == 0:
            # both terms reach their modules: the classifier gets a gradient, the backbone gets one, and every
            # trainable tensor that takes part in the forward (all but the backbone's `ending`, replaced by the
            # reconstruction head in pre-training) gets a finite gradient
            grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("backbone.ending.")}
            assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
                [n for n, g in grads.items() if g is None]
            assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("classifier"))
            assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("backbone"))
        opt.step()
        losses.append(total.item())
        l1s.append(parts["l1"].item())
        focals.append(parts["focal"].item())
    # a real descent, not noise: the total drops by a clear margin and so does each term
    assert losses[-1] < 0.9 * losses[0], losses
    assert l1s[-1] < l1s[0] and focals[-1] < focals[0], (l1s, focals)


# --------------------------------------------------------------------------------------------- losses


def test_focal_loss_gamma0_is_ce_and_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels))

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    expected = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        z = sum(torch.tensor(row).exp().tolist())
        p = torch.tensor(row[y]).exp().item() / z
        ce = -torch.log(torch.tensor(p)).item()
        expected += (1 - p) ** 2 * ce
    expected /= 2
    assert FocalLoss()(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    assert focal_loss(logits, labels, gamma=2.0) < F.cross_entropy(logits, labels)


def test_maskdcpt_loss_combines_terms():
    restored = torch.zeros(1, 3, 4, 4)
    gt = torch.full((1, 3, 4, 4), 0.5)
    logits = torch.tensor([[1.0, 0.0]])
    labels = torch.tensor([1])
    total, parts = maskdcpt_loss(restored, gt, logits, labels, alpha=2.0, gamma=2.0)
    assert parts["l1"].item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(2.0 * 0.5 + parts["focal"].item())
    with pytest.raises(ValueError):
        maskdcpt_loss(restored, gt[:, :, :2], logits, labels)
