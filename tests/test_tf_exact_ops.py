"""nasnet_det's TF-exact ops against TensorFlow's own functions (the vendored OD API where it is TF's
code, tf.image otherwise): crop_and_resize, the fixed-shape resize and [-1, 1] scaling, box
decoding, NMS, anchor order, the first-stage proposal selection and the second-stage post-processing.
"""

import functools

import numpy as np
import pytest
import torch
from tf_oracle import tf_v1

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from nasnet_det import meta_arch, tf_ops, tf_postprocess  # noqa: E402


def run_tf(build):
    """Build a graph with ``build(tf)`` (returns tensors) and evaluate it in a fresh session."""
    tf = tf_v1()
    graph = tf.Graph()
    with graph.as_default():
        outputs = build(tf)
    with tf.Session(graph=graph) as sess:
        return sess.run(outputs)


def real_looking_image(h=480, w=640, seed=0) -> np.ndarray:
    """An RGB uint8 photo stand-in: gradients, sinusoidal texture, hard-edged shapes, noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([90 + 80 * x / w, 60 + 100 * y / h, 120 + 40 * np.sin(x / 23.0) * np.cos(y / 17.0)], -1)
    for _ in range(12):
        y0, x0 = rng.randint(0, h - 20), rng.randint(0, w - 20)
        img[y0:y0 + rng.randint(10, 150), x0:x0 + rng.randint(10, 200)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def xyxy_to_tf(boxes: torch.Tensor) -> np.ndarray:
    return boxes[:, [1, 0, 3, 2]].numpy()


# ---------------------------------------------------------------- crop_and_resize


def test_crop_and_resize_equals_tf_including_boxes_outside_the_image():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 9, 13, generator=g) * 3
    boxes = torch.rand(40, 4, generator=g) * 1.6 - 0.3          # partly / fully outside [0, 1]
    boxes[:10] = torch.tensor([0.0, 0.0, 1.0, 1.0])             # whole map: samples at 0 and H - 1
    boxes[10:20].clamp_(0, 1)
    boxes[20:24] = boxes[20:24, [2, 1, 0, 3]]                   # y1 > y2: flipped crops
    ind = torch.randint(0, 2, (40,), generator=g, dtype=torch.int32)
    nhwc = feats.permute(0, 2, 3, 1).numpy()
    for size in [(17, 17), (1, 1), (5, 3)]:
        ref = run_tf(lambda tf, s=size: tf.image.crop_and_resize(nhwc, boxes.numpy(), ind.numpy(), s))
        ours = tf_ops.crop_and_resize(feats, boxes, ind, size).permute(0, 2, 3, 1).numpy()
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-5, size
        assert (ref == 0).sum() > 0 and ((ours == 0) == (ref == 0)).all()  # extrapolated samples
    small = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    crop = functools.partial(tf_ops.crop_and_resize, boxes=boxes[10:14], box_indices=ind[:4] * 0,
                             crop_size=(3, 3))
    assert torch.autograd.gradcheck(crop, small)


def test_crop_and_resize_is_the_od_api_call_and_not_roialign(tf_models):
    """The meta-architecture's multilevel_native_crop_and_resize (17 x 17, one level) is ours; ROIAlign
    (cell centres) differs by far more than the tolerance."""
    from detectron2.layers import ROIAlign

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 4, 12, 12, generator=g)
    ys, xs = (torch.rand(6, 2, generator=g).sort(dim=1).values for _ in range(2))
    boxes = torch.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], -1)[None]  # (1, 6, 4): y1 x1 y2 x2

    def build(tf):
        from object_detection.utils import spatial_transform_ops as ops

        return ops.multilevel_native_crop_and_resize([tf.constant(feats.permute(0, 2, 3, 1).numpy())],
                                                     tf.constant(boxes.numpy()), None, [17, 17])

    ref = run_tf(build)[0]
    ours = tf_ops.crop_and_resize(feats, boxes[0], torch.zeros(6), (17, 17)).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref).max() < 1e-5
    yx = boxes[0] * 11  # the same boxes in pixels: ROIAlign samples cell centres instead
    rois = torch.cat([torch.zeros(6, 1), yx[:, [1, 0, 3, 2]]], 1)
    align = ROIAlign((17, 17), 1.0, 1, aligned=True)(feats, rois).permute(0, 2, 3, 1).numpy()
    assert np.abs(align - ref).max() > 1e-2


# ---------------------------------------------------------------- resize and scaling


def test_fixed_shape_resize_and_nas_scaling_equal_tf(tf_models):
    """image_resizer_builder's fixed_shape_resizer (1200 x 1200) + the NAS extractor's preprocess."""
    image = real_looking_image()

    def build(tf):
        from google.protobuf import text_format
        from object_detection.builders import image_resizer_builder
        from object_detection.models import faster_rcnn_nas_feature_extractor as nas
        from object_detection.protos import image_resizer_pb2

        config = text_format.Parse("fixed_shape_resizer { height: 1200 width: 1200 }",
                                   image_resizer_pb2.ImageResizer())
        resized, shape = image_resizer_builder.build(config)(tf.cast(tf.constant(image), tf.float32))
        return resized, shape, nas.FasterRCNNNASFeatureExtractor(False, 16).preprocess(resized)

    ref_resized, ref_shape, ref_scaled = run_tf(build)
    assert list(ref_shape) == [1200, 1200, 3]
    ours = tf_ops.resize_bilinear_legacy(torch.from_numpy(image).permute(2, 0, 1), (1200, 1200))
    assert np.abs(ours.permute(1, 2, 0).numpy() - ref_resized).max() < 1e-4
    scaled = (ours * tf_ops.f32(2.0 / 255.0) - 1.0).permute(1, 2, 0).numpy()
    assert np.abs(scaled - ref_scaled).max() < 1e-6


# ---------------------------------------------------------------- decoding, NMS, anchors


def test_box_decoding_equals_tf_faster_rcnn_box_coder(tf_models):
    from detectron2.modeling.box_regression import Box2BoxTransform

    g = torch.Generator().manual_seed(2)
    anchors = torch.rand(300, 2, generator=g) * 500
    anchors = torch.cat([anchors, anchors + torch.rand(300, 2, generator=g) * 300 + 1], 1)
    deltas = torch.randn(300, 4, generator=g) * 3
    deltas[:20, 2:] = 25.0  # dw / 5 = 5 > log(1000 / 16): Detectron2's Box2BoxTransform would clamp

    def build(tf):
        from object_detection.box_coders.faster_rcnn_box_coder import FasterRcnnBoxCoder
        from object_detection.core.box_list import BoxList

        coder = FasterRcnnBoxCoder(scale_factors=[10.0, 10.0, 5.0, 5.0])
        return coder.decode(deltas[:, [1, 0, 3, 2]].numpy(), BoxList(tf.constant(xyxy_to_tf(anchors)))).get()

    ref = run_tf(build)
    ours = xyxy_to_tf(tf_ops.decode_boxes(deltas, anchors, (10.0, 10.0, 5.0, 5.0)))
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()
    clamped = xyxy_to_tf(Box2BoxTransform((10.0, 10.0, 5.0, 5.0)).apply_deltas(deltas, anchors))
    assert np.abs(clamped - ref)[:20].min() > 1.0 and np.abs(clamped - ref)[20:].max() < 1e-3


def nms_case(seed=3, n=600):
    """Clustered boxes (many overlaps), scores with exact ties, and pairs at IOU exactly 0.7 / 0.6."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n // 20, 2, generator=g).repeat_interleave(20, 0) * 200
    centres = centres + torch.randn(n, 2, generator=g) * 6
    half = torch.rand(n, 2, generator=g) * 30 + 5
    boxes = torch.cat([centres - half, centres + half], 1)
    scores = (torch.rand(n, generator=g) * 8).floor() / 8  # ties, and zeros below the threshold
    # IOU 7 / 10 and 6 / 10 exactly in float32: TF keeps a box at IOU == threshold (float32)
    boxes[:4] = torch.tensor([[0.0, 0, 1, 10], [0, 0, 1, 7], [50, 0, 51, 10], [50, 0, 51, 6]])
    scores[:4] = torch.tensor([0.99, 0.98, 0.97, 0.96])
    return boxes, scores


