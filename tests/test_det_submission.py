"""test-dev submission: --eval-only leaves the zipped file the COCO server expects; foreign ids refused."""

import importlib.util
import json
import zipfile

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import ROOT, make_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402

from nasnet_det import shapes  # noqa: E402
from nasnet_det.submission import alg_name, write_submission  # noqa: E402

QUICK = "configs/quick_schedules/nasnet_a_mobile_shapes.yaml"
NAME = "test_tiny_test-dev"


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", ROOT / "tools" / "train_net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_testdev(tmp_path_factory):
    """A synthetic test-dev: 3 shapes images, image info only (no annotations), as the real one."""
    root = tmp_path_factory.mktemp("testdev")
    info = json.loads(shapes.generate(root, "val", count=3).read_text())
    info.pop("annotations")
    for i, img in enumerate(info["images"]):
        img["id"] = 100 + i  # ids unlike any other set's
    (root / "image_info.json").write_text(json.dumps(info))
    if NAME not in DatasetCatalog.list():
        register_coco_instances(NAME, {"submission_testset": "test-dev2017"}, str(root / "image_info.json"),
                                str(root / "val"))
    return root


def test_coco_test_dev_is_marked_for_submission():
    assert MetadataCatalog.get("coco_2017_test-dev").submission_testset == "test-dev2017"


def test_eval_only_on_test_dev_writes_the_zipped_submission(tmp_path, tiny_testdev, capsys):
    train_net = _train_net()
    # DATASETS.TRAIN emptied: the config's nasnet_shapes_train would be generated under ./datasets
    argv = ["--config-file", str(ROOT / QUICK), "--eval-only", "DATASETS.TRAIN", "()",
            "DATASETS.TEST", f"('{NAME}',)", "OUTPUT_DIR", str(tmp_path),
            "MODEL.NASNET.N", "1", "MODEL.NASNET.F", "192",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "DATALOADER.NUM_WORKERS", "0",
            "TEST.VIS_MAX_IMAGES", "0"]
    assert train_net.run(argv) == 0
    folder = tmp_path / "inference" / NAME
    name = "detections_test-dev2017_nasnet-a-mobile-shapes_results"  # alg from the config file name
    with zipfile.ZipFile(folder / f"{name}.zip") as z:
        assert z.namelist() == [f"{name}.json"]
        results = json.loads(z.read(f"{name}.json"))
    assert results == json.loads((folder / "coco_instances_results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {100, 101, 102}
    assert {r["category_id"] for r in results} <= {1, 2, 3}  # the dataset's own category ids
    capsys.readouterr()
    assert train_net.run(argv) == 2  # never overwritten without --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert train_net.run(argv[:3] + ["--overwrite"] + argv[3:]) == 0


def test_results_of_other_images_are_refused(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"image_id": 100, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9},
                                   {"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.8}]))
    with pytest.raises(ValueError, match=r"1 image id\(s\) are not test-dev2017 images \(e.g. \[42\]\)"):
        write_submission(results, {100, 101}, "test-dev2017", "nasnet", tmp_path)
    assert not list(tmp_path.glob("*.zip"))
    results.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="not a COCO results list"):
        write_submission(results, {100}, "test-dev2017", "nasnet", tmp_path)


def test_algorithm_name_from_key_or_config_file():
    cfg = make_cfg("configs/COCO-Detection/faster_rcnn_nasnet_a_large_1200.yaml")
    assert alg_name(cfg, "whatever.yaml") == "nasnetalarge1200"
    cfg.TEST.SUBMISSION_ALG = ""
    derived = alg_name(cfg, "configs/x/faster_rcnn_nasnet_a_large_1200.yaml")
    assert derived == "faster-rcnn-nasnet-a-large-1200"
    cfg.TEST.SUBMISSION_ALG = "my_alg"
    with pytest.raises(ValueError, match="letters, digits and hyphens"):
        alg_name(cfg)


def test_train_net_exits_2_with_one_line_on_bad_input(tmp_path, capsys):
    import subprocess
    import sys

    # -W: torch warns at detectron2's import (torch.jit.script), whatever the command does
    tool = str(ROOT / "tools" / "train_net.py")
    proc = subprocess.run([sys.executable, "-W", "ignore::FutureWarning", tool, "--config-file",
                           str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "missing.yaml" in proc.stderr
    train_net = _train_net()
    capsys.readouterr()
    assert train_net.run(["--config-file", str(ROOT / QUICK), "MODEL.NASNET.NOT_A_KEY", "1"]) == 2
    assert train_net.run(["--config-file", str(ROOT / QUICK), "--eval-only", "MODEL.NASNET.NORM", "LN",
                          "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]) == 2
    # (detectron2's cached loggers may still write to an earlier test's captured stream: skip those)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 2 and "NOT_A_KEY" in lines[0] and "known: BN" in lines[1], lines
