"""Detection tools on bad input: checkpoints that do not fill the backbone are refused, unreadable demo
inputs are skipped, foreign results and bad annotations are named; one error line, exit code 2."""

import json
import logging
import shutil

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from conftest import ROOT, load_tool  # noqa: E402
from det_helpers import make_cfg, tiny_shapes_val  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import nasnet_core as nc  # noqa: E402
from nasnet_core.interop.convert import CheckpointMismatch  # noqa: E402
from nasnet_det import NASNetCheckpointer, datasets  # noqa: E402

SHAPES = "configs/quick_schedules/nasnet_a_mobile_shapes.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.NASNET.N", 1, "MODEL.NASNET.F", 192]
NASNET_PARTS = ("backbone.nasnet", "roi_heads.res5.nasnet")


@pytest.fixture(autouse=True)
def _drop_stale_log_handlers():
    """Earlier tests (default_setup under capture) leave detectron2 / fvcore log handlers on pytest's
    closed capture streams; logging to them prints "--- Logging error ---" tracebacks on stderr."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for handler in list(lg.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                lg.removeHandler(handler)


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    return tiny_shapes_val(tmp_path_factory, "rel_shapes_val")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Checkpoints: an ImageNet-style one that fills the small detector, a CIFAR classifier's."""
    d = tmp_path_factory.mktemp("weights")
    mobile = nc.create_model("nasnet_a_mobile", N=1, F=192, aux_head=False)
    for p in mobile.parameters():
        p.data.normal_()
    nc.save_checkpoint(d / "mobile.pth", mobile.state_dict(), "nasnet_a_mobile", config={"N": 1, "F": 192})
    cifar = nc.create_model("nasnet_a_cifar", aux_head=False)  # 6 @ 768, as train_classifier exports it
    nc.save_checkpoint(d / "cifar_backbone.pth", cifar.state_dict(), "nasnet_a_cifar")
    cifar = nc.create_model("nasnet_a_cifar", N=1, num_conv_filters=8, aux_head=False)  # same N @ F
    nc.save_checkpoint(d / "cifar_1_192.pth", cifar.state_dict(), "nasnet_a_cifar")
    return d, mobile.state_dict()


def _detector(*opts):
    return build_model(make_cfg(SHAPES, [*SMALL, *opts]))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---- item 4: a checkpoint that does not fill the backbone is refused ------------------------------
def test_cifar_classifier_checkpoint_is_refused_by_the_detector(weights):
    d, _ = weights
    model = _detector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatch) as info:
        NASNetCheckpointer(model).load(str(d / "cifar_backbone.pth"))
    msg = str(info.value)
    assert "\n" not in msg and "cifar_backbone.pth fills 64 of the 489 backbone tensors" in msg
    # what did not match: the ImageNet stem cells are missing, conv0 has another width
    assert ("missing 154: backbone.nasnet.cell_stem_0 (65 tensors), backbone.nasnet.cell_stem_1 "
            "(71 tensors)") in msg
    assert "first backbone.nasnet.conv0.conv.weight checkpoint (96, 3, 3, 3) vs model (32, 3, 3, 3)" in msg
    assert "wrong shape 271: backbone.nasnet.conv0 (5 tensors)" in msg
    assert "roi_heads.res5.nasnet.reduction_cell_1 (70 tensors)" in msg and "MODEL.NASNET" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    # a CIFAR network of the same N @ F fills most cells: still refused, the stem cells are missing
    with pytest.raises(CheckpointMismatch, match=r"fills 335 of the 489 .*missing 142: backbone\.nasnet\."
                                                 r"cell_stem_0 \(65 tensors\)"):
        NASNetCheckpointer(model).load(str(d / "cifar_1_192.pth"))


def test_backbone_checkpoint_missing_one_cell_is_refused(weights, tmp_path):
    d, sd = weights
    partial = {k: v for k, v in sd.items() if not k.startswith("cell_1.")}
    nc.save_checkpoint(tmp_path / "partial.pth", partial, "nasnet_a_mobile")
    match = r"missing 71: backbone\.nasnet\.cell_1 \(71 tensors\)\)"
    with pytest.raises(CheckpointMismatch, match=match) as info:
        NASNetCheckpointer(_detector()).load(str(tmp_path / "partial.pth"))
    assert "cell_0" not in str(info.value)  # only what did not match is listed


