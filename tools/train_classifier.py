#!/usr/bin/env python
"""Train (or evaluate) a NASNet classifier from a config.

    python tools/train_classifier.py --config configs/classification/cifar10_nasnet_a_6_768.yaml \
        --data ~/data/cifar-10-batches-py train.output_dir runs/c10 solver.epochs 600
    torchrun --nproc_per_node 8 tools/train_classifier.py --config \
        configs/classification/imagenet_nasnet_a_mobile.yaml --data /data/imagenet
    python tools/train_classifier.py --config ... --resume            # continue runs/.../last.pth
    python tools/train_classifier.py --config ... --resume-from runs/.../epoch_0100.pth
    python tools/train_classifier.py --config ... --eval-only runs/.../backbone.pth
    python tools/train_classifier.py --config ... --force             # overwrite the run in output_dir

An output folder that already holds a run (config.yaml, last.pth, metrics.json or backbone.pth)
is refused unless --resume (continue it) or --force (overwrite it). KEY VALUE overrides may come
before or after the options. A diverged run (non-finite loss or weights) stops with one line
naming the step; last.pth stays the last good checkpoint, for --resume.

Writes config.yaml, last.pth (every epoch, atomically), metrics.json, tb/ (TensorBoard) and,
at the end, backbone.pth (nasnet_core checkpoint for nasnet_core.load_checkpoint / MODEL.WEIGHTS).
"""

from __future__ import annotations

import argparse
import json
import sys

from nasnet_core.common.cli import parse_with_overrides, tool_main
from nasnet_core.common.config import load_config
from nasnet_core.train import Trainer


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments; trailing ``KEY VALUE`` pairs override the config."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (configs/classification/*.yaml)")
    ap.add_argument("--data", help="dataset root (overrides data.path)")
    ap.add_argument("--output", help="output folder (overrides train.output_dir)")
    ap.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pth")
    ap.add_argument("--resume-from", metavar="CKPT", help="continue from this training checkpoint")
    ap.add_argument("--eval-only", metavar="CKPT", help="evaluate a checkpoint (top-1 / top-5) and exit")
    ap.add_argument("--force", action="store_true", help="train into an output folder holding a run, "
                    "overwriting it")
    ap.add_argument("overrides", nargs="*", help="KEY VALUE pairs, e.g. solver.lr 0.05 model.N 2")
    return parse_with_overrides(ap, argv)


@tool_main
def main(argv=None) -> int:
    """Build the trainer and run training or evaluation; one-line errors (exit 2) for bad input."""
    args = parse_args(argv)
    trainer = None
    try:
        extra = list(args.overrides)
        if args.data:
            extra += ["data.path", args.data]
        if args.output:
            extra += ["train.output_dir", args.output]
        cfg = load_config(args.config, extra)
        resume = args.resume_from or args.resume or None
        if args.eval_only:  # writes nothing: the output folder may hold a run
            trainer = Trainer(cfg, force=True)
        else:
            trainer = Trainer(cfg, resume=resume, force=args.force)
        if args.eval_only:
            res = trainer.evaluate_checkpoint(args.eval_only)
            if trainer.rank == 0:
                print(json.dumps(res))
        else:
            trainer.fit()
            if trainer.rank == 0:
                print(f"done: {trainer.out / 'last.pth'}, backbone {trainer.out / 'backbone.pth'}")
    except KeyboardInterrupt:
        where = trainer.out / "last.pth" if trainer is not None else "the output folder"
        print(f"\ninterrupted; the last complete checkpoint is {where} (continue with --resume)",
              file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