@pytest.mark.parametrize("iou", [0.7, 0.6, 0.5])
def test_nms_selects_tf_boxes_in_tf_order(iou, monkeypatch):
    boxes, scores = nms_case()
    ref = run_tf(lambda tf: tf.image.non_max_suppression_with_scores(
        xyxy_to_tf(boxes), scores.numpy(), 100, iou_threshold=iou, score_threshold=0.0)[0])
    ours = tf_ops.nms(boxes, scores, iou, 100)
    assert len(ref) == 100 and ours.tolist() == ref.tolist()
    monkeypatch.setattr(tf_ops, "_NMS_BLOCK", 7)  # the block-wise path gives the same selection
    assert tf_ops.nms(boxes, scores, iou, 1000).tolist()[:100] == ref.tolist()
    if iou in (0.7, 0.6):  # the pair at exactly the threshold is kept: IOU > threshold drops
        kept = set(ref.tolist()) & {0, 1, 2, 3}
        assert kept == ({0, 1, 2, 3} if iou == 0.7 else {0, 2, 3})


def test_anchor_order_maps_detectron2_anchors_to_tf_grid_anchors(tf_models):
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    sizes, ratios = [64, 128, 256, 512], [0.5, 1.0, 2.0]
    gen = DefaultAnchorGenerator(sizes=[sizes], aspect_ratios=[ratios], strides=[16], offset=0.0)
    ours = gen([torch.zeros(1, 1, 5, 7)])[0].tensor.view(5 * 7, 12, 4)
    ours = ours[:, tf_ops.tf_anchor_order(sizes, ratios)].reshape(-1, 4)

    def build(tf):
        from object_detection.anchor_generators.grid_anchor_generator import GridAnchorGenerator

        gen = GridAnchorGenerator([0.25, 0.5, 1.0, 2.0], ratios, anchor_stride=[16, 16])
        return gen.generate([(5, 7)])[0].get()

    ref = run_tf(build)
    assert ref.shape == (420, 4) and np.abs(xyxy_to_tf(ours) - ref).max() < 1e-4
    with pytest.raises(ValueError, match="not closed under 1/r"):
        tf_ops.tf_anchor_order(sizes, [0.5, 1.0])


