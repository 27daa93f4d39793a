#!/usr/bin/env python
"""Train / evaluate a NASNet-A Faster R-CNN with Detectron2 (detectron2's train_net conventions).

    python tools/train_net.py --config-file configs/quick_schedules/nasnet_a_mobile_shapes.yaml
    python tools/train_net.py --config-file configs/COCO-Detection/faster_rcnn_nasnet_a_large_1200.yaml \
        --num-gpus 8 MODEL.WEIGHTS weights/nasnet_a_large.pth
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

Each test set's results go to OUTPUT_DIR/inference/<dataset>/; on coco_2017_test-dev also the
COCO server submission detections_test-dev2017_<alg>_results.zip (alg: TEST.SUBMISSION_ALG, else
the config file's name), whose path is logged. Drawn detections go to OUTPUT_DIR/vis/<dataset>/.
The project's own errors (bad config file or key, MODEL.WEIGHTS that do not fill the backbone,
missing data, foreign results) exit 2 with one line.
"""

from __future__ import annotations

import sys

from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import nasnet_det
from nasnet_core.common.cli import tool_main
from nasnet_det.engine import (
    Trainer,
    ensure_shapes_datasets,
    setup_cfg,
    setup_cfg_plain,
    visualize_after_eval,
)
from nasnet_det.submission import write_submissions

# Config files and overrides are checked by merge_config (ConfigError); an unregistered dataset
# name and other Detectron2 look-ups raise KeyError / AssertionError.
CONFIG_ERRORS = (KeyError, AssertionError)


def main(args):
    """Evaluate (--eval-only) or train then evaluate; submissions and drawings afterwards."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        nasnet_det.NASNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        res = trainer.train()
    if comm.is_main_process():
        if args.eval_only:
            verify_results(cfg, res)
        write_submissions(cfg, args.config_file, args.overwrite)
        visualize_after_eval(cfg)
    return res


def parser():
    """detectron2's argument parser plus --overwrite."""
    p = default_argument_parser()
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing test-dev submission zip")
    return p


def prepare_datasets(args) -> None:
    """Check the dataset names and generate the missing shapes datasets the run reads once, before
    ``launch`` starts the processes (each rank would otherwise write the same folders at once)."""
    ensure_shapes_datasets(setup_cfg_plain(args.config_file, args.opts), args.eval_only)


@tool_main
def run(argv=None) -> int:
    """Parse ``argv`` and launch; the project's own errors end in one line and exit code 2."""
    args = parser().parse_args(argv)
    try:
        if args.num_gpus * args.num_machines > 1:
            prepare_datasets(args)
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except CONFIG_ERRORS as e:
        raise ValueError(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(run())
