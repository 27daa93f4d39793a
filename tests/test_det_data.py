"""nasnet_det data tests: shapes generator, COCO mini-val 8k splits, per-dataset eval folders, loss falls."""

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: the [detectron2] extra)")

from det_helpers import make_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402

from nasnet_det import datasets, shapes  # noqa: E402

MINIVAL = [25096, 251824, 35313]  # first three ids of the shipped list
OTHER_VAL = [1, 2]                 # val2014 ids not in the mini-val list
TRAIN = [10, 11, 12]


def test_minival_ids_are_the_8059_shipped_ids():
    ids = datasets.minival_ids()
    assert len(ids) == 8059
    assert set(MINIVAL) <= ids and not (set(OTHER_VAL) | set(TRAIN)) & ids


def _write_coco(tmp_path, missing=(), bad_box_image=None):
    coco = tmp_path / "coco"
    cats = [dict(id=c["id"], name=c["name"]) for c in COCO_CATEGORIES if c["isthing"]]
    for split, ids in (("train2014", TRAIN), ("val2014", MINIVAL + OTHER_VAL)):
        (coco / split).mkdir(parents=True)
        images, anns = [], []
        for i in ids:
            name = f"COCO_{split}_{i:012d}.jpg"
            if i not in missing:
                cv2.imwrite(str(coco / split / name), np.full((40, 50, 3), 128, np.uint8))
            images.append(dict(id=i, file_name=name, height=40, width=50))
            box = [-5.0, 3.0, -4.0, 10.0] if i == bad_box_image else [5.0, 5.0, 20.0, 10.0]
            anns.append(dict(id=len(anns) + 1 + 1000 * i, image_id=i, category_id=1, bbox=box,
                             area=200.0, iscrowd=0))
            anns.append(dict(id=len(anns) + 1 + 1000 * i, image_id=i, category_id=3,
                             bbox=[1.0, 2.0, 8.0, 9.0], area=72.0, iscrowd=0))
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return tmp_path


def test_coco_splits_hold_exactly_their_ids(tmp_path):
    root = _write_coco(tmp_path)
    mini = datasets.load_coco_split("coco_2014_minival8k", root)
    assert sorted(r["image_id"] for r in mini) == sorted(MINIVAL)
    trainval = datasets.load_coco_split("coco_2014_trainval_minus_minival8k", root)
    assert sorted(r["image_id"] for r in trainval) == sorted(TRAIN + OTHER_VAL)
    assert all(len(r["annotations"]) == 2 for r in mini + trainval)
    assert {r["file_name"].split("/")[-2] for r in trainval} == {"train2014", "val2014"}


def test_missing_image_and_bad_box_are_skipped_and_counted(tmp_path, caplog):
    root = _write_coco(tmp_path, missing=(MINIVAL[1],), bad_box_image=MINIVAL[0])
    with caplog.at_level(logging.WARNING, logger="nasnet_det.datasets"):
        mini = datasets.load_coco_split("coco_2014_minival8k", root)
    assert sorted(r["image_id"] for r in mini) == sorted([MINIVAL[0], MINIVAL[2]])
    by_id = {r["image_id"]: r for r in mini}
    assert len(by_id[MINIVAL[0]]["annotations"]) == 1  # the bad box is gone, the good one stays
    assert "skipped 1 image(s) whose file is missing and 1 annotation(s) with a bad box" in caplog.text


def test_missing_annotation_file_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2014.json"):
        datasets.load_coco_split("coco_2014_minival8k", tmp_path)
    with pytest.raises(KeyError, match="known: coco_2014_minival8k"):
        datasets.load_coco_split("coco_2014_nope", tmp_path)