# ---------------------------------------------------------------- the ROI head's crop

INSTANT = "configs/quick_schedules/nasnet_a_mobile_c4_instant_test.yaml"
TINY = ["MODEL.NASNET.N", 1, "MODEL.NASNET.F", 192, "MODEL.DEVICE", "cpu"]


def tiny_model(*opts):
    from det_helpers import make_cfg
    from detectron2.modeling import build_model

    return build_model(make_cfg(INSTANT, TINY + list(opts)))


def test_tf_crop_pooler_normalises_by_the_input_size_as_the_meta_architecture(tf_models):
    """POOLER_TYPE TFCropAndResize: to_normalized_coordinates by the input tensor's size (not the
    feature stride), then native crop_and_resize, 17 x 17."""
    from detectron2.structures import Boxes

    model = tiny_model("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "TFCropAndResize")
    pooler = model.roi_heads.pooler
    assert pooler.output_size == (17, 17)
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 6, 8, 10, generator=g)  # a 120 x 150 input at stride 16 (ceil)
    xy = torch.rand(2, 9, 4, generator=g) * torch.tensor([150.0, 120, 150, 120])
    boxes = [Boxes(torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1))
             for b in xy]
    ours = pooler([feats], boxes, (120, 150)).permute(0, 2, 3, 1).numpy()

    def build(tf):
        from object_detection.core import box_list, box_list_ops
        from object_detection.utils import spatial_transform_ops as ops

        norm = [box_list_ops.to_normalized_coordinates(box_list.BoxList(tf.constant(xyxy_to_tf(b.tensor))),
                                                       120, 150, check_range=False).get() for b in boxes]
        crops = ops.multilevel_native_crop_and_resize([tf.constant(feats.permute(0, 2, 3, 1).numpy())],
                                                      tf.stack(norm), None, [17, 17])
        return tf.reshape(crops, [-1, 17, 17, 6])

    assert np.abs(ours - run_tf(build)).max() < 1e-5


