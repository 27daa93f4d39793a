#!/usr/bin/env python
"""Train / evaluate a NASNet-A Faster R-CNN with Detectron2 (detectron2's train_net conventions).

    python tools/train_net.py --config-file configs/quick_schedules/nasnet_a_mobile_shapes.yaml
    python tools/train_net.py --config-file configs/COCO-Detection/faster_rcnn_nasnet_a_large_1200.yaml \
        --num-gpus 8 MODEL.WEIGHTS weights/nasnet_a_large.pth
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

Each test set's results go to OUTPUT_DIR/inference/<dataset>/ (on test-dev:
coco_instances_results.json, the file to submit); drawn detections to OUTPUT_DIR/vis/<dataset>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import nasnet_det  # noqa: E402
from nasnet_det.engine import Trainer, setup_cfg, visualize_after_eval  # noqa: E402


def main(args):
    """Evaluate (--eval-only) or train then evaluate; draw the detections afterwards."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        nasnet_det.NASNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            visualize_after_eval(cfg)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    if comm.is_main_process():
        visualize_after_eval(cfg)
    return res


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
