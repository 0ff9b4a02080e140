"""The web demo (maskdcpt.demo, ``maskdcpt demo``), its model card, restored files' modes.

The browser tests start ``maskdcpt demo`` on a free port and drive Debian's headless chromium through its
chromedriver (Selenium) with every host but 127.0.0.1 unresolvable, so a page that needed the network would
hang and fail here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from backbone_props import active_nafnet
from maskdcpt import metrics
from maskdcpt.demo import DemoBackend, severity_params
from maskdcpt.model_card import card_markdown, model_card
from maskdcpt.models import MaskDCPTModel, build_nafnet
from maskdcpt.native_io import read_image_native, write_image_native
from maskdcpt.restore import restore_image


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A restorer checkpoint (tiny NAFNet), a pre-training checkpoint with classes.json, and a photo."""
    from maskdcpt.degradations import task_classes

    root = tmp_path_factory.mktemp("demo-assets")
    net = active_nafnet(build_nafnet("tiny"))
    sd = net.state_dict()
    torch.save({"params": sd, "params_ema": sd, "meta": {"arch": "nafnet", "preset": "tiny"}}, root / "model.pt")
    classes = task_classes("5d")
    torch.manual_seed(1)
    pre = MaskDCPTModel(build_nafnet("tiny"), num_classes=len(classes), recon_blocks=1)
    (root / "pre").mkdir()
    torch.save({"params": pre.state_dict(), "meta": {"arch": "nafnet", "preset": "tiny"}}, root / "pre" / "model.pt")
    (root / "pre" / "classes.json").write_text(json.dumps(classes))
    photo = skdata.chelsea()[:150, 20:245]   # 225 x 150, odd width
    Image.fromarray(photo).save(root / "chelsea.png")
    return {"root": root, "net": net, "ckpt": root / "model.pt", "pre": root / "pre" / "model.pt",
            "classes": classes, "photo": root / "chelsea.png", "pixels": photo}


@pytest.fixture()
def backend(assets, tmp_path):
    from maskdcpt.classify import load_classifier

    model, classes, _ = load_classifier(assets["pre"], device="cpu")
    return DemoBackend(assets["net"], card={"source": str(assets["ckpt"])}, classifier=(model, classes), tile=64,
                       overlap=16, out_dir=tmp_path / "out")


# ------------------------------------------------------------------------------------------ backend

def test_upload_16bit_is_restored_at_full_size_in_16_bit(assets, backend, tmp_path):
    rgb16 = skdata.astronaut()[:70, :90].astype(np.uint16) * 256 + 3   # not 8-bit representable
    path = tmp_path / "in16.png"
    write_image_native(path, rgb16)
    assert read_image_native(path).bit_depth == 16
    res = backend.run_upload(path)
    assert res.ok, res.message
    out = read_image_native(res.download)
    assert out.bit_depth == 16 and out.pixels.dtype == np.uint16 and out.pixels.shape == rgb16.shape
    # the same pixels as restore_image with the same network and the backend's tiling (70x90 > 64x64: tiled)
    expect = restore_image(assets["net"], rgb16, tile=64, overlap=16)
    assert np.array_equal(out.pixels, expect)
    assert res.size == (90, 70) and res.tiles > 1 and "16-bit" in res.message
    assert set(res.diagnosis) == set(assets["classes"]) and abs(sum(res.diagnosis.values()) - 1) < 1e-5
    assert res.before.dtype == np.uint8 and res.before.shape[:2] == (70, 90)


def test_diagnosis_is_the_classifiers(assets, backend):
    from maskdcpt.classify import classify_image
    from maskdcpt.imageio import read_image

    backend.tile, backend.masks = 256, 3   # whole image, 3 masks per crop: what is checked stays the same
    res = backend.run_upload(assets["photo"])
    model, classes = backend.classifier
    expect = classify_image(model, read_image(assets["photo"]), classes, masks=backend.masks)["probabilities"]
    assert res.diagnosis == pytest.approx(expect, abs=1e-9)


def test_progress_reports_every_tile(backend, assets):
    backend.classifier = None   # restoration only
    calls = []
    res = backend.run_upload(assets["photo"], progress=lambda d, t: calls.append((d, t)))
    assert res.ok and res.tiles == calls[-1][1] > 1
    assert [d for d, _ in calls] == list(range(1, res.tiles + 1))