def test_tf_crop_head_runs_in_training_and_inference():
    """The NASNet head on TF crops: 17 -> 9, finite losses with gradients into the backbone, detections."""
    from det_helpers import tiny_inputs
    from detectron2.utils.events import EventStorage

    model = tiny_model("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "TFCropAndResize").train()
    with EventStorage(0):
        losses = model(tiny_inputs(2, size=64))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    with torch.no_grad():
        out = model.eval()(tiny_inputs(1, size=64))
    assert len(out[0]["instances"]) > 0


# ---------------------------------------------------------------- first stage


def test_tf_rpn_head_conv_is_tf_relu6_conv():
    """RPN.HEAD_NAME TFRPNHead: the first-stage conv as TF's slim.conv2d(3 x 3, SAME, relu6);
    Detectron2's StandardRPNHead (ReLU) differs wherever an activation passes 6."""
    from det_helpers import make_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.proposal_generator import build_rpn_head

    opts = ["MODEL.RPN.HEAD_NAME", "TFRPNHead", "MODEL.RPN.CONV_DIMS", [8]]
    cfg = make_cfg("configs/Base-NASNet-C4.yaml", opts)
    conv = build_rpn_head(cfg, [ShapeSpec(channels=5, stride=16)]).conv
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 5, 6, 7, generator=g) * 3
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.5, generator=g)  # activations well past 6
    ours = conv(x).permute(0, 2, 3, 1).detach().numpy()
    w, b = conv.weight.detach().permute(2, 3, 1, 0).numpy(), conv.bias.detach().numpy()
    ref = run_tf(lambda tf: tf.nn.relu6(tf.nn.conv2d(x.permute(0, 2, 3, 1).numpy(), w, 1, "SAME") + b))
    assert np.abs(ours - ref).max() < 1e-4 and (ref == 6).mean() > 0.05
    plain = torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)).detach()
    assert plain.max() > 6.5



def tf_meta_arch(**attrs):
    """A FasterRCNNMetaArch with just the attributes its post-processing methods read (TF's own code)."""
    from object_detection.meta_architectures.faster_rcnn_meta_arch import FasterRCNNMetaArch

    arch = object.__new__(FasterRCNNMetaArch)
    arch.__dict__.update(attrs)
    return arch


