"""Per-class training diagnostics (maskdcpt.train.diagnostics) and their use by fine-tuning and pre-training."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskdcpt import metrics
from maskdcpt.train import diagnostics as dg

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["rain", "gaussian_noise", "haze"]


def test_meter_hand_computed_means_and_reset():
    m = dg.PerClassMeter(CLASSES)
    m.update(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 0, 2]))
    m.update(torch.tensor([2.0]), torch.tensor([0]))
    assert m.pop() == {"train_l1_rain": 2.0, "train_l1_haze": 10.0}   # (1+3+2)/3; class 1 unseen: omitted
    assert m.pop() == {}                                                # reset by pop
    m.update(torch.tensor([4.0]), torch.tensor([1]))
    assert m.pop() == {"train_l1_gaussian_noise": 4.0}


def test_meter_rejects_bad_labels_and_lengths():
    m = dg.PerClassMeter(CLASSES)
    with pytest.raises(ValueError, match="labels must be in"):
        m.update(torch.tensor([1.0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="values but"):
        m.update(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    with pytest.raises(ValueError):
        dg.PerClassMeter([])


def test_per_sample_l1_mean_is_the_batch_l1():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    per = dg.per_sample_l1(a, b)
    assert per.shape == (4,)
    assert torch.allclose(per.mean(), F.l1_loss(a, b))
    assert torch.allclose(per[2], (a[2] - b[2]).abs().mean())
    with pytest.raises(ValueError):
        dg.per_sample_l1(a, b[:, :, :4])


def test_psnr_per_image_matches_the_benchmark_metric():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(3, 3, 16, 16, generator=g)
    restored = gt + 0.1 * torch.randn(3, 3, 16, 16, generator=g)   # out of [0, 1]: clamped like the benchmark
    ours = dg.psnr_per_image(restored, gt)
    for i in range(3):
        ref = metrics.psnr(restored[i].clamp(0, 1).permute(1, 2, 0).numpy(), gt[i].permute(1, 2, 0).numpy())
        assert abs(float(ours[i]) - ref) < 1e-3


def test_per_class_psnr_identity_and_shift_networks():
    gt = torch.full((4, 3, 8, 8), 0.5)
    lq = gt + torch.tensor([0.1, 0.2, 0.1, 0.05]).view(4, 1, 1, 1)
    y = torch.tensor([0, 0, 2, 2])

    class Shift(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.d = torch.nn.Parameter(torch.tensor(float(d)))

        def forward(self, x):
            return x - self.d

    def psnr(err):
        return 10 * np.log10(1 / err ** 2)

    ident = dg.per_class_psnr(Shift(0.0), [(lq, gt, y)], CLASSES)
    assert ident["val_psnr_rain"] == pytest.approx((psnr(0.1) + psnr(0.2)) / 2, abs=1e-3)
    assert ident["val_psnr_rain"] == pytest.approx(ident["val_psnr_lq_rain"], abs=1e-6)
    assert "val_psnr_gaussian_noise" not in ident   # no samples of class 1
    net = Shift(0.1)
    net.train()
    shifted = dg.per_class_psnr(net, [(lq[:2], gt[:2], y[:2]), (lq[2:], gt[2:], y[2:])], CLASSES)
    assert net.training   # mode restored
    assert shifted["val_psnr_rain"] == pytest.approx((100.0 + psnr(0.1)) / 2, abs=1e-3)   # eps-capped 0-error
    assert shifted["val_psnr_haze"] == pytest.approx((100.0 + psnr(0.05)) / 2, abs=1e-3)
    assert shifted["val_psnr_mean"] == pytest.approx((shifted["val_psnr_rain"] + shifted["val_psnr_haze"]) / 2)


def test_confusion_matrix_and_report_hand_case():
    true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 1, 1, 1, 1, 0, 2, 2, 2]
    cm = dg.confusion_matrix(true, pred, 3)
    assert cm.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 3]]
    rep = dg.confusion_report(cm, CLASSES)
    assert rep["accuracy"] == pytest.approx(6 / 9)
    assert rep["per_class"]["rain"] == {"n": 3, "recall": pytest.approx(1 / 3), "most_confused_with": "gaussian_noise"}
    assert rep["per_class"]["gaussian_noise"]["most_confused_with"] is None
    assert rep["per_class"]["haze"]["most_confused_with"] == "rain"
    assert dg.confusion_matrix([0], [0], 3).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]   # absent classes kept
    with pytest.raises(ValueError):
        dg.confusion_report(cm, CLASSES[:2])


def test_classifier_predictions_uses_one_seeded_generator():
    class Fake(torch.nn.Module):
        """Predicts class round(mean * 2) plus a mask draw, so the generator's use is visible."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, generator=None):
            noise = torch.rand(x.shape[0], generator=generator)
            k = (x.mean((1, 2, 3)) * 2).round().long().clamp(0, 2)
            logits = F.one_hot(k, 3).float() + 0.1 * noise[:, None]
            return {"logits": logits}

    lq = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0, 0.5)])
    y = torch.tensor([0, 1, 2, 2])
    true, pred = dg.classifier_predictions(Fake(), [(lq[:2], y[:2]), (lq[2:], y[2:])], seed=3)
    assert true.tolist() == [0, 1, 2, 2] and pred.tolist() == [0, 1, 2, 1]


