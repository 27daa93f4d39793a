"""Draw boxes, class names and scores: results json over a dataset, or one side-by-side pair."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.visualizer import Visualizer

__all__ = ["draw_instances", "draw_results", "read_results", "check_results", "side_by_side"]


def draw_instances(image_rgb: np.ndarray, instances: Instances, metadata,
                   title: str | None = None) -> np.ndarray:
    """RGB image with the predicted boxes, class names and scores of ``instances`` drawn on it."""
    vis = Visualizer(image_rgb, metadata, scale=max(1.0, 256 / max(image_rgb.shape[:2])))
    out = vis.draw_instance_predictions(instances.to("cpu")).get_image()
    if title:
        out = out.copy()
        cv2.putText(out, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _examples(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def check_results(path, dets: list[dict], metadata, image_ids=None, name: str = "the dataset") -> None:
    """ValueError unless every image id is in ``image_ids`` (when given) and every category id is
    one of the dataset's (its contiguous-id map, else 0 .. len(thing_classes) - 1)."""
    to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id", None)
    known = set(to_contiguous) if to_contiguous else set(range(len(metadata.get("thing_classes", []))))
    bad_cats = {d["category_id"] for d in dets} - known
    if known and bad_cats:
        raise ValueError(f"{path} holds results of another dataset: category ids {_examples(bad_cats)} "
                         f"are not category id(s) of {name} (known: {_examples(known)})")
    if image_ids is not None:
        bad_images = {d["image_id"] for d in dets} - set(image_ids)
        if bad_images:
            raise ValueError(f"{path} holds results of another dataset: {len(bad_images)} of its "
                             f"{len({d['image_id'] for d in dets})} image ids are not image id(s) of {name} "
                             f"({_examples(bad_images)})")


def read_results(path: str | Path, metadata, image_ids=None,
                 name: str = "the dataset") -> dict[int, list[dict]]:
    """COCO results json -> {image_id: [detections with contiguous class ids]}; refuses results
    whose image ids (when ``image_ids`` is given) or category ids are not the dataset's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        dets = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid json: {e}") from None
    if not isinstance(dets, list) or any(not {"image_id", "bbox", "score", "category_id"} <= set(d)
                                        for d in dets):
        raise ValueError(f"{path} is not a COCO results list (image_id, category_id, bbox, score)")
    check_results(path, dets, metadata, image_ids, name)
    to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id", None)
    by_image = defaultdict(list)
    for d in dets:
        cls = to_contiguous[d["category_id"]] if to_contiguous else d["category_id"]
        by_image[d["image_id"]].append(dict(d, category=cls))
    return by_image


def _to_instances(dets: list[dict], height: int, width: int, threshold: float) -> Instances:
    dets = [d for d in dets if d["score"] >= threshold]
    inst = Instances((height, width))
    boxes = [BoxMode.convert(d["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for d in dets]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
    inst.pred_classes = torch.tensor([d["category"] for d in dets], dtype=torch.int64)
    return inst


def side_by_side(images: list[np.ndarray]) -> np.ndarray:
    """Concatenate images horizontally (padding heights) with a 4-pixel white gap."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = np.zeros((h - im.shape[0], im.shape[1], 3), np.uint8)
        parts.append(np.vstack([im, pad]))
        if i < len(images) - 1:
            parts.append(np.full((h, 4, 3), 255, np.uint8))
    return np.hstack(parts)


def draw_results(dataset_name: str, results: list[str | Path], out_dir: str | Path, threshold: float = 0.5,
                 max_images: int = 0, titles: list[str] | None = None) -> list[Path]:
    """Draw one results json (or two, side by side) over ``dataset_name`` into ``out_dir``.

    Images with detections come first; ``max_images`` > 0 caps the count. Returns the files written.
    """
    if not 1 <= len(results) <= 2:
        raise ValueError(f"give one results file, or two for a side-by-side comparison; got {len(results)}")
    records = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    ids = {r["image_id"] for r in records}
    per_file = [read_results(r, metadata, ids, dataset_name) for r in results]
    titles = titles or [Path(r).parent.name or Path(r).stem for r in results]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = sorted(records, key=lambda r: r["image_id"] not in per_file[0])
    if max_images > 0:
        chosen = chosen[:max_images]
    written = []
    for r in chosen:
        bgr = cv2.imread(r["file_name"])
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {r['file_name']} of {dataset_name}")
        rgb = bgr[:, :, ::-1]
        h, w = rgb.shape[:2]
        panels = [draw_instances(rgb, _to_instances(dets.get(r["image_id"], []), h, w, threshold), metadata,
                                 title if len(results) == 2 else None)
                  for dets, title in zip(per_file, titles)]
        path = out_dir / f"{Path(r['file_name']).stem}.jpg"
        cv2.imwrite(str(path), side_by_side(panels)[:, :, ::-1])
        written.append(path)
    return written
