"""Dataset registration: the embedded shapes dataset and the paper's COCO 2014 splits.

* ``nasnet_shapes_train`` / ``nasnet_shapes_val``: generated on first use (shapes.py).
* ``coco_2014_minival8k``: the 8,059 val2014 images of the TF OD API mini-val
  (data/coco_minival2014_ids.txt), on which the paper reports "mAP mini-val".
* ``coco_2014_trainval_minus_minival8k``: train2014 + val2014 without those ids (the
  paper's training set).
* ``coco_2017_test-dev`` (detectron2's) gets ``submission_testset`` metadata: results on it
  are written as a COCO server submission (submission.py).

COCO files are read from detectron2's ``$DETECTRON2_DATASETS/coco`` layout
(``train2014/``, ``val2014/``, ``annotations/instances_{train,val}2014.json``).
Records whose image file is missing and annotations with a bad box or a category_id not in
the json's categories are skipped and counted (one warning per dataset), so a damaged
download never crashes training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from importlib import resources
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from . import shapes

__all__ = ["register_all", "register_shapes", "minival_ids", "sanitize", "load_coco_split",
           "load_coco_records", "COCO_SPLITS", "SHAPES", "SUBMISSION_TESTSETS"]

logger = logging.getLogger(__name__)

SHAPES = {"nasnet_shapes_train": "train", "nasnet_shapes_val": "val"}
COCO_SPLITS = {
    # name -> ((image dir, annotation json, id rule) ...), paths relative to $DETECTRON2_DATASETS
    "coco_2014_minival8k": (("coco/val2014", "coco/annotations/instances_val2014.json", "only"),),
    "coco_2014_trainval_minus_minival8k": (
        ("coco/train2014", "coco/annotations/instances_train2014.json", "except"),
        ("coco/val2014", "coco/annotations/instances_val2014.json", "except"),
    ),
}

# detectron2 builtin test set -> the COCO evaluation server's name for it (submission file name).
SUBMISSION_TESTSETS = {"coco_2017_test-dev": "test-dev2017"}


def minival_ids() -> frozenset[int]:
    """The 8,059 COCO val2014 image ids of the TF OD API mini-val (package data)."""
    text = resources.files(__package__).joinpath("data/coco_minival2014_ids.txt").read_text()
    return frozenset(int(line) for line in text.split() if line.strip())


def _bad_box(box, width, height) -> bool:
    if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        return True
    x, y, w, h = box
    # XYWH_ABS (COCO) boxes must have positive size and overlap the image.
    return w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0


def sanitize(records: list[dict], name: str, check_files: bool = True,
             unknown_category: int = 0) -> list[dict]:
    """Drop records whose image file is missing and annotations with bad boxes; log the counts
    (with ``unknown_category``, the annotations the loader dropped for a category not in the json)."""
    out, missing, bad = [], 0, 0
    for r in records:
        if check_files and not os.path.isfile(r["file_name"]):
            missing += 1
            continue
        anns = [a for a in r.get("annotations", [])
                if not _bad_box(a.get("bbox", ()), r["width"], r["height"])]
        bad += len(r.get("annotations", [])) - len(anns)
        out.append(dict(r, annotations=anns) if "annotations" in r else r)
    if missing or bad or unknown_category:
        logger.warning(f"{name}: skipped {missing} image(s) whose file is missing and {bad} "
                       f"annotation(s) with a bad box (non-positive size, non-finite or outside the image)"
                       f" and {unknown_category} annotation(s) whose category_id is not in the json's "
                       "categories")
    if not out:
        raise FileNotFoundError(f"{name}: none of its {len(records)} images exist; "
                                "check $DETECTRON2_DATASETS")
    return out


def load_coco_records(json_file: str | Path, image_root: str | Path, name: str) -> tuple[list[dict], int]:
    """``load_coco_json`` records and how many annotations were dropped for a category_id that is not
    in the json's ``categories`` (Detectron2 fails the whole file on one; the file is not changed)."""
    try:
        return load_coco_json(str(json_file), str(image_root), name), 0
    except KeyError as e:
        if "does not exist in 'categories'" not in str(e):
            raise
    data = json.loads(Path(json_file).read_text())
    known = {c["id"] for c in data.get("categories", [])}
    kept = [a for a in data["annotations"] if a.get("category_id") in known]
    with tempfile.TemporaryDirectory(prefix="nasnet_det-") as tmp:
        path = Path(tmp) / Path(json_file).name  # same name: load_coco_json looks at it ("minival")
        path.write_text(json.dumps(dict(data, annotations=kept)))
        return load_coco_json(str(path), str(image_root), name), len(data["annotations"]) - len(kept)


def load_coco_split(name: str, root: str | Path | None = None) -> list[dict]:
    """Records of one COCO_SPLITS dataset, read under ``root`` (default $DETECTRON2_DATASETS)."""
    if name not in COCO_SPLITS:
        raise KeyError(f"unknown COCO split {name!r}; known: {', '.join(COCO_SPLITS)}")
    root = Path(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    ids = minival_ids()
    records, unknown = [], 0
    for image_dir, json_file, rule in COCO_SPLITS[name]:
        path = root / json_file
        if not path.is_file():
            raise FileNotFoundError(f"{name} needs {path} (detectron2's $DETECTRON2_DATASETS/coco layout)")
        loaded, dropped = load_coco_records(path, root / image_dir, name)
        unknown += dropped
        records += [r for r in loaded if (r["image_id"] in ids) == (rule == "only")]
    return sanitize(records, name, unknown_category=unknown)


def _load_shapes(name: str, split: str, root: Path) -> list[dict]:
    shapes.ensure_shapes(root)
    records, unknown = load_coco_records(root / "annotations" / f"instances_{split}.json", root / split, name)
    return sanitize(records, name, unknown_category=unknown)


def register_shapes(name: str, split: str, root: str | Path | None = None) -> None:
    """Register shapes ``split`` under ``name``, generated under ``root`` on first use."""
    if split not in shapes.SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; known: {', '.join(shapes.SPLITS)}")
    root = Path(root) if root is not None else shapes.shapes_root()
    DatasetCatalog.register(name, lambda: _load_shapes(name, split, root))
    MetadataCatalog.get(name).set(
        thing_classes=list(shapes.CLASSES), evaluator_type="coco", shapes_root=str(root),
        json_file=str(root / "annotations" / f"instances_{split}.json"), image_root=str(root / split))


def register_all() -> None:
    """Register the shapes and COCO split datasets (idempotent)."""
    for name, split in SHAPES.items():
        if name not in DatasetCatalog.list():
            register_shapes(name, split)
    for name in COCO_SPLITS:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: load_coco_split(name))
        # No json_file: COCOEvaluator converts the split's own records, so AP is over its images only.
        MetadataCatalog.get(name).set(evaluator_type="coco", **_get_builtin_metadata("coco"))
    for name, testset in SUBMISSION_TESTSETS.items():
        MetadataCatalog.get(name).set(submission_testset=testset)
