"""TEST.FAST_EVAL / MODEL.ROI_HEADS.TEST_CHUNK_SIZE: the fast inference path gives the plain detections."""

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import make_cfg, tiny_inputs  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from nasnet_core.model.network import NASNet  # noqa: E402
from nasnet_det import fast_eval  # noqa: E402
from nasnet_det.fast_eval import FastEvalModel, fast_eval_model, maybe_fast_eval  # noqa: E402

MOBILE = "configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_600.yaml"
FPN = "configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_fpn.yaml"
# The mobile 600 detector's structure (FrozenBN everywhere, NASNet-A cells, 17 x 17 crops through
# reduction_cell_1 + stage 3) at one cell per stage, a quarter of its width, 128 px, 40 proposals
# per image.
OPTS = ["MODEL.NASNET.N", 1, "MODEL.NASNET.F", 264, "INPUT.FIXED_SIZE", 128,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 40, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ANCHOR_GENERATOR.SIZES", [[16, 32, 64]],
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
TF_CROP = ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "TFCropAndResize", "MODEL.ROI_HEADS.TF_POSTPROCESS", True]


def _detector(opts=(), config=MOBILE):
    """The small detector with BN statistics taken from the inputs (as ImageNet weights would leave
    them), then every FrozenBN's statistics and affine perturbed, so that folding changes numbers."""
    torch.manual_seed(0)
    model = build_model(make_cfg(config, [*OPTS, *opts, "MODEL.NASNET.NORM", "BN"]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image(tiny_inputs(size=128)).tensor)
        if "nasnet16" in feats:  # C4: the per-ROI cells' statistics too
            model.roi_heads.res5(torch.cat([feats["nasnet16"]] * 2)[:, :, :17, :17].contiguous())
    model = FrozenBatchNorm2d.convert_frozen_batchnorm(model).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            m.weight.mul_(torch.empty(c).uniform_(0.8, 1.2, generator=g))
            m.bias.add_(0.1 * torch.randn(c, generator=g))
            m.running_var.mul_(torch.empty(c).uniform_(0.8, 1.25, generator=g))
            m.running_mean.add_(0.1 * torch.randn(c, generator=g) * m.running_var.sqrt())
    return model


@pytest.fixture(scope="module")
def detector():
    """The small detector with ROIAlign crops, built once (the tests do not change its weights)."""
    return _detector()


def _detect(model, chunk: int):
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in tiny_inputs(size=128)]
    heads = model.model.roi_heads if isinstance(model, FastEvalModel) else model.roi_heads
    if hasattr(heads, "test_chunk_size"):  # NASNetROIHeads (C4); FPN's StandardROIHeads has no chunks
        heads.test_chunk_size = chunk
    with torch.no_grad():
        return [r["instances"] for r in model(inputs)]


def _largest_differences(plain, fast) -> tuple[float, float]:
    """(largest box corner difference in px, largest score difference) between each plain detection
    and the fast detection of its class nearest to it; (inf, inf) if the counts or classes differ."""
    box_diff = score_diff = 0.0
    for a, b in zip(plain, fast):
        if len(a) != len(b) or sorted(a.pred_classes.tolist()) != sorted(b.pred_classes.tolist()):
            return float("inf"), float("inf")
        for box, score, cls in zip(a.pred_boxes.tensor, a.scores, a.pred_classes):
            same = b.pred_classes == cls
            dist = (b.pred_boxes.tensor[same] - box).abs().amax(dim=1)
            k = int(dist.argmin())
            box_diff = max(box_diff, float(dist[k]))
            score_diff = max(score_diff, float((b.scores[same][k] - score).abs()))
    return box_diff, score_diff


@pytest.mark.parametrize("variant", ["roialign", "tf_crop", "fpn"])
def test_fast_eval_gives_the_plain_detections(detector, variant):
    model = {"roialign": lambda: detector, "tf_crop": lambda: _detector(TF_CROP),
             "fpn": lambda: _detector(config=FPN)}[variant]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _detect(model, chunk=0)
    fast_model = fast_eval_model(model)
    fast = _detect(fast_model, chunk=8)  # 40 proposals per image: 5 chunks each, 2 images
    assert sum(len(p) for p in plain) >= 20  # detections to compare (score threshold 0)
    box_diff, score_diff = _largest_differences(plain, fast)
    print(f"fast vs plain: {sum(len(p) for p in plain)} detections, boxes within {box_diff:.1e} px, "
          f"scores within {score_diff:.1e}")
    assert box_diff <= 1e-3 and score_diff <= 1e-4
    # the copy is folded (no BN left in its NASNet parts) and channels-last; the model is untouched
    nasnet = [m for m in fast_model.modules() if isinstance(m, NASNet)]
    assert len(nasnet) == (1 if variant == "fpn" else 2)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast_model.modules())
    for part in nasnet:
        conv = part.cell_0.conv_1x1.conv if hasattr(part, "cell_0") else part.reduction_cell_1.conv_1x1.conv
        assert conv.bias is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(m, torch.nn.Identity) for m in model.modules())


def test_fast_eval_comparison_catches_a_wrong_fold(detector, monkeypatch):
    """The tolerances above see a fold with the wrong eps (1e-5 instead of the layers' 1e-3)."""
    model = detector
    plain = _detect(model, chunk=0)
    to_core = fast_eval._to_core_frozen_bn

    def wrong_eps(module):
        for m in module.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = 1e-5
        to_core(module)

    monkeypatch.setattr(fast_eval, "_to_core_frozen_bn", wrong_eps)
    fast = _detect(fast_eval_model(model), chunk=8)
    box_diff, score_diff = _largest_differences(plain, fast)
    print(f"fold with eps 1e-5: boxes within {box_diff:.1e} px, scores within {score_diff:.1e} "
          f"(counts {[len(p) for p in plain]} / {[len(f) for f in fast]})")
    assert box_diff > 1e-3 or score_diff > 1e-4


def test_fast_eval_copy_refuses_training_and_follows_the_switch(detector):
    model = detector
    fast = maybe_fast_eval(make_cfg(MOBILE, OPTS), model)
    assert isinstance(fast, FastEvalModel) and not fast.training
    fast.eval()  # what detectron2's inference_context does before and after
    with pytest.raises(ValueError, match="folded for inference"):
        fast.train()
    assert maybe_fast_eval(make_cfg(MOBILE, [*OPTS, "TEST.FAST_EVAL", False]), model) is model
    with pytest.raises(ValueError, match="TEST_CHUNK_SIZE must be >= 0"):
        build_model(make_cfg(MOBILE, [*OPTS, "MODEL.ROI_HEADS.TEST_CHUNK_SIZE", -1]))