def test_first_stage_equals_tf_predict_first_stage_and_postprocess_rpn(tf_models):
    """TFRPN on Detectron2-ordered anchors / logits / deltas = TF's clipped grid anchors +
    _postprocess_rpn on the same values in TF's order: same boxes, same order, same scores."""
    from det_helpers import make_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_proposal_generator

    cfg = make_cfg("configs/Base-NASNet-C4.yaml", ["MODEL.PROPOSAL_GENERATOR.NAME", "TFRPN",
                                                   "MODEL.RPN.POST_NMS_TOPK_TEST", 50])
    rpn = build_proposal_generator(cfg, {"nasnet16": ShapeSpec(channels=8, stride=16)}).eval()
    anchors = rpn.anchor_generator([torch.zeros(1, 8, 6, 8)])
    g = torch.Generator().manual_seed(5)
    n = anchors[0].tensor.shape[0]
    logits = (torch.randn(1, n, generator=g) * 4).round() / 2     # many exactly equal scores
    # the two best: one cell's (64, h/w 0.5) and (512, h/w 2) anchors, tied and barely overlapping.
    # Detectron2 orders them 0 < 11 in the cell, TF 8 > 3: TF's order puts the 512 px one first.
    logits[0, 27 * 12 + torch.tensor([0, 11])] = 10.0
    deltas = torch.randn(1, n, 4, generator=g) * torch.tensor([0.5, 0.5, 0.3, 0.3])
    input_size, image_size = (96, 128), (90, 117)                  # padding below / right
    ours = rpn.select(anchors, [logits], [deltas], [image_size], input_size)[0]
    order = (torch.arange(48)[:, None] * 12 + rpn.tf_order[None]).flatten()

    def build(tf):
        from object_detection.anchor_generators.grid_anchor_generator import GridAnchorGenerator
        from object_detection.box_coders.faster_rcnn_box_coder import FasterRcnnBoxCoder
        from object_detection.core import box_list_ops, post_processing

        grid = GridAnchorGenerator([0.25, 0.5, 1.0, 2.0], [0.5, 1.0, 2.0], anchor_stride=[16, 16])
        tf_anchors = box_list_ops.clip_to_window(grid.generate([(6, 8)])[0], tf.constant([0.0, 0, 96, 128]))
        nms_fn = functools.partial(post_processing.batch_multiclass_non_max_suppression, score_thresh=0.0,
                                   iou_thresh=0.7, max_size_per_class=50, max_total_size=50)
        arch = tf_meta_arch(_box_coder=FasterRcnnBoxCoder([10.0, 10.0, 5.0, 5.0]), _first_stage_nms_fn=nms_fn,
                            _is_training=False)
        two_way = torch.stack([torch.zeros(n), logits[0]], -1)[order][None].numpy()  # background, object
        encodings = deltas[0][order][:, [1, 0, 3, 2]][None].numpy()  # (ty, tx, th, tw)
        out = arch._postprocess_rpn(encodings, two_way, tf_anchors.get(),
                                    tf.constant([[96, 128, 3]]), tf.constant([[90, 117, 3]]))
        return out[0], out[1], out[3]

    boxes, scores, num = run_tf(build)
    assert num[0] == len(ours) > 30
    normalised = ours.proposal_boxes.tensor * torch.tensor([1 / 128, 1 / 96] * 2)
    assert np.abs(xyxy_to_tf(normalised) - boxes[0, :num[0]]).max() < 1e-6
    assert np.abs(torch.sigmoid(ours.objectness_logits).numpy() - scores[0, :num[0]]).max() < 1e-6
    assert len(set(scores[0, :num[0]].tolist())) < num[0]  # ties among the selected proposals
    assert scores[0, 0] == scores[0, 1] and boxes[0, 0, 2] - boxes[0, 0, 0] > boxes[0, 1, 2] - boxes[0, 1, 0]


# ---------------------------------------------------------------- second stage


