"""``maskdcpt restore``: restore users' images (files, folders, globs) with a checkpoint or a registered model."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "models:/maskdcpt-nafnet-5d@champion"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore", help="restore images (any size, grey/RGB/RGBA, 8/16-bit) to PNG",
        description="Restore images with a MaskDCPT restoration network. Outputs keep the input's size, layout "
                    "(grey, RGB, alpha) and bit depth, as PNG named <stem>.png in OUT. Exit status 1 when any "
                    "input failed (each failure is reported), else 0.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders (searched recursively) or globs")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint file (ours or an official params/params_ema release) or MLflow model URI "
                        f"(default: {DEFAULT_MODEL} in the project's MLflow store, or $MLFLOW_TRACKING_URI)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="restore in N x N tiles (bounded memory for large images; default: whole image)")
    p.add_argument("--overlap", type=int, default=32, metavar="N", help="tile overlap in pixels (default 32)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when available, else cpu")
    p.add_argument("--weights", choices=("params_ema", "params"), default="params_ema",
                   help="checkpoint entry to use (default params_ema, the paper's evaluation weights)")
    p.add_argument("--arch", choices=("nafnet", "restormer", "promptir", "swinir"), default=None,
                   help="force the backbone architecture of a checkpoint file (default: recognised from its key names)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from maskdcpt.imageio import ImageRejected
    from maskdcpt.inference import expand_inputs, load_model, read_image_native, restore_image, write_image_native

    if args.tile is not None and (args.tile < 1 or not 0 <= args.overlap < args.tile):
        print(f"error: need --tile >= 1 and 0 <= --overlap < --tile (got {args.tile}, {args.overlap})",
              file=sys.stderr)
        return 2
    files, missing = expand_inputs(args.inputs)
    failures: list[tuple[str, str]] = [(m, "no image found (no such file, empty folder or no glob match)")
                                     for m in missing]
    if not files and not failures:
        print("error: no input images found", file=sys.stderr)
        return 1
    try:
        net = load_model(args.model, device=args.device, key=args.weights, arch=args.arch)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 1
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = getattr(net, "maskdcpt_info", {})
    print(f"model: {info.get('source', args.model)} ({info.get('arch', '?')}, preset {info.get('preset')}); "
          f"device {next(net.parameters()).device}; tile {args.tile or 'none'}", file=sys.stderr)
    targets: dict[Path, Path] = {}
    done = skipped = 0
    for path in tqdm(files, desc="restore", unit="img", file=sys.stderr, disable=None):
        dest = out_dir / f"{path.stem}.png"
        if dest in targets:
            failures.append((str(path), f"output name {dest.name} already used by {targets[dest]}"))
            continue
        targets[dest] = path
        if dest.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            img = read_image_native(path)
            restored = restore_image(net, img.pixels, tile=args.tile, overlap=args.overlap)
            write_image_native(dest, restored)
            done += 1
        except ImageRejected as e:
            failures.append((str(path), f"unreadable ({e.reason}): {e.message}"))
        except (ValueError, RuntimeError, OSError) as e:
            failures.append((str(path), f"{type(e).__name__}: {e}"))
    for name, why in failures:
        print(f"FAILED {name}: {why}", file=sys.stderr)
    print(f"restored {done}, skipped {skipped} existing, failed {len(failures)} -> {out_dir}", file=sys.stderr)
    return 1 if failures else 0