def test_full_backbone_and_full_detector_checkpoints_still_load(weights, tmp_path):
    d, sd = weights
    model = _detector()
    NASNetCheckpointer(model).load(str(d / "mobile.pth"))  # ImageNet classifier: heads may differ
    for prefix in NASNET_PARTS:
        for name, tensor in model.get_submodule(prefix).state_dict().items():
            assert torch.equal(tensor, sd[name]), prefix + name
    # a COCO-style full detector with another number of classes: the box predictor stays the model's
    five = _detector("MODEL.ROI_HEADS.NUM_CLASSES", 5)
    torch.save({"model": five.state_dict(), "iteration": 9}, tmp_path / "model_final.pth")
    three = _detector()
    predictor_before = three.roi_heads.box_predictor.cls_score.weight.clone()
    NASNetCheckpointer(three).load(str(tmp_path / "model_final.pth"))
    assert torch.equal(three.backbone.nasnet.cell_0.conv_1x1.conv.weight,
                       five.backbone.nasnet.cell_0.conv_1x1.conv.weight)
    rpn3, rpn5 = three.proposal_generator.rpn_head, five.proposal_generator.rpn_head
    assert torch.equal(rpn3.conv.weight, rpn5.conv.weight)
    assert torch.equal(three.roi_heads.box_predictor.cls_score.weight, predictor_before)  # 4 vs 6 rows
    # a full detector of another width is refused, naming a key and both shapes
    wide = _detector("MODEL.NASNET.F", 264)
    torch.save({"model": wide.state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointMismatch, match=r"wrong shape .*backbone\.nasnet\.\S+ checkpoint \(\d+"):
        NASNetCheckpointer(_detector()).load(str(tmp_path / "wide.pth"))


def test_demo_refuses_a_checkpoint_that_does_not_fill_the_backbone(weights, tiny_val, tmp_path, capsys):
    d, _ = weights
    rc = load_tool("demo").main(["--config-file", str(ROOT / SHAPES), "--input", str(tiny_val / "val"),
                                 "--output", str(tmp_path / "out"), *map(str, SMALL),
                                 "MODEL.WEIGHTS", str(d / "cifar_backbone.pth")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "cifar_backbone.pth fills" in line
    assert not (tmp_path / "out").exists()


def test_train_net_refuses_a_checkpoint_that_does_not_fill_the_backbone(weights, tiny_val, tmp_path, capsys):
    d, _ = weights
    common = ["--config-file", str(ROOT / SHAPES), *map(str, SMALL), "OUTPUT_DIR", str(tmp_path / "out"),
              "DATASETS.TRAIN", "('rel_shapes_val',)", "DATASETS.TEST", "('rel_shapes_val',)",
              "MODEL.WEIGHTS", str(d / "cifar_backbone.pth"), "SOLVER.MAX_ITER", "1"]
    train_net = load_tool("train_net")
    for extra in (["--eval-only"], []):  # evaluation, and training that starts from MODEL.WEIGHTS
        capsys.readouterr()
        rc = train_net.run([*extra, *common])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert err.splitlines()[-1].startswith("error: ") and "cifar_backbone.pth fills 64 of the 489" in err
        assert not (tmp_path / "out" / "model_final.pth").exists()


# ---- item 5: demo skips unreadable files, draws the rest, reports the count ---------------------------
def test_demo_skips_unreadable_files(tiny_val, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(tiny_val / "val", folder)
    (folder / "0000_broken.jpg").write_bytes(b"not a jpeg at all")  # sorts first
    (folder / "zz_empty.png").write_bytes(b"")
    demo = load_tool("demo")
    argv = ["--config-file", str(ROOT / SHAPES), "--output", str(tmp_path / "out"),
            "--confidence-threshold", "0.0", *map(str, SMALL), "DATASETS.TEST", "('rel_shapes_val',)"]
    capsys.readouterr()
    rc = demo.main(["--input", str(folder), *argv])
    out, err = capsys.readouterr()
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {folder / '0000_broken.jpg'}: cannot read it as an image",
                       f"skipped {folder / 'zz_empty.png'}: cannot read it as an image"]
    assert "Traceback" not in err
    assert f"wrote 3 image(s) to {tmp_path / 'out'}; skipped 2 unreadable file(s)" in out
    # nothing readable at all: one error, exit 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"x")
    rc = demo.main(["--input", str(bad), *argv])
    _, err = capsys.readouterr()
    assert rc == 2 and "none of the 1 input image(s) could be read" in err.splitlines()[-1]


# ---- visualize_json_results with results of another dataset ------------------------------------------
def test_visualize_refuses_results_of_another_dataset(tiny_val, tmp_path, capsys):
    vis = load_tool("visualize_json_results")
    gt = json.loads((tiny_val / "annotations" / "instances_val.json").read_text())
    good = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=0.9)
            for a in gt["annotations"]]
    n = len({d["image_id"] for d in good})
    cases = {
        "images": ([dict(d, image_id=d["image_id"] + 139_000) for d in good],
                   f"{n} of its {n} image ids are not image id(s) of rel_shapes_val (139001, 139002"),
        "categories": ([dict(d, category_id=77) for d in good],
                       "category ids 77 are not category id(s) of rel_shapes_val (known: 1, 2, 3)"),
    }
    for name, (dets, expected) in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(dets))
        capsys.readouterr()
        rc = vis.main(["--dataset", "rel_shapes_val", "--input", str(tmp_path / f"{name}.json"),
                       "--output", str(tmp_path / name)])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and expected in line and "not" in line, line
        assert not (tmp_path / name).exists()  # nothing drawn
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert vis.main(["--dataset", "rel_shapes_val", "--input", str(tmp_path / "good.json"),
                     "--output", str(tmp_path / "ok")]) == 0


