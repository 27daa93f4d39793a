"""The config keys nasnet_det adds to Detectron2's: 13 under ``MODEL.NASNET``, 2 under ``INPUT``,
4 under ``MODEL.ROI_HEADS``, 5 under ``TEST`` and ``CPU_THREADS``; and the names it registers for
Detectron2's own keys (the TF OD API block below)."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_nasnet_config"]


def add_nasnet_config(cfg) -> None:
    """Add nasnet_det's keys (each commented below) to a Detectron2 ``cfg`` in place."""
    cfg.MODEL.NASNET = CN()
    n = cfg.MODEL.NASNET
    # Registered nasnet_core model the backbone and ROI head are cut from
    # (nasnet_a_mobile, nasnet_a_large, nasnet_a_7_1920, ...; see nasnet_core.list_models()).
    n.ARCH = "nasnet_a_mobile"
    # Genotype override: a registered name, its text form or a JSON path; "" keeps ARCH's.
    n.GENOTYPE = ""
    # Normal cells per stage (paper's N); 0 keeps ARCH's.
    n.N = 0
    # Penultimate width (paper's F = 24 x num_conv_filters for NASNet-A); 0 keeps ARCH's.
    n.F = 0
    # Stem conv0 width = 32 x STEM_MULTIPLIER; 0 keeps ARCH's (mobile 1.0, large 3.0).
    n.STEM_MULTIPLIER = 0.0
    # First cell after a reduction reads the reduction's own previous input (TF-slim
    # skip_reduction_layer_input): 1 / 0, or -1 to keep ARCH's (mobile 0, large 1).
    n.SKIP_REDUCTION_LAYER_INPUT = -1
    # Norm layer of every cell: BN, SyncBN, FrozenBN (BN converted to detectron2's
    # FrozenBatchNorm2d everywhere) or GN. Random-init training needs BN or GN.
    n.NORM = "BN"
    # BatchNorm eps; < 0 keeps ARCH's (1e-3 for the ImageNet models).
    n.BN_EPS = -1.0
    # BatchNorm PyTorch momentum; < 0 keeps ARCH's (0.0003 = TF decay 0.9997, far too slow for
    # short schedules: use ~0.1 when training from scratch).
    n.BN_MOMENTUM = -1.0
    # TF "SAME" padding flavour of stride-2 average pools: "tf" (TF / Cadene weights) or
    # "timm" (weights converted from timm's nasnetalarge, which counts the zero padding).
    n.PAD_MODE = "tf"
    # Freeze the first stages and turn their BN into FrozenBN, as detectron2's ResNet:
    # 0 nothing, 1 conv0, 2 + stem cells, 3 + stage 1, 4 + reduction_cell_0 and stage 2
    # (the whole C4 backbone). The ROI head is never frozen.
    n.FREEZE_AT = 2
    # ScheduledDropPath final keep probability in backbone and ROI head (1.0 = off; the TF OD
    # API's NASNet extractor: 0.7); the ramp from 1.0 runs over SOLVER.MAX_ITER.
    n.DROP_PATH_KEEP_PROB = 1.0
    # Activation checkpointing per cell in training (backbone and per-ROI head cells): each cell
    # keeps only its inputs and recomputes its activations in backward (one more forward pass of
    # the cells); the same drop-path masks, BN statistics updated once. Large 1200 at 2 images per
    # GPU projects 6.4 GiB with it, 20.0 without (docs/detection.md).
    n.GRAD_CHECKPOINTING = False
    # Resize every image to a fixed SIZE x SIZE square (the paper's 600/800/1200 inputs,
    # aspect ratio not kept); 0 uses INPUT.MIN_SIZE_*/MAX_SIZE_* as usual.
    cfg.INPUT.FIXED_SIZE = 0
    _add_tf_exact_config(cfg)  # INPUT.TF_RESIZE, MODEL.ROI_HEADS.TF_*
    _add_fast_eval_config(cfg)  # TEST.FAST_EVAL, MODEL.ROI_HEADS.TEST_CHUNK_SIZE
    # Minimum score of the detections drawn by train_net's visualisation after evaluation.
    cfg.TEST.VIS_THRESHOLD = 0.5
    # Images drawn per test set after evaluation (0: none).
    cfg.TEST.VIS_MAX_IMAGES = 8
    # Draw the ground truth in a panel beside the detections (test sets with annotations only;
    # the shapes main job turns it on).
    cfg.TEST.VIS_GT = False
    # Algorithm name in the COCO server's file name detections_test-dev2017_<alg>_results.json
    # written after evaluating on coco_2017_test-dev (letters, digits, hyphens); "" derives it
    # from the config file name (underscores become hyphens).
    cfg.TEST.SUBMISSION_ALG = ""
    # torch intra-op threads for CPU runs (0: torch's default). On a small shared machine one
    # thread avoids OpenMP spin contention (measured 5-10x faster per iteration on 2 busy cores).
    cfg.CPU_THREADS = 0


