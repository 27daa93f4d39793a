import subprocess
import sys

import pytest
import torch
from conftest import ROOT, randomize_bn

import nasnet_core as nc

timm = pytest.importorskip("timm", reason="timm (the [dev] extra) is needed for parity tests")
pretrainedmodels = pytest.importorskip("pretrainedmodels", reason="pretrainedmodels ([dev]) is needed")


@pytest.fixture(scope="module")
def timm_large():
    torch.manual_seed(0)
    m = timm.create_model("nasnetalarge", pretrained=False)
    randomize_bn(m)
    return m.eval()


@pytest.fixture(scope="module")
def cadene_mobile():
    torch.manual_seed(0)
    m = pretrainedmodels.nasnetamobile(num_classes=1000, pretrained=None)
    randomize_bn(m)
    return m.eval()


def _max_diff(a, b, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def test_logits_equal_timm_nasnetalarge(timm_large):
    sd = nc.convert_state_dict(timm_large.state_dict(), "timm", "nasnet_a_large")
    ours = nc.create_model("nasnet_a_large", aux_head=False, pad_mode="timm")
    ours.load_state_dict(sd)
    assert _max_diff(ours.eval(), timm_large, 331) <= 1e-4
    # TF semantics differ from timm only by its padding-counting avg pools: a visible gap.
    tf = nc.create_model("nasnet_a_large", aux_head=False)
    tf.load_state_dict(sd)
    assert _max_diff(tf.eval(), timm_large, 331) > 1e-4


def test_logits_equal_cadene_nasnetamobile(cadene_mobile):
    sd = nc.convert_state_dict(cadene_mobile.state_dict(), "cadene", "nasnet_a_mobile")
    assert "cell_4.conv_1x1.conv.weight" in sd  # Cadene's cell_6 -> TF numbering
    ours = nc.create_model("nasnet_a_mobile", aux_head=False)
    ours.load_state_dict(sd)
    assert _max_diff(ours.eval(), cadene_mobile, 224) <= 1e-4


def test_mismatched_checkpoint_lists_the_keys(cadene_mobile, timm_large):
    with pytest.raises(nc.CheckpointMismatch) as e:
        nc.convert_state_dict(cadene_mobile.state_dict(), "cadene", "nasnet_a_large")
    msg = str(e.value)
    assert "checkpoint does not fit nasnet_a_large" in msg
    assert "model keys missing from the checkpoint (" in msg and "cell_10." in msg
    assert "cell_0.comb_iter_0_right.bn_sep_2.weight: checkpoint (44,) vs model (168,)" in msg
    assert "background" not in msg
    sd = dict(timm_large.state_dict())
    sd["cell_99.extra.weight"] = torch.zeros(1)
    del sd["cell_3.conv_1x1.conv.weight"]
    with pytest.raises(nc.CheckpointMismatch) as e:
        nc.convert_state_dict(sd, "timm", "nasnet_a_large")
    assert "unmatched checkpoint keys (1): cell_99.extra.weight;" in str(e.value)
    assert "missing from the checkpoint (1): cell_3.conv_1x1.conv.weight" in str(e.value)
    assert "\n" not in str(e.value)  # one line: the tools print it as their one error line


def test_background_class_is_reported_and_droppable(cadene_mobile):
    sd = dict(cadene_mobile.state_dict())
    sd["last_linear.weight"] = torch.cat([torch.zeros(1, 1056), sd["last_linear.weight"]])
    sd["last_linear.bias"] = torch.cat([torch.zeros(1), sd["last_linear.bias"]])
    with pytest.raises(nc.CheckpointMismatch, match="drop_background=True"):
        nc.convert_state_dict(sd, "cadene", "nasnet_a_mobile")
    out = nc.convert_state_dict(sd, "cadene", "nasnet_a_mobile", drop_background=True)
    assert torch.equal(out["last_linear.weight"], cadene_mobile.state_dict()["last_linear.weight"])


def test_convert_tool_round_trip(tmp_path, cadene_mobile):
    src = tmp_path / "nasnetamobile.pth"
    torch.save(cadene_mobile.state_dict(), src)
    out = tmp_path / "ours.pth"
    cmd = [sys.executable, str(ROOT / "tools/convert_weights.py"), "--source", "cadene", "--arch",
           "nasnet_a_mobile", "--input", str(src), "--output", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model = nc.create_model("nasnet_a_mobile")  # with aux head: allowed to be absent
    meta = nc.load_checkpoint(model, out)
    assert meta["arch"] == "nasnet_a_mobile" and meta["source"] == "cadene"
    assert _max_diff(model.eval(), cadene_mobile, 224) <= 1e-4
    # existing output is never overwritten without --force
    before = out.read_bytes()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "exists" in r.stderr and out.read_bytes() == before
    # wrong architecture: one clear error, exit 2, nothing written
    bad = tmp_path / "bad.pth"
    r = subprocess.run(cmd[:-5] + ["nasnet_a_large", "--input", str(src), "--output", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "does not fit nasnet_a_large" in r.stderr and not bad.exists()


def test_safetensors_input(tmp_path, cadene_mobile):
    from safetensors.torch import save_file
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in cadene_mobile.state_dict().items()}, str(path))
    sd = nc.read_state_dict(path)
    assert len(nc.convert_state_dict(sd, "cadene", "nasnet_a_mobile")) == len(sd)


def test_load_checkpoint_rejects_wrong_architecture(tmp_path):
    path = nc.save_checkpoint(tmp_path / "c.pth", nc.create_model("nasnet_a_cifar", N=1, F=96).state_dict(),
                              "nasnet_a_cifar")
    with pytest.raises(nc.CheckpointMismatch, match="does not fit model nasnet_a_cifar"):
        nc.load_checkpoint(nc.create_model("nasnet_a_cifar", N=2, F=96), path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        nc.read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        nc.read_state_dict(tmp_path / "none.pth")


def test_analyze_tool_prints_every_model():
    r = subprocess.run([sys.executable, str(ROOT / "tools/analyze_model.py"), "nasnet_a_mobile"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "5,289,978" in r.stdout and "563.64 M" in r.stdout


def test_benchmark_tool_prints_ratios():
    r = subprocess.run([sys.executable, str(ROOT / "tools/benchmark_models.py"), "--models", "mobile",
                        "--threads", "1", "--batch-sizes", "1", "--iters", "1", "--warmup", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "CPU nasnet_a_mobile@224 bs1 1 thread(s); peer = cadene nasnetamobile" in r.stdout
    rows = {line.strip().split("  ")[0]: line for line in r.stdout.splitlines() if line.startswith("  ours")
            or line.startswith("  peer")}
    expected = ["peer eager", "ours eager", "ours fused+cl", "ours optimised"]
    try:
        import onnxruntime  # noqa: F401
        expected.append("ours ORT")
    except ImportError:
        pass
    assert list(rows) == expected, r.stdout
    assert "ratio 1.00" in rows["peer eager"] and all(" ms  ratio " in v for v in rows.values())


def test_load_checkpoint_skips_an_aux_head_the_model_lacks(tmp_path):
    """A converted TF-slim checkpoint keeps its aux head; a model built without one loads the rest."""
    full = nc.create_model("nasnet_a_cifar", N=1, F=96)
    path = nc.save_checkpoint(tmp_path / "c.pth", full.state_dict(), "nasnet_a_cifar")
    bare = nc.create_model("nasnet_a_cifar", N=1, F=96, aux_head=False)
    nc.load_checkpoint(bare, path)
    assert torch.equal(bare.last_linear.weight, full.last_linear.weight)
    sd = dict(full.state_dict())
    sd["aux_head.fc.weight"] = torch.zeros(3, 3)  # still checked where the model has the head
    path = nc.save_checkpoint(tmp_path / "d.pth", sd, "nasnet_a_cifar")
    with pytest.raises(nc.CheckpointMismatch, match="aux_head.fc.weight: checkpoint"):
        nc.load_checkpoint(nc.create_model("nasnet_a_cifar", N=1, F=96), path)