# ---- train_net: missing config file, unknown key ------------------------------------------------------
def test_train_net_config_errors_are_one_line(tmp_path, capsys):
    train_net = load_tool("train_net")
    missing = tmp_path / "nope.yaml"
    rc = train_net.run(["--config-file", str(missing)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line == f"error: config file not found: {missing}"
    rc = train_net.run(["--config-file", str(ROOT / SHAPES), "MODEL.NASNET.NOPE", "1"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line == "error: config override: unknown config key MODEL.NASNET.NOPE"
    rc = train_net.run(["--config-file", str(ROOT / SHAPES), "SOLVER.MAX_ITER", "many"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("error: config override: Type mismatch") and "SOLVER.MAX_ITER" in line
    bad = tmp_path / "bad.yaml"
    cases = {
        f'_BASE_: "{ROOT / "configs/Base-NASNet-C4.yaml"}"\nSOLVER:\n  MAX_ITERS: 3\n':
            f"error: config file {bad}: unknown config key SOLVER.MAX_ITERS (did you mean SOLVER.MAX_ITER?)",
        "MODEL: [unclosed\n": f"error: config file {bad} is not valid YAML: while parsing a flow sequence",
        f'_BASE_: "{tmp_path / "gone.yaml"}"\n':
            f"error: config file {bad}: its _BASE_ file is not found: {tmp_path / 'gone.yaml'}",
        "- a list\n": f"error: config file {bad} must hold a mapping of config keys",
    }
    for text, expected in cases.items():
        bad.write_text(text)
        rc = train_net.run(["--config-file", str(bad)])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and line.startswith(expected), line


# ---- COCO annotation whose category_id is not in categories -------------------------------------------
def test_annotation_with_unknown_category_is_skipped_and_counted(tmp_path, caplog):
    from test_det_data import MINIVAL, _write_coco

    root = _write_coco(tmp_path)
    path = root / "coco" / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    target = next(a for a in data["annotations"] if a["image_id"] == MINIVAL[0])
    target["category_id"] = 999  # not in categories
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="nasnet_det.datasets"):
        mini = datasets.load_coco_split("coco_2014_minival8k", root)
    assert sorted(r["image_id"] for r in mini) == sorted(MINIVAL)
    by_id = {r["image_id"]: r for r in mini}
    assert len(by_id[MINIVAL[0]]["annotations"]) == 1 and len(by_id[MINIVAL[1]]["annotations"]) == 2
    assert "1 annotation(s) whose category_id is not in the json's categories" in caplog.text
    # the kept annotations carry contiguous ids as usual (COCO id 3 -> 2)
    assert sorted(a["category_id"] for a in by_id[MINIVAL[1]]["annotations"]) == [0, 2]
    assert path.read_text() == json.dumps(data)  # the user's file is not changed


# ---- MODEL.WEIGHTS that is not there; demo outputs of inputs sharing a name ----------------------------
def test_missing_weights_file_is_one_line_in_demo_and_train_net(tiny_val, tmp_path, capsys):
    """demo.py printed fvcore's AssertionError traceback ("Checkpoint ... not found!")."""
    missing = tmp_path / "model_final.pth"
    weights = ["MODEL.WEIGHTS", str(missing)]
    rc = load_tool("demo").main(["--config-file", str(ROOT / SHAPES), "--input", str(tiny_val / "val"),
                                 "--output", str(tmp_path / "out"), *map(str, SMALL), *weights])
    assert rc == 2 and _one_error_line(capsys.readouterr().err) == f"error: checkpoint not found: {missing}"
    assert not (tmp_path / "out").exists()
    val = "('rel_shapes_val',)"
    rc = load_tool("train_net").run(["--eval-only", "--config-file", str(ROOT / SHAPES), *map(str, SMALL),
                                     "OUTPUT_DIR", str(tmp_path / "ev"), "DATASETS.TRAIN", val,
                                     "DATASETS.TEST", val, *weights])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: checkpoint not found: {missing}"


def test_demo_inputs_sharing_a_name_give_one_drawing_each(tiny_val, tmp_path, capsys):
    """a/x.jpg, b/x.jpg and b/x.png were all drawn to OUT/x.jpg (one file) while demo said 3."""
    import cv2

    images = sorted((tiny_val / "val").glob("*.jpg"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(images[0], tmp_path / "a" / "x.jpg")
    shutil.copy(images[1], tmp_path / "b" / "x.jpg")
    cv2.imwrite(str(tmp_path / "b" / "x.png"), cv2.imread(str(images[2])))
    out = tmp_path / "out"
    capsys.readouterr()
    rc = load_tool("demo").main(["--config-file", str(ROOT / SHAPES), "--input", str(tmp_path / "a"),
                                 str(tmp_path / "b"), "--output", str(out), "--confidence-threshold", "0.0",
                                 *map(str, SMALL), "DATASETS.TEST", "('rel_shapes_val',)"])
    stdout = capsys.readouterr().out
    assert rc == 0 and f"wrote 3 image(s) to {out}" in stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a/x.jpg", "b/x.jpg", "b/x.png"]
    assert (out / "a" / "x.jpg").read_bytes() != (out / "b" / "x.jpg").read_bytes()  # two images drawn
    assert (out / "b" / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the input's own format


# ---- train_net: dataset names checked before training; shapes data only for the datasets read ----------
def test_train_net_checks_every_dataset_name_before_training(tmp_path, capsys):
    """An unknown DATASETS.TEST name failed only after the whole schedule had trained."""
    out = tmp_path / "out"
    for key, other in (("TEST", "TRAIN"), ("TRAIN", "TEST")):
        rc = load_tool("train_net").run(["--config-file", str(ROOT / SHAPES), *map(str, SMALL), "OUTPUT_DIR",
                                         str(out), "SOLVER.MAX_ITER", "1", f"DATASETS.{other}",
                                         "('rel_shapes_val',)", f"DATASETS.{key}", "('rel_shapes_vla',)"])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and line.startswith(f"error: unknown dataset 'rel_shapes_vla' in DATASETS.{key} "
                                           "(did you mean 'rel_shapes_val'?); registered: "), line
        assert "coco_2014_minival8k" in line and "nasnet_shapes_train" in line
        assert not out.exists()  # nothing trained, nothing written


def test_eval_only_makes_no_data_for_the_training_set(tmp_path, capsys, monkeypatch):
    """--eval-only of a COCO split with a shapes training set generated the shapes data first."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))  # no COCO there
    lazy = tmp_path / "lazy_shapes"
    if "rel_lazy_shapes_train" not in datasets.DatasetCatalog.list():
        datasets.register_shapes("rel_lazy_shapes_train", "train", lazy)
    rc = load_tool("train_net").run(["--eval-only", "--config-file", str(ROOT / SHAPES), *map(str, SMALL),
                                     "OUTPUT_DIR", str(tmp_path / "ev"), "DATASETS.TRAIN",
                                     "('rel_lazy_shapes_train',)", "DATASETS.TEST",
                                     "('coco_2014_minival8k',)"])
    err = capsys.readouterr().err
    missing = tmp_path / "datasets" / "coco" / "annotations" / "instances_val2014.json"
    assert rc == 2 and err.splitlines()[-1] == f"error: coco_2014_minival8k needs {missing} (detectron2's " \
                                                "$DETECTRON2_DATASETS/coco layout)", err[-2000:]
    assert not lazy.exists()  # the training set it does not read was not generated
