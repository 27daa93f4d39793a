"""``tools/convert_weights.py --source tf-od-api`` on TF-saved checkpoints of a tiny detector: every
tensor mapped (layouts, RPN logit difference and anchor order, label ids), refusals in one line with
nothing written, and ``train_net.py --eval-only`` on the converted weights."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from conftest import ROOT, load_tool  # noqa: E402
from det_helpers import make_cfg, tiny_shapes_val  # noqa: E402
from tf_oracle import tf_v1  # noqa: E402

CONFIG = "configs/COCO-Detection/faster_rcnn_nasnet_a_large_1200_tf.yaml"
TINY = ["MODEL.NASNET.N", 2, "MODEL.NASNET.F", 192, "MODEL.NASNET.STEM_MULTIPLIER", 0.5,
        "MODEL.DEVICE", "cpu", "INPUT.FIXED_SIZE", 128, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.TF_LABEL_MAP", ""]
"""The released model's TF-exact config, shrunk (N 2, F 192), for the 3 shapes classes."""
TF_CLASSES = 5
LABEL_IDS = [2, 3, 5]  # TF label-map id of each of the detector's 3 classes (ids 1 and 4 dropped)
OPTS = [str(o) for o in TINY]


def tf_layout_variables(rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """Random variables of the tiny detector under TF's names and in TF's layouts (HWIO convs, HWC1
    depthwise, [in, out] dense, 2 objectness logits and 4 codes per anchor, background class 0)."""
    from nasnet_det.tf_convert import anchor_order, detector_shapes, tf_od_names, tf_od_plan

    cfg = make_cfg(CONFIG, OPTS)
    shapes = detector_shapes(cfg)
    gen = cfg.MODEL.ANCHOR_GENERATOR
    names = tf_od_names(tf_od_plan(shapes, LABEL_IDS, anchor_order(gen.SIZES[0], gen.ASPECT_RATIOS[0])))
    anchors = shapes["proposal_generator.rpn_head.objectness_logits.bias"][0]
    width = shapes["roi_heads.box_predictor.cls_score.weight"][1]
    heads = {"FirstStageBoxPredictor/ClassPredictor/biases": (2 * anchors,),
             "FirstStageBoxPredictor/BoxEncodingPredictor/biases": (4 * anchors,),
             "SecondStageBoxPredictor/ClassPredictor/weights": (width, TF_CLASSES + 1),
             "SecondStageBoxPredictor/ClassPredictor/biases": (TF_CLASSES + 1,),
             "SecondStageBoxPredictor/BoxEncodingPredictor/weights": (width, 4 * TF_CLASSES),
             "SecondStageBoxPredictor/BoxEncodingPredictor/biases": (4 * TF_CLASSES,)}
    out = {}
    for key, name in names.items():
        s = tuple(shapes[key])
        if name in heads:
            shape = heads[name]
        elif name.startswith("FirstStageBoxPredictor/"):
            shape = (1, 1, s[1], (2 if "Class" in name else 4) * anchors)
        elif name.endswith("depthwise_weights"):
            shape = (s[2], s[3], s[0], 1)
        else:
            shape = (s[2], s[3], s[1], s[0]) if len(s) == 4 else s
        out[name] = tf_like_values(name, shape, rng)
    return out


def tf_like_values(name: str, shape: tuple, rng: np.random.RandomState) -> np.ndarray:
    """Values that keep a random 22-cell NASNet's activations finite: fan-in scaled kernels, BN
    variances >= 1, small predictors."""
    if name.endswith("moving_variance"):
        return rng.uniform(1.0, 2.0, shape).astype(np.float32)
    if name.endswith(("moving_mean", "beta", "biases")):
        return rng.normal(0, 0.1, shape).astype(np.float32)
    if name.endswith("gamma"):
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1])) if not name.endswith("depthwise_weights") else shape[0] * shape[1]
    return rng.normal(0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)


def save_tf_checkpoint(prefix, variables: dict[str, np.ndarray]) -> str:
    """Write ``variables`` as a TF V2 checkpoint with TF's own SaveV2 op; returns the prefix."""
    tf = tf_v1()
    graph = tf.Graph()
    with graph.as_default():
        names = sorted(variables)
        save = tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                                 tensors=[tf.constant(variables[n]) for n in names])
    with tf.Session(graph=graph) as sess:
        sess.run(save)
    return str(prefix)


@pytest.fixture(scope="module")
def tf_variables():
    return tf_layout_variables(np.random.RandomState(0))


def convert(tmp_path, prefix, *extra) -> tuple[int, object]:
    out = tmp_path / "converted.pth"
    argv = ["--source", "tf-od-api", "--input", str(prefix), "--output", str(out), "--config-file",
            str(ROOT / CONFIG), "--label-ids", ",".join(map(str, LABEL_IDS)), *OPTS, *extra]
    return load_tool("convert_weights").main(argv), out


