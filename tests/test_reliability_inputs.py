"""Bad input to the classification / model / checkpoint tools: one ``error:`` line, exit 2, no traceback.

Every row of docs/bad_input.md ("Classification, models, checkpoints") names its test here."""

import json

import pytest
import torch
from conftest import load_tool
from test_train_classifier import make_cifar, tiny_cfg

import nasnet_core as nc
from nasnet_core.common.config import ConfigError, dump_config, load_config
from nasnet_core.model.genotype import GenotypeError


def _fails(capsys, tool: str, argv: list, *fragments: str) -> str:
    rc = load_tool(tool).main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture
def tiny_run(tmp_path):
    """A finished 1-epoch tiny CIFAR run (N 1 @ F 48) and its config file."""
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg = tiny_cfg(tmp_path, "cifar10", data, **{"solver.epochs": 1})
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_config(cfg))
    assert load_tool("train_classifier").main(["--config", str(path)]) == 0
    return path, tmp_path / "run"


# ------------------------------------------------------------ genotype files
def test_malformed_genotype_json_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"normal": {"blocks": [[0, 1, "identity"')
    msg = _fails(capsys, "analyze_model", ["nasnet_a_cifar", "--genotype", bad], str(bad), "not valid JSON")
    assert "line 1" in msg
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2, 3]")
    _fails(capsys, "analyze_model", ["nasnet_a_cifar", "--genotype", listed], str(listed), "JSON list")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"normal": {"blocks": [[0, 1, "conv_9x9", "identity", "add"]]},
                                 "reduce": {"blocks": [[0, 1, "identity", "identity", "add"]]}}))
    _fails(capsys, "analyze_model", ["nasnet_a_cifar", "--genotype", wrong], str(wrong),
           "unknown op 'conv_9x9'")
    with pytest.raises(GenotypeError, match="list.json.*JSON list"):
        nc.create_model("nasnet_a_cifar", genotype=str(listed))


# ------------------------------------------------------------ checkpoint / output files
def test_text_file_named_safetensors(tmp_path, capsys):
    fake = tmp_path / "weights.safetensors"
    fake.write_text("this is not a safetensors file\n")
    _fails(capsys, "convert_weights", ["--source", "timm", "--arch", "nasnet_a_mobile", "--input", fake,
                                       "--output", tmp_path / "out.pth"],
           "cannot read safetensors file", str(fake))
    assert not (tmp_path / "out.pth").exists()


def test_output_that_is_a_directory(tmp_path, capsys):
    src = tmp_path / "src.pth"
    torch.save(nc.create_model("nasnet_a_cifar", N=1, F=48, aux_head=False).state_dict(), src)
    folder = tmp_path / "outdir"
    folder.mkdir()
    argv = ["--source", "nasnet_core", "--arch", "nasnet_a_cifar", "--input", src, "--output", folder]
    _fails(capsys, "convert_weights", argv, str(folder), "is a directory")
    _fails(capsys, "convert_weights", [*argv, "--force"], str(folder), "is a directory")
    _fails(capsys, "export_onnx", ["--model", "nasnet_a_cifar", "--opts", "N", "1", "F", "48",
                                   "--output", folder, "--overwrite"], str(folder), "is a directory")
    assert list(folder.iterdir()) == []


def test_train_output_that_is_a_file(tiny_run, tmp_path, capsys):
    cfg_file, _ = tiny_run
    f = tmp_path / "a_file"
    f.write_text("x")
    _fails(capsys, "train_classifier", ["--config", cfg_file, "--output", f], str(f), "is a file")


# ------------------------------------------------------------ config values
def test_config_value_of_wrong_type_names_the_key(tiny_run, capsys):
    cfg_file, _ = tiny_run
    _fails(capsys, "train_classifier", ["--config", cfg_file, "--force", "model.N", "two"], "'model.N'",
           "expects int", "'two'")
    _fails(capsys, "train_classifier", ["--config", cfg_file, "--force", "model.N", "2.5"], "'model.N'")