def second_stage_case(seed=6, r=40, k=6):
    """Proposals in a 128 x 128 input (exact normalisation), class-specific deltas, logits with ties."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(r, 2, generator=g) * 100
    proposals = torch.cat([xy, xy + torch.rand(r, 2, generator=g) * 60 + 4], 1).clamp(max=128)
    deltas = torch.randn(r, 4 * k, generator=g) * torch.tensor([1.0, 1.0, 0.5, 0.5]).repeat(k)
    logits = (torch.randn(r, k + 1, generator=g) * 6).round() / 4   # background last (Detectron2)
    return proposals, deltas, logits


def test_multiclass_nms_equals_tf_batch_multiclass_non_max_suppression(tf_models):
    boxes, scores = nms_case(seed=7, n=200)
    boxes = torch.stack([boxes, boxes.flip(0) + 3.0, boxes * 1.1], 1)          # (R, K=3, 4), class boxes
    scores = torch.stack([scores, scores.flip(0), scores.roll(5)], 1)
    size = (180, 200)  # boxes reach 235: clipped, and some to zero area

    def build(tf):
        from object_detection.core import post_processing

        out = post_processing.batch_multiclass_non_max_suppression(
            tf.constant(boxes[..., [1, 0, 3, 2]].numpy()[None]), tf.constant(scores.numpy()[None]),
            score_thresh=0.0, iou_thresh=0.6, max_size_per_class=12, max_total_size=30,
            clip_window=tf.constant([[0.0, 0.0, 180.0, 200.0]]), change_coordinate_frame=True)
        return out[0], out[1], out[2], out[5]

    ref_boxes, ref_scores, ref_classes, num = run_tf(build)
    ours = tf_postprocess.multiclass_nms(boxes, scores, size, 0.0, 0.6, 12, 30)
    n = int(num[0])
    assert n == len(ours[0]) == 30
    normalised = ours[0] / torch.tensor([200.0, 180.0, 200.0, 180.0])
    assert np.abs(xyxy_to_tf(normalised) - ref_boxes[0, :n]).max() < 1e-6
    assert ours[1].tolist() == ref_scores[0, :n].tolist() and ours[2].tolist() == ref_classes[0, :n].tolist()


def test_second_stage_equals_tf_postprocess_box_classifier(tf_models):
    """TFSecondStage (softmax over K + 1, per-class decoding against the proposals, NMS 0.6, 100 per
    class and in all) = FasterRCNNMetaArch._postprocess_box_classifier with the sample config's
    second_stage_post_processing; outputs mapped back to the image as TF's normalised x true shape."""
    proposals, deltas, logits = second_stage_case()
    r, k = len(proposals), logits.shape[1] - 1
    stage = tf_postprocess.TFSecondStage((10.0, 10.0, 5.0, 5.0), 0.0, 0.6, 100, 100)
    ours = stage.image(logits, deltas, proposals, (128, 128), (120, 100))

    def build(tf):
        from google.protobuf import text_format
        from object_detection.box_coders.faster_rcnn_box_coder import FasterRcnnBoxCoder
        from object_detection.builders import post_processing_builder
        from object_detection.protos import post_processing_pb2

        config = text_format.Parse(
            "batch_non_max_suppression { score_threshold: 0.0 iou_threshold: 0.6 "
            "max_detections_per_class: 100 max_total_detections: 100 } score_converter: SOFTMAX",
            post_processing_pb2.PostProcessing())
        nms_fn, score_fn = post_processing_builder.build(config)
        arch = tf_meta_arch(_box_coder=FasterRcnnBoxCoder([10.0, 10.0, 5.0, 5.0]),
                            _second_stage_nms_fn=nms_fn, _second_stage_score_conversion_fn=score_fn,
                            _num_classes=k, _first_stage_max_proposals=r, _is_training=False)
        tf_logits = torch.cat([logits[:, -1:], logits[:, :-1]], 1).numpy()          # background first
        tf_deltas = deltas.view(r, k, 4)[..., [1, 0, 3, 2]].numpy()
        out = arch._postprocess_box_classifier(tf.constant(tf_deltas), tf.constant(tf_logits),
                                               tf.constant(xyxy_to_tf(proposals)[None]), tf.constant([r]),
                                               tf.constant([[120, 100, 3]]))
        return [out[f"detection_{key}"] for key in ("boxes", "scores", "classes")] + [out["num_detections"]]

    boxes, scores, classes, num = run_tf(build)
    n = int(num[0])
    assert n == len(ours) == 100
    absolute = boxes[0, :n] * np.array([120, 100, 120, 100], np.float32)  # TF: normalised x true image shape
    assert np.abs(xyxy_to_tf(ours.pred_boxes.tensor) - absolute).max() < 1e-3
    assert np.abs(ours.scores.numpy() - scores[0, :n]).max() < 1e-6
    assert ours.pred_classes.tolist() == classes[0, :n].astype(int).tolist()