def test_reference_gives_psnr_ssim(assets, backend, tmp_path):
    ref = assets["pixels"]
    noisy = np.clip(ref.astype(np.float32) + np.random.default_rng(0).normal(0, 20, ref.shape), 0, 255)
    noisy = noisy.round().astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    res = backend.run_upload(tmp_path / "noisy.png", reference=assets["photo"])
    gt = ref.astype(np.float32) / 255
    restored = read_image_native(res.download).pixels.astype(np.float32) / 255
    assert res.metrics["input"]["psnr"] == pytest.approx(metrics.psnr(noisy.astype(np.float32) / 255, gt))
    assert res.metrics["restored"]["psnr"] == pytest.approx(metrics.psnr(restored, gt))
    assert res.metrics["restored"]["ssim"] == pytest.approx(metrics.ssim(restored, gt))
    Image.fromarray(ref[:50]).save(tmp_path / "small.png")
    bad = backend.run_upload(tmp_path / "noisy.png", reference=tmp_path / "small.png")
    assert not bad.ok and "must match" in bad.message


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "huge", "none"])
def test_bad_uploads_get_a_readable_message(assets, backend, tmp_path, kind):
    path = tmp_path / f"bad-{kind}.png"
    if kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        path.write_bytes(assets["photo"].read_bytes()[:3000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "huge":
        backend.max_pixels = 1000
        path = assets["photo"]
    res = backend.run_upload(None if kind == "none" else path)
    assert not res.ok and res.download is None and "Traceback" not in res.message
    want = {"text": "not an image file", "truncated": "truncated", "empty": "empty", "huge": "too many pixels",
            "none": "Upload an image"}[kind]
    assert want in res.message


def test_sample_photo_degraded_and_scored(backend):
    from maskdcpt.degradations import degrade
    from maskdcpt.demo import packaged_photo

    backend.tile, backend.masks = 512, 1   # 512x512: one whole-image pass
    res = backend.run_sample("skimage-astronaut", "gaussian_noise", 1.0, seed=3)
    assert res.ok, res.message
    gt = packaged_photo("skimage-astronaut")
    lq, params = degrade(gt, "gaussian_noise", seed=3, params={"sigma": 50})
    lq8 = np.round(lq * 255).astype(np.uint8).astype(np.float32) / 255
    assert res.metrics["input"]["psnr"] == pytest.approx(metrics.psnr(lq8, gt))
    assert read_image_native(res.download).pixels.shape == gt.shape
    assert "sigma=50" in res.message
    assert not backend.run_sample("no-such-photo", "haze", 0.5).ok
    assert "not offered" in backend.run_sample("skimage-astronaut", "mosaic", 0.5).message


def test_severity_follows_the_registry_grid():
    assert severity_params("gaussian_noise", 0.0) == {"sigma": 15}
    assert severity_params("gaussian_noise", 1.0) == {"sigma": 50}
    assert severity_params("jpeg", 1.0) == {"quality": 10} and severity_params("jpeg", 0.0) == {"quality": 95}
    assert severity_params("low_light", 1.0) == {"exposure": 0.1}
    assert severity_params("haze", 0.5) == {"beta": 1.2}
    assert severity_params("noise", 0.0) == {"sigma": 1, "noise_type": "gaussian"}
    with pytest.raises(ValueError):
        severity_params("haze", 1.5)


# ------------------------------------------------------------------------------------------ model card, file modes

def _registry(tmp_path, ckpt, monkeypatch):
    """A real MLflow registry in tmp_path: a pipeline run (git commit, DVC hashes) with a nested register run
    holding the version, its decision tags and register/decision.json; alias champion."""
    import mlflow
    from mlflow import MlflowClient

    from maskdcpt.serving import log_pyfunc_model

    from conftest import use_store

    uri = use_store(tmp_path / "mlflow.db", "demo-card-test")  # artifacts under tmp_path, not ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    decision = {"promoted": True, "reason": "mean PSNR 27.100 dB beats champion 26.900 dB by +0.200 dB",
                "challenger_psnr": {"rain": 25.5, "haze": 28.25, "mean": 27.1},
                "champion_psnr_before": {"rain": 25.0, "haze": 28.5, "mean": 26.9}}
    with mlflow.start_run(tags={"git_commit": "0123456789abcdef", "dvc.finetune_maskdcpt.models/finetune": "d41d8"}):
        with mlflow.start_run(nested=True):
            mlflow.log_dict(decision, "register/decision.json")
            log_pyfunc_model(ckpt, registered_model_name="maskdcpt-nafnet-5d")
    client = MlflowClient(uri)
    for k, v in {"decision": "promoted", "reason": decision["reason"], "benchmark_id": "bench123",
                 "benchmark_mean_psnr": "27.1000", "champion_version_before": "none"}.items():
        client.set_model_version_tag("maskdcpt-nafnet-5d", "1", k, v)
    client.set_registered_model_alias("maskdcpt-nafnet-5d", "champion", "1")
    return uri


def test_model_card_from_the_registry(assets, tmp_path, monkeypatch):
    uri = _registry(tmp_path, assets["ckpt"], monkeypatch)
    card = model_card("models:/maskdcpt-nafnet-5d@champion", assets["net"], tracking=uri)
    assert card["version"] == "1" and "champion" in card["aliases"] and card["decision"] == "promoted"
    assert card["reason"].startswith("mean PSNR 27.100") and card["benchmark_id"] == "bench123"
    assert card["git_commit"] == "0123456789abcdef"
    assert card["dvc"] == {"finetune_maskdcpt.models/finetune": "d41d8"}
    assert card["benchmark"]["challenger"]["haze"] == 28.25
    md = card_markdown(card)
    for text in ("maskdcpt-nafnet-5d v1", "promoted", "28.25", "28.50", "0123456789abcdef", "d41d8", "bench123"):
        assert text in md
    missing = model_card("models:/maskdcpt-nafnet-5d@nope", tracking=uri)
    assert "version" not in missing and "registry lookup failed" in missing["notes"][0]


def test_model_card_of_a_file(assets):
    from maskdcpt.inference import load_model

    net = load_model(assets["ckpt"], device="cpu")
    card = model_card(str(assets["ckpt"]), net)
    assert card["sha256"] == hashlib.sha256(assets["ckpt"].read_bytes()).hexdigest()
    assert card["arch"] == "nafnet" and card["preset"] == "tiny"
    assert card["parameters"] == sum(p.numel() for p in net.parameters())
    assert "no promotion record" in card_markdown(card)


def test_demo_command_rejects_bad_arguments(tmp_path, capsys):
    from maskdcpt.cli import main

    assert main(["demo", "--model", str(tmp_path / "missing.pt")]) == 1
    assert "cannot load model" in capsys.readouterr().err
    assert main(["demo", "--tile", "8"]) == 2


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_restored_files_honour_the_umask(assets, tmp_path, umask):
    from maskdcpt.cli import main

    old = os.umask(umask)
    try:
        direct = write_image_native(tmp_path / "direct.png", np.zeros((4, 5, 3), np.uint8))
        assert main(["restore", str(assets["photo"]), "-o", str(tmp_path / "out"), "--model", str(assets["ckpt"]),
                     "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE(direct.stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "out" / "chelsea.png").stat().st_mode) == want


# ------------------------------------------------------------------------------------------ real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(assets, tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    port = _free_port()
    logs = tmp_path_factory.mktemp("demo-server")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(logs / "gradio"), "XDG_CACHE_HOME": str(logs / "cache"),
           "TMPDIR": str(logs),   # the demo's restored files (tempfile.mkdtemp) stay in the test's folder
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(logs / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "maskdcpt.cli", "demo", "--model", str(assets["ckpt"]),
                             "--classifier", str(assets["pre"]), "--port", str(port), "--tile", "128",
                             "--inference", "nhwc"],   # the ONNX export (~1 min) is tested in test_fast_paths
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=logs)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"demo exited ({proc.returncode}): {(logs / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("demo did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
              "--window-size=1400,1000", "--disable-extensions", "--disable-background-networking",
              "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):   # offline except this machine
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(fn, timeout=180, every=0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def _upload(driver, elem_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    field = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} input[type=file]"), 60)[0]
    field.send_keys(str(path))


@pytest.mark.slow
def test_browser_upload_restores_and_diagnoses(demo_server, browser, assets, tmp_path):
    from selenium.webdriver.common.by import By

    from maskdcpt.classify import classify_image, load_classifier
    from maskdcpt.imageio import read_image

    browser.get(demo_server)
    _upload(browser, "upload", assets["photo"])
    status = _wait(lambda: browser.find_element(By.ID, "status").text.strip())
    assert status.startswith("Restored 225x150 px"), status
    href = _wait(lambda: [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#download a")
                          if a.get_attribute("href")], 30)[0]
    with urllib.request.urlopen(href, timeout=30) as r:
        restored = Image.open(io.BytesIO(r.read()))
        restored.load()
    assert restored.size == (225, 150)
    model, classes, _ = load_classifier(assets["pre"], device="cpu")
    top = classify_image(model, read_image(assets["photo"]), classes, masks=8)["top"][0][0]
    diagnosis = browser.find_element(By.ID, "diagnosis").text
    assert diagnosis.split("\n")[1].strip() == top, diagnosis   # the heading under the label is the top class
    assert "Model card" in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # everything the page requested came from the demo itself (fonts included): it works offline
    requested = set()
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            requested.add(msg["params"]["request"]["url"])
    foreign = sorted(u for u in requested if not u.startswith((demo_server, "data:", "blob:")))
    assert not foreign, foreign


@pytest.mark.slow
def test_browser_corrupt_upload_shows_the_reason(demo_server, browser, assets, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "broken.png"
    bad.write_bytes(assets["photo"].read_bytes()[:2500])
    browser.get(demo_server)
    _upload(browser, "upload", bad)
    status = _wait(lambda: browser.find_element(By.ID, "status").text.strip())
    assert "Could not read broken.png" in status and "truncated" in status, status
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
