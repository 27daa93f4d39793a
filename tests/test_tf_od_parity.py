"""The TF OD API's ``faster_rcnn_nas`` against nasnet_det on TF's own weights.

TF's graph is built as ``smoke/smoke.py`` (the vendored archive) builds it, the way the OD API's
model builder does: the sample config's ``faster_rcnn`` block with a narrow NASNet-A (16 filters,
stem multiplier 1; 18 cells, since the extractor cuts after Cell_11 and restarts at cell 12), crop
17 -> 9 kept, a fixed 128 x 128 input, TF's 90 COCO label-map classes. Its random weights get
non-trivial BN statistics (each BN's input statistics on the test images, perturbed, so that
activations stay O(1) through 22 cells) and box predictors scaled up so that objectness, proposals
and detections are varied. The checkpoint TF saves is converted by ``tools/convert_weights.py
--source tf-od-api``, loaded into the detector the TF-exact config builds, and each stage is compared
on two images.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from conftest import ROOT, load_tool  # noqa: E402
from det_helpers import make_cfg  # noqa: E402
from tf_oracle import tf_v1  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = 128
TF_CLASSES = 90
MAX_PROPOSALS = 32
LABEL_IDS = list(range(1, TF_CLASSES + 1))
CONFIG = "configs/COCO-Detection/faster_rcnn_nasnet_a_large_1200_tf.yaml"
TINY = ["MODEL.NASNET.F", 384, "MODEL.NASNET.STEM_MULTIPLIER", 1.0, "MODEL.DEVICE", "cpu",
        "INPUT.FIXED_SIZE", SIZE, "MODEL.RPN.POST_NMS_TOPK_TEST", MAX_PROPOSALS]
"""The released model's config, TF-exact, at the test graph's NASNet width, input size and proposals."""
PREDICTION_KEYS = ("rpn_features_to_crop", "rpn_box_encodings", "rpn_objectness_predictions_with_background",
                   "proposal_boxes", "num_proposals", "box_classifier_features",
                   "refined_box_encodings", "class_predictions_with_background")


def detector_cfg():
    """The TF-exact detector config at the test's size (the tool converts for this one too)."""
    return make_cfg(CONFIG, TINY)


def sample_images() -> list[np.ndarray]:
    """Two different RGB images (shapes on textured backgrounds), float32 0..255: one at the input
    size, one of another size and aspect (resized by TF's fixed_shape_resizer / ours)."""
    import cv2

    from nasnet_det.shapes import render_image

    other = cv2.resize(render_image(11)[0], (150, 104), interpolation=cv2.INTER_LINEAR)
    return [render_image(3)[0].astype(np.float32), other.astype(np.float32)]


# ---------------------------------------------------------------- TF's side


def build_tf_graph(tf):
    """TF's faster_rcnn_nas as the OD API's model builder makes it (smoke.py), inference mode."""
    import smoke

    cfg = smoke.load_faster_rcnn_config(smoke.CONFIG)
    cfg.num_classes = TF_CLASSES
    cfg.image_resizer.fixed_shape_resizer.height = cfg.image_resizer.fixed_shape_resizer.width = SIZE
    cfg.first_stage_max_proposals = MAX_PROPOSALS
    original = smoke.reduce_nasnet_large()
    try:
        graph = tf.Graph()
        with graph.as_default():
            tf.set_random_seed(0)
            model = smoke.build_faster_rcnn_nas(cfg, is_training=False)
            image = tf.placeholder(tf.float32, [1, None, None, 3], name="image")
            preprocessed, true_shapes = model.preprocess(image)
            predictions = model.predict(preprocessed, true_shapes)
            detections = model.postprocess(predictions, true_shapes)
            fetch = {**{k: predictions[k] for k in PREDICTION_KEYS},
                     **{k: detections[k] for k in ("detection_boxes", "detection_scores",
                                                   "detection_classes", "num_detections")}}
            variables = {v.op.name: v for v in tf.global_variables()}
            init, saver = tf.global_variables_initializer(), tf.train.Saver()
    finally:
        smoke.nasnet.large_imagenet_config = original
    return graph, image, fetch, variables, init, saver


