"""The shared fine-tuning recipe's pieces: the PSNR loss and the zero-initialised output head."""
from __future__ import annotations

import math

import pytest
import torch

from maskdcpt.losses import psnr_loss, restoration_loss
from maskdcpt.models import build_backbone
from maskdcpt.train.finetune import finetune_loss, zero_output_head
from maskdcpt.train.diagnostics import PerClassMeter


def test_psnr_loss_is_the_mean_of_per_sample_psnr_not_the_psnr_of_the_batch():
    gt = torch.zeros(2, 3, 4, 4)
    restored = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])   # MSE 1e-2 and 1e-4
    loss = psnr_loss(restored, gt)
    assert float(loss) == pytest.approx((10 * math.log10(1e-2 + 1e-8) + 10 * math.log10(1e-4 + 1e-8)) / 2, abs=1e-4)
    batch_mse = 10 * math.log10((1e-2 + 1e-4) / 2)          # what a batch-level PSNR would give (-22.9 dB)
    assert abs(float(loss) - batch_mse) > 5


def test_psnr_loss_weighs_each_sample_by_its_relative_error():
    gt = torch.zeros(2, 1, 2, 2)
    restored = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.05)]).requires_grad_()
    psnr_loss(restored, gt).backward()
    g = restored.grad.abs().flatten(1).mean(1)
    # d/dx 10 log10(mean x^2) = 20 / (ln 10 * x * n) per pixel: 10x smaller error -> 10x larger gradient
    assert float(g[1] / g[0]) == pytest.approx(10.0, rel=1e-3)
    r2 = restored.detach().clone().requires_grad_()
    restoration_loss(r2, gt, "l1").backward()
    assert torch.allclose(r2.grad.abs()[0], r2.grad.abs()[1])   # L1: the same for both samples


def test_restoration_loss_rejects_unknown_kind_and_shape():
    a = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="unknown restoration loss"):
        restoration_loss(a, a, "l2")
    with pytest.raises(ValueError):
        restoration_loss(a, a[..., :2], "psnr")
    with pytest.raises(ValueError):
        restoration_loss(a, a[..., :2], "l1")


@pytest.mark.parametrize("arch", ["nafnet", "restormer"])
def test_zero_output_head_makes_the_fresh_network_the_identity(arch):
    torch.manual_seed(0)
    net = build_backbone(arch, "tiny").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - x).abs().max() > 1e-3          # the default init is not the identity
        name = zero_output_head(net)
        assert torch.equal(net(x), x)
    assert name in ("ending", "output")
    # gradients still reach the head (a zero head with zero gradient would never train)
    net.train()
    loss = (net(x) - 0.5).abs().mean()
    loss.backward()
    assert getattr(net, name).weight.grad.abs().sum() > 0


def test_zero_output_head_without_a_head_raises():
    with pytest.raises(ValueError, match="no output convolution"):
        zero_output_head(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))


def test_finetune_loss_kinds_and_per_class_meter():
    class Shift(torch.nn.Module):
        def forward(self, x):
            return x + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1)

    lq = torch.zeros(2, 3, 8, 8)
    gt = torch.zeros(2, 3, 8, 8)
    y = torch.tensor([1, 0])
    meter = PerClassMeter(["a", "b"])
    l1, _ = finetune_loss(Shift(), (lq, gt, y), None, meter, "l1")
    assert float(l1) == pytest.approx(0.15)
    ps, _ = finetune_loss(Shift(), (lq, gt, y), None, meter, "psnr")
    assert float(ps) == pytest.approx((10 * math.log10(0.01 + 1e-8) + 10 * math.log10(0.04 + 1e-8)) / 2, abs=1e-4)
    # the meter records each sample's L1 under its class, for both loss kinds
    assert meter.pop() == pytest.approx({"train_l1_a": 0.2, "train_l1_b": 0.1})
    with pytest.raises(ValueError):
        finetune_loss(Shift(), (lq, gt), None, None, "l2")


def test_relative_l1_is_one_at_the_identity_for_every_error_size():
    gt = torch.zeros(2, 3, 4, 4)
    lq = torch.stack([torch.full((3, 4, 4), 0.4), torch.full((3, 4, 4), 0.02)])   # low-light-like vs rain-like
    assert float(restoration_loss(lq, gt, "relative_l1", lq=lq)) == pytest.approx(1.0)
    half = lq * torch.tensor([0.5, 1.0]).view(2, 1, 1, 1)                          # halve the first error only
    assert float(restoration_loss(half, gt, "relative_l1", lq=lq)) == pytest.approx(0.75)
    r = lq.clone().requires_grad_()
    restoration_loss(r, gt, "relative_l1", lq=lq).backward()
    g = r.grad.abs().flatten(1).mean(1)
    assert float(g[1] / g[0]) == pytest.approx(20.0, rel=1e-4)   # weight 1 / L1(lq): 0.4 / 0.02
    with pytest.raises(ValueError, match="needs the LQ"):
        restoration_loss(lq, gt, "relative_l1")
    assert float(restoration_loss(gt, gt, "relative_l1", lq=gt)) == 0.0          # floor: no division by zero
