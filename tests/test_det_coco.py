"""COCO configs at the paper's scale: TF's second stage, crop 17 -> 9, drop path 0.7, recipe, a step each."""

import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import ROOT, make_cfg, tiny_inputs  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from nasnet_det.engine import DropPathStep  # noqa: E402

COCO = sorted(f"configs/COCO-Detection/{p.name}"
              for p in (ROOT / "configs" / "COCO-Detection").glob("*.yaml"))
NASNET_C4 = [c for c in COCO if "nasnet" in c and "fpn" not in c]
LARGE_800, LARGE_1200, MOBILE_600, TF_1200, TF_LOW = (
    f"configs/COCO-Detection/faster_rcnn_nasnet_a_{n}.yaml"
    for n in ("large_800", "large_1200", "mobile_600", "large_1200_tf", "large_1200_tf_lowproposals"))


def test_the_coco_configs_are_the_shipped_ones():
    assert len(COCO) == 7 and len(NASNET_C4) == 5


@pytest.mark.parametrize("config_file", [TF_1200, TF_LOW])
def test_tf_configs_turn_every_tf_exact_option_on(config_file):
    """The released models as TF computes them: the sample config's values and every TF-exact option."""
    cfg = make_cfg(config_file)
    roi, rpn, box = cfg.MODEL.ROI_HEADS, cfg.MODEL.RPN, cfg.MODEL.ROI_BOX_HEAD
    assert cfg.MODEL.META_ARCHITECTURE == "NASNetRCNN" and cfg.INPUT.TF_RESIZE
    assert cfg.INPUT.FIXED_SIZE == 1200
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "TFRPN" and rpn.NMS_THRESH == 0.7
    assert rpn.HEAD_NAME == "TFRPNHead"
    assert (box.POOLER_TYPE, box.POOLER_RESOLUTION) == ("TFCropAndResize", 17)
    assert (roi.TF_POSTPROCESS, roi.TF_LABEL_MAP, roi.NUM_CLASSES) == (True, "coco90", 90)
    assert (roi.NMS_THRESH_TEST, roi.SCORE_THRESH_TEST, roi.TF_MAX_DETECTIONS_PER_CLASS) == (0.6, 0.0, 100)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100 and cfg.MODEL.NASNET.ARCH == "nasnet_a_large"
    assert cfg.MODEL.NASNET.PAD_MODE == "tf" and rpn.POST_NMS_TOPK_TRAIN == 500
    assert rpn.POST_NMS_TOPK_TEST == (50 if "lowproposals" in config_file else 500)


@pytest.mark.parametrize("config_file", COCO)
def test_second_stage_rpn_and_losses_as_tf(config_file):
    cfg = make_cfg(config_file)
    roi, rpn, box = cfg.MODEL.ROI_HEADS, cfg.MODEL.RPN, cfg.MODEL.ROI_BOX_HEAD
    assert (roi.BATCH_SIZE_PER_IMAGE, roi.POSITIVE_FRACTION, roi.PROPOSAL_APPEND_GT) == (64, 0.25, False)
    assert (roi.NMS_THRESH_TEST, roi.SCORE_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE) == (0.6, 0.0, 100)
    assert list(rpn.CONV_DIMS) == [512] and rpn.NMS_THRESH == 0.7
    assert tuple(rpn.BBOX_REG_WEIGHTS) == tuple(box.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    assert (rpn.SMOOTH_L1_BETA, box.SMOOTH_L1_BETA) == (1.0, 1.0)
    assert (rpn.BBOX_REG_LOSS_WEIGHT, box.BBOX_REG_LOSS_WEIGHT, rpn.LOSS_WEIGHT) == (2.0, 2.0, 1.0)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE) == (True, "norm", 10.0)
    if "fpn" not in config_file:  # the lowproposals release: TF's 50 at test time
        assert rpn.POST_NMS_TOPK_TRAIN == 500
        assert rpn.POST_NMS_TOPK_TEST == (50 if "lowproposals" in config_file else 500)
    if "nasnet" in config_file:
        assert cfg.MODEL.NASNET.DROP_PATH_KEEP_PROB == 0.7 and cfg.MODEL.NASNET.NORM == "FrozenBN"


def test_recipes_give_800_and_1200_the_same_epochs():
    a, b = make_cfg(LARGE_800), make_cfg(LARGE_1200)
    for key in ("IMS_PER_BATCH", "BASE_LR", "STEPS", "MAX_ITER", "WARMUP_ITERS", "WEIGHT_DECAY", "GAMMA"):
        assert a.SOLVER[key] == b.SOLVER[key], key
    for c in map(make_cfg, COCO):  # every COCO config: 1.44 M images, LR scaled to the batch
        s = c.SOLVER
        assert s.IMS_PER_BATCH * s.MAX_ITER == 1_440_000 and s.IMS_PER_BATCH % 8 == 0
        assert s.BASE_LR / s.IMS_PER_BATCH == pytest.approx(0.02 / 16)
        assert s.WARMUP_ITERS * s.IMS_PER_BATCH == 16_000
        assert [x * s.IMS_PER_BATCH for x in s.STEPS] == [960_000, 1_280_000]
    assert a.SOLVER.WEIGHT_DECAY == 5e-5 and make_cfg(MOBILE_600).SOLVER.WEIGHT_DECAY == 4e-5