def randomize(sess, variables: dict, rng: np.random.RandomState) -> None:
    """Random BN affines; box predictors scaled so that their outputs spread (std ~1-2)."""
    values = {}
    for name, v in variables.items():
        shape = v.shape.as_list()
        if name.endswith("/gamma"):
            values[v] = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("/beta"):
            values[v] = rng.normal(0.0, 0.2, shape)
        elif "BoxPredictor/" in name and name.endswith("/biases"):
            values[v] = rng.normal(0.0, 0.5, shape)
        elif "BoxPredictor/" in name:
            scale = {"FirstStageBoxPredictor/Class": 30, "FirstStageBoxPredictor/BoxE": 10,
                     "SecondStageBoxPredictor/Class": 4, "SecondStageBoxPredictor/BoxE": 5}
            values[v] = sess.run(v) * next(s for k, s in scale.items() if name.startswith(k))
    assign(sess, values)


def assign(sess, values: dict) -> None:
    """Set many variables at once (through their initializers: one run, no new ops)."""
    sess.run([v.initializer for v in values],
             feed_dict={v.initializer.inputs[1]: np.asarray(a, np.float32) for v, a in values.items()})


# ---------------------------------------------------------------- our side


def build_detector(cfg, state=None):
    """The detector ``cfg`` describes, in eval mode, with ``state`` loaded when given."""
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def calibrated_bn_stats(model, images, rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """Run the detector with every BN's statistics set, just before it runs, to its input's (then
    perturbed: mean +- 0.2 std, variance x 0.7..1.3); returns the state-dict values set."""
    modules = {m: name for name, m in model.named_modules() if hasattr(m, "running_var")}

    def hook(module, args):
        x = args[0].detach().double()
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        n = mean.numel()
        module.running_mean.copy_(mean + 0.2 * var.sqrt() * torch.from_numpy(rng.normal(0, 1, n)))
        module.running_var.copy_(var * torch.from_numpy(rng.uniform(0.7, 1.3, n)) + 1e-4)

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model.inference([{"image": torch.from_numpy(img).permute(2, 0, 1)} for img in images],
                            do_postprocess=False)
    finally:
        for h in handles:
            h.remove()
    return {f"{modules[m]}.{s}": getattr(m, s).numpy().copy() for m in modules
            for s in ("running_mean", "running_var")}


def run_ours(model, image: np.ndarray, tf_proposals: np.ndarray) -> dict:
    """Every compared stage of our detector on one image; the box-classifier features are those
    of TF's proposals (``tf_proposals``: absolute (y1, x1, y2, x2))."""
    from detectron2.structures import Boxes

    inputs = [{"image": torch.from_numpy(image).permute(2, 0, 1)}]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        f = [features[k] for k in model.proposal_generator.in_features]
        logits, deltas = model.proposal_generator.rpn_head(f)
        proposals, _ = model.proposal_generator(images, features)
        heads = model.roi_heads
        boxes = Boxes(torch.from_numpy(tf_proposals[:, [1, 0, 3, 2]]))
        box_features = heads.box_features([features[k] for k in heads.in_features], [boxes],
                                          tuple(images.tensor.shape[-2:]))
        class_logits, box_deltas = heads.box_predictor(box_features.mean(dim=[2, 3]))
        detections = model.inference(inputs)[0]["instances"]
    a, (h, w) = logits[0].shape[1], logits[0].shape[-2:]
    return dict(features=features[heads.in_features[0]][0].permute(1, 2, 0).numpy(),
                objectness=logits[0][0].permute(1, 2, 0).reshape(-1, a).numpy(),
                deltas=deltas[0][0].view(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, a, 4).numpy(),
                proposals=proposals[0].proposal_boxes.tensor.numpy(),
                box_features=box_features.permute(0, 2, 3, 1).numpy(), class_logits=class_logits.numpy(),
                box_deltas=box_deltas.numpy(), boxes=detections.pred_boxes.tensor.numpy(),
                scores=detections.scores.numpy(), classes=detections.pred_classes.numpy())


# ---------------------------------------------------------------- the oracle, once per module


@pytest.fixture(scope="module")
def parity(tf_models, tmp_path_factory):
    """TF's outputs and ours on the two images, from one TF-saved checkpoint converted by the tool."""
    from nasnet_core.interop.tf_checkpoint import read_tf_checkpoint
    from nasnet_det.tf_convert import anchor_order, convert_tf_od_checkpoint, tf_od_names, tf_od_plan

    tf = tf_v1()
    tmp = tmp_path_factory.mktemp("tf_od")
    images, rng, cfg = sample_images(), np.random.RandomState(0), detector_cfg()
    graph, image, fetch, variables, init, saver = build_tf_graph(tf)
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        randomize(sess, variables, rng)
        saver.save(sess, str(tmp / "random" / "model.ckpt"))
        random_state = convert_tf_od_checkpoint(read_tf_checkpoint(tmp / "random" / "model.ckpt"), cfg)
        stats = calibrated_bn_stats(build_detector(cfg, random_state), images, rng)
        gen = cfg.MODEL.ANCHOR_GENERATOR
        names = tf_od_names(tf_od_plan({k: v.shape for k, v in random_state.items()}, LABEL_IDS,
                                       anchor_order(gen.SIZES[0], gen.ASPECT_RATIOS[0])))
        tf_name = {"running_mean": "moving_mean", "running_var": "moving_variance"}
        assign(sess, {variables[names[k].rsplit("/", 1)[0] + "/" + tf_name[k.rsplit(".", 1)[1]]]: v
                      for k, v in stats.items()})
        saver.save(sess, str(tmp / "tf" / "model.ckpt"))
        ref = [sess.run(fetch, feed_dict={image: img[None]}) for img in images]
    out = tmp / "converted.pth"
    argv = ["--source", "tf-od-api", "--input", str(tmp / "tf" / "model.ckpt"), "--output", str(out),
            "--config-file", str(ROOT / CONFIG), *[str(o) for o in TINY]]
    rc = load_tool("convert_weights").main(argv)
    assert rc == 0
    from nasnet_det import NASNetCheckpointer

    model = build_detector(cfg)
    NASNetCheckpointer(model).load(str(out))
    ours = [run_ours(model, img, r["proposal_boxes"][0][: int(r["num_proposals"][0])])
            for img, r in zip(images, ref)]
    return dict(ref=ref, ours=ours, order=anchor_order(gen.SIZES[0], gen.ASPECT_RATIOS[0]))


MEASURED: dict[str, float] = {}
"""Stage -> largest difference seen (over both images), printed by the tests (pytest -s)."""


def max_diff(a, b, stage: str) -> float:
    """max |a - b|, remembered as ``stage``'s (the larger over the images)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    d = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) if a.size else 0.0
    MEASURED[stage] = max(MEASURED.get(stage, 0.0), d)
    return d


SCALE: dict[str, float] = {}
"""Stage -> largest |TF value| seen (what the tolerances are relative to)."""


def close(a, b, stage: str, rel: float = 1e-4) -> bool:
    """``a`` equals ``b`` within ``rel`` of b's largest magnitude (at least ``rel`` absolute)."""
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    SCALE[stage] = max(SCALE.get(stage, 0.0), scale)
    return max_diff(a, b, stage) < rel * scale


def test_rpn_feature_map_equals_tf(parity):
    for ref, ours in zip(parity["ref"], parity["ours"]):
        tf_map = ref["rpn_features_to_crop"][0][0] if isinstance(ref["rpn_features_to_crop"], list) \
            else ref["rpn_features_to_crop"][0]
        assert 0.05 < np.abs(tf_map).std() < 20  # calibrated: O(1) activations through 14 cells
        assert close(ours["features"], tf_map, "rpn feature map")
    k = "rpn feature map"
    print(f"max |ours - TF|: {k} {MEASURED[k]:.3g} (|TF| <= {SCALE[k]:.3g})")


def test_rpn_objectness_and_box_encodings_equal_tf_at_every_anchor(parity):
    order = parity["order"]
    for ref, ours in zip(parity["ref"], parity["ours"]):
        a = len(order)
        tf_logits = ref["rpn_objectness_predictions_with_background"][0]
        tf_objectness = (tf_logits[:, 1] - tf_logits[:, 0]).reshape(-1, a)[:, order]
        assert tf_objectness.std() > 1.0  # varied objectness
        assert close(ours["objectness"], tf_objectness, "rpn objectness logit")
        tf_codes = ref["rpn_box_encodings"][0].reshape(-1, a, 4)[:, order][:, :, [1, 0, 3, 2]]
        assert close(ours["deltas"], tf_codes, "rpn box encodings")
    print(f"max |ours - TF|: rpn objectness logit {MEASURED['rpn objectness logit']:.3g} "
          f"(|TF| <= {SCALE['rpn objectness logit']:.3g}), "
          f"rpn box encodings {MEASURED['rpn box encodings']:.3g} ({tf_codes.size // 4} anchors per image)")


def test_proposals_equal_tf(parity):
    counts = []
    for ref, ours in zip(parity["ref"], parity["ours"]):
        n = int(ref["num_proposals"][0])
        counts.append(n)
        tf_boxes = ref["proposal_boxes"][0][:n][:, [1, 0, 3, 2]]  # (y1, x1, y2, x2) -> xyxy
        assert ours["proposals"].shape == tf_boxes.shape
        assert max_diff(ours["proposals"], tf_boxes, "proposals (px)") < 0.01
    first = {tuple(np.round(r["proposal_boxes"][0][0], 1)) for r in parity["ref"]}
    assert min(counts) >= 10 and len(first) == 2  # many proposals, and other ones on the other image
    print(f"proposals compared per image: {counts}; max |ours - TF| {MEASURED['proposals (px)']:.3g} px")


def test_box_classifier_features_of_the_same_proposals_equal_tf(parity):
    for ref, ours in zip(parity["ref"], parity["ours"]):
        n = len(ours["box_features"])
        tf_features = ref["box_classifier_features"][:n]
        assert 0.05 < tf_features.std() < 20
        assert close(ours["box_features"], tf_features, "box classifier features")
        # The box predictor on them: TF's 91 logits (background first) and 90 x (ty, tx, th, tw).
        tf_logits = ref["class_predictions_with_background"][:n]
        tf_logits = np.concatenate([tf_logits[:, 1:], tf_logits[:, :1]], 1)  # background last
        assert close(ours["class_logits"], tf_logits, "class logits")
        tf_codes = ref["refined_box_encodings"][:n][:, :, [1, 0, 3, 2]].reshape(n, -1)
        assert close(ours["box_deltas"], tf_codes, "refined box encodings")
    stages = ("box classifier features", "class logits", "refined box encodings")
    print("max |ours - TF|: " + ", ".join(f"{k} {MEASURED[k]:.3g} (|TF| <= {SCALE[k]:.3g})" for k in stages))


def test_final_detections_equal_tf(parity):
    from nasnet_det.tf_postprocess import COCO_CATEGORY_IDS

    compared = []
    for image, ref, ours in zip(sample_images(), parity["ref"], parity["ours"]):
        n = int(ref["num_detections"][0])
        label_ids = ref["detection_classes"][0][:n].astype(int) + 1
        coco = np.isin(label_ids, COCO_CATEGORY_IDS)  # ids COCO does not use: dropped after the top 100
        h, w = image.shape[:2]
        tf_boxes = ref["detection_boxes"][0][:n][coco][:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
        assert len(ours["scores"]) == int(coco.sum())
        assert max_diff(ours["scores"], ref["detection_scores"][0][:n][coco], "detection scores") < 1e-4
        assert max_diff(ours["boxes"], tf_boxes, "detection boxes (px)") < 0.01
        assert np.array_equal(np.asarray(COCO_CATEGORY_IDS)[ours["classes"]], label_ids[coco])
        compared.append(len(ours["scores"]))
        assert len(set(label_ids[coco])) >= 5 and np.ptp(ours["scores"]) > 0.05  # varied, not degenerate
    print(f"detections compared per image: {compared}; max |ours - TF|: scores "
          f"{MEASURED['detection scores']:.3g}, boxes {MEASURED['detection boxes (px)']:.3g} px")
