"""Restore and diagnose users' images: model loading, size-exact tiled restoration, native-format image I/O,
and the degradation diagnosis of the pre-trained classifier.

* :func:`load_model`: a restoration network from a checkpoint file (ours, or an official MaskDCPT/NAFNet
  release file with ``params`` / ``params_ema``; the NAFNet configuration is read from the weights' shapes and
  key names) or from an MLflow model URI (``models:/<name>@champion``, ``runs:/...``; PyTorch flavour or the
  :mod:`maskdcpt.serving` pyfunc).
* :func:`restore_image`: output shape equals input shape exactly, any size (1x1 included); large images in
  overlapping tiles blended with linear ramps, so peak memory is bounded by the tile size plus a strip of the
  image; grey, grey+alpha, RGB, RGBA; uint8, uint16 or float in, the same layout and dtype out.
* :func:`read_image_native` / :func:`write_image_native`: read a file keeping its layout (grey/RGB, alpha)
  and bit depth, EXIF orientation applied; write it back as 8- or 16-bit PNG.
* :func:`load_classifier` / :func:`classify_image`: the MaskDCPT degradation classifier (paper Sec. IV-B),
  softmax averaged over seeded random patch masks and a few crops.

Inference follows the paper (maskdcpt-method.md §5.3): pad bottom/right to the network's multiple
(``padder_size``, 16 for 4-level NAFNet), run, crop back, clamp to [0, 1]. The paper pads with reflection and
runs whole images; here reflection is repeated when the pad is not smaller than the image (where a single
reflection is undefined) and a 1-px side is replicated, and tiling is an option for large images.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from maskdcpt.config import tracking_uri
import torch.nn.functional as F

from maskdcpt.imageio import ImageRejected, _orient_array, atomic_write_bytes

__all__ = [
    "DEFAULT_MODEL_URI",
    "REGISTERED_MODEL_NAME",
    "tracking_uri",
    "resolve_device",
    "infer_nafnet_config",
    "load_model",
    "load_checkpoint_state",
    "pad_to_multiple",
    "tile_spans",
    "restore_image",
    "NativeImage",
    "read_image_native",
    "write_image_native",
    "load_classifier",
    "classify_image",
    "expand_inputs",
]

#: The registered model the pipeline's ``register`` stage writes (pipelines/registry.py).
REGISTERED_MODEL_NAME = "maskdcpt-nafnet-5d"
#: Default model of ``maskdcpt restore``: the registry's champion.
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL_NAME}@champion"

_URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> ``cuda`` when available else ``cpu``; otherwise ``torch.device(device)``.

    Raises ``ValueError`` when CUDA is requested but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use --device cpu or auto)")
    return dev


# --------------------------------------------------------------------------------------------------
# checkpoints and models


def _strip(key: str, prefixes: tuple[str, ...] = ("module.",)) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def load_checkpoint_state(path: str | os.PathLike, key: str = "params_ema") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file: ``(state_dict, meta)``.

    Accepts ``{"params", "params_ema", "meta"}`` (ours and BasicSR/MaskDCPT releases; ``key`` picks the entry,
    falling back to the other), ``{"state_dict"|"model": ...}`` or a raw ``{name: tensor}``. Loaded with
    ``weights_only=True`` (no pickled code runs). ``module.`` prefixes are stripped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch checkpoint or no tensor state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign files
        raise ValueError(f"{path} is not a loadable torch checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta"), Mapping) else {}
    order = [key] + [k for k in ("params_ema", "params", "state_dict", "model") if k != key]
    sd = next((obj[k] for k in order if isinstance(obj.get(k), Mapping) and obj[k]), None)
    if sd is None:
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: no tensor state dict found (keys: {sorted(obj)[:8]})")
    return {_strip(k): v for k, v in sd.items()}, meta


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_nafnet_config(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """NAFNet constructor arguments read from a state dict's shapes and key names.

    ``img_channel``/``width`` from ``intro.weight`` (``[width, img_channel, 3, 3]``); the number of levels from
    ``downs.<i>``; blocks per level from ``encoders.<i>.blocks.<j>``, ``middle_blks.blocks.<j>`` and
    ``decoder<i>.blocks.<j>`` (maskdcpt-method.md §1.2 key layout). ``prefix`` (e.g. ``"backbone."``) is
    prepended to every key looked up.

    Raises:
        ValueError: the state dict is not a NAFNet (no ``intro.weight``).
    """
    keys = [k[len(prefix):] for k in state if k.startswith(prefix)]
    intro = state.get(prefix + "intro.weight")
    if intro is None or intro.dim() != 4:
        raise ValueError("not a NAFNet state dict: no 4-D 'intro.weight' tensor")
    levels = _count(keys, r"^downs\.(\d+)\.")
    if levels < 1:
        raise ValueError("not a NAFNet state dict: no 'downs.<i>' layers")
    enc = [_count(keys, rf"^encoders\.{i}\.blocks\.(\d+)\.") for i in range(levels)]
    dec = [_count(keys, rf"^decoder{i}\.blocks\.(\d+)\.") for i in range(levels)]
    mid = _count(keys, r"^middle_blks\.blocks\.(\d+)\.")
    return {"img_channel": int(intro.shape[1]), "width": int(intro.shape[0]), "enc_blk_nums": enc,
            "middle_blk_num": mid, "dec_blk_nums": dec}


def _preset_name(cfg: Mapping[str, Any]) -> str | None:
    from maskdcpt.models import NAFNET_PRESETS

    for name, p in NAFNET_PRESETS.items():
        if all(list(cfg[k]) == list(v) if isinstance(v, (list, tuple)) else cfg[k] == v for k, v in p.items()):
            return name
    return None


def _build_restorer(sd: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> nn.Module:
    from maskdcpt import models
    from maskdcpt.models import NAFNet, load_nafnet_state_dict

    if any(k.startswith("backbone.") for k in sd):  # a whole MaskDCPTModel: keep its backbone
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    arch = str(meta.get("arch") or ("nafnet" if "intro.weight" in sd else "")).lower()
    if arch == "nafnet" or (not arch and "intro.weight" in sd):
        cfg = infer_nafnet_config(sd)
        net = NAFNet(**cfg)
        load_nafnet_state_dict(net, sd, key=None)
        net.maskdcpt_info = {"arch": "nafnet", "preset": _preset_name(cfg), "config": cfg}
        return net
    builder = getattr(models, "build_backbone", None)
    if builder is None or not arch:
        raise ValueError(f"cannot build a network for checkpoint arch {arch or 'unknown'!r}: only NAFNet weights "
                         "are recognised from their shapes; other backbones need meta['arch'] and "
                         "maskdcpt.models.build_backbone")
    net = builder(arch, meta.get("preset"))
    net.load_state_dict(sd, strict=True)
    net.maskdcpt_info = {"arch": arch, "preset": meta.get("preset")}
    return net


def load_model(spec: str | os.PathLike, device: str | torch.device | None = "auto", key: str = "params_ema",
               tracking: str | None = None) -> nn.Module:
    """Load a restoration network in eval mode on ``device``.

    Args:
        spec: a checkpoint file (see :func:`load_checkpoint_state`; NAFNet configuration inferred from the
            weights, other backbones through ``meta["arch"]``) or an MLflow model URI (``models:/name@alias``,
            ``models:/name/3``, ``runs:/<id>/model``, a local MLflow model folder). MLflow models with the
            ``pytorch`` flavour are loaded with ``mlflow.pytorch.load_model``; :mod:`maskdcpt.serving` pyfunc
            models are unwrapped to their network.
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"``, ``"cuda"``...
        key: checkpoint entry to prefer (``params_ema``, the paper's evaluation weights, or ``params``).
        tracking: MLflow tracking URI for registry URIs (default: the one already set with
            ``mlflow.set_tracking_uri``, else :func:`tracking_uri`: ``$MLFLOW_TRACKING_URI`` or the project's
            ``sqlite:///<root>/mlflow.db``).

    Returns:
        an ``nn.Module`` mapping ``[N, 3, H, W]`` in [0, 1] (H, W multiples of its ``padder_size``) to the
        restored image; attribute ``maskdcpt_info`` describes what was loaded.

    Raises:
        FileNotFoundError: a file path that does not exist.
        ValueError: an unreadable or unrecognised checkpoint, or an MLflow model that is not a restorer.
    """
    dev = resolve_device(device)
    text = str(spec)
    path = Path(text)
    if path.is_file():
        sd, meta = load_checkpoint_state(path, key=key)
        net = _build_restorer(sd, meta)
        net.maskdcpt_info["source"] = str(path)
    elif _URI_RE.match(text) or (path.is_dir() and (path / "MLmodel").is_file()):
        net = _load_mlflow(text, dev, tracking)
    else:
        raise FileNotFoundError(f"model not found: {text!r} is neither a checkpoint file nor an MLflow model URI")
    return net.to(dev).eval()


def _load_mlflow(uri: str, device: torch.device, tracking: str | None) -> nn.Module:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:  # keep a URI the caller already chose with mlflow.set_tracking_uri()
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
        already = is_tracking_uri_set()
    except ImportError:  # pragma: no cover - private helper moved
        already = False
    if tracking or not already:
        mlflow.set_tracking_uri(tracking or tracking_uri())
        mlflow.set_registry_uri(tracking or tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as e:
        raise ValueError(f"cannot resolve MLflow model {uri!r} (tracking URI {mlflow.get_tracking_uri()}): {e}") from e
    import yaml

    flavors = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors", {})
    if "pytorch" in flavors:
        import mlflow.pytorch

        net = mlflow.pytorch.load_model(str(local), map_location=device)
    elif "python_function" in flavors:
        import mlflow.pyfunc

        inner = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
        net = getattr(inner, "net", None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"MLflow model {uri!r} is a pyfunc without a torch network (.net)")
    else:
        raise ValueError(f"MLflow model {uri!r} has neither a pytorch nor a python_function flavour: {sorted(flavors)}")
    info = dict(getattr(net, "maskdcpt_info", {}) or {})
    info["source"] = uri
    net.maskdcpt_info = info
    return net


# --------------------------------------------------------------------------------------------------
# padding, tiling, restoration


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``[N, C, H, W]`` at the bottom/right to multiples of ``multiple`` by reflection.

    When the pad is not smaller than the side (a single reflection is undefined there, e.g. 7 -> 16) the
    reflection is repeated on the grown tensor until the size is reached; a side of 1 px is replicated.
    Returns ``x`` itself when nothing is needed.
    """
    h, w = x.shape[-2:]
    th, tw = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    while x.shape[-2] < th or x.shape[-1] < tw:
        ch, cw = x.shape[-2:]
        ph, pw = min(th - ch, ch - 1), min(tw - cw, cw - 1)
        if (th > ch and ph == 0) or (tw > cw and pw == 0):  # a 1-px side: replicate
            x = F.pad(x, (0, tw - cw if pw == 0 else 0, 0, th - ch if ph == 0 else 0), mode="replicate")
            continue
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


def tile_spans(length: int, tile: int | None, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """1-D tile intervals ``[(start, end), ...]`` covering ``[0, length)``.

    Starts are multiples of ``multiple`` (so each tile's downsampling grid aligns with the whole image's),
    the stride is ``tile - overlap`` rounded down to ``multiple`` (at least ``multiple``), the last tile ends at
    ``length`` and may be shorter than ``tile``. ``tile=None`` or ``tile >= length`` gives one span.

    Raises:
        ValueError: ``tile < 1``, ``overlap < 0`` or ``overlap >= tile``.
    """
    if tile is None or tile >= length:
        return [(0, length)]
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    stride = max(multiple, ((tile - overlap) // multiple) * multiple)
    spans, s = [], 0
    while True:
        e = min(s + tile, length)
        spans.append((s, e))
        if e == length:
            return spans
        s += stride


def _ramp_weights(spans: list[tuple[int, int]], overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D blending weights: 1 inside, a linear ramp ``(k + 1) / (r + 1)`` over the ``r`` pixels that
    face a neighbouring tile (``r`` = min(overlap, actual overlap)); normalised later by their sum."""
    out = []
    for i, (s, e) in enumerate(spans):
        w = np.ones(e - s, dtype=np.float64)
        if i > 0:
            r = min(overlap, spans[i - 1][1] - s, e - s)
            if r > 0:
                w[:r] = np.minimum(w[:r], (np.arange(r) + 1.0) / (r + 1.0))
        if i + 1 < len(spans):
            r = min(overlap, e - spans[i + 1][0], e - s)
            if r > 0:
                w[-r:] = np.minimum(w[-r:], (np.arange(r, 0, -1)) / (r + 1.0))
        out.append(w)
    return out


@torch.no_grad()
def _run(net: nn.Module, x: np.ndarray, device: torch.device, multiple: int) -> np.ndarray:
    """One (h, w, 3) float32 [0, 1] patch through the network (pad, forward, crop, clamp)."""
    h, w = x.shape[:2]
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].to(device)
    p = next(net.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    y = net(pad_to_multiple(t, multiple).to(dtype)).float()[..., :h, :w].clamp_(0.0, 1.0)
    return y[0].permute(1, 2, 0).cpu().numpy()


def _network_multiple(net: nn.Module) -> int:
    m = getattr(net, "padder_size", None) or getattr(net, "window_size", None) or 16
    return int(m)


def restore_image(net: nn.Module, img: np.ndarray, tile: int | None = None, overlap: int = 32,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Restore one image of any size and layout; the output has exactly the input's shape and dtype.

    Args:
        net: a restoration network (``[N, 3, H, W]`` -> same, H, W multiples of ``net.padder_size``).
        img: ``(H, W)`` or ``(H, W, 1)`` grey, ``(H, W, 2)`` grey + alpha, ``(H, W, 3)`` RGB or ``(H, W, 4)``
            RGBA; ``uint8`` (/255), ``uint16`` (/65535) or float in [0, 1] (clipped). Grey is restored as three
            identical channels and the mean of the three output channels is returned; alpha is copied through
            unchanged.
        tile: tile side in pixels (``None``: the whole image at once, as in the paper). Tiles overlap by
            ``overlap`` pixels (at least; starts are aligned to ``padder_size``) and are blended with linear
            ramps normalised to sum to one, so there are no seams. Rows are finished strip by strip: besides
            the input and output arrays, memory holds one tile's activations and one ``tile x W`` float strip.
        overlap: overlap between neighbouring tiles in pixels (``0 <= overlap < tile``).
        device: where the network runs (default: the network's device).

    Returns:
        array of ``img``'s shape; ``uint8``/``uint16`` rounded (half to even) from the clamped float result,
        float input gives float32 in [0, 1].

    Raises:
        ValueError: an empty image, an unsupported shape/dtype, non-finite values or bad tiling arguments.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return restore_image(net, arr[..., 0], tile, overlap, device)[..., None]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4))):
        raise ValueError(f"expected an (H, W[, 1|2|3|4]) image, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif arr.dtype.kind == "f":
        scale = None
        if not np.isfinite(arr).all():
            raise ValueError("image contains NaN or inf")
    else:
        raise ValueError(f"unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if tile is not None and (int(tile) < 1 or overlap < 0 or overlap >= tile):
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if device is None:
        p = next(net.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    gray = arr.ndim == 2 or arr.shape[2] == 2
    color_c = 1 if gray else 3
    out = np.empty(arr.shape, dtype=arr.dtype if scale else np.float32)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        out[..., -1] = arr[..., -1] if scale else np.clip(arr[..., -1], 0, 1)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        t = arr[y0:y1, x0:x1]
        t = t[..., None] if t.ndim == 2 else t[..., :color_c]
        t = t.astype(np.float32)
        t = t / np.float32(scale) if scale else np.clip(t, 0.0, 1.0)
        return np.repeat(t, 3, axis=2) if gray else t

    def write(y0: int, y1: int, strip: np.ndarray) -> None:
        v = np.clip(strip.mean(axis=2) if gray else strip, 0.0, 1.0)  # one temporary of the strip's size
        if scale:
            v *= np.float32(scale)
            np.rint(v, out=v)  # round half to even, as maskdcpt.imageio.quantize
        if arr.ndim == 2:
            out[y0:y1] = v
        elif gray:
            out[y0:y1, :, 0] = v
        else:
            out[y0:y1, :, :3] = v

    multiple = _network_multiple(net)
    tile = None if tile is None else int(tile)
    rows, cols = tile_spans(h, tile, overlap, multiple), tile_spans(w, tile, overlap, multiple)
    if len(rows) == 1 and len(cols) == 1:
        write(0, h, _run(net, read(0, h, 0, w), dev, multiple))
        return out
    wy, wx = _ramp_weights(rows, overlap), _ramp_weights(cols, overlap)
    sy, sx = np.zeros(h), np.zeros(w)
    for (s, e), wt in zip(rows, wy):
        sy[s:e] += wt
    for (s, e), wt in zip(cols, wx):
        sx[s:e] += wt
    strip_h = max(e - s for s, e in rows)
    acc = np.zeros((strip_h, w, 3), dtype=np.float32)
    acc_y0 = 0
    for (ys, ye), wyi in zip(rows, wy):
        if ys > acc_y0:  # rows above this tile row receive no further contributions: finish them
            k = ys - acc_y0
            write(acc_y0, ys, acc[:k])
            acc[: strip_h - k] = acc[k:]  # overlapping copy: numpy buffers it
            acc[strip_h - k:] = 0.0
            acc_y0 = ys
        ny = (wyi / sy[ys:ye]).astype(np.float32)[:, None, None]
        for (xs, xe), wxj in zip(cols, wx):
            y = _run(net, read(ys, ye, xs, xe), dev, multiple)
            nx = (wxj / sx[xs:xe]).astype(np.float32)[None, :, None]
            acc[ys - acc_y0: ye - acc_y0, xs:xe] += y * ny * nx
    write(acc_y0, h, acc[: h - acc_y0])
    return out


# --------------------------------------------------------------------------------------------------
# native-format image I/O


@dataclass
class NativeImage:
    """An image as stored in its file, EXIF orientation applied.

    Attributes:
        pixels: ``(H, W)`` grey, ``(H, W, 2)`` grey + alpha, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA;
            ``uint8``, ``uint16`` or ``float32`` (float TIFF/``F`` mode, clipped to [0, 1]).
        bit_depth: 8, 16 or 32 (float).
        mode: the file's PIL mode (``"L"``, ``"RGB"``, ``"I;16"``, ...; ``"RGB;16"``-style for 16-bit colour
            decoded with OpenCV).
        orientation: the EXIF orientation tag that was applied (None if absent).
    """

    pixels: np.ndarray
    bit_depth: int
    mode: str
    orientation: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        """True for grey + alpha and RGBA."""
        return self.pixels.ndim == 3 and self.pixels.shape[2] in (2, 4)

    @property
    def is_gray(self) -> bool:
        """True for grey and grey + alpha."""
        return self.pixels.ndim == 2 or self.pixels.shape[2] == 2




def read_image_native(path: str | os.PathLike, max_pixels: int | None = 50_000_000) -> NativeImage:
    """Read an image keeping its layout (grey or colour, alpha) and bit depth; apply its EXIF orientation.

    Unlike :func:`maskdcpt.imageio.read_image` (which always returns float RGB, alpha composited on white) this
    keeps what a user expects to get back from a restoration tool. Conversions: ``1`` -> ``L``; ``P`` -> RGB
    or RGBA (if the palette has transparency); ``PA`` -> RGBA; ``La`` / ``RGBa`` (premultiplied) -> ``LA`` /
    ``RGBA``; ``CMYK``/``YCbCr``/``LAB``/``HSV`` -> RGB (no ICC transform); ``I;16*`` -> uint16 grey; ``I``
    -> uint16 grey when its values fit, else rejected; ``F`` -> float32 grey clipped to [0, 1]; 16-bit colour
    PNG/TIFF decoded with OpenCV to uint16 RGB(A). Multi-frame files give their first frame.

    Raises:
        ImageRejected: ``not_found``, ``empty_file``, ``not_an_image``, ``corrupt``, ``truncated``,
            ``too_many_pixels``, ``unsupported_mode``, ``non_finite`` (see :class:`maskdcpt.imageio.ImageRejected`).
    """
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageRejected("not_found", "no such file", path)
    data = path.read_bytes()
    if not data:
        raise ImageRejected("empty_file", "file has zero bytes", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e), path) from e
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", "Pillow cannot identify this file", path) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected("corrupt", f"header could not be parsed: {e}", path) from e
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageRejected("too_many_pixels", f"{w}x{h} > max_pixels={max_pixels}", path)
        try:
            orientation = im.getexif().get(0x0112)
        except Exception:  # noqa: BLE001 - malformed EXIF: ignore the orientation
            orientation = None
        mode = im.mode
        bps = None
        tags = getattr(im, "tag_v2", None)
        if tags is not None and tags.get(258) is not None:
            b = tags.get(258)
            bps = int(max(b) if isinstance(b, (tuple, list)) else b)
        sixteen_colour = mode in ("RGB", "RGBA", "LA") and (
            (im.format == "PNG" and len(data) > 24 and data[24] == 16) or (im.format == "TIFF" and (bps or 8) > 8))
        if sixteen_colour:
            import cv2

            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ImageRejected("truncated", "OpenCV could not decode the 16-bit image data", path)
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = arr[..., ::-1]
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = arr[..., [2, 1, 0, 3]]
            pixels, depth, mode = arr, 16 if arr.dtype == np.uint16 else 8, f"{mode};16"
            if pixels.dtype.kind == "f":
                pixels, depth = np.clip(pixels.astype(np.float32), 0, 1), 32
        else:
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                msg = str(e)
                reason = "truncated" if "truncat" in msg.lower() or isinstance(e, EOFError) else "corrupt"
                raise ImageRejected(reason, f"decoding failed: {msg}", path) from e
            pixels, depth = _pil_native(im, path)
    pixels = _orient_array(pixels, orientation)
    return NativeImage(np.ascontiguousarray(pixels), depth, mode, orientation)


def _pil_native(im, path) -> tuple[np.ndarray, int]:
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im, dtype=np.uint8), 8
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 16
    if mode == "I":
        raw = np.asarray(im)
        if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
            raise ImageRejected("unsupported_mode", "32-bit integer image with values outside 0-65535", path)
        return raw.astype(np.uint16), 16
    if mode == "F":
        f = np.asarray(im, dtype=np.float32)
        if not np.isfinite(f).all():
            raise ImageRejected("non_finite", "float image contains NaN or inf", path)
        return np.clip(f, 0.0, 1.0), 32
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8), 8
    except (ValueError, OSError) as e:
        raise ImageRejected("unsupported_mode", f"unsupported PIL mode {mode!r}: {e}", path) from e


def write_image_native(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Atomically write an image array as PNG keeping its layout; bit depth from the dtype.

    ``uint8`` -> 8-bit PNG, ``uint16`` and float (in [0, 1], rounded to 65535 levels) -> 16-bit PNG. Layouts:
    ``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA; grey + alpha ``(H, W, 2)`` is written as an 8-bit
    ``LA`` PNG, or, at 16 bits (which OpenCV and Pillow cannot write as grey + alpha), as a 16-bit RGBA PNG
    with the grey value in R, G and B. Returns ``Path(path)``.

    Raises:
        ValueError: an unsupported shape or dtype.
    """
    from maskdcpt.imageio import encode_png

    a = np.asarray(pixels)
    if a.dtype.kind == "f":
        a = np.round(np.clip(a, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported dtype {a.dtype}; expected uint8, uint16 or float")
    depth = 8 if a.dtype == np.uint8 else 16
    if a.ndim == 3 and a.shape[2] == 2:
        if depth == 8:
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(a), mode="LA").save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            return Path(path)
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    atomic_write_bytes(path, encode_png(a, bit_depth=depth))
    return Path(path)


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand command-line inputs into image files: ``(files, unmatched specs)``.

    A file is taken as is (whatever its extension, so that unreadable files are reported rather than silently
    dropped); a folder contributes its files with an image extension (:data:`maskdcpt.imageio.IMAGE_EXTENSIONS`,
    recursively, sorted); anything else is a glob pattern (``**`` recursive), whose matching files are taken.
    Duplicates are removed, order kept.
    """
    import glob

    from maskdcpt.imageio import IMAGE_EXTENSIONS

    files: list[Path] = []
    missing: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file())
        if not found:
            missing.append(spec)
        files.extend(found)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, missing


# --------------------------------------------------------------------------------------------------
# degradation classifier


def load_classifier(path: str | os.PathLike, classes: list[str] | None = None,
                    device: str | torch.device | None = "auto") -> tuple[nn.Module, list[str], dict]:
    """Load the pre-trained MaskDCPT model (``models/pretrain/model.pt``) for degradation diagnosis.

    The checkpoint holds ``{"params": MaskDCPTModel state, "meta": {...}}``; the NAFNet backbone, the number
    of classes (``classifier.fc.weight``), classifier blocks per stage and the reconstruction head kind/blocks
    are read from the weights. Class names come from ``classes`` or from ``classes.json`` beside the file;
    otherwise ``class_0..``.

    Returns:
        ``(model in eval mode on device, class names, meta)``.

    Raises:
        FileNotFoundError / ValueError: missing file, not a MaskDCPT pre-training checkpoint, or a class list
            whose length differs from the classifier's outputs.
    """
    import json

    from maskdcpt.models import MaskDCPTModel, NAFNet

    path = Path(path)
    sd, meta = load_checkpoint_state(path, key="params")
    if "classifier.fc.weight" not in sd or not any(k.startswith("backbone.") for k in sd):
        raise ValueError(f"{path} is not a MaskDCPT pre-training checkpoint (no 'backbone.*' and "
                         "'classifier.fc.weight'); pass models/pretrain/model.pt")
    cfg = infer_nafnet_config(sd, prefix="backbone.")
    keys = list(sd)
    num_classes = int(sd["classifier.fc.weight"].shape[0])
    cls_blocks = _count(keys, r"^classifier\.bottleneck_layers\.0\.(\d+)\.")
    head = "token" if "recon_head.mask_token" in sd else "ending"
    recon_blocks = _count(keys, r"^recon_head\.blocks\.blocks\.(\d+)\.")
    model = MaskDCPTModel(NAFNet(**cfg), num_classes=num_classes, keep_ratio=float(meta.get("keep_ratio", 0.5)),
                          recon_head=head, recon_blocks=recon_blocks, classifier_blocks=cls_blocks or 2)
    model.load_state_dict(sd, strict=True)
    if classes is None:
        cj = path.parent / "classes.json"
        classes = json.loads(cj.read_text()) if cj.is_file() else [f"class_{i}" for i in range(num_classes)]
    classes = [str(c) for c in classes]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a classifier with {num_classes} outputs")
    meta = {**meta, "num_classes": num_classes, "backbone": cfg, "recon_head": head}
    return model.to(resolve_device(device)).eval(), classes, meta


def _crop_boxes(h: int, w: int, crop: int, max_crops: int) -> list[tuple[int, int, int, int]]:
    """Up to ``max_crops`` crop boxes ``(y0, y1, x0, x1)`` on an evenly spaced grid (the whole image when it
    fits in one crop)."""
    ny = 1 if h <= crop else max(1, min(math.ceil(math.sqrt(max_crops)), math.ceil(h / crop)))
    nx = 1 if w <= crop else max(1, min(max_crops // ny, math.ceil(w / crop)))
    ys = np.linspace(0, max(0, h - crop), ny).round().astype(int)
    xs = np.linspace(0, max(0, w - crop), nx).round().astype(int)
    return [(int(y), min(h, int(y) + crop), int(x), min(w, int(x) + crop)) for y in ys for x in xs]


@torch.no_grad()
def classify_image(model: nn.Module, img: np.ndarray, classes: list[str], masks: int = 8, seed: int = 0,
                   crop: int = 128, max_crops: int = 4) -> dict[str, Any]:
    """Degradation diagnosis of one image: class probabilities averaged over random masks and crops.

    The classifier was trained on patch-masked inputs (50 % of 16x16 patches kept, paper Sec. IV-A, spec §1.3),
    so each crop is classified under ``masks`` random masks drawn from ``torch.Generator().manual_seed(seed)``
    and the softmax probabilities are averaged over masks and crops. Crops: the whole image if it fits in
    ``crop x crop``, else up to ``max_crops`` crops on an even grid. Crops are reflect-padded to the patch size.

    Args:
        model: a :class:`~maskdcpt.models.MaskDCPTModel` (from :func:`load_classifier`).
        img: float ``(H, W, 3)`` RGB in [0, 1] (as :func:`maskdcpt.imageio.read_image` returns).
        classes: class names in label order.

    Returns:
        ``{"probabilities": {class: p}, "top": [(class, p), ...] sorted, "masks": int, "crops": int,
        "crop_size": int, "keep_ratio": float, "seed": int}``; probabilities sum to 1.

    Raises:
        ValueError: a bad image, ``masks < 1`` or ``max_crops < 1``.
    """
    from maskdcpt.models import random_patch_mask

    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if masks < 1 or max_crops < 1:
        raise ValueError("masks and max_crops must be >= 1")
    dev = next(model.parameters()).device
    p = int(model.mask_patch_size)
    crop = max(p, int(crop))
    gen = torch.Generator().manual_seed(int(seed))
    boxes = _crop_boxes(a.shape[0], a.shape[1], crop, max_crops)
    total = torch.zeros(len(classes), dtype=torch.float64)
    for y0, y1, x0, x1 in boxes:
        t = torch.from_numpy(np.ascontiguousarray(a[y0:y1, x0:x1])).permute(2, 0, 1)[None]
        t = pad_to_multiple(t, p).to(dev)
        hp, wp = t.shape[-2] // p, t.shape[-1] // p
        m = random_patch_mask(masks, hp, wp, keep_ratio=model.keep_ratio, generator=gen).to(dev)
        # the classifier head only (the reconstruction head is not needed): masked backbone -> DegCls-Dec
        _, feats = model.backbone.forward_features(t.expand(masks, -1, -1, -1), m)
        logits = model.classifier(feats)
        total += torch.softmax(logits.double(), dim=1).sum(0).cpu()
    probs = (total / total.sum()).tolist()
    table = {c: float(v) for c, v in zip(classes, probs)}
    top = sorted(table.items(), key=lambda kv: -kv[1])
    return {"probabilities": table, "top": top, "masks": int(masks), "crops": len(boxes), "crop_size": crop,
            "keep_ratio": float(model.keep_ratio), "seed": int(seed)}