def test_plots_are_written(tmp_path):
    hist = [{"step": 10, "train_l1_rain": 0.1, "train_l1_haze": 0.3},
            {"step": 20, "train_l1_rain": 0.05, "val_psnr_rain": 25.0, "val_psnr_lq_rain": 24.0}]
    dg.plot_curves(hist, CLASSES, tmp_path / "a" / "curves.png", title="t")
    dg.plot_confusion(np.array([[1, 2, 0], [0, 2, 0], [1, 0, 3]]), CLASSES, tmp_path / "cm.png")
    for p in (tmp_path / "a" / "curves.png", tmp_path / "cm.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import pandas as pd, torch
    from maskdcpt.data.pairs import PairSet
    from maskdcpt.train.finetune import run_finetune
    from maskdcpt.train.pretrain import run_pretrain
    from maskdcpt.train.engine import shutdown_distributed
    out = Path(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(12, 3, 32, 32, generator=g)
    y = torch.arange(12) % 3
    lq = (gt + 0.2 * (y.view(-1, 1, 1, 1) + 1) * torch.randn(12, 3, 32, 32, generator=g)).clamp(0, 1)
    pairs = PairSet(lq=lq, gt=gt, labels=y, rows=pd.DataFrame({"i": range(12)}))
    classes = ["a", "b", "c"]
    ds = {"zero_stage": 0, "dist_backend": "gloo", "channels_last": False}
    model = {"arch": "nafnet", "preset": "tiny", "recon_head": "token", "recon_blocks": 1}
    logged = []
    ft = run_finetune(pairs, model_cfg=model, ds_params=ds, seed=1, out_dir=out / "ft", init="random",
                      cfg={"steps": 4, "batch_size": 6, "lr": 1e-3, "log_every": 2, "eval_every": 2},
                      val_set=pairs, class_names=classes, progress=False,
                      on_log=lambda s, v: logged.append((s, v)))
    pt = run_pretrain(pairs, pairs, num_classes=3, model_cfg=model, ds_params=ds, seed=1, out_dir=out / "pt",
                      cfg={"steps": 2, "batch_size": 4, "backbone_lr": 1e-3, "head_lr": 1e-3, "log_every": 1,
                           "eval_every": 2}, class_names=classes, progress=False)
    shutdown_distributed()
    json.dump({"ft": ft["diagnostics"], "logged": logged, "confusion": pt["confusion"],
               "val_acc": pt["val_acc"]}, open(out / "result.json", "w"))
""")


@pytest.mark.slow
def test_finetune_and_pretrain_report_per_class_diagnostics(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    steps = [row["step"] for row in res["ft"]]
    assert steps == [2, 4]
    for row in res["ft"]:
        # 12 samples of 3 classes, 12 draws per logging interval: every class is (almost surely) seen
        assert {"train_l1_a", "train_l1_b", "train_l1_c", "loss"} <= set(row)
        assert {f"val_psnr_{c}" for c in "abc"} <= set(row) and "val_psnr_mean" in row
        assert row["val_psnr_lq_a"] > row["val_psnr_lq_b"] > row["val_psnr_lq_c"]   # noise grows with the class
    # the per-class L1 follows each class's noise level (0.2 / 0.4 / 0.6), not one shared batch value
    row = res["ft"][0]
    assert row["train_l1_a"] < row["train_l1_b"] < row["train_l1_c"]
    assert any("val_psnr_a" in v for _, v in res["logged"]) and any("train_l1_c" in v for _, v in res["logged"])
    cm = np.array(res["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == 12 and cm.sum(1).tolist() == [4, 4, 4]
    assert np.trace(cm) / 12 == pytest.approx(res["val_acc"])
