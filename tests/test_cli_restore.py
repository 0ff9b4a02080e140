"""`maskdcpt restore` and `maskdcpt classify` end to end on a tiny network (files, folders, globs, failures)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from conftest import use_store
from maskdcpt.cli import main
from maskdcpt.inference import read_image_native
from maskdcpt.models import MaskDCPTModel, build_nafnet


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = build_nafnet("tiny")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    sd = net.state_dict()
    torch.save({"params": sd, "params_ema": sd, "meta": {"arch": "nafnet", "preset": "tiny"}}, path)
    return path


@pytest.fixture
def inputs(tmp_path):
    photo = skdata.chelsea()[:45, :61]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photo).save(folder / "rgb.png")
    Image.fromarray(photo[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.concatenate([photo, photo[..., :1]], axis=2)).save(folder / "sub" / "rgba.png")
    import cv2

    cv2.imwrite(str(folder / "deep.png"), (photo[..., ::-1].astype(np.uint16) * 257))   # 16-bit colour PNG
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(photo).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(skdata.camera()[:7, :13]).save(folder / "tiny.png")
    return folder


def test_restore_folder_layouts_and_bit_depths(inputs, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["restore", str(inputs), "-o", str(out), "--model", str(ckpt), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    expect = {"rgb": ((45, 61, 3), np.uint8), "gray": ((45, 61), np.uint8), "rgba": ((45, 61, 4), np.uint8),
              "deep": ((45, 61, 3), np.uint16), "rotated": ((61, 45, 3), np.uint8), "tiny": ((7, 13), np.uint8)}
    for stem, (shape, dtype) in expect.items():
        img = read_image_native(out / f"{stem}.png")
        assert img.pixels.shape == shape and img.pixels.dtype == dtype, stem
    src_alpha = read_image_native(inputs / "sub" / "rgba.png").pixels[..., 3]
    assert np.array_equal(read_image_native(out / "rgba.png").pixels[..., 3], src_alpha)
    # a second run skips existing outputs; tiling gives the same sizes
    code = main(["restore", str(inputs / "*.png"), "-o", str(tmp_path / "tiled"), "--model", str(ckpt),
                 "--tile", "32", "--overlap", "8", "--device", "cpu"])
    assert code == 0
    assert sorted(p.stem for p in (tmp_path / "tiled").iterdir()) == ["deep", "gray", "rgb", "tiny"]
    assert read_image_native(tmp_path / "tiled" / "deep.png").pixels.dtype == np.uint16


def test_restore_skips_existing_outputs_unless_overwrite(inputs, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["restore", str(inputs / "rgb.png"), str(inputs / "gray.png"), "-o", str(out), "--model", str(ckpt),
            "--device", "cpu"]
    assert main(args) == 0
    assert "restored 2, skipped 0 existing" in capsys.readouterr().err
    restored = (out / "rgb.png").read_bytes()
    stale = np.zeros((45, 61, 3), np.uint8)   # an older result in the output folder
    Image.fromarray(stale).save(out / "rgb.png")
    stale_bytes = (out / "rgb.png").read_bytes()
    gray_before = (out / "gray.png").stat().st_mtime_ns
    assert main(args) == 0
    assert "restored 0, skipped 2 existing" in capsys.readouterr().err
    assert (out / "rgb.png").read_bytes() == stale_bytes and (out / "gray.png").stat().st_mtime_ns == gray_before
    assert main([*args, "--overwrite"]) == 0
    assert "restored 2, skipped 0 existing" in capsys.readouterr().err
    assert (out / "rgb.png").read_bytes() == restored
    assert not np.array_equal(read_image_native(out / "rgb.png").pixels, stale)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_restore_applies_exif_orientation_in_the_right_direction(ckpt, tmp_path, capsys, orientation):
    """EXIF 6 (the camera was turned clockwise) and 8 (counter-clockwise) are opposite rotations, 3 is 180
    degrees; the output is the restored upright image, as Pillow's ``ImageOps.exif_transpose`` shows it."""
    from PIL import ImageOps

    from maskdcpt.inference import load_model, restore_image

    photo = skdata.chelsea()[:45, :61]
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(photo).save(src, exif=exif, quality=95)
    with Image.open(src) as im:
        raw = np.asarray(im.convert("RGB"))
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert not np.array_equal(upright.shape, raw.shape) or orientation == 3
    assert main(["restore", str(src), "-o", str(tmp_path / "out"), "--model", str(ckpt), "--device", "cpu"]) == 0
    got = read_image_native(tmp_path / "out" / f"o{orientation}.png").pixels
    net = load_model(str(ckpt), device="cpu")
    assert np.array_equal(got, restore_image(net, upright))
    wrong = {3: raw, 6: np.rot90(raw, 1), 8: np.rot90(raw, -1)}[orientation]   # unrotated / the other way round
    assert np.array_equal(upright, {3: np.rot90(raw, 2), 6: np.rot90(raw, -1), 8: np.rot90(raw, 1)}[orientation])
    assert got.shape != wrong.shape or not np.array_equal(got, restore_image(net, np.ascontiguousarray(wrong)))


