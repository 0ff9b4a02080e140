"""The browser demo (``maskdcpt demo``): diagnose and restore a user's photo with the registry's champion.

:class:`DemoBackend` does the work and knows nothing about the web page (tested directly); :func:`build_app`
lays it out as a Gradio app and :func:`launch` serves it on 127.0.0.1. The page:

* an upload (any image file; read with :func:`maskdcpt.native_io.read_image_native`, so 16-bit stays 16-bit
  and alpha is carried through) or a packaged photo (:data:`maskdcpt.data.photos.PACKAGED_PHOTOS`) degraded by a
  registry degradation (:mod:`maskdcpt.degradations`) at a chosen strength, which gives a clean reference;
* the diagnosis: the pre-trained classifier's probabilities (:func:`maskdcpt.classify.classify_image`) as bars;
* before/after slider, PSNR/SSIM (:mod:`maskdcpt.metrics`, RGB float, no crop) when a reference is known;
* the restored file at full size in the input's bit depth (PNG);
* the model card: registered version, the benchmark it was promoted on, the decision and its reason, git
  commit and DVC hashes (from the MLflow registry), or the checkpoint's metadata for a file.

Large images go through tiles (``tile``) with a progress bar. Bad uploads give a readable message (the
:class:`maskdcpt.imageio.ImageRejected` reason), never a stack trace. Nothing is fetched at run time: Gradio
analytics and share links are off and the theme uses system fonts only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskdcpt.model_card import card_markdown, model_card  # noqa: F401  (re-exported)

__all__ = ["DemoBackend", "DemoResult", "model_card", "card_markdown", "severity_params", "build_app", "launch",
           "to_float_rgb", "preview_uint8"]

logger = logging.getLogger(__name__)

#: Registry degradations offered for the packaged photos: (name, severity parameter, True when a larger value
#: is a milder degradation). Their values come from the registry's ``param_ranges`` grids.
_SEVERITY = {
    "gaussian_noise": ("sigma", False), "noise": ("sigma", False), "rain": ("density", False),
    "haze": ("beta", False), "low_light": ("exposure", True), "motion_blur": ("length", False),
    "defocus_blur": ("radius", False), "jpeg": ("quality", True), "raindrop": ("count", False),
    "snow": ("density", False), "moire": ("strength", False),
}


def severity_params(name: str, strength: float) -> dict[str, Any]:
    """Registry parameters for degradation ``name`` at ``strength`` in [0, 1] (0 mildest, 1 strongest).

    The severity parameter's grid ``{"grid": [lo, hi, step]}`` (or ``{"choice": [...]}``) of the registry's
    ``param_ranges`` is indexed at ``round(strength * (n - 1))``, reversed where a larger value is milder
    (``low_light`` exposure, ``jpeg`` quality). ``noise`` is pinned to its Gaussian sub-type.

    Raises:
        ValueError: an unknown or unsupported degradation, or ``strength`` outside [0, 1].
    """
    from maskdcpt.degradations import get_degradation

    if name not in _SEVERITY:
        raise ValueError(f"degradation {name!r} is not offered by the demo; choose one of {sorted(_SEVERITY)}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    key, reverse = _SEVERITY[name]
    spec = get_degradation(name).param_ranges[key]
    if "grid" in spec:
        lo, hi, step = spec["grid"]
        ints = all(isinstance(x, int) for x in (lo, hi, step))
        values = [lo + i * step if ints else round(lo + i * step, 6) for i in range(int(round((hi - lo) / step)) + 1)]
    else:
        values = list(spec["choice"])
    if reverse:
        values = values[::-1]
    v = values[int(round(float(strength) * (len(values) - 1)))]
    out: dict[str, Any] = {key: v}
    if name == "noise":
        out["noise_type"] = "gaussian"
    return out


def to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """Native pixels (grey, grey+alpha, RGB, RGBA; uint8/uint16/float) -> float32 ``(H, W, 3)`` RGB in [0, 1]
    (alpha dropped, grey repeated), for the classifier and the metrics."""
    a = np.asarray(pixels)
    scale = 255.0 if a.dtype == np.uint8 else 65535.0 if a.dtype == np.uint16 else 1.0
    if a.ndim == 2:
        a = a[..., None]
    a = a[..., :1] if a.shape[2] in (1, 2) else a[..., :3]
    f = np.clip(a.astype(np.float32) / np.float32(scale), 0.0, 1.0)
    return np.ascontiguousarray(np.repeat(f, 3, axis=2) if f.shape[2] == 1 else f)


def preview_uint8(pixels: np.ndarray, max_side: int = 1600) -> np.ndarray:
    """An 8-bit RGB(A) preview for the page, downscaled (area) so that its longer side is at most
    ``max_side``; the downloadable file is always the full-size image."""
    import cv2

    a = np.asarray(pixels)
    if a.dtype == np.uint16:
        a = np.round(a / 257.0).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.round(np.clip(a, 0, 1) * 255.0).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 2:
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    h, w = a.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        a = cv2.resize(a, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(a)


@dataclass
class DemoResult:
    """What one request produced. ``message`` is always set (a success line or the readable error); on an error
    the other fields are None."""

    message: str
    ok: bool = False
    before: np.ndarray | None = None        # 8-bit preview of the input
    after: np.ndarray | None = None         # 8-bit preview of the restored image
    diagnosis: dict[str, float] | None = None
    metrics: dict[str, dict[str, float]] | None = None
    download: Path | None = None            # the full-size restored PNG
    size: tuple[int, int] | None = None     # (width, height) of input and output
    bit_depth: int | None = None
    tiles: int = 1
    seconds: float = 0.0


@dataclass
class DemoBackend:
    """The demo's model, classifier and request handling (no web code).

    Attributes:
        net: the restoration network (from :func:`maskdcpt.inference.load_model`), possibly wrapped by
            :func:`maskdcpt.fastpaths.prepare_for_inference`.
        card: the model card (:func:`model_card`).
        classifier: ``(MaskDCPTModel, class names)`` or None (no diagnosis panel).
        tile, overlap: images with more than ``tile * tile`` pixels (or a side > ``tile * 2``) are restored
            in tiles of this side.
        max_pixels: uploads above this pixel count are rejected (``too_many_pixels``).
        out_dir: where restored files are written for download.
    """

    net: Any
    card: dict[str, Any] = field(default_factory=dict)
    classifier: tuple[Any, list[str]] | None = None
    tile: int = 512
    overlap: int = 32
    max_pixels: int = 16_000_000
    out_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="maskdcpt-demo-")))
    masks: int = 8

    # ---------------------------------------------------------------------------------------------- pieces
    def needs_tiles(self, h: int, w: int) -> bool:
        """Whether an ``h x w`` image goes through tiles."""
        return h * w > self.tile * self.tile or max(h, w) > 2 * self.tile

    def diagnose(self, rgb: np.ndarray) -> dict[str, float] | None:
        """Class probabilities of a float ``(H, W, 3)`` image, or None without a classifier."""
        if self.classifier is None:
            return None
        from maskdcpt.classify import classify_image

        model, classes = self.classifier
        return classify_image(model, rgb, classes, masks=self.masks)["probabilities"]

    def restore(self, pixels: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Restore native pixels (same shape and dtype out), tiled when :meth:`needs_tiles`."""
        from maskdcpt.restore import restore_image

        h, w = pixels.shape[:2]
        tile = self.tile if self.needs_tiles(h, w) else None
        return restore_image(self.net, pixels, tile=tile, overlap=self.overlap, progress=progress)

    # ---------------------------------------------------------------------------------------------- requests
    def run_upload(self, path: str | os.PathLike | None, reference: str | os.PathLike | None = None,
                   progress: Callable[[int, int], None] | None = None) -> DemoResult:
        """Diagnose and restore an uploaded file; ``reference`` is an optional clean image of the same size
        (PSNR/SSIM are then reported). Never raises for bad input: the result's ``message`` says what is wrong."""
        from maskdcpt.imageio import ImageRejected
        from maskdcpt.native_io import read_image_native

        if not path:
            return DemoResult("Upload an image file first.")
        name = Path(path).name
        try:
            img = read_image_native(path, max_pixels=self.max_pixels)
        except ImageRejected as e:
            return DemoResult(f"Could not read {name}: {_REASONS.get(e.reason, e.reason)} ({e.message}).")
        ref = None
        if reference:
            try:
                ref = to_float_rgb(read_image_native(reference, max_pixels=self.max_pixels).pixels)
            except ImageRejected as e:
                return DemoResult(f"Could not read the reference {Path(reference).name}: "
                                  f"{_REASONS.get(e.reason, e.reason)} ({e.message}).")
            if ref.shape[:2] != img.pixels.shape[:2]:
                return DemoResult(f"The reference is {ref.shape[1]}x{ref.shape[0]} px but the photo is "
                                  f"{img.pixels.shape[1]}x{img.pixels.shape[0]} px; they must match.")
        return self._process(img.pixels, img.bit_depth, Path(name).stem, ref, progress)

    def run_sample(self, photo_id: str, degradation: str, strength: float, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> DemoResult:
        """Degrade a packaged photo (the clean reference) with a registry degradation at ``strength`` and
        restore it; PSNR/SSIM of the degraded and the restored image against the clean photo are reported."""
        from maskdcpt.degradations import degrade

        try:
            gt = packaged_photo(photo_id)
            params = severity_params(degradation, strength)
            lq, full = degrade(gt, degradation, seed=int(seed), params=params)
        except (ValueError, FileNotFoundError) as e:
            return DemoResult(f"Cannot prepare the sample: {e}")
        lq8 = np.round(lq * 255.0).astype(np.uint8)  # what a visitor would have as a file
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        return self._process(lq8, 8, f"{photo_id}-{degradation}", gt, progress, note=f"{degradation} ({shown})")

    def _process(self, pixels: np.ndarray, bit_depth: int, stem: str, ref: np.ndarray | None,
                 progress: Callable[[int, int], None] | None, note: str = "") -> DemoResult:
        from maskdcpt import metrics
        from maskdcpt.native_io import write_image_native

        h, w = pixels.shape[:2]
        t0 = time.perf_counter()
        tiles = [1]

        def _progress(done: int, total: int) -> None:
            tiles[0] = total
            if progress is not None:
                progress(done, total)

        try:
            rgb = to_float_rgb(pixels)
            diagnosis = self.diagnose(rgb)
            restored = self.restore(pixels, _progress)
        except (ValueError, RuntimeError, MemoryError) as e:
            logger.exception("demo restoration failed")
            return DemoResult(f"Restoration failed: {type(e).__name__}: {str(e)[:300]}")
        scores = None
        if ref is not None:
            out = to_float_rgb(restored)
            scores = {"input": {"psnr": float(metrics.psnr(rgb, ref)), "ssim": float(metrics.ssim(rgb, ref))},
                      "restored": {"psnr": float(metrics.psnr(out, ref)), "ssim": float(metrics.ssim(out, ref))}}
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:80] or "image"
        dest = self.out_dir / f"{safe}-restored-{hashlib.sha1(os.urandom(8)).hexdigest()[:8]}.png"
        write_image_native(dest, restored)
        seconds = time.perf_counter() - t0
        depth = 16 if restored.dtype != np.uint8 else 8
        msg = (f"Restored {w}x{h} px{' ' + note if note else ''} in {seconds:.1f} s"
               f"{f' ({tiles[0]} tiles)' if tiles[0] > 1 else ''}; download: {depth}-bit PNG, full size.")
        return DemoResult(msg, True, preview_uint8(pixels), preview_uint8(restored), diagnosis, scores, dest,
                          (w, h), depth, tiles[0], seconds)


