#!/usr/bin/env python
"""Convert public NASNet weights (timm / Cadene pretrainedmodels / TF-slim checkpoints) into a
nasnet_core checkpoint.

    python tools/convert_weights.py --source timm --arch nasnet_a_large \
        --input nasnetalarge.safetensors --output weights/nasnet_a_large.pth
    python tools/convert_weights.py --source cadene --arch nasnet_a_mobile \
        --input nasnetamobile-7e03cead.pth --output weights/nasnet_a_mobile.pth
    python tools/convert_weights.py --source tf-slim --arch nasnet_a_large \
        --input nasnet-a_large_04_10_2017/model.ckpt --output weights/nasnet_a_large_tf.pth

``--source tf-slim`` reads a TensorFlow checkpoint (its prefix, its .index file or the folder
holding it; needs the ``tf`` extra) with the moving-average shadows in place of the variables
where it has them, drops the 1001-way head's background class and keeps the auxiliary head when
the checkpoint has one. A checkpoint of another NASNet (mobile as large, or the reverse) is refused.

``--source tf-od-api`` converts a TF Object Detection API ``faster_rcnn_nas`` checkpoint (e.g.
``faster_rcnn_nas_coco_2018_01_28/model.ckpt``; needs the ``tf`` extra) into the nasnet_det
detector that ``--config-file`` (default: the TF-exact 1200 config) and trailing ``KEY VALUE``
overrides describe, as a Detectron2 checkpoint for ``MODEL.WEIGHTS``; every TF variable must have
its place and every detector tensor its TF variable (``nasnet_det/tf_convert.py``):

    python tools/convert_weights.py --source tf-od-api --input faster_rcnn_nas_coco_2018_01_28/model.ckpt \
        --output weights/faster_rcnn_nas_coco_2018_01_28.pth

``--format detectron2`` writes ``{"model": state_dict, "__author__": "nasnet_core",
"matching_heuristics": True}`` for ``MODEL.WEIGHTS`` of a nasnet_det detector: detectron2's
own DetectionCheckpointer then fills backbone and ROI head by name suffix (nasnet_det's
checkpointer also reads the default nasnet_core format directly).

timm's port computes stride-2 "same" average pools counting the zero padding;
build the model with ``pad_mode="timm"`` to reproduce its logits bit for bit
(the default ``tf`` follows TensorFlow, in which the weights were trained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nasnet_core as nc
from nasnet_core.common.cli import parse_with_overrides, refuse_existing, tool_main
from nasnet_core.common.fileio import atomic_torch_save
from nasnet_core.interop.convert import SOURCES
from nasnet_core.interop.tf_checkpoint import read_tf_checkpoint

FORMATS = ("nasnet_core", "detectron2")
DETECTOR_SOURCES = ("tf-od-api",)
TF_OD_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "COCO-Detection" / \
    "faster_rcnn_nasnet_a_large_1200_tf.yaml"


def save_detectron2(path: Path, state_dict, arch: str, pad_mode: str, **extra) -> Path:
    """Write a detectron2-style checkpoint (suffix-matched into backbone + ROI head) atomically."""
    return atomic_torch_save({"model": state_dict, "__author__": "nasnet_core", "matching_heuristics": True,
                              "arch": arch, "config": {"pad_mode": pad_mode}, **extra}, path)


@tool_main
def main(argv=None) -> int:
    """Convert one checkpoint; exit 2 with one line naming the unmatched keys if it does not fit."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=(*SOURCES, *DETECTOR_SOURCES))
    ap.add_argument("--arch", help=f"one of: {', '.join(nc.list_models())} (not for tf-od-api: its "
                    "--config-file names the detector)")
    ap.add_argument("--input", required=True, help=".pth/.pt or .safetensors state dict; tf-slim, "
                    "tf-od-api: a TF checkpoint prefix (DIR/model.ckpt), its .index file or its folder")
    ap.add_argument("--output", required=True, help="checkpoint to write (never overwritten "
                    "unless --force)")
    ap.add_argument("--format", default="nasnet_core", choices=FORMATS, help="checkpoint layout to write")
    ap.add_argument("--drop-background", action="store_true",
                    help="drop class 0 of a 1001-way TF classifier (implied by --source tf-slim)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output")
    ap.add_argument("--config-file", default=str(TF_OD_CONFIG), help="tf-od-api: the detector config")
    ap.add_argument("--label-ids", help="tf-od-api: the TF label-map id of each detector class, comma-"
                    "separated (default: TF's own when the class counts agree; COCO's 80 of TF's 90)")
    ap.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="tf-od-api: detector config overrides")
    args = parse_with_overrides(ap, argv)
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"--output {out} is a directory; give the checkpoint file to write")
    refuse_existing(out, args.force)
    if args.source in DETECTOR_SOURCES:
        return convert_detector(args, out)
    if not args.arch or args.overrides:
        raise ValueError(f"--source {args.source} needs --arch and takes no KEY VALUE overrides")
    state = read_tf_checkpoint(args.input) if args.source == "tf-slim" else nc.read_state_dict(args.input)
    converted = nc.convert_state_dict(state, args.source, args.arch, drop_background=args.drop_background)
    pad_mode = "timm" if args.source == "timm" else "tf"
    meta = dict(source=args.source, source_file=str(args.input))
    if args.format == "detectron2":
        save_detectron2(out, converted, args.arch, pad_mode, **meta)
    else:
        nc.save_checkpoint(out, converted, args.arch, config={"pad_mode": pad_mode}, **meta)
    aux = " incl. the aux head" if any(k.startswith("aux_head.") for k in converted) else ""
    print(f"wrote {out}: {len(converted)} tensors{aux} for {args.arch} (from {args.source}, "
          f"{args.format} format)")
    return 0


def convert_detector(args, out: Path) -> int:
    """--source tf-od-api: a TF faster_rcnn_nas checkpoint as the config's detector (Detectron2 format)."""
    from nasnet_det.engine import setup_cfg_plain
    from nasnet_det.tf_convert import convert_tf_od_checkpoint, predictor_label_ids

    if args.arch:
        raise ValueError("--source tf-od-api takes no --arch: the --config-file names the detector")
    try:
        label_ids = [int(i) for i in args.label_ids.split(",")] if args.label_ids else None
    except ValueError:
        raise ValueError(f"--label-ids must be comma-separated integers, got {args.label_ids!r}") from None
    tf_vars = read_tf_checkpoint(args.input)
    cfg = setup_cfg_plain(args.config_file, args.overrides)
    state = convert_tf_od_checkpoint(tf_vars, cfg, label_ids)
    atomic_torch_save({"model": state, "__author__": "tools/convert_weights.py --source tf-od-api",
                       "source": args.source, "source_file": str(args.input), "config_file": args.config_file,
                       "label_ids": predictor_label_ids(cfg, tf_vars, label_ids)}, out)
    print(f"wrote {out}: {len(state)} tensors of the {cfg.MODEL.NASNET.ARCH} detector from {len(tf_vars)} TF "
          f"variables (from {args.source}, detectron2 format)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