def _add_fast_eval_config(cfg) -> None:
    """Keys of the fast inference path (docs/detection.md, "Fast inference on CPU"); both keep the
    detections as they are (same boxes, scores and classes up to float rounding)."""
    # Evaluate (train_net --eval-only and periodic evaluation, demo.py, benchmark_detector.py) on a copy
    # of the model with every NASNet part's BN / FrozenBN folded into its convs and channels-last
    # weights (nasnet_det.fast_eval); the trained model is not changed. False: the model as built.
    cfg.TEST.FAST_EVAL = True
    # NASNetROIHeads at inference on a CPU: crop and run the per-ROI cells this many proposals at a
    # time, so that a chunk's activations stay in the CPU's caches (16: fastest measured on a 2-core
    # CPU with 1 MiB L2 per core); 0: all proposals of the batch at once (always so on a GPU).
    cfg.MODEL.ROI_HEADS.TEST_CHUNK_SIZE = 16


def _add_tf_exact_config(cfg) -> None:
    """Keys that make the detector compute what TF's faster_rcnn_nas computes (docs/detection.md,
    "Computing what TF computes"; configs/COCO-Detection/*_tf*.yaml turn all of them on)."""
    # Three more are values of Detectron2's own keys, registered by nasnet_det:
    #   MODEL.ROI_BOX_HEAD.POOLER_TYPE "TFCropAndResize" (NASNetROIHeads): TF's crop_and_resize of the
    #     proposals normalised by the input tensor's size, POOLER_RESOLUTION^2 (17), no max-pool;
    #   MODEL.PROPOSAL_GENERATOR.NAME "TFRPN": TF's first-stage selection (TF anchor order, clipped
    #     anchors, TF decoding, NMS RPN.NMS_THRESH over every anchor: no PRE_NMS_TOPK, no MIN_SIZE;
    #     RPN.POST_NMS_TOPK_* = TF's first_stage_max_proposals; clipped to the image);
    #   MODEL.RPN.HEAD_NAME "TFRPNHead": the RPN conv's activation is TF's ReLU6, not ReLU.
    # NASNetROIHeads post-processes as TF's second stage: softmax, per-class TF decoding (no clamp), NMS
    # (ROI_HEADS.NMS_THRESH_TEST, SCORE_THRESH_TEST) on unclipped boxes, then clip, drop zero-area boxes,
    # keep TEST.DETECTIONS_PER_IMAGE (TF max_total_detections).
    cfg.MODEL.ROI_HEADS.TF_POSTPROCESS = False
    # TF's max_detections_per_class under TF_POSTPROCESS.
    cfg.MODEL.ROI_HEADS.TF_MAX_DETECTIONS_PER_CLASS = 100
    # Under TF_POSTPROCESS: "" (predictor classes are the dataset's) or "coco90": the predictor has TF's
    # 90 COCO label-map classes (NUM_CLASSES 90, class i = COCO id i + 1), so the softmax spans TF's 91
    # logits; after the top DETECTIONS_PER_IMAGE, ids COCO never uses are dropped and the rest mapped
    # to the dataset's 80 classes (training maps the ground truth the other way).
    cfg.MODEL.ROI_HEADS.TF_LABEL_MAP = ""
    # True (needs MODEL.META_ARCHITECTURE "NASNetRCNN", the base's): the model resizes each image to
    # INPUT.FIXED_SIZE^2 as TF's fixed_shape_resizer (float32 TF1 bilinear: align_corners False, no
    # half-pixel offset, no antialias) and scales pixels as the NAS extractor, (2 / 255) x - 1 (not
    # PIXEL_MEAN / STD), without padding; the loader does not resize; detections come back in the
    # image's own pixels (TF's normalised boxes x the original size).
    cfg.INPUT.TF_RESIZE = False
