#!/usr/bin/env python
"""Export a registered NASNet classifier to ONNX (dynamic batch) and check it in onnxruntime.

    python tools/export_onnx.py --model nasnet_a_mobile --weights weights/nasnet_a_mobile.pth \
        --output nasnet_a_mobile.onnx
    python tools/export_onnx.py --model nasnet_a_large --exporter dynamo --output large.onnx
    python tools/export_onnx.py --model nasnet_a_cifar --opts N 2 F 480 --output cifar.onnx
    python tools/export_onnx.py --config-file configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_600.yaml \
        --output det.onnx --opts MODEL.WEIGHTS output/model_final.pth

Classifiers: right after export the file runs in onnxruntime on random images at batch 1 and
2 and its logits are compared with the PyTorch model's (eval mode); a difference above
``--atol`` is an error (exit 2). Detectors (``--config-file``, Detectron2 installed): the model
is traced through Detectron2's ``TracingAdapter`` on one image (``--image``, else a fixed random
one, at INPUT.MIN_SIZE_TEST; the file takes a CHW float image of that size in 0-255, as the
model's ``image`` input) and outputs boxes, classes, scores and the image size before rescaling;
onnxruntime must give the same detections (count, classes; boxes within ``--box-atol`` px).
An existing output is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import nasnet_core as nc
from nasnet_core.common.cli import tool_main
from nasnet_core.common.config import parse_pairs
from nasnet_core.interop.export import DEFAULT_OPSET, EXPORTERS, MIN_OPSET, check_onnx, export_onnx


def detector_image(path: str | None, size: int, square: bool = False) -> torch.Tensor:
    """CHW float image in 0-255: ``path`` resized to ``size`` x ``size`` (``square``, the configs'
    INPUT.FIXED_SIZE) or so its short side is ``size``; fixed noise without a path."""
    if path is None:
        return torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(0)).float()
    import cv2
    img = cv2.imread(path)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    scale = size / min(img.shape[:2])
    shape = (size, size) if square else (round(img.shape[1] * scale), round(img.shape[0] * scale))
    img = cv2.resize(img, shape)
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float()  # BGR, as Detectron2's default


def export_detector(args) -> None:
    """Trace a nasnet_det detector with TracingAdapter, export it, compare detections in onnxruntime."""
    try:
        from detectron2.export import TracingAdapter
        from detectron2.modeling import build_model
    except ImportError:
        raise ValueError("detector export needs Detectron2 (see README: Install)") from None
    import numpy as np

    from nasnet_core.interop.export import onnx_session
    from nasnet_det.checkpoint import NASNetCheckpointer
    from nasnet_det.engine import setup_cfg_plain

    cfg = setup_cfg_plain(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        NASNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    fixed = cfg.INPUT.FIXED_SIZE
    image = detector_image(args.image, args.image_size or fixed or cfg.INPUT.MIN_SIZE_TEST,
                           square=not args.image_size and fixed > 0)

    def inference(m, inputs):
        """Detections before rescaling (the traced outputs)."""
        return [{"instances": m.inference(inputs, do_postprocess=False)[0]}]

    adapter = TracingAdapter(model, [{"image": image}], inference).eval()
    with torch.no_grad():
        ref = [t.numpy() for t in adapter(*adapter.flattened_inputs)]
    t = time.perf_counter()
    export_onnx(adapter, args.output, image, opset=args.opset, overwrite=args.overwrite,
                dynamic_batch=False, output_names=("boxes", "classes", "scores", "image_size"))
    print(f"wrote {args.output} (detector, input {tuple(image.shape)}) in {time.perf_counter() - t:.1f} s")
    sess = onnx_session(args.output)
    got = sess.run(None, {sess.get_inputs()[0].name: image.numpy()})
    boxes, classes, scores = ref[0], ref[1], ref[2]
    if got[0].shape != boxes.shape or not np.array_equal(got[1], classes):
        raise ValueError(f"onnxruntime gives {len(got[1])} detections (classes differ or count), "
                         f"PyTorch {len(classes)}")
    box_diff = float(np.abs(got[0] - boxes).max(initial=0))
    score_diff = float(np.abs(got[2] - scores).max(initial=0))
    print(f"onnxruntime check: {len(classes)} detections, classes equal, max box diff {box_diff:.2e} px, "
          f"max score diff {score_diff:.2e}")
    if box_diff > args.box_atol or score_diff > args.atol * 10:
        raise ValueError(f"onnxruntime detections differ: boxes {box_diff:.2e} px (--box-atol "
                         f"{args.box_atol:g}), scores {score_diff:.2e}")


@tool_main
def main(argv=None) -> int:
    """Export, then check in onnxruntime; print the file, time and difference."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="registered classifier name")
    ap.add_argument("--config-file", help="nasnet_det detector config (instead of --model)")
    ap.add_argument("--image", help="detector: image to trace and check with (default: fixed noise)")
    ap.add_argument("--box-atol", type=float, default=1e-2, help="detector: max box difference, px")
    ap.add_argument("--weights", help="nasnet_core checkpoint to load (default: random init)")
    ap.add_argument("--opts", nargs="*", default=[],
                    help="KEY VALUE pairs: classifier overrides (N 2 F 480) or detector config keys")
    ap.add_argument("--image-size", type=int, help="input size (default: the model's)")
    ap.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                    help="torch.onnx exporter: torchscript (dynamo=False) or dynamo")
    ap.add_argument("--opset", type=int,
                    help=f"ONNX opset (>= {MIN_OPSET}; default {DEFAULT_OPSET['torchscript']} torchscript, "
                         f"{DEFAULT_OPSET['dynamo']} dynamo)")
    ap.add_argument("--output", required=True, help="ONNX file to write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ap.add_argument("--atol", type=float, default=1e-4, help="max abs logit difference allowed")
    args = ap.parse_args(argv)
    if os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a directory; give the .onnx file to write")
    if (args.model is None) == (args.config_file is None):
        raise ValueError("give --model (a classifier) or --config-file (a detector), not both or neither")
    if args.config_file:
        export_detector(args)
        return 0
    model = nc.create_model(args.model, **{"aux_head": False, **dict(parse_pairs(args.opts))}).eval()
    if args.weights:
        nc.load_checkpoint(model, args.weights)
    size = args.image_size or model.image_size
    torch.manual_seed(0)
    t = time.perf_counter()
    export_onnx(model, args.output, torch.randn(1, 3, size, size), exporter=args.exporter,
                opset=args.opset, overwrite=args.overwrite)
    opset = args.opset or DEFAULT_OPSET[args.exporter]
    print(f"wrote {args.output} ({args.exporter} exporter, opset {opset}, input Nx3x{size}x{size}) "
          f"in {time.perf_counter() - t:.1f} s")
    res = check_onnx(args.output, model, [torch.randn(1, 3, size, size), torch.randn(2, 3, size, size)])
    print(f"onnxruntime check: batch {', '.join(map(str, res.batch_sizes))}: max abs logit difference "
          f"{res.max_abs_diff:.2e} (max |logit| {res.max_abs_ref:.2f})")
    if not res.ok(args.atol):
        raise ValueError(f"onnxruntime logits differ from PyTorch's by {res.max_abs_diff:.2e} > "
                         f"--atol {args.atol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