def test_every_tensor_is_mapped_with_tf_layouts_anchor_order_and_label_ids(tmp_path, tf_variables):
    prefix = save_tf_checkpoint(tmp_path / "tf" / "model.ckpt", tf_variables)
    rc, out = convert(tmp_path, prefix)
    assert rc == 0
    state = torch.load(out, weights_only=False)["model"]
    from detectron2.modeling import build_model

    model = build_model(make_cfg(CONFIG, OPTS))
    assert sorted(state) == sorted(model.state_dict())  # none missing, none extra
    v = tf_variables
    conv = v["FirstStageFeatureExtractor/cell_0/1x1/weights"]                      # HWIO -> OIHW
    assert torch.equal(state["backbone.nasnet.cell_0.conv_1x1.conv.weight"],
                       torch.from_numpy(conv.transpose(3, 2, 0, 1)))
    dw = v["SecondStageFeatureExtractor/cell_5/comb_iter_0/left/separable_5x5_1/depthwise_weights"]
    key = "roi_heads.res5.nasnet.cell_5.comb_iter_0_left.separable_1.depthwise_conv2d.weight"
    assert torch.equal(state[key], torch.from_numpy(dw.transpose(2, 3, 0, 1)))      # HWC1 -> C1HW
    # Detectron2 anchor 0 is (size 64, h/w 0.5) = TF's (scale 0.25, w/h 2) = TF index 2 * 4 + 0.
    w = v["FirstStageBoxPredictor/ClassPredictor/weights"][0, 0]
    assert np.allclose(state["proposal_generator.rpn_head.objectness_logits.weight"][0, :, 0, 0],
                       w[:, 2 * 8 + 1] - w[:, 2 * 8])
    codes = v["FirstStageBoxPredictor/BoxEncodingPredictor/biases"][4 * 8: 4 * 8 + 4]  # ty tx th tw
    assert np.array_equal(state["proposal_generator.rpn_head.anchor_deltas.bias"][:4], codes[[1, 0, 3, 2]])
    cls = v["SecondStageBoxPredictor/ClassPredictor/biases"]                        # background first
    assert np.array_equal(state["roi_heads.box_predictor.cls_score.bias"], cls[[2, 3, 5, 0]])
    box = v["SecondStageBoxPredictor/BoxEncodingPredictor/weights"]                 # no background
    assert np.array_equal(state["roi_heads.box_predictor.bbox_pred.weight"][4:8], box[:, [9, 8, 11, 10]].T)


SECOND_BN = "SecondStageFeatureExtractor/cell_5/comb_iter_0/left/bn_sep_5x5_1/moving_mean"
MASK = "SecondStageBoxPredictor/MaskPredictor/weights"
CONV0 = "FirstStageFeatureExtractor/conv0/weights"
BAD = {  # kind -> (edit of the variables, what the error line says)
    "missing": (lambda v: v.pop(SECOND_BN), f"missing TF variables (1): {SECOND_BN}"),
    "extra": (lambda v: v.update({MASK: np.zeros((4, 4), np.float32)}),
              f"TF variables the detector has no place for (1): {MASK}"),
    "mis-shaped": (lambda v: v.update({CONV0: np.zeros((3, 3, 3, 8), np.float32)}),
                   f"mis-shaped TF variables (1): {CONV0} (3, 3, 3, 8) for backbone.nasnet.conv0.conv.weight "
                   "(16, 3, 3, 3)"),
}
HEAD = "error: TF faster_rcnn_nas checkpoint does not fit the detector: "


@pytest.mark.parametrize("kind", sorted(BAD))
def test_missing_extra_or_misshaped_variable_refused_in_one_line_nothing_written(kind, tmp_path,
                                                                                 tf_variables, capsys):
    variables = dict(tf_variables)
    edit, message = BAD[kind]
    edit(variables)
    prefix = save_tf_checkpoint(tmp_path / "tf" / "model.ckpt", variables)
    capsys.readouterr()
    rc, out = convert(tmp_path, prefix)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(HEAD) and message in err
    assert not out.exists() and not list(tmp_path.glob(".converted.pth.*"))


def test_config_that_does_not_compute_tf_refused(tmp_path, tf_variables, capsys):
    prefix = save_tf_checkpoint(tmp_path / "tf" / "model.ckpt", tf_variables)
    capsys.readouterr()
    rc, out = convert(tmp_path, prefix, "MODEL.NASNET.PAD_MODE", "timm",
                      "MODEL.RPN.HEAD_NAME", "StandardRPNHead")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not out.exists()
    assert "MODEL.NASNET.PAD_MODE 'timm' (TF's is 'tf')" in err and "TFRPNHead" in err
    rc, out = convert(tmp_path, prefix, "--label-ids", "2,3,9")
    err = capsys.readouterr().err
    assert rc == 2 and "label id 9 is beyond the checkpoint's 5 classes" in err and not out.exists()


@pytest.mark.slow
def test_converted_tf_checkpoint_evaluates_with_train_net_eval_only(tmp_path, tmp_path_factory, tf_variables):
    name = "tfod_shapes_val"
    tiny_shapes_val(tmp_path_factory, name)
    rc, out = convert(tmp_path, save_tf_checkpoint(tmp_path / "tf" / "model.ckpt", tf_variables))
    assert rc == 0
    argv = ["--config-file", str(ROOT / CONFIG), "--eval-only", *OPTS, "MODEL.WEIGHTS", str(out),
            "DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "eval"),
            "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_MAX_IMAGES", "0",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    assert load_tool("train_net").run(argv) == 0
    results = tmp_path / "eval" / "inference" / name / "coco_instances_results.json"
    detections = json.loads(results.read_text())
    assert detections and {d["category_id"] for d in detections} <= {1, 2, 3}


def test_help_lists_tf_od_api(capsys):
    with pytest.raises(SystemExit) as e:
        load_tool("convert_weights").main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "tf-od-api" in out.split("--source")[1] and "--label-ids" in out
