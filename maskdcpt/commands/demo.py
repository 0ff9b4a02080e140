"""``maskdcpt demo``: a local web page that diagnoses and restores a visitor's photo (Gradio, 127.0.0.1)."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "models:/maskdcpt-nafnet-5d@champion"
DEFAULT_CLASSIFIER = "models/pretrain/model.pt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="web demo: upload a photo, see the diagnosis and the restored image (Gradio, local)",
        description="Start a local web app on 127.0.0.1 (CPU by default): upload a photo or degrade a packaged "
                    "one, see the degradation classifier's probabilities, the restored image beside the input "
                    "with a before/after slider, PSNR/SSIM when a clean reference is known, and download the "
                    "restored file at full size in the input's bit depth. The model card shows the registered "
                    "version, the benchmark it was promoted on, the decision and reason, the git commit and DVC "
                    "hashes. No analytics, no share link, nothing fetched at run time.")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="URI_OR_FILE",
                   help=f"checkpoint file or MLflow model URI (default: {DEFAULT_MODEL})")
    p.add_argument("--classifier", default=None, metavar="PRETRAIN_CKPT",
                   help=f"pre-training checkpoint for the diagnosis (default: <project>/{DEFAULT_CLASSIFIER} "
                        "when it exists; 'none' to hide the diagnosis)")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860; 0 = a free one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, local only)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="default cpu")
    p.add_argument("--tile", type=int, default=512, metavar="N",
                   help="images above N x N pixels are restored in N x N tiles (default 512)")
    p.add_argument("--overlap", type=int, default=32, metavar="N", help="tile overlap (default 32)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="reject larger uploads (default 16 MP)")
    p.add_argument("--inference", choices=("eager", "nhwc", "onnx", "openvino", "compile"), default="openvino",
                   help="network execution path: openvino (default on CPU: the network exported once to ONNX, "
                        "cached, compiled by OpenVINO in fp32 per tile shape; nhwc on a GPU), onnx (the same graph "
                        "on ONNX Runtime), nhwc (channels-last copy), eager (the reference) or compile "
                        "(torch.compile; slow first call per tile shape); every path matches eager within 1e-4")
    p.add_argument("--weights", choices=("params_ema", "params"), default="params_ema")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import socket
    from pathlib import Path

    if args.tile < 16 or not 0 <= args.overlap < args.tile:
        print(f"error: need --tile >= 16 and 0 <= --overlap < --tile (got {args.tile}, {args.overlap})",
              file=sys.stderr)
        return 2
    if args.max_pixels < 1:
        print("error: --max-pixels must be >= 1", file=sys.stderr)
        return 2
    from maskdcpt.config import find_root
    from maskdcpt.demo import DemoBackend, launch
    from maskdcpt.model_card import model_card
    from maskdcpt.inference import load_classifier, load_model
    from maskdcpt.fastpaths import prepare_for_inference

    try:
        net = load_model(args.model, device=args.device, key=args.weights)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 1
    card = model_card(args.model, net)
    classifier = None
    ckpt = None if args.classifier == "none" else Path(args.classifier or find_root() / DEFAULT_CLASSIFIER)
    if ckpt is not None and (args.classifier or ckpt.is_file()):
        try:
            model, classes, _ = load_classifier(ckpt, device=args.device)
            classifier = (model, classes)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: cannot load the classifier {str(ckpt)!r}: {e}", file=sys.stderr)
            return 1
    mode = args.inference
    if mode in ("onnx", "openvino") and next(net.parameters()).device.type != "cpu":
        mode = "nhwc"  # ONNX Runtime's and OpenVINO's CPU paths only
    if mode in ("onnx", "openvino"):
        print("preparing the ONNX graph (exported once per model, then cached) ...", file=sys.stderr, flush=True)
    fast = prepare_for_inference(net, mode)
    card["fast_path"] = "eager" if fast is net else fast.maskdcpt_info.get("fast_path", args.inference)
    port = args.port
    if port == 0:
        with socket.socket() as s:
            s.bind((args.host, 0))
            port = s.getsockname()[1]
    backend = DemoBackend(fast, card=card, classifier=classifier, tile=args.tile, overlap=args.overlap,
                          max_pixels=args.max_pixels)
    print(f"model: {card['source']} ({card.get('arch', '?')}); classifier: "
          f"{ckpt if classifier else 'none'}; inference {card['fast_path']}; http://{args.host}:{port}",
          file=sys.stderr, flush=True)
    try:
        launch(backend, host=args.host, port=port, block=True)
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{port}: {e}", file=sys.stderr)
        return 1
    finally:  # the restored files offered for download live only as long as the server
        import shutil

        shutil.rmtree(backend.out_dir, ignore_errors=True)
    return 0