def test_restore_reports_unreadable_and_exits_1(inputs, ckpt, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (inputs / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = main(["restore", str(inputs / "broken.png"), str(inputs / "notes.jpg"), str(inputs / "rgb.png"),
                 str(tmp_path / "missing*.png"), "-o", str(out), "--model", str(ckpt), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "notes.jpg" in err and "missing*.png" in err
    assert "failed 3" in err
    assert (out / "rgb.png").is_file() and not (out / "broken.png").exists()


def test_restore_bad_model_and_args(inputs, tmp_path, capsys):
    assert main(["restore", str(inputs), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no.pt")]) == 1
    assert "cannot load model" in capsys.readouterr().err
    assert main(["restore", str(inputs), "-o", str(tmp_path / "o"), "--tile", "16", "--overlap", "16"]) == 2


def test_restore_default_model_is_registry_champion(inputs, ckpt, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from maskdcpt.serving import log_pyfunc_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # a fresh experiment (another test may have left one of another store active), artifacts under tmp_path
    use_store(tmp_path / "mlflow.db", "cli-restore-test")
    log_pyfunc_model(ckpt, registered_model_name="maskdcpt-nafnet-5d")
    MlflowClient(uri).set_registered_model_alias("maskdcpt-nafnet-5d", "champion", "1")
    out = tmp_path / "out"
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(out), "--device", "cpu"]) == 0
    assert "models:/maskdcpt-nafnet-5d@champion" in capsys.readouterr().err
    direct = tmp_path / "direct"
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(direct), "--model", str(ckpt)]) == 0
    assert np.array_equal(read_image_native(out / "rgb.png").pixels, read_image_native(direct / "rgb.png").pixels)


def test_classify_text_and_json(tmp_path, capsys):
    from maskdcpt.degradations import degrade, task_classes

    classes = list(task_classes("5d"))
    torch.manual_seed(0)
    model = MaskDCPTModel(build_nafnet("tiny"), num_classes=len(classes), recon_blocks=1)
    pre = tmp_path / "pretrain"
    pre.mkdir()
    torch.save({"params": model.state_dict(), "meta": {"arch": "nafnet", "preset": "tiny"}}, pre / "model.pt")
    (pre / "classes.json").write_text(json.dumps(classes))
    gt = skdata.astronaut()[:48, 100:148].astype(np.float32) / 255
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, name in enumerate(classes):
        lq, _ = degrade(gt, name, seed=i)
        Image.fromarray(np.round(lq * 255).astype(np.uint8)).save(imgs / f"{name}.png")
    code = main(["classify", str(imgs), "--model", str(pre / "model.pt"), "--json", "--masks", "2",
                 "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["classes"] == classes and len(doc["results"]) == len(classes)
    assert doc["averaging"]["masks_per_crop"] == 2
    for r in doc["results"]:
        assert math.isclose(sum(r["probabilities"].values()), 1.0, abs_tol=1e-5)
        assert len(r["top_k"]) == 3 and r["top_class"] == r["top_k"][0]["class"]
        assert r["confidence"] == max(r["probabilities"].values()) and r["masks"] == 2 and r["crops"] == 1
    (imgs / "zz_bad.png").write_bytes(b"garbage")
    code = main(["classify", str(imgs / "rain.png"), str(imgs / "zz_bad.png"), "--model", str(pre / "model.pt"),
                 "--top-k", "2", "--masks", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1 and "zz_bad.png" in captured.err
    line = [ln for ln in captured.out.splitlines() if ln.startswith(str(imgs / "rain.png"))][0]
    assert "%" in line and "2 masks x 1 crop" in line
    assert "averaged over 2 random masks" in captured.out


@pytest.mark.parametrize("arch", ["restormer", "promptir", "swinir"])
def test_every_backbone_restores_classifies_and_summarises_from_the_cli(arch, tmp_path, capsys):
    """A released-layout file (``{'params', 'params_ema'}``, no meta) of each backbone: recognised from its key
    names, restored through the CLI exactly as ``restore_image`` restores with that network; the MaskDCPT
    pre-training file classifies; ``model-summary`` gives the exact paper-configuration count."""
    from backbone_props import randomize_
    from maskdcpt.models import build_backbone
    from maskdcpt.models.summary import model_summary
    from maskdcpt.restore import restore_image

    torch.manual_seed(0)
    net = build_backbone(arch, "tiny").eval()
    randomize_(net)
    sd = net.state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save({"params": sd, "params_ema": sd}, path)
    photo = skdata.chelsea()[:37, :50]  # not a multiple of any backbone's padding multiple
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert main(["restore", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--model", str(path),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    got = read_image_native(tmp_path / "out" / "photo.png").pixels
    want = restore_image(net, photo)
    assert got.shape == photo.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    wrong = "nafnet"
    assert main(["restore", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out2"), "--model", str(path),
                 "--arch", wrong, "--device", "cpu"]) != 0  # --arch forces one: these weights are not NAFNet's
    capsys.readouterr()

    from maskdcpt.degradations import task_classes

    classes = list(task_classes("5d"))
    model = MaskDCPTModel(build_backbone(arch, "tiny"), num_classes=len(classes), recon_blocks=1)
    pre = tmp_path / "pretrain"
    pre.mkdir()
    torch.save({"params": model.state_dict(), "meta": {"arch": arch, "preset": "tiny"}}, pre / "model.pt")
    (pre / "classes.json").write_text(json.dumps(classes))
    photo48 = skdata.astronaut()[:48, 100:148]
    Image.fromarray(photo48).save(tmp_path / "sq.png")
    code = main(["classify", str(tmp_path / "sq.png"), "--model", str(pre / "model.pt"), "--json", "--masks", "2",
                 "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and math.isclose(sum(doc["results"][0]["probabilities"].values()), 1.0, abs_tol=1e-5)

    # maskdcpt paper-eval on a public-test-set layout (CBSD68 sigma 25), the same file recognised again
    import pandas as pd

    from maskdcpt import metrics
    from maskdcpt.data.testsets import load_test_set
    from maskdcpt.eval.benchmark import restore_array
    from test_test_sets import make_5d_root

    root = tmp_path / "bench"
    make_5d_root(root, gopro=False)
    assert main(["paper-eval", "--root", str(root), "--model", str(path), "--out", str(tmp_path / "bench_out"),
                 "--device", "cpu", "--only", "cbsd68"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    per = pd.read_csv(tmp_path / "bench_out" / "per_image.csv")
    pair = next(iter(load_test_set("cbsd68", root / "CBSD68")))
    row = per[(per.dataset == "cbsd68") & (per.id == pair.id)].iloc[0]
    assert row.psnr == pytest.approx(metrics.psnr(restore_array(net, pair.lq), pair.gt), abs=1e-6)

    want_params = {"restormer": 26_126_644, "promptir": 35_592_263, "swinir": 11_455_563}[arch]
    assert main(["model-summary", "--arch", arch, "--preset", "paper-5d", "--json", "--size", "64", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == want_params
    assert model_summary(arch, "paper-5d", size=(64, 64))["parameters"] == want_params
