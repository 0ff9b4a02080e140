"""Shared helpers and property checks for the backbones (imported by the backbone, inference and demo tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskdcpt.losses import maskdcpt_loss
from maskdcpt.models import build_backbone, expand_mask, param_groups, random_patch_mask


def randomize_(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial norms, temperatures, biases and position tables so that every op does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("temperature", ".bias", "bias_table")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def active_nafnet(net: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Fresh NAFNet blocks are the identity (beta = gamma = 0): give them weight so every path matters; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


def collect(model, x, mask, stages):
    """Outputs (NCHW) of the named submodules plus ``last`` and the classifier features of a masked pass."""
    out = {}

    def hook(name):
        def fn(_m, _i, o):
            o = o.clone()
            if o.dim() == 4 and o.shape[1] == x.shape[2] and o.shape[2] == x.shape[3]:  # tokens [N, H, W, C]
                o = o.permute(0, 3, 1, 2)
            out[name] = o
        return fn

    handles = [model.get_submodule(s).register_forward_hook(hook(s)) for s in stages]
    try:
        with torch.no_grad():
            last, feats = model.forward_features(x, mask)
    finally:
        for h in handles:
            h.remove()
    out["last"] = last
    out.update({f"feat{i}": f for i, f in enumerate(feats)})
    assert len(out) == len(stages) + 1 + len(feats)
    return out


def check_masking_property(model, stages, patch=16, size=64, global_only=()):
    """No input content reaches a masked position at any listed stage; visible positions carry content; a
    change at a masked pixel (on a patch border) changes nothing anywhere. ``global_only``: stages whose visible
    output depends on the input only through a global statistic (PromptIR's prompts: a softmax over the mean
    feature), which one changed pixel need not move; a whole new image must."""
    model.eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, size, size, generator=g)
    mask = random_patch_mask(2, size // patch, size // patch, generator=g)
    vis = [tuple(int(v) for v in torch.nonzero(mask[b, 0])[0]) for b in range(2)]
    hid = [tuple(int(v) for v in torch.nonzero(~mask[b, 0])[0]) for b in range(2)]
    x_pix, x_hid = x.clone(), x.clone()
    for b in range(2):
        x_pix[b, :, vis[b][0] * patch + patch // 2, vis[b][1] * patch + 1] += 1.0
        x_hid[b, :, hid[b][0] * patch + patch - 1, hid[b][1] * patch] += 5.0
    x_all = torch.rand(2, 3, size, size, generator=g)
    ref = collect(model, x, mask, stages)
    for name, x2 in (("pixel", x_pix), ("image", x_all)):
        other = collect(model, x2, mask, stages)
        for level, f in ref.items():
            m = expand_mask(mask, f.shape[-2:]).bool().expand_as(f)
            assert torch.equal(f[~m], other[level][~m]), f"{name}: content reached masked positions at {level}"
            if name == "pixel" and level in global_only:
                continue
            for b in range(2):
                assert not torch.equal(f[b][m[b]], other[level][b][m[b]]), f"{name}: visible unchanged at {level}"
    other = collect(model, x_hid, mask, stages)
    for level, f in ref.items():
        assert torch.equal(f, other[level]), level


def check_all_visible_equals_plain(model, size=32):
    model.eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        a, fa = model.forward_features(x)
        b, fb = model.forward_features(x, torch.ones(1, 1, size // 16, size // 16, dtype=torch.bool))
    torch.testing.assert_close(a, b)
    for u, v in zip(fa, fb):
        torch.testing.assert_close(u, v)


def overfit_losses(arch: str, preset: str = "tiny", steps: int = 40, lr: float = 2e-3, fine_steps: int | None = None,
                   fine_lr: float | None = None, **kw):
    """Pre-training (MaskDCPT, fixed batch and mask) and fine-tuning (plain L1, fixed batch) loss curves;
    fine-tuning uses ``fine_steps`` / ``fine_lr`` when given, else ``steps`` / ``lr``."""
    from maskdcpt.train.pretrain import build_pretrain_model

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 32, 32, generator=g)
    lq = (gt + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    labels = torch.tensor([0, 2])
    model = build_pretrain_model({"arch": arch, "preset": preset, "recon_blocks": 1}, num_classes=3)
    mask = random_patch_mask(2, 2, 2, generator=g)
    opt = torch.optim.AdamW(param_groups(model, lr, lr))
    pre = []
    for _ in range(steps):
        out = model(lq, mask=mask)
        loss = maskdcpt_loss(out["restored"], gt, out["logits"], labels)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        pre.append(loss.item())
    net = build_backbone(arch, preset, **kw)
    net.load_state_dict(model.backbone_state_dict(), strict=True)  # the transfer fine-tuning uses
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=fine_lr or lr)
    fine = []
    for _ in range(fine_steps or steps):
        loss = F.l1_loss(net(lq), gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        fine.append(loss.item())
    return pre, fine