_REASONS = {
    "not_an_image": "this is not an image file", "empty_file": "the file is empty",
    "truncated": "the image file is truncated", "corrupt": "the image file is corrupt",
    "too_many_pixels": "the image has too many pixels", "unsupported_mode": "this pixel format is not supported",
    "non_finite": "the image contains NaN or infinite values", "not_found": "the file is missing",
}


def packaged_photo(photo_id: str) -> np.ndarray:
    """A packaged photo (:data:`maskdcpt.data.photos.PACKAGED_PHOTOS`) as float32 RGB in [0, 1].

    Raises:
        ValueError: an unknown id; FileNotFoundError: its package is not installed.
    """
    from maskdcpt.data.photos import PACKAGED_PHOTOS, collect_packaged_photos
    from maskdcpt.imageio import read_image

    wanted = [p for p in PACKAGED_PHOTOS if p.image_id == photo_id]
    if not wanted:
        raise ValueError(f"unknown packaged photo {photo_id!r}")
    found, missing = collect_packaged_photos(wanted)
    if not found:
        raise FileNotFoundError(f"packaged photo {photo_id!r} is not installed here ({missing[0]['reason']})")
    return read_image(found[0].path)


def sample_photo_ids() -> list[str]:
    """Ids of the packaged colour photos installed on this machine (benchmark photos first)."""
    from maskdcpt.data.photos import PACKAGED_PHOTOS, collect_packaged_photos

    found, _ = collect_packaged_photos([p for p in PACKAGED_PHOTOS if not p.grey])
    order = {"benchmark": 0, "train": 1}
    return [s.image_id for s in sorted(found, key=lambda s: order.get(s.split, 2))]


