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
    assert bench.main(["--configs", MOBILE_600, "--iters", "1", "--infer-iters", "1", "--json", str(out),
                       "--opts", *SMALL]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    mobile = "faster_rcnn_nasnet_a_mobile_600"
    names = [mobile, mobile + "+ckpt", mobile + "+bf16", mobile + "+bf16+ckpt",
             "faster_rcnn_R_50_C4_minival8k@96"]
    assert [r["config"] for r in rows] == names
    plain, ck, bf16, bf16_ck = rows[:4]
    assert ck["checkpointing"] and bf16["amp"] and bf16_ck["checkpointing"] and bf16_ck["amp"]
    assert not plain["checkpointing"] and not plain["amp"]
    # checkpointed: only the cells' inputs are saved, plus one cell recomputed during backward
    assert plain["cell_gib"] < ck["act_gib"] < plain["act_gib"]
    assert bf16_ck["recompute_gib"] == pytest.approx(bf16["cell_gib"])  # its own precision's cell
    # bf16 autocast saves half-size activations (a few fp32 tensors remain: losses, RPN, box coder)
    assert 0.4 * plain["act_gib"] < bf16["act_gib"] < 0.75 * plain["act_gib"]
    assert bf16_ck["act_gib"] < bf16["act_gib"]
    for r in rows:
        assert r["rois"] == 64 and r["imgs_per_gpu"] == 2 and r["train_size"] == 96
        assert r["gpu_gib"] == pytest.approx(2 * r["act_gib"] + r["state_gib"])
        assert r["train_s"] > 0
    assert all(r["train_ratio"] == pytest.approx(r["train_s"] / plain["train_s"]) for r in rows[1:4])
    assert plain["infer_kind"] == rows[4]["infer_kind"] == "measured"
    assert plain["infer_s"] > 0 and plain["infer_plain_s"] > 0 and "infer_plain_s" not in rows[4]
    assert "| faster_rcnn_nasnet_a_mobile_600 | 96 | 64 | 2 |" in text
    assert "| faster_rcnn_nasnet_a_mobile_600+bf16+ckpt | 96 | 64 | 2 |" in text
    assert "inference, NASNet-A mobile 600 / R50-C4 600:" not in text  # R50 ran at 96, not 600
    assert "load average (1/5/15 min) at the start" in text
    assert bench.main(["--configs", str(tmp_path / "none.yaml")]) == 2


def test_steps_over_the_memory_limit_are_timed_at_the_ratio_size(bench):
    """A config whose plain row is over --max-train-gib times every row's step on one copy at --ratio-size."""
    batch = bench.synthetic_batch(1, 96, 80)
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *SMALL]
    model = bench.calibrated_model(MOBILE_600, opts, batch)
    args = bench.parse_args(["--max-train-gib", "1", "--ratio-size", "64"])
    timed = {}
    assert bench.timed_model(MOBILE_600, opts, model, batch, [{"act_gib": 2.0}], args, timed)
    small, small_batch, size = timed["m"]
    assert size == 64 and small is not model and small_batch[0]["image"].shape == (3, 64, 64)
    assert bench.timed_model(MOBILE_600, opts, model, batch, [{"act_gib": 0.5}], args, timed)
    assert timed["m"][0] is small  # decided once per config
    assert bench.timed_model(MOBILE_600, opts, model, batch, [{"act_gib": 0.5}], args, {}) is True
    none = {}
    args.ratio_size = 0
    assert not bench.timed_model(MOBILE_600, opts, model, batch, [{"act_gib": 2.0}], args, none)
