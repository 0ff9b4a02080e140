"""``maskdcpt paper-eval``: evaluate a checkpoint on the paper's standard test sets (Table I 5D, Table II 12D,
Table III OOD noise) with the paper's protocol, and print our row beside the paper's numbers.

    maskdcpt paper-eval --preset paper-5d --root /data/test_sets --model NAFNet_5d.pth
    maskdcpt paper-eval --preset paper-12d --root s3://bucket/test_sets --model NAFNet_12d.pth --limit 5
    maskdcpt paper-eval --model m.pth --set rain100l=/data/Rain100L --set cbsd68=/data/CBSD68 --only rain100l,cbsd68
    maskdcpt paper-eval --list          # the supported sets and the folder layout each expects

Sets missing under the root are skipped with one line naming the expected layout (``--strict``: exit 1).
Outputs in ``--out``: results.json (numbers + conventions), per_image.csv, rejections.csv, table.md.
Exit status: 0 when at least one set was evaluated (and, with ``--strict``, none missing), 1 otherwise, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paper-eval", help="the paper's Table I/II/III protocol on your copies of the test sets",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper-5d", help="preset name (presets/<name>.yaml) or YAML path "
                   "(default paper-5d; paper-12d for Table II)")
    p.add_argument("--root", default=None, help="folder or s3:// prefix holding the sets (overrides "
                   "test_sets.root of the preset)")
    p.add_argument("--model", default=None, help="checkpoint (ours or an official release) or MLflow model URI")
    p.add_argument("--arch", choices=("nafnet", "restormer", "promptir", "swinir"), default=None,
                   help="force the backbone architecture of a checkpoint file (default: recognised from its key names)")
    p.add_argument("--key", default="params_ema", choices=("params_ema", "params"),
                   help="checkpoint weights (default params_ema, the paper's evaluation weights)")
    p.add_argument("--out", default="reports/paper_eval", help="output folder (default reports/paper_eval)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N images per set (quick check)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=PATH",
                   help="location of one set (repeatable), e.g. rain100l=/data/Rain100L")
    p.add_argument("--only", default=None, metavar="A,B", help="evaluate only these sets")
    p.add_argument("--strict", action="store_true", help="fail on a missing set instead of skipping it")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--label", default=None, help="our row's name in the tables (default: the model file stem)")
    p.add_argument("--save-images", action="store_true", help="also write the restored images")
    p.add_argument("--list", action="store_true", help="list the supported sets and their layouts, then exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from maskdcpt.data.testsets import DATASETS, TestSetMissing, expected_layout

    if args.list:
        for name, spec in DATASETS.items():
            cls = ", ".join(f"{t}:{c}" for t, c in spec.classes.items())
            print(f"{name}  [{spec.title}; {cls}]" + ("" if spec.comparable else "  (LQ not the official one)"))
            print("  " + expected_layout(name).replace("\n", "\n  "))
        return 0
    if not args.model:
        print("error: --model is required (a checkpoint file or an MLflow model URI)", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    set_paths = {}
    for item in args.set:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"error: --set expects NAME=PATH, got {item!r}", file=sys.stderr)
            return 2
        set_paths[name.strip()] = path.strip()
    only = None
    if args.only is not None:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if not only:
            print(f"error: --only expects set names separated by commas, got {args.only!r}", file=sys.stderr)
            return 2

    from maskdcpt.eval.protocol import run_paper_eval

    try:
        results = run_paper_eval(args.model, preset=args.preset, root=args.root, set_paths=set_paths, only=only,
                                out_dir=args.out, key=args.key, limit=args.limit, strict=args.strict,
                                device=args.device, label=args.label, save_images=args.save_images,
                                log=lambda m: print(m, file=sys.stderr), arch=args.arch)
    except TestSetMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(results["markdown"])
    print(f"results: {args.out}/results.json, per_image.csv, rejections.csv, table.md", file=sys.stderr)
    return 0 if results["sets"] else 1
