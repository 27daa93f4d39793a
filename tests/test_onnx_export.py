"""ONNX export of the classifiers: onnxruntime logits equal PyTorch's (dynamic batch, both exporters)."""

import subprocess
import sys

import pytest
import torch

import nasnet_core as nc
from nasnet_core.interop.export import check_onnx, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def realistic_model(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` in eval mode with BN statistics measured on random images, random BN affine
    parameters, and the classifier scaled so the logits are O(1-10)."""
    torch.manual_seed(seed)
    model = nc.create_model(name, aux_head=False)
    size = model.image_size
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: the statistics of the calibration batch
        bn.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
        model.last_linear.weight.mul_(4.0 / logits.std())
        model.last_linear.bias.normal_(0.0, 1.0)
    return model


def _parity(name: str, exporter: str, tmp_path) -> None:
    model = realistic_model(name)
    size = model.image_size
    example = torch.randn(1, 3, size, size)
    path = export_onnx(model, str(tmp_path / f"{name}.onnx"), example, exporter=exporter)
    torch.manual_seed(1)
    inputs = [torch.randn(1, 3, size, size), torch.randn(3, 3, size, size)]
    res = check_onnx(path, model, inputs)
    assert res.batch_sizes == (1, 3)
    assert 1.0 < res.max_abs_ref < 100.0, res  # logits O(1-10), so 1e-4 is a real bound
    assert res.max_abs_diff <= 1e-4, res


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_mobile_onnx_logits_equal_pytorch(exporter, tmp_path):
    _parity("nasnet_a_mobile", exporter, tmp_path)


@pytest.mark.slow
def test_large_onnx_logits_equal_pytorch_torchscript_exporter(tmp_path):
    _parity("nasnet_a_large", "torchscript", tmp_path)


def test_same_padding_is_static_in_the_traced_graph(tmp_path):
    """Odd and even inputs: each export records its own asymmetric pads and matches PyTorch."""
    model = nc.create_model("nasnet_a_mobile", N=1, num_conv_filters=8, aux_head=False).eval()
    for size in (64, 65):
        x = torch.randn(2, 3, size, size)
        path = export_onnx(model, str(tmp_path / f"m{size}.onnx"), x)
        assert check_onnx(path, model, [x]).max_abs_diff <= 1e-4


def test_export_refuses_to_overwrite_and_bad_options(tmp_path):
    model = nc.create_model("nasnet_a_mobile", N=1, num_conv_filters=8, aux_head=False).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep")
    with pytest.raises(ValueError, match="exists"):
        export_onnx(model, str(path), x)
    assert path.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="unknown exporter 'tf'; known: torchscript, dynamo"):
        export_onnx(model, str(tmp_path / "n.onnx"), x, exporter="tf")
    with pytest.raises(ValueError, match="opset 13 is below"):
        export_onnx(model, str(tmp_path / "n.onnx"), x, opset=13)


def test_export_tool_checks_and_exits_2_on_bad_input(tmp_path):
    out = tmp_path / "cifar.onnx"
    cmd = [sys.executable, "tools/export_onnx.py", "--model", "nasnet_a_cifar", "--opts", "N", "1", "F", "96",
           "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.exists() and "onnxruntime check: batch 1, 2" in res.stdout
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().startswith("error:") and "exists" in again.stderr
    bad = subprocess.run([sys.executable, "tools/export_onnx.py", "--model", "nope", "--output",
                          str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and "known models" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_detector_onnx_detections_equal_pytorch(tmp_path):
    """Mobile 600 C4 detector, random weights with random BN statistics, score threshold 0:
    onnxruntime's detections equal PyTorch's (the tool checks and prints them)."""
    pytest.importorskip("detectron2")
    from detectron2.modeling import build_model

    from nasnet_det.engine import setup_cfg_plain
    config = "configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_600.yaml"
    opts = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    torch.manual_seed(0)
    model = build_model(setup_cfg_plain(config, opts))
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if getattr(m, "running_var", None) is not None:  # BN and frozen BN
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    import cv2
    image = torch.randint(0, 256, (600, 600, 3), generator=g).to(torch.uint8).numpy()
    cv2.imwrite(str(tmp_path / "img.png"), image)
    # Random weights saturate the softmax (every score 1.0: ties, whose order no runtime fixes);
    # scale the class logits to std 2 on this image so the scores are distinct.
    model.eval()
    cls, seen = model.roi_heads.box_predictor.cls_score, []
    hook = cls.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model([{"image": torch.from_numpy(image.transpose(2, 0, 1).copy()).float()}])
        hook.remove()
        scale = 2.0 / float(seen[0].std())
        cls.weight.mul_(scale)
        cls.bias.mul_(scale)
    weights = tmp_path / "det.pth"
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "det.onnx"
    cmd = [sys.executable, "tools/export_onnx.py", "--config-file", config, "--output", str(out),
           "--image", str(tmp_path / "img.png"), "--opts", *opts, "MODEL.WEIGHTS", str(weights)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "input (3, 600, 600)" in res.stdout, res.stdout  # the config's fixed 600 x 600 input
    line = next(x for x in res.stdout.splitlines() if x.startswith("onnxruntime check:"))
    print(line)
    count = int(line.split(": ")[1].split()[0])
    box_diff = float(line.split("max box diff ")[1].split()[0])
    assert count >= 20, line  # detections forced by the low score threshold
    assert box_diff <= 1e-2, line