def test_coco90_label_map_drops_the_unused_ids_after_the_top_n():
    table = tf_postprocess.LABEL_MAPS["coco90"][0]()
    assert (table >= 0).sum() == 80 and table[0] == 0 and table[11] == -1 and table[89] == 79
    proposals, deltas, logits = second_stage_case(r=30, k=90)
    plain = tf_postprocess.TFSecondStage((10.0, 10.0, 5.0, 5.0), 0.0, 0.6, 100, 100)
    mapped = tf_postprocess.TFSecondStage((10.0, 10.0, 5.0, 5.0), 0.0, 0.6, 100, 100, table)
    a, b = plain.image(logits, deltas, proposals, (128, 128), (128, 128)), mapped.image(
        logits, deltas, proposals, (128, 128), (128, 128))
    used = table[a.pred_classes] >= 0
    assert len(a) == 100 and 0 < len(b) == int(used.sum()) < 100
    assert torch.equal(b.scores, a.scores[used]) and torch.equal(b.pred_classes, table[a.pred_classes[used]])


def test_tf_postprocess_head_with_coco90_trains_and_maps_classes_both_ways():
    from det_helpers import tiny_inputs
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    model = tiny_model("MODEL.ROI_HEADS.TF_POSTPROCESS", True, "MODEL.ROI_HEADS.TF_LABEL_MAP", "coco90",
                       "MODEL.ROI_HEADS.NUM_CLASSES", 90)
    heads = model.roi_heads
    gt = Instances((64, 64), gt_boxes=Boxes(torch.zeros(3, 4)), gt_classes=torch.tensor([0, 11, 79]))
    assert heads._predictor_targets([gt])[0].gt_classes.tolist() == [0, 12, 89]  # COCO ids 1, 13, 90
    with EventStorage(0):
        losses = model.train()(tiny_inputs(2, size=64, num_classes=80))
    assert abs(float(losses["loss_cls"]) - np.log(91)) < 1.0  # ~uniform over TF's 90 + background
    with torch.no_grad():
        out = model.eval()(tiny_inputs(1, size=64))[0]["instances"]
    assert 0 < len(out) <= 100 and int(out.pred_classes.max()) < 80


@pytest.mark.parametrize("opts, message", [
    (["MODEL.ROI_HEADS.TF_POSTPROCESS", True, "MODEL.ROI_HEADS.TF_LABEL_MAP", "coco80"],
     "unknown MODEL.ROI_HEADS.TF_LABEL_MAP 'coco80'; known: coco90"),
    (["MODEL.ROI_HEADS.TF_LABEL_MAP", "coco90", "MODEL.ROI_HEADS.NUM_CLASSES", 90],
     "needs MODEL.ROI_HEADS.TF_POSTPROCESS True"),
    (["MODEL.ROI_HEADS.TF_POSTPROCESS", True, "MODEL.ROI_HEADS.TF_LABEL_MAP", "coco90"],
     "needs MODEL.ROI_HEADS.NUM_CLASSES 90 .TF's box predictor., got 3"),
])
def test_tf_label_map_refusals_name_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(*opts)


# ---------------------------------------------------------------- the model's input and output


def test_tf_resize_preprocess_equals_tf_meta_architecture_preprocess(tf_models):
    """INPUT.TF_RESIZE: NASNetRCNN.preprocess_image = FasterRCNNMetaArch.preprocess with the sample
    config's fixed_shape_resizer (1200) and the NAS extractor: same tensor, no padding."""
    image = real_looking_image(h=375, w=500, seed=1)

    def build(tf):
        from google.protobuf import text_format
        from object_detection.builders import image_resizer_builder
        from object_detection.models import faster_rcnn_nas_feature_extractor as nas
        from object_detection.protos import image_resizer_pb2

        config = text_format.Parse("fixed_shape_resizer { height: 1200 width: 1200 }",
                                   image_resizer_pb2.ImageResizer())
        arch = tf_meta_arch(_image_resizer_fn=image_resizer_builder.build(config),
                            _feature_extractor=nas.FasterRCNNNASFeatureExtractor(False, 16))
        return arch.preprocess(tf.cast(tf.constant(image[None]), tf.float32))

    ref, true_shapes = run_tf(build)
    model = tiny_model("INPUT.TF_RESIZE", True, "INPUT.FIXED_SIZE", 1200)
    ours = model.preprocess_image([{"image": torch.from_numpy(image).permute(2, 0, 1)}])
    assert ours.image_sizes == [tuple(true_shapes[0][:2])] == [(1200, 1200)]
    assert np.abs(ours.tensor.permute(0, 2, 3, 1).numpy() - ref).max() < 1e-5