def _meta_model(config_file):
    cfg = make_cfg(config_file, ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        return build_model(cfg), cfg


@pytest.mark.parametrize("config_file", NASNET_C4)
def test_head_crops_17_to_9_and_drop_path_ramps_in_both_parts(config_file):
    model, cfg = _meta_model(config_file)
    assert model.roi_heads.pooler.output_size == (17, 17)
    head = model.roi_heads.res5.eval()
    y = head(torch.empty(3, head.in_channels, 17, 17, device="meta"))
    assert tuple(y.shape) == (3, head.out_channels, 9, 9)  # TF "SAME" stride 2: ceil(17 / 2)
    hook = DropPathStep()
    bb, hn = model.backbone.nasnet, head.nasnet
    last_bb, last_head = bb.cell_specs[model.backbone.end - 1].name, hn.cell_specs[-1].name
    for step, head_keep in ((0, 1.0), (cfg.SOLVER.MAX_ITER // 2, 0.85), (cfg.SOLVER.MAX_ITER, 0.7)):
        hook.trainer = SimpleNamespace(model=model, iter=step)
        hook.before_step()
        assert getattr(hn, last_head).drop_path_keep == pytest.approx(head_keep)
        keep_bb = getattr(bb, last_bb).drop_path_keep
        assert keep_bb == 1.0 if step == 0 else head_keep < keep_bb < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("config_file", COCO)
def test_training_step_at_each_coco_structure(config_file):
    """Real ROI / crop / proposal settings and 80 classes on a scaled-down image: finite loss.

    BN instead of the config's FrozenBN: random init has no statistics to freeze (FrozenBN at
    identity lets activations grow cell by cell), and with BN the loss has a known value.
    A 64 px image gives ~20 proposals, so NASNet-A large's head trains in seconds.
    """
    torch.set_num_threads(2)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.NASNET.NORM", "BN", "MODEL.RESNETS.NORM", "BN",
            "INPUT.FIXED_SIZE", 64]  # the TF configs resize in the model: keep their input at 64 px
    cfg = make_cfg(config_file, opts)
    model = build_model(cfg).train()
    seen = []
    if hasattr(model.roi_heads, "res5"):
        model.roi_heads.res5.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    with EventStorage(0):
        losses = model(tiny_inputs(1, size=64, num_classes=80))
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES  # 80, or TF's 90 (label map coco90)
    assert abs(float(losses["loss_cls"]) - math.log(classes + 1)) < 1.0, losses  # ~uniform
    total.backward()
    opt.step()
    if seen:
        (crops, out), = seen
        # TFRPN prunes anchors not inside the image in training (as TF): at 64 px one anchor fits
        fewest = 1 if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "TFRPN" else 10
        assert fewest <= crops[0] <= 64 and crops[-1] == model.roi_heads.pooler.output_size[0]
        if "nasnet" in config_file:
            assert (crops[-1], out[-1]) == (17, 9)


def test_trainer_ramps_drop_path_in_both_parts_and_clips_gradients(tmp_path):
    """Two real Trainer iterations: its hook set the step in backbone and head; SGD clips at 10."""
    from detectron2.data import DatasetCatalog

    from nasnet_det import datasets, shapes
    from nasnet_det.engine import Trainer

    shapes.generate(tmp_path / "s", "train", count=4)
    if "test_coco_trainer_shapes" not in DatasetCatalog.list():
        datasets.register_shapes("test_coco_trainer_shapes", "train", tmp_path / "s")
    cfg = make_cfg("configs/quick_schedules/nasnet_a_mobile_shapes.yaml", [
        "MODEL.NASNET.N", 1, "MODEL.NASNET.F", 192, "MODEL.NASNET.DROP_PATH_KEEP_PROB", 0.7,
        "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2,
        "SOLVER.WARMUP_ITERS", 0, "DATASETS.TRAIN", ("test_coco_trainer_shapes",), "DATASETS.TEST", (),
        "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "out")])
    trainer = Trainer(cfg)
    assert "GradientClip" in type(trainer.optimizer).__name__
    trainer.train()
    model = trainer.model
    head = model.roi_heads.res5.nasnet
    last_bb = model.backbone.nasnet.cell_specs[model.backbone.end - 1].name
    # the hook ran before iteration 1 of 2: half the ramp
    assert getattr(head, head.cell_specs[-1].name).drop_path_keep == pytest.approx(0.85)
    assert 0.85 < getattr(model.backbone.nasnet, last_bb).drop_path_keep < 1.0