# -------------------------------------------------------------------------------------------------- the page

_CSS = """
.maskdcpt-status { font-size: 1.05em; }
"""


def build_app(backend: DemoBackend, samples: list[str] | None = None):
    """The Gradio ``Blocks`` page over ``backend`` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gradio as gr

    samples = sample_photo_ids() if samples is None else samples
    degradations = sorted(_SEVERITY)

    def outputs(res: DemoResult):
        slider = (res.before, res.after) if res.ok else None
        label = res.diagnosis if res.diagnosis is not None else None
        scores = _metrics_markdown(res.metrics) if res.metrics else ""
        status = (f"**{res.message}**" if res.ok else f"⚠️ **{res.message}**")
        download = str(res.download) if res.download else None
        return slider, label, scores, download, status

    def on_upload(path, reference, progress=gr.Progress()):
        progress(0, desc="reading")
        res = backend.run_upload(path, reference, progress=lambda d, t: progress(d / t, desc=f"tile {d}/{t}"))
        return outputs(res)

    def on_sample(photo, degradation, strength, seed, progress=gr.Progress()):
        progress(0, desc="degrading")
        res = backend.run_sample(photo, degradation, strength, int(seed),
                                 progress=lambda d, t: progress(d / t, desc=f"tile {d}/{t}"))
        return outputs(res)

    with gr.Blocks(title="MaskDCPT restoration demo", analytics_enabled=False) as app:
        gr.Markdown("# MaskDCPT: diagnose and restore a photo\n"
                    "Upload a photo, or degrade one of the packaged photos with a degradation of the registry. "
                    "The classifier of the pre-trained model names the degradation; the restoration network "
                    "restores the image at full size.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Upload"):
                    upload = gr.File(label="Photo (PNG, JPEG, TIFF, ...; 8 or 16 bit)", type="filepath",
                                     elem_id="upload")
                    reference = gr.File(label="Clean reference, optional (same size: PSNR/SSIM)",
                                        type="filepath", elem_id="reference")
                    run_upload = gr.Button("Restore upload", variant="primary", elem_id="run-upload")
                with gr.Tab("Packaged photo"):
                    photo = gr.Dropdown(samples, value=samples[0] if samples else None, label="Photo",
                                        elem_id="photo")
                    degradation = gr.Dropdown(degradations, value="gaussian_noise", label="Degradation",
                                              elem_id="degradation")
                    strength = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Strength (0 mild, 1 strong)")
                    seed = gr.Number(0, precision=0, label="Seed")
                    run_sample = gr.Button("Degrade and restore", variant="primary", elem_id="run-sample")
                status = gr.Markdown("", elem_id="status", elem_classes=["maskdcpt-status"])
                diagnosis = gr.Label(label="Diagnosis: degradation probabilities", num_top_classes=5,
                                     elem_id="diagnosis", visible=backend.classifier is not None)
                scores = gr.Markdown("", elem_id="scores")
                download = gr.File(label="Restored image (full size, input bit depth)", elem_id="download",
                                   interactive=False)
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before / after", type="numpy", format="png", elem_id="slider",
                                        interactive=False, max_height=720)
                with gr.Accordion("Model card", open=True):
                    gr.Markdown(card_markdown(backend.card), elem_id="model-card")
        outs = [slider, diagnosis, scores, download, status]
        upload.upload(on_upload, [upload, reference], outs)
        run_upload.click(on_upload, [upload, reference], outs)
        run_sample.click(on_sample, [photo, degradation, strength, seed], outs)
    return app


def _metrics_markdown(scores: dict[str, dict[str, float]]) -> str:
    return ("| against the clean reference | PSNR (dB) | SSIM |\n|---|---|---|\n"
            + "\n".join(f"| {k} | {v['psnr']:.2f} | {v['ssim']:.4f} |" for k, v in scores.items()))


def offline_theme():
    """Gradio's default theme with system fonts only (its stock fonts would be fetched or served; a page that
    waits for web fonts hangs offline, gradio-app/gradio #1450, #4332)."""
    import gradio as gr

    sans = [gr.themes.Font("DejaVu Sans"), gr.themes.Font("Liberation Sans"), "ui-sans-serif", "system-ui",
            "sans-serif"]
    mono = [gr.themes.Font("DejaVu Sans Mono"), "ui-monospace", "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


def launch(backend: DemoBackend, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           max_file_size: str = "200mb"):
    """Serve the page on ``host:port`` (no share link, no analytics, no server-side rendering). Returns the
    Gradio app (with ``block=False`` the server runs in a thread; ``app.close()`` stops it)."""
    app = build_app(backend)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=int(port), share=False, inbrowser=False, show_error=False,
               prevent_thread_lock=not block, quiet=False, ssr_mode=False, pwa=False, mcp_server=False,
               max_file_size=max_file_size, allowed_paths=[str(backend.out_dir)], theme=offline_theme(),
               css=_CSS, footer_links=["settings"])
    return app