def test_tf_resize_detections_come_back_in_the_original_image_as_tf_normalised_boxes():
    """Boxes of the fixed-size input x original / FIXED_SIZE = TF's normalised boxes x the true size."""
    from det_helpers import tiny_inputs

    model = tiny_model("INPUT.TF_RESIZE", True, "INPUT.FIXED_SIZE", 64).eval()
    image = torch.from_numpy(real_looking_image(h=45, w=80, seed=2)).permute(2, 0, 1)
    with torch.no_grad():
        fixed = model.inference([{"image": image}], do_postprocess=False)[0]
        out = model([{"image": image}])[0]["instances"]
    assert out.image_size == (45, 80) and len(out) == len(fixed) > 0
    tf_way = fixed.pred_boxes.tensor * tf_ops.f32(1 / 64) * torch.tensor([80.0, 45.0, 80.0, 45.0])
    assert (out.pred_boxes.tensor - tf_way).abs().max() < 1e-4
    inputs = tiny_inputs(1, size=32)[0]
    resized = meta_arch._resized_targets(inputs, 64)["instances"]
    assert resized.image_size == (64, 64)
    assert torch.equal(resized.gt_boxes.tensor, inputs["instances"].gt_boxes.tensor * 2)


def test_tf_resize_refusals():
    from det_helpers import make_cfg

    from nasnet_det.engine import build_augmentations

    with pytest.raises(ValueError, match="INPUT.TF_RESIZE needs INPUT.FIXED_SIZE > 0 .* got 0"):
        tiny_model("INPUT.TF_RESIZE", True, "INPUT.FIXED_SIZE", 0)
    cfg = make_cfg(INSTANT, ["INPUT.TF_RESIZE", True, "INPUT.FIXED_SIZE", 64])
    assert build_augmentations(cfg, is_train=False) == []
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    with pytest.raises(ValueError, match="INPUT.TF_RESIZE needs MODEL.META_ARCHITECTURE NASNetRCNN"):
        build_augmentations(cfg, is_train=True)


def test_every_tf_option_together_trains_and_detects_in_original_pixels():
    """The 1200_tf config's options on a tiny network and a 96 px input: a training step, detections."""
    from det_helpers import make_cfg, tiny_inputs
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    tf_config = make_cfg("configs/COCO-Detection/faster_rcnn_nasnet_a_large_1200_tf.yaml")
    keys = ["MODEL.PROPOSAL_GENERATOR.NAME", "MODEL.RPN.HEAD_NAME", "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
            "MODEL.RPN.BOUNDARY_THRESH",
            "MODEL.ROI_HEADS.TF_POSTPROCESS", "MODEL.ROI_HEADS.TF_LABEL_MAP", "MODEL.ROI_HEADS.NUM_CLASSES",
            "INPUT.TF_RESIZE"]
    opts = [x for key in keys for x in (key, functools.reduce(lambda n, p: n[p], key.split("."), tf_config))]
    opts += ["INPUT.FIXED_SIZE", 96, "MODEL.ANCHOR_GENERATOR.SIZES", [[16, 32, 64]]]
    cfg = make_cfg(INSTANT, TINY + opts)
    model = build_model(cfg)
    with EventStorage(0):
        losses = model.train()(tiny_inputs(2, size=80, num_classes=80))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_rpn_cls"] > 0
    image = torch.from_numpy(real_looking_image(h=70, w=110, seed=3)).permute(2, 0, 1)
    with torch.no_grad():
        out = model.eval()([{"image": image}])[0]["instances"]
    boxes = out.pred_boxes.tensor
    assert 0 < len(out) <= 100 and out.image_size == (70, 110) and int(out.pred_classes.max()) < 80
    assert boxes.min() >= 0 and (boxes[:, 2] <= 110).all() and (boxes[:, 3] <= 70).all()
