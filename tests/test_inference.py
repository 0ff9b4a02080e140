"""maskdcpt.inference / maskdcpt.serving: model loading, exact sizes, tiling, layouts, classifier, pyfunc."""

import json
import math
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request

import numpy as np
import pytest
import torch
from skimage import data as skdata

from conftest import use_store
from maskdcpt import metrics
from maskdcpt.inference import (
    NativeImage,
    classify_image,
    infer_nafnet_config,
    load_classifier,
    load_model,
    pad_to_multiple,
    read_image_native,
    restore_image,
    tile_spans,
    write_image_native,
)
from backbone_props import active_nafnet
from maskdcpt.models import MaskDCPTModel, NAFNet, build_nafnet


@pytest.fixture(scope="module")
def tiny_net():
    return active_nafnet(build_nafnet("tiny"))


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut().astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------ loading

def test_load_release_style_checkpoint_infers_config(tmp_path):
    net = active_nafnet(NAFNet(width=12, enc_blk_nums=[1, 2, 0], middle_blk_num=2, dec_blk_nums=[0, 1, 1]))
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}   # DDP prefix, no meta: an official-style file
    torch.save({"params": sd}, tmp_path / "release.pth")
    cfg = infer_nafnet_config(net.state_dict())
    assert cfg == {"img_channel": 3, "width": 12, "enc_blk_nums": [1, 2, 0], "middle_blk_num": 2,
                   "dec_blk_nums": [0, 1, 1]}
    loaded = load_model(tmp_path / "release.pth", device="cpu")
    assert loaded.maskdcpt_info["config"] == cfg and loaded.padder_size == 8
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_load_our_checkpoint_prefers_params_ema(tmp_path, tiny_net):
    ema = tiny_net.state_dict()
    raw = {k: v + 0.5 if k == "ending.bias" else v for k, v in ema.items()}
    torch.save({"params": raw, "params_ema": ema, "meta": {"arch": "nafnet", "preset": "tiny"}}, tmp_path / "m.pt")
    a = load_model(tmp_path / "m.pt", device="cpu")
    b = load_model(tmp_path / "m.pt", device="cpu", key="params")
    assert torch.equal(a.ending.bias, tiny_net.ending.bias)
    assert torch.allclose(b.ending.bias, tiny_net.ending.bias + 0.5)
    assert a.maskdcpt_info["preset"] == "tiny"


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.pt", device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_model(tmp_path / "junk.pt", device="cpu")
    torch.save({"params": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError):
        load_model(tmp_path / "other.pt", device="cpu")


# ------------------------------------------------------------------------------------------ sizes, padding

@pytest.mark.parametrize("shape", [(250, 333), (7, 13), (1, 1), (1, 40), (17, 1)])
def test_output_size_is_exact(tiny_net, shape):
    x = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    y = restore_image(tiny_net, x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    yt = restore_image(tiny_net, x, tile=128, overlap=32)
    assert yt.shape == x.shape


def test_pad_to_multiple_reflects_repeatedly():
    x = torch.arange(7.0).view(1, 1, 1, 7).repeat(1, 1, 7, 1)
    y = pad_to_multiple(x, 16)
    assert y.shape == (1, 1, 16, 16)
    assert torch.equal(y[..., :7, :7], x)
    # first reflection continues 5, 4, ..., 0 after the last column 6
    assert y[0, 0, 0, 7:13].tolist() == [5, 4, 3, 2, 1, 0]
    one = pad_to_multiple(torch.full((1, 3, 1, 1), 0.3), 16)
    assert one.shape == (1, 3, 16, 16) and torch.allclose(one, torch.full_like(one, 0.3))
    assert pad_to_multiple(x[..., :16, :], 1) is not None


def test_tile_spans_cover_and_align():
    spans = tile_spans(500, 128, 32, multiple=16)
    assert spans[0][0] == 0 and spans[-1][1] == 500
    assert all(s % 16 == 0 for s, _ in spans)
    assert all(b[0] < a[1] - 31 for a, b in zip(spans, spans[1:]))   # neighbours overlap by >= 32 px
    assert tile_spans(100, None, 32) == [(0, 100)] and tile_spans(100, 128, 32) == [(0, 100)]
    with pytest.raises(ValueError):
        tile_spans(500, 64, 64)


class _LocalNet(torch.nn.Module):
    """A restorer whose output pixel depends only on the 5x5 input neighbourhood (two 3x3 convs): tiled with
    enough overlap, it must give exactly the whole-image result, seams included."""

    padder_size = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return x + 0.3 * self.c2(torch.tanh(self.c1(x)))


def test_tiled_matches_whole_image(tiny_net, astronaut):
    x = astronaut[:512, :512]
    whole = restore_image(tiny_net, x)
    tiled = restore_image(tiny_net, x, tile=256, overlap=32)
    assert metrics.psnr(whole, x) < 40          # the network really changes the image
    assert metrics.psnr(tiled, whole) >= 50.0

    # seams, pixel by pixel, with a network of a known (5x5) receptive field: every row and column where two
    # tiles meet matches the whole-image result
    local = _LocalNet().eval()
    x = astronaut[:200, :232]
    whole = restore_image(local, x)
    assert np.abs(whole - x).max() > 0.05
    rows, cols = tile_spans(200, 64, 16, 16), tile_spans(232, 64, 16, 16)
    assert len(rows) > 2 and len(cols) > 2
    seam_rows = sorted({y for (_, e), (s, _) in zip(rows, rows[1:]) for y in range(s, e)})
    seam_cols = sorted({c for (_, e), (s, _) in zip(cols, cols[1:]) for c in range(s, e)})
    for overlap in (16, 32):
        tiled = restore_image(local, x, tile=64, overlap=overlap)
        assert np.abs(tiled[seam_rows] - whole[seam_rows]).max() < 1e-4, overlap
        assert np.abs(tiled[:, seam_cols] - whole[:, seam_cols]).max() < 1e-4, overlap
        assert np.abs(tiled - whole).max() < 1e-4, overlap
    # the check sees seams: an overlap too small for the receptive field leaves them
    tiled = restore_image(local, x, tile=64, overlap=2)
    assert np.abs(tiled[:, seam_cols] - whole[:, seam_cols]).max() > 1e-3


class _CountingNet(torch.nn.Module):
    """A cheap 'restorer' that records the largest input it was given."""

    padder_size = 16

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.max_pixels = 0

    def forward(self, x):
        self.max_pixels = max(self.max_pixels, x.shape[-2] * x.shape[-1])
        return x + 0.01 * self.conv(x)


def test_tiling_memory_is_bounded():
    net = _CountingNet().eval()
    peaks = {}
    for h in (256, 2048):
        img = np.random.default_rng(1).integers(0, 256, (h, 512, 3), dtype=np.uint8)
        net.max_pixels = 0
        tracemalloc.start()
        out = restore_image(net, img, tile=128, overlap=16)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert out.shape == img.shape and out.dtype == np.uint8
        assert net.max_pixels <= 128 * 128               # network activations: one tile at a time
        peaks[h] = peak - out.nbytes                      # working memory besides the (uint8) output
    full_float = 2048 * 512 * 3 * 4
    assert peaks[2048] < 0.35 * full_float, peaks         # no full-size float buffer
    assert peaks[2048] < 1.5 * peaks[256], peaks          # 8x the pixels, about the same working memory


# ------------------------------------------------------------------------------------------ layouts and dtypes

def test_gray_alpha_and_16bit(tiny_net, astronaut):
    rgb8 = np.round(astronaut[:40, :56] * 255).astype(np.uint8)
    gray8 = rgb8.mean(axis=2).round().astype(np.uint8)
    g = restore_image(tiny_net, gray8)
    assert g.shape == gray8.shape and g.dtype == np.uint8
    ref = restore_image(tiny_net, np.repeat(gray8[..., None], 3, 2).astype(np.float32) / 255).mean(axis=2)
    assert np.abs(g.astype(float) - np.round(ref * 255)).max() <= 1
    assert restore_image(tiny_net, gray8[..., None]).shape == (40, 56, 1)

    alpha = np.random.default_rng(0).integers(0, 256, (40, 56, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb8, alpha], axis=2)
    out = restore_image(tiny_net, rgba)
    assert out.shape == rgba.shape and np.array_equal(out[..., 3], alpha[..., 0])
    assert np.array_equal(out[..., :3], restore_image(tiny_net, rgb8))
    la = restore_image(tiny_net, np.concatenate([gray8[..., None], alpha], axis=2))
    assert la.shape == (40, 56, 2) and np.array_equal(la[..., 1], alpha[..., 0])

    rgb16 = np.round(astronaut[:40, :56] * 65535).astype(np.uint16)
    o16 = restore_image(tiny_net, rgb16)
    assert o16.dtype == np.uint16 and o16.shape == rgb16.shape
    assert np.any(o16 % 257 != 0)                       # real 16-bit precision, not 8-bit scaled up
    # 16-bit in = the float path on x / 65535, rounded to 16 bits (not to 8 bits and scaled)
    ref16 = restore_image(tiny_net, rgb16.astype(np.float32) / 65535)
    assert np.abs(o16.astype(np.int64) - np.rint(ref16 * 65535).astype(np.int64)).max() <= 1
    # the input's low bits reach the network: two images equal after 8-bit quantisation restore differently
    base = rgb8.astype(np.uint16) * 257
    lo, hi = restore_image(tiny_net, base), restore_image(tiny_net, base + 128)
    assert np.array_equal(np.round(base / 257), np.round((base + 128) / 257))
    assert np.abs(hi.astype(np.int64) - lo.astype(np.int64)).mean() > 20
    gray16 = (gray8.astype(np.uint16) * 257 + 100)
    og16 = restore_image(tiny_net, gray16)
    assert og16.dtype == np.uint16 and og16.shape == gray16.shape
    refg = restore_image(tiny_net, np.repeat(gray16[..., None], 3, 2).astype(np.float32) / 65535).mean(axis=2)
    assert np.abs(og16.astype(np.int64) - np.rint(refg * 65535).astype(np.int64)).max() <= 1
    with pytest.raises(ValueError):
        restore_image(tiny_net, np.zeros((4, 4, 5), np.float32))
    with pytest.raises(ValueError):
        restore_image(tiny_net, np.full((4, 4, 3), np.nan, np.float32))


def test_native_io_round_trips(tmp_path, astronaut):
    from PIL import Image

    rgb8 = np.round(astronaut[:30, :50] * 255).astype(np.uint8)
    cases = {
        "gray8.png": rgb8[..., 0],
        "gray16.png": (rgb8[..., 0].astype(np.uint16) * 257 + 3),
        "rgb16.png": rgb8.astype(np.uint16) * 257 + 1,
        "rgba8.png": np.concatenate([rgb8, rgb8[..., :1]], axis=2),
        "la8.png": np.stack([rgb8[..., 1], rgb8[..., 2]], axis=2),
        "rgba16.png": np.concatenate([rgb8, rgb8[..., :1]], axis=2).astype(np.uint16) * 257,
    }
    for name, arr in cases.items():
        write_image_native(tmp_path / name, arr)
        back = read_image_native(tmp_path / name)
        assert isinstance(back, NativeImage)
        assert back.pixels.dtype == arr.dtype and np.array_equal(back.pixels, arr), name
    assert read_image_native(tmp_path / "la8.png").has_alpha and read_image_native(tmp_path / "la8.png").is_gray
    # EXIF orientation 6 (rotate 90 degrees clockwise to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb8).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    rot = read_image_native(tmp_path / "rot.jpg")
    assert rot.pixels.shape == (50, 30, 3) and rot.orientation == 6
    assert np.abs(rot.pixels.astype(int) - np.rot90(rgb8, -1).astype(int)).mean() < 4
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    from maskdcpt.imageio import ImageRejected

    with pytest.raises(ImageRejected):
        read_image_native(tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------ classifier

def _pretrain_ckpt(tmp_path, classes):
    torch.manual_seed(0)
    model = MaskDCPTModel(build_nafnet("tiny"), num_classes=len(classes), recon_head="token", recon_blocks=1)
    folder = tmp_path / "pretrain"
    folder.mkdir()
    torch.save({"params": model.state_dict(), "meta": {"arch": "nafnet", "preset": "tiny",
                                                       "num_classes": len(classes)}}, folder / "model.pt")
    (folder / "classes.json").write_text(json.dumps(classes))
    return folder / "model.pt", model


def test_classify_each_5d_class_output_format(tmp_path):
    from maskdcpt.degradations import degrade, task_classes

    classes = list(task_classes("5d"))
    ckpt, ref = _pretrain_ckpt(tmp_path, classes)
    model, names, meta = load_classifier(ckpt, device="cpu")
    assert names == classes and meta["num_classes"] == 5
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    gt = skdata.coffee()[100:164, 200:264].astype(np.float32) / 255
    for i, name in enumerate(classes):
        lq, _ = degrade(gt, name, seed=i)
        res = classify_image(model, lq, names, masks=3, seed=i)
        assert set(res["probabilities"]) == set(classes)
        assert math.isclose(sum(res["probabilities"].values()), 1.0, abs_tol=1e-9)
        assert [p for _, p in res["top"]] == sorted(res["probabilities"].values(), reverse=True)
        assert res["masks"] == 3 and res["crops"] == 1
    again = classify_image(model, lq, names, masks=3, seed=len(classes) - 1)
    assert again["probabilities"] == res["probabilities"]             # seeded masks: reproducible
    other = classify_image(model, lq, names, masks=3, seed=99)
    assert other["probabilities"] != res["probabilities"]             # ... and the masks do matter
    big = np.random.default_rng(0).random((300, 410, 3), dtype=np.float32)
    assert classify_image(model, big, names, masks=2, crop=64, max_crops=4)["crops"] == 4
    with pytest.raises(ValueError):
        load_classifier(ckpt, classes=["a", "b"], device="cpu")


# ------------------------------------------------------------------------------------------ serving

@pytest.fixture(scope="module")
def pyfunc_store(tmp_path_factory):
    from maskdcpt.serving import log_pyfunc_model

    d = tmp_path_factory.mktemp("mlflow")
    uri = use_store(d / "mlflow.db", "serving-test")   # artifacts in d, not in the project's mlruns/
    net = active_nafnet(build_nafnet("tiny"), seed=3)
    info = log_pyfunc_model(net, registered_model_name="restorer-test")
    return {"uri": uri, "model_uri": "models:/restorer-test/1", "net": net, "info": info}


def test_pyfunc_predict_through_mlflow(pyfunc_store):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(pyfunc_store["model_uri"])
    x = np.random.default_rng(0).random((2, 37, 41, 3), dtype=np.float32)
    y = model.predict(x)
    assert y.shape == x.shape and y.dtype == np.float32
    ref = restore_image(pyfunc_store["net"], x[1])
    assert np.abs(y[1] - ref).max() < 1e-6
    inner = model.unwrap_python_model()
    one = inner.predict(None, np.round(x[0] * 255).astype(np.uint8))   # a single uint8 image, called directly
    assert one.shape == (37, 41, 3) and one.dtype == np.uint8
    # the registered pyfunc also loads as a plain network for `maskdcpt restore --model`
    net = load_model(pyfunc_store["model_uri"], device="cpu", tracking=pyfunc_store["uri"])
    assert np.abs(restore_image(net, x[1]) - ref).max() < 1e-6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_rest(pyfunc_store, tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=pyfunc_store["uri"])
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"   # uvicorn of this venv
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", pyfunc_store["model_uri"], "--env-manager",
           "local", "-p", str(port), "-h", "127.0.0.1"]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("server did not become healthy:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(1)
        x = np.random.default_rng(1).random((1, 20, 23, 3), dtype=np.float32)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"inputs": x.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            pred = np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
        assert pred.shape == x.shape
        assert np.abs(pred[0] - restore_image(pyfunc_store["net"], x[0])).max() < 1e-5
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