def test_shapes_generator_is_deterministic_and_varied(tmp_path):
    a = shapes.generate(tmp_path / "a", "val", count=40)
    b = shapes.generate(tmp_path / "b", "val", count=40)
    assert a.read_text() == b.read_text()
    jpg = "val/000007.jpg"
    assert (tmp_path / "a" / jpg).read_bytes() == (tmp_path / "b" / jpg).read_bytes()
    data = json.loads(a.read_text())
    assert len(data["images"]) == 40 and [c["name"] for c in data["categories"]] == list(shapes.CLASSES)
    anns = data["annotations"]
    assert {x["category_id"] for x in anns} == {1, 2, 3}
    sides = [x["bbox"][2] for x in anns]
    assert min(sides) < 26 and max(sides) > 45  # several sizes
    overlaps = 0
    for img in data["images"]:
        boxes = [x["bbox"] for x in anns if x["image_id"] == img["id"]]
        for i in range(len(boxes)):
            for j in range(i):
                (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
                overlaps += min(x0 + w0, x1 + w1) > max(x0, x1) and min(y0 + h0, y1 + h1) > max(y0, y1)
    assert overlaps >= 2
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp leftovers
    with pytest.raises(ValueError, match="known: train, val"):
        shapes.generate(tmp_path, "test")


# SHA-256 of the full generated shapes dataset (the main job's data): every file, sorted by path,
# as path + NUL + bytes. The same under opencv-python-headless 4.14 and 5.1 (numpy 2.4). A change
# means the main job trains and evaluates on other data: update both and re-measure its AP.
SHAPES_SHA256 = "4dd241488865d76bc21a6b7a469b00a7a1d66d571f28f67ea6552d982136d0f3"
# The two annotation files alone (boxes, classes, file names):
SHAPES_JSON_SHA256 = "b88a66998ff6cd54cf6e7c83e01d3832612449981b61a06ca4f839e56d9ae835"


def _sha256(root: Path, pattern: str = "*") -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob(pattern) if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory):
    """The full shapes dataset (train 1000 + val 150 images), generated once per session."""
    return shapes.ensure_shapes(tmp_path_factory.mktemp("nasnet_shapes"))


@pytest.mark.slow
def test_shapes_dataset_content_is_pinned(shapes_dataset):
    files = sorted(p.relative_to(shapes_dataset).as_posix() for p in shapes_dataset.rglob("*") if p.is_file())
    assert len(files) == 1000 + 150 + 2 and files[:2] == ["annotations/instances_train.json",
                                                          "annotations/instances_val.json"]
    assert _sha256(shapes_dataset, "*.json") == SHAPES_JSON_SHA256
    assert _sha256(shapes_dataset) == SHAPES_SHA256


def _register_tiny_shapes(tmp_path, name, split="train", count=16):
    shapes.generate(tmp_path, split, count=count)
    if name not in DatasetCatalog.list():
        datasets.register_shapes(name, split, tmp_path)


QUICK = "configs/quick_schedules/nasnet_a_mobile_shapes.yaml"
LOSS_ITERS = 20  # enough steps that batch-of-4 noise cannot hide the trend (14 was borderline)


def test_loss_falls_over_first_iterations(tmp_path):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from nasnet_det.engine import Trainer

    _register_tiny_shapes(tmp_path, "test_shapes_loss", count=24)
    cfg = make_cfg(QUICK, ["DATASETS.TRAIN", ("test_shapes_loss",), "DATALOADER.NUM_WORKERS", 0,
                           "SOLVER.IMS_PER_BATCH", 4])
    torch.manual_seed(0)
    np.random.seed(0)  # detectron2's sampler seed and flips draw from numpy: fix them too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the config's CPU_THREADS: far faster on the shared 2-core machine
    model = build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    loader = iter(Trainer.build_train_loader(cfg))
    losses = []
    try:
        with EventStorage(0):
            for _ in range(LOSS_ITERS):
                loss = sum(model(next(loader)).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss))
    finally:
        torch.set_num_threads(threads)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.75 * first, losses


def test_each_test_set_writes_its_own_results(tmp_path):
    """Two test sets (one without annotations, like test-dev) never share a results file."""
    from detectron2.modeling import build_model

    from nasnet_det.engine import Trainer, eval_output_dir

    _register_tiny_shapes(tmp_path / "s", "test_shapes_eval", "val", count=3)
    # A test-dev-like set: the same images, image info only (no annotations).
    info = json.loads((tmp_path / "s" / "annotations" / "instances_val.json").read_text())
    info.pop("annotations")
    (tmp_path / "info.json").write_text(json.dumps(info))
    if "test_shapes_testdev" not in DatasetCatalog.list():
        from detectron2.data.datasets import register_coco_instances
        register_coco_instances("test_shapes_testdev", {}, str(tmp_path / "info.json"),
                                str(tmp_path / "s" / "val"))
    cfg = make_cfg(QUICK, ["DATASETS.TEST", ("test_shapes_eval", "test_shapes_testdev"), "OUTPUT_DIR",
                           str(tmp_path / "out"), "MODEL.NASNET.N", 1, "MODEL.NASNET.F", 192,
                           "DATALOADER.NUM_WORKERS", 0])
    res = Trainer.test(cfg, build_model(cfg).eval())
    files = [tmp_path / "out" / "inference" / n / "coco_instances_results.json"
             for n in ("test_shapes_eval", "test_shapes_testdev")]
    assert all(f.is_file() for f in files)
    assert eval_output_dir(cfg, "a") != eval_output_dir(cfg, "b")
    assert "bbox" in res["test_shapes_eval"]  # evaluated: it has annotations
    assert MetadataCatalog.get("test_shapes_eval").evaluator_type == "coco"