def test_cuda_without_cuda(tiny_run, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg_file, _ = tiny_run
    _fails(capsys, "train_classifier", ["--config", cfg_file, "--force", "train.device", "cuda"],
           "train.device is cuda but no CUDA device")


def test_overrides_after_options(tiny_run, tmp_path):
    cfg_file, _ = tiny_run
    tc = load_tool("train_classifier")
    a = tc.parse_args(["--config", "c.yaml", "solver.epochs", "1", "--output", "X", "train.threads", "1"])
    assert (a.config, a.output, a.overrides) == ("c.yaml", "X", ["solver.epochs", "1", "train.threads", "1"])
    a = tc.parse_args(["--config", "c.yaml", "--resume", "solver.lr", "-0.5", "--force", "model.N", "2"])
    assert a.resume and a.force and a.overrides == ["solver.lr", "-0.5", "model.N", "2"]
    with pytest.raises(SystemExit):
        tc.parse_args(["--config", "c.yaml", "solver.epochs", "1", "--outptu", "X"])  # a typo stays an error
    out = tmp_path / "after"
    assert tc.main(["--config", str(cfg_file), "solver.epochs", "1", "--output", str(out),
                    "data.train_limit", "20"]) == 0
    saved = load_config(out / "config.yaml")
    assert saved["solver"]["epochs"] == 1 and saved["data"]["train_limit"] == 20


# ------------------------------------------------------------ checkpoints of another width
def test_resume_or_eval_with_a_checkpoint_of_another_width(tiny_run, capsys):
    cfg_file, run = tiny_run
    msg = _fails(capsys, "train_classifier", ["--config", cfg_file, "--resume", "model.F", "96"],
                 str(run / "last.pth"), "has shape", "in the checkpoint", "in the model")
    assert "conv0.conv.weight has shape (6, 3, 3, 3) in the checkpoint, (12, 3, 3, 3) in the model" in msg
    _fails(capsys, "train_classifier", ["--config", cfg_file, "--eval-only", run / "last.pth", "model.F",
                                        "96"], str(run / "last.pth"), "has shape")
    _fails(capsys, "train_classifier", ["--config", cfg_file, "--eval-only", run / "backbone.pth", "model.F",
                                        "96"], "backbone.pth", "shape mismatches")


# ------------------------------------------------------------ create_model
@pytest.mark.parametrize("kw,match", [
    (dict(F=-48), "F must be a positive integer, got -48"),
    (dict(in_chans=-1), "in_chans must be a positive integer, got -1"),
    (dict(in_chans=0), "in_chans must be a positive integer, got 0"),
    (dict(stem_multiplier=0), r"stem_multiplier must be a number > 0, got 0"),
    (dict(N=2.5), "N must be a positive integer, got 2.5"),
    (dict(N="two"), "N must be a positive integer, got 'two'"),
    (dict(N=0), "N must be a positive integer, got 0"),
    (dict(drop_path_keep_prob=0.0), r"drop_path_keep_prob must be a number in \(0, 1\], got 0.0"),
    (dict(drop_path_keep_prob=1.5), r"drop_path_keep_prob must be a number in \(0, 1\], got 1.5"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(image_size=8), "image_size 8 is too small"),
])
def test_create_model_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        nc.create_model("nasnet_a_cifar", **kw)


def test_image_too_small_for_the_network():
    with pytest.raises(ValueError, match="image_size 16 is too small for nasnet_a_mobile.*at least 67"):
        nc.create_model("nasnet_a_mobile", image_size=16)
    nc.create_model("nasnet_a_mobile", image_size=67)  # the smallest it takes: a 5x5 map at the aux head
    with pytest.raises(ValueError, match="image_size 2 is too small.*at least 3"):
        nc.create_model("nasnet_a_mobile", image_size=2, aux_head=False)
    nc.create_model("nasnet_a_mobile", image_size=3, aux_head=False).eval()(torch.randn(1, 3, 3, 3))


# ------------------------------------------------------------ analyze_model, benchmark_child
def test_analyze_model_bad_input(capsys):
    _fails(capsys, "analyze_model", ["nasnet_a_huge"], "unknown model 'nasnet_a_huge'", "nasnet_a_mobile")
    _fails(capsys, "analyze_model", ["nasnet_a_cifar", "--genotype", "normal: nothing"],
           "genotype text 'normal: nothing'", "missing '-> OUTPUT'")
    _fails(capsys, "analyze_model", ["nasnet_a_cifar", "--image-size", "0"], "--image-size", "got 0")
    _fails(capsys, "analyze_model", ["nasnet_a_cifar", "--N", "0"], "N must be a positive integer")


def test_benchmark_child_cifar10_needs_data_dir(capsys):
    _fails(capsys, "benchmark_child", ["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir")


def test_config_check_is_a_config_error():
    from nasnet_core.train.checks import check_config
    cfg = tiny_cfg(__import__("pathlib").Path("."), "cifar10", "x", **{"train.eval_every": 0})
    with pytest.raises(ConfigError, match="'train.eval_every' must be in"):
        check_config(cfg)


@pytest.mark.parametrize("tool,argv,arg", [
    ("benchmark_models", ["--iters", "0"], "--iters"),
    ("benchmark_models", ["--threads", "1", "0"], "--threads"),
    ("benchmark_training", ["--batch-size", "-4"], "--batch-size"),
    ("benchmark_training", ["--device", "gpu"], "--device"),
    ("benchmark_child", ["--images", "0"], "--images"),
    ("benchmark_child", ["--children", "two"], "--children"),
])
def test_benchmark_counts_must_be_positive(tool, argv, arg, capsys):
    with pytest.raises(SystemExit) as e:
        load_tool(tool).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and f"error: argument {arg}" in err[-1], err
    assert "Traceback" not in "\n".join(err)
