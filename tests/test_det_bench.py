"""tools/benchmark_detector.py: saved-tensor byte counting, linear ROI scaling, the projected table."""

import importlib.util
import json

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import ROOT  # noqa: E402

MOBILE_600 = str(ROOT / "configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_600.yaml")
SMALL = ["INPUT.FIXED_SIZE", "96", "MODEL.NASNET.N", "1", "MODEL.NASNET.F", "192"]


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "tools" / "benchmark_detector.py"
    spec = importlib.util.spec_from_file_location("benchmark_detector", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_saved_bytes_count_each_storage_once_and_no_parameters(bench):
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(8, 100, requires_grad=True)
    with bench.SavedBytes(lin) as sb:
        y = torch.relu(lin(x))        # saves x (the weight is a parameter: not counted), then y
        z = (y[:4] * y[:4]).sum()     # saves two views of y: its storage is already counted
    assert sb.bytes == 2 * 8 * 100 * 4
    assert z.grad_fn is not None
    with bench.SavedBytes(lin) as sb:
        for _ in range(3):            # three tensors that die in turn may reuse one address:
            torch.relu(x * 2.0)       # each was kept in training, so each counts
    assert sb.bytes >= 3 * 8 * 100 * 4


def test_synthetic_batch_is_coco_shaped(bench):
    batch = bench.synthetic_batch(6, 600, 80)
    for x in batch:
        boxes, cls = x["instances"].gt_boxes.tensor, x["instances"].gt_classes
        assert x["image"].shape == (3, 600, 600) and 1 <= len(boxes) <= 20
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 600
        assert cls.max() < 80
    sides = torch.cat([(x["instances"].gt_boxes.area()).sqrt() for x in batch])
    assert sides.min() < 30 and sides.max() > 150  # small and large objects


def test_roi_head_memory_is_linear_in_rois(bench):
    """The per-ROI bytes measured at 2-4 ROIs equal those at 4-8: scaling to 64 is exact."""
    batch = bench.synthetic_batch(1, 96, 80)
    model = bench.calibrated_model(MOBILE_600, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *SMALL], batch)
    a = bench.measure_cpu(model, batch, (2, 4))
    b = bench.measure_cpu(model, batch, (4, 8))
    assert a["roi_bytes"] > 1e5 and a["base_bytes"] > 1e6
    assert b["roi_bytes"] == pytest.approx(a["roi_bytes"], rel=0.02)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # FrozenBN as configured


def test_tool_prints_projection_and_ratio(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--configs", MOBILE_600, "--iters", "1", "--json", str(out), "--opts", *SMALL]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    names = ["faster_rcnn_nasnet_a_mobile_600", "faster_rcnn_nasnet_a_mobile_600+ckpt",
             "faster_rcnn_R_50_C4_minival8k@96"]
    assert [r["config"] for r in rows] == names
    plain, ck = rows[0], rows[1]
    assert ck["checkpointing"] and not plain["checkpointing"] and ck["train_ratio"] > 0
    # checkpointed: only the cells' inputs are saved, plus one cell recomputed during backward
    assert plain["cell_gib"] < ck["act_gib"] < plain["act_gib"]
    for r in rows:
        assert r["rois"] == 64 and r["imgs_per_gpu"] == 2
        assert r["gpu_gib"] == pytest.approx(2 * r["act_gib"] + r["state_gib"])
        assert r["train_s"] > 0 and r["infer_kind"] == "measured"
    assert "| faster_rcnn_nasnet_a_mobile_600 | 96 | 64 | 2 |" in text
    assert "| faster_rcnn_nasnet_a_mobile_600+ckpt | 96 | 64 | 2 |" in text
    assert "inference, NASNet-A mobile 600 / R50-C4 600:" not in text  # R50 ran at 96, not 600
    assert bench.main(["--configs", str(tmp_path / "none.yaml")]) == 2
