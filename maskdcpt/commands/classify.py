"""``maskdcpt classify``: degradation diagnosis of images with the pre-trained MaskDCPT classifier."""

from __future__ import annotations

import argparse
import sys

DEFAULT_CHECKPOINT = "models/pretrain/model.pt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="diagnose the degradation of images (pre-trained MaskDCPT classifier)",
        description="Top-k degradation classes of each image from the pre-trained MaskDCPT classifier. The "
                    "classifier was trained on patch-masked inputs, so probabilities are the softmax averaged "
                    "over several seeded random masks and over a few crops of large images (both counts are "
                    "printed). Exit status 1 when any input failed, else 0.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders (searched recursively) or globs")
    p.add_argument("--model", default=None, metavar="PRETRAIN_CKPT",
                   help="pre-training checkpoint with classes.json beside it "
                        f"(default: <project>/{DEFAULT_CHECKPOINT})")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--masks", type=int, default=8, help="random masks averaged per crop (default 8)")
    p.add_argument("--crop", type=int, default=128, help="crop side in pixels (default 128)")
    p.add_argument("--max-crops", type=int, default=4, help="crops per large image (default 4)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--arch", choices=("nafnet", "restormer", "promptir", "swinir"), default=None,
                   help="force the backbone architecture of a checkpoint file (default: recognised from its key names)")
    p.add_argument("--json", action="store_true", help="print one JSON document (all class probabilities)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from maskdcpt.config import find_root
    from maskdcpt.imageio import ImageRejected, read_image
    from maskdcpt.inference import classify_image, expand_inputs, load_classifier

    if args.top_k < 1 or args.masks < 1 or args.max_crops < 1 or args.crop < 16:
        print("error: need --top-k, --masks, --max-crops >= 1 and --crop >= 16", file=sys.stderr)
        return 2
    ckpt = Path(args.model) if args.model else find_root() / DEFAULT_CHECKPOINT
    try:
        model, classes, meta = load_classifier(ckpt, device=args.device, arch=args.arch)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load the classifier {str(ckpt)!r}: {e}", file=sys.stderr)
        return 1
    files, missing = expand_inputs(args.inputs)
    failures = [{"file": m, "error": "no image found (no such file, empty folder or no glob match)"}
                for m in missing]
    results = []
    for path in files:
        try:
            img = read_image(path)
            res = classify_image(model, img, classes, masks=args.masks, seed=args.seed, crop=args.crop,
                                 max_crops=args.max_crops)
        except ImageRejected as e:
            failures.append({"file": str(path), "error": f"unreadable ({e.reason}): {e.message}"})
            continue
        except (ValueError, RuntimeError) as e:
            failures.append({"file": str(path), "error": f"{type(e).__name__}: {e}"})
            continue
        results.append({"file": str(path), "top_class": res["top"][0][0], "confidence": round(res["top"][0][1], 6),
                        "top_k": [{"class": c, "probability": round(p, 6)} for c, p in res["top"][: args.top_k]],
                        "probabilities": {c: round(p, 6) for c, p in res["probabilities"].items()},
                        "masks": res["masks"], "crops": res["crops"], "crop_size": res["crop_size"]})
    if args.json:
        doc = {"model": str(ckpt), "classes": classes, "averaging": {
                   "masks_per_crop": args.masks, "keep_ratio": float(model.keep_ratio), "seed": args.seed,
                   "crop_size": args.crop, "max_crops": args.max_crops},
               "results": results, "failures": failures}
        print(json.dumps(doc, indent=2))
    else:
        print(f"# classifier {ckpt} ({len(classes)} classes); softmax averaged over {args.masks} random masks "
              f"(keep {model.keep_ratio:.0%} of {model.mask_patch_size}px patches, seed {args.seed}) per crop and "
              f"over up to {args.max_crops} crops of {args.crop}px")
        for r in results:
            others = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top_k"][1:])
            print(f"{r['file']}: {r['top_class']} ({r['confidence']:.1%})" + (f"; then {others}" if others else "")
                  + f"  [{r['masks']} masks x {r['crops']} crop{'s' if r['crops'] > 1 else ''}]")
    for f in failures:
        print(f"FAILED {f['file']}: {f['error']}", file=sys.stderr)
    return 1 if failures else 0
