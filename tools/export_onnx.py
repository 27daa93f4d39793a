#!/usr/bin/env python
"""Export a registered NASNet classifier to ONNX (dynamic batch) and check it in onnxruntime.

    python tools/export_onnx.py --model nasnet_a_mobile --weights weights/nasnet_a_mobile.pth \
        --output nasnet_a_mobile.onnx
    python tools/export_onnx.py --model nasnet_a_large --exporter dynamo --output large.onnx
    python tools/export_onnx.py --model nasnet_a_cifar --opts N=2 F=480 --output cifar.onnx

Right after export the file runs in onnxruntime on random images at batch 1 and 2 and
its logits are compared with the PyTorch model's (eval mode); a difference above
``--atol`` is an error (exit 2). An existing output is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import nasnet_core as nc
from nasnet_core.cli import tool_main
from nasnet_core.export import DEFAULT_OPSET, EXPORTERS, MIN_OPSET, check_onnx, export_onnx


def parse_opts(pairs: list[str]) -> dict:
    """``key=value`` overrides; values parsed as int, float or kept as text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--opts takes key=value pairs, got {pair!r}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
    return out


@tool_main
def main(argv=None) -> int:
    """Export, then check in onnxruntime; print the file, time and difference."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered model name")
    ap.add_argument("--weights", help="nasnet_core checkpoint to load (default: random init)")
    ap.add_argument("--opts", nargs="*", default=[], help="model overrides, key=value (e.g. N=2 F=480)")
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
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = nc.create_model(args.model, **{"aux_head": False, **parse_opts(args.opts)}).eval()
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
