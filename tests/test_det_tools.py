"""Tools: demo and side-by-side visualiser write non-blank images with boxes; detectron2 weight format."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from conftest import ROOT, load_tool  # noqa: E402
from det_helpers import tiny_shapes_val  # noqa: E402


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    return tiny_shapes_val(tmp_path_factory, "tools_shapes_val")


def _changed_fraction(drawn, original):
    if drawn.shape != original.shape:
        original = cv2.resize(original, (drawn.shape[1], drawn.shape[0]))
    return float((np.abs(drawn.astype(int) - original.astype(int)).max(-1) > 40).mean())


def test_demo_draws_boxes_on_images_and_folder(tmp_path, tiny_val, capsys):
    demo = load_tool("demo")
    out = tmp_path / "out"
    # Random weights with threshold 0: the detector's raw (low-score) boxes are drawn.
    rc = demo.main(["--config-file", str(ROOT / "configs/quick_schedules/nasnet_a_mobile_shapes.yaml"),
                    "--input", str(tiny_val / "val"), "--output", str(out), "--confidence-threshold", "0.0",
                    "MODEL.NASNET.N", "1", "MODEL.NASNET.F", "192",
                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "DATASETS.TEST", "('tools_shapes_val',)"])
    assert rc == 0
    files = sorted(out.glob("*.jpg"))
    assert [f.stem for f in files] == ["000000", "000001", "000002"]
    for f in files:
        drawn = cv2.imread(str(f))
        assert drawn.std() > 10  # not blank
        assert _changed_fraction(drawn, cv2.imread(str(tiny_val / "val" / f.name))) > 0.01  # boxes drawn
    capsys.readouterr()
    assert demo.main(["--config-file", str(ROOT / "configs/quick_schedules/nasnet_a_mobile_shapes.yaml"),
                      "--input", str(tmp_path / "nope.jpg"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input not found") and err.count("\n") == 1


def test_demo_reads_trailing_overrides_after_inputs(tmp_path):
    demo = load_tool("demo")
    (tmp_path / "a.jpg").touch()
    base = ["--config-file", "c.yaml", "--output", "o", "--input", str(tmp_path / "a.jpg"), str(tmp_path)]
    pairs = ["MODEL.WEIGHTS", "w.pth", "DATASETS.TEST", "('x',)"]
    trailing, legacy = demo.parse_args([*base, *pairs]), demo.parse_args([*base, "--opts", *pairs])
    for a in (trailing, legacy):
        assert a.input == [str(tmp_path / "a.jpg"), str(tmp_path)]
        assert a.opts == pairs


def test_visualize_json_results_single_and_side_by_side(tmp_path, tiny_val):
    vis = load_tool("visualize_json_results")
    gt = json.loads((tiny_val / "annotations" / "instances_val.json").read_text())
    # "A": the ground truth as perfect detections; "B": every box shifted, lower scores.
    a = [dict(image_id=x["image_id"], category_id=x["category_id"], bbox=x["bbox"], score=0.9)
         for x in gt["annotations"]]
    b = [dict(d, bbox=[d["bbox"][0] + 5, d["bbox"][1] + 5, d["bbox"][2], d["bbox"][3]], score=0.6) for d in a]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert vis.main(["--dataset", "tools_shapes_val", "--input", str(tmp_path / "a.json"),
                     "--output", str(tmp_path / "one")]) == 0
    assert vis.main(["--dataset", "tools_shapes_val", "--input", str(tmp_path / "a.json"),
                     str(tmp_path / "b.json"), "--titles", "A", "B", "--output", str(tmp_path / "two")]) == 0
    one = cv2.imread(str(tmp_path / "one" / "000000.jpg"))
    two = cv2.imread(str(tmp_path / "two" / "000000.jpg"))
    assert one.std() > 10 and _changed_fraction(one, cv2.imread(str(tiny_val / "val" / "000000.jpg"))) > 0.01
    assert two.shape[1] == 2 * one.shape[1] + 4 and two.shape[0] == one.shape[0]
    left, right = two[:, : one.shape[1]], two[:, one.shape[1] + 4:]
    assert _changed_fraction(left, right) > 0.005  # the two panels show different boxes
    assert vis.main(["--dataset", "nope", "--input", str(tmp_path / "a.json"),
                     "--output", str(tmp_path)]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert vis.main(["--dataset", "tools_shapes_val", "--input", str(tmp_path / "bad.json"),
                     "--output", str(tmp_path)]) == 2


class _Meta(dict):
    get = dict.get  # what draw_instances reads of a detectron2 Metadata


def _predictions(size, boxes, classes, scores):
    from detectron2.structures import Boxes, Instances

    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.pred_classes = torch.tensor(classes)
    inst.scores = torch.tensor(scores)
    return inst


def _pixels_of(image_rgb, colour) -> int:
    return int((image_rgb == np.array(colour, np.uint8)).all(-1).sum())


def test_a_class_has_one_colour_in_every_image():
    from nasnet_det.visualize import class_colour, draw_instances

    meta = _Meta(thing_classes=["circle", "square", "triangle"])
    a = draw_instances(np.full((128, 128, 3), 90, np.uint8),
                       _predictions((128, 128), [[10, 10, 60, 50]], [1], [0.9]), meta)
    two = _predictions((100, 160), [[70, 40, 150, 95], [5, 5, 40, 30]], [1, 0], [0.8, 0.7])
    b = draw_instances(np.full((100, 160, 3), 160, np.uint8), two, meta)
    square, circle = class_colour(1), class_colour(0)
    assert len({class_colour(c) for c in range(8)}) == 8  # distinct classes, distinct colours
    assert _pixels_of(a, square) > 200 and _pixels_of(b, square) > 200  # box and label of class 1
    assert _pixels_of(a, circle) == 0 and _pixels_of(b, circle) > 200  # class 0 only where drawn


def test_small_images_are_upscaled_before_drawing():
    from nasnet_det.visualize import MIN_SIDE, draw_instances

    meta = _Meta(thing_classes=["circle"])
    small = _predictions((96, 128), [[10, 10, 50, 40]], [0], [0.9])
    assert draw_instances(np.zeros((96, 128, 3), np.uint8), small, meta).shape == (MIN_SIDE, 683, 3)
    large = _predictions((600, 800), [[10, 10, 50, 40]], [0], [0.9])
    big = draw_instances(np.zeros((600, 800, 3), np.uint8), large, meta)
    assert big.shape == (600, 800, 3)  # large enough already: drawn as it is


def test_labels_of_boxes_on_one_spot_do_not_overlap():
    from nasnet_det.visualize import place_labels

    boxes = np.array([[100, 100, 220, 200]] * 4 + [[0, 0, 30, 20]], np.float64)
    sizes = [(90, 22)] * 5
    rects = place_labels(boxes, sizes, 512, 512)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512 and (x1 - x0, y1 - y0) == sizes[i]
        for u0, v0, u1, v1 in rects[:i]:
            assert min(x1, u1) <= max(x0, u0) or min(y1, v1) <= max(y0, v0), (i, rects)


def test_visualize_json_results_ground_truth_panel(tmp_path, tiny_val):
    from nasnet_det.visualize import GAP, class_colour

    vis = load_tool("visualize_json_results")
    gt = json.loads((tiny_val / "annotations" / "instances_val.json").read_text())
    dets = [dict(image_id=x["image_id"], category_id=x["category_id"], bbox=x["bbox"], score=0.9)
            for x in gt["annotations"]]
    (tmp_path / "a.json").write_text(json.dumps(dets))
    base = ["--dataset", "tools_shapes_val", "--input", str(tmp_path / "a.json")]
    assert vis.main([*base, "--output", str(tmp_path / "one")]) == 0
    assert vis.main([*base, "--gt", "--output", str(tmp_path / "gt")]) == 0
    one = cv2.imread(str(tmp_path / "one" / "000000.jpg"))[:, :, ::-1]
    both = cv2.imread(str(tmp_path / "gt" / "000000.jpg"))[:, :, ::-1]
    assert one.shape[1] == 512  # the 128 px image drawn at 4x
    assert both.shape[1] == 2 * one.shape[1] + GAP and both.shape[0] == one.shape[0]
    right = both[:, one.shape[1] + GAP:]
    classes = {x["category_id"] - 1 for x in gt["annotations"] if x["image_id"] == gt["images"][0]["id"]}
    near = [(np.abs(right.astype(int) - class_colour(c)).max(-1) <= 12).sum() for c in classes]  # JPEG
    assert classes and min(near) > 200, near  # every ground-truth class of the image in its colour
    # train_net's drawing after evaluation: the same panel with TEST.VIS_GT
    from det_helpers import make_cfg

    from nasnet_det.engine import eval_output_dir, visualize_after_eval

    cfg = make_cfg("configs/quick_schedules/nasnet_a_mobile_shapes.yaml", [
        "DATASETS.TEST", ("tools_shapes_val",), "OUTPUT_DIR", str(tmp_path / "run"),
        "TEST.VIS_MAX_IMAGES", 1])
    assert cfg.TEST.VIS_GT  # on for the main job
    results = Path(eval_output_dir(cfg, "tools_shapes_val")) / "coco_instances_results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(dets))
    written = visualize_after_eval(cfg)
    assert len(written) == 1 and cv2.imread(str(written[0])).shape == both.shape


def test_convert_weights_detectron2_format_loads_with_stock_checkpointer(tmp_path):
    """--format detectron2 output fills the detector through detectron2's own DetectionCheckpointer."""
    from det_helpers import make_cfg
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import nasnet_core as nc

    cfg = make_cfg("configs/Base-NASNet-C4.yaml", ["MODEL.DEVICE", "cpu", "MODEL.NASNET.NORM", "BN"])
    src = nc.create_model("nasnet_a_mobile", aux_head=False)
    for p in src.parameters():
        p.data.normal_()
    nc.save_checkpoint(tmp_path / "in.pth", src.state_dict(), "nasnet_a_mobile")
    conv = load_tool("convert_weights")
    out = tmp_path / "d2.pth"
    args = ["--source", "nasnet_core", "--arch", "nasnet_a_mobile", "--input", str(tmp_path / "in.pth"),
            "--output", str(out), "--format", "detectron2"]
    assert conv.main(args) == 0
    assert conv.main(args) == 2  # never overwritten without --force
    saved = torch.load(out, weights_only=True)
    assert saved["__author__"] == "nasnet_core" and saved["matching_heuristics"] is True
    sd = src.state_dict()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(out))  # detectron2's own checkpointer, suffix matching
    for prefix in ("backbone.nasnet.", "roi_heads.res5.nasnet."):
        for name, tensor in model.get_submodule(prefix[:-1]).state_dict().items():
            assert torch.equal(tensor, sd[name]), prefix + name
