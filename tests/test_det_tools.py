"""Tools: demo and side-by-side visualiser write non-blank images with boxes; detectron2 weight format."""

import json

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
