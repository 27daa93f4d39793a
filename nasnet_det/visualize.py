"""Draw boxes, class names and scores: results json over a dataset, or one side-by-side pair; with
an optional ground-truth panel. One colour per class (from its id) in every image; small images
are upscaled before drawing so that the labels stay readable; labels avoid each other."""

from __future__ import annotations

import colorsys
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from nasnet_core.common.fileio import atomic_write_bytes

__all__ = ["draw_instances", "draw_ground_truth", "draw_boxes", "draw_results", "read_results",
           "check_results", "side_by_side", "class_colour", "vis_scale", "place_labels", "encode_jpeg"]

MIN_SIDE = 512    # a drawn panel's short side is at least this (small images are upscaled) ...
MAX_SIDE = 2048   # ... unless its long side would pass this
GAP = 4           # white pixels between side-by-side panels
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(category: int) -> tuple[int, int, int]:
    """RGB colour of class ``category`` (contiguous id): golden-ratio hue steps, so the same class has
    the same colour in every image and run, and neighbouring ids differ strongly."""
    hue = (category * 0.618033988749895) % 1.0
    value = 0.95 if (category // 8) % 2 == 0 else 0.7  # a second, darker round after 8 hues
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, 0.85, value))


def vis_scale(height: int, width: int) -> float:
    """Drawing scale: at least 1, and enough to bring the short side to MIN_SIDE (long side <= MAX_SIDE)."""
    return max(1.0, min(MIN_SIDE / min(height, width), MAX_SIDE / max(height, width)))


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(boxes, sizes, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """A label rectangle (x0, y0, x1, y1) inside the image for each box (in priority order): the
    first of above / inside top / below / inside bottom, left or right aligned, that overlaps no
    label placed before it; else the one that overlaps least."""
    placed = []
    for (x0, y0, x1, y1), (tw, th) in zip(boxes, sizes):
        spots = []
        for x in (x0, x1 - tw):
            for y in (y0 - th, y0, y1, y1 - th):
                x_in = int(min(max(x, 0), max(width - tw, 0)))
                y_in = int(min(max(y, 0), max(height - th, 0)))
                spots.append((x_in, y_in, x_in + tw, y_in + th))
        placed.append(min(spots, key=lambda r: sum(_overlap(r, p) for p in placed)))  # first of the least
    return placed


def _title_strip(width: int, title: str, font_scale: float, thickness: int) -> np.ndarray:
    (_, th), base = cv2.getTextSize("Hg", FONT, font_scale, thickness)  # one height for every title
    pad = max(3, th // 3)
    strip = np.full((th + base + 2 * pad, width, 3), 40, np.uint8)
    cv2.putText(strip, title, (pad, pad + th), FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return strip


def draw_boxes(image_rgb: np.ndarray, boxes, classes, names=None, scores=None,
               title: str | None = None) -> np.ndarray:
    """RGB image (upscaled by vis_scale) with XYXY ``boxes`` in their class colours and a label each
    (class name, score in %); higher scores' labels are placed first. ``title``: a strip on top."""
    h, w = image_rgb.shape[:2]
    s = vis_scale(h, w)
    out = cv2.resize(image_rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR) if s > 1 \
        else image_rgb.copy()
    H, W = out.shape[:2]
    font_scale = max(0.5, min(H, W) / 800)
    thick, line = (1 if font_scale < 0.9 else 2), max(2, round(min(H, W) / 256))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * s
    classes = [int(c) for c in classes]
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable") if scores is not None \
        else np.arange(len(classes))
    texts, sizes = [], []
    for i in order:
        name = names[classes[i]] if names is not None and 0 <= classes[i] < len(names) else str(classes[i])
        texts.append(name if scores is None else f"{name} {float(scores[i]) * 100:.0f}%")
        (tw, th), base = cv2.getTextSize(texts[-1], FONT, font_scale, thick)
        sizes.append((tw + 6, th + base + 4))
    for i in order[::-1]:  # the best-scoring box on top
        x0, y0, x1, y1 = np.round(boxes[i]).astype(int)
        cv2.rectangle(out, (x0, y0), (x1, y1), class_colour(classes[i]), line, cv2.LINE_AA)
    for i, text, (lx0, ly0, lx1, ly1) in zip(order, texts, place_labels(boxes[order], sizes, W, H)):
        colour = class_colour(classes[i])
        cv2.rectangle(out, (lx0, ly0), (lx1 - 1, ly1 - 1), colour, -1)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255,) * 3
        base = cv2.getTextSize(text, FONT, font_scale, thick)[1]
        cv2.putText(out, text, (lx0 + 3, ly1 - 2 - base), FONT, font_scale, ink, thick, cv2.LINE_AA)
    if title:
        out = np.vstack([_title_strip(W, title, font_scale, thick), out])
    return out


def encode_jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image (for atomic_write_bytes)."""
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {image_rgb.shape} image as JPEG")
    return buf.tobytes()


def draw_instances(image_rgb: np.ndarray, instances: Instances, metadata,
                   title: str | None = None) -> np.ndarray:
    """RGB image with the predicted boxes, class names and scores of ``instances`` drawn on it."""
    inst = instances.to("cpu")
    boxes = inst.pred_boxes.tensor.numpy() if inst.has("pred_boxes") else np.zeros((0, 4))
    classes = inst.pred_classes.numpy() if inst.has("pred_classes") else np.zeros(len(boxes), int)
    scores = inst.scores.numpy() if inst.has("scores") else None
    return draw_boxes(image_rgb, boxes, classes, metadata.get("thing_classes", None), scores, title)


def draw_ground_truth(image_rgb: np.ndarray, annotations: list[dict], metadata,
                      title: str | None = "ground truth") -> np.ndarray:
    """RGB image with a dataset record's annotations (contiguous category_id) drawn, crowd ones left out."""
    anns = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    return draw_boxes(image_rgb, boxes, [a["category_id"] for a in anns], metadata.get("thing_classes", None),
                      None, title)


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
    """Concatenate images horizontally (padding heights) with a GAP-pixel white gap."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = np.zeros((h - im.shape[0], im.shape[1], 3), np.uint8)
        parts.append(np.vstack([im, pad]))
        if i < len(images) - 1:
            parts.append(np.full((h, GAP, 3), 255, np.uint8))
    return np.hstack(parts)


def draw_results(dataset_name: str, results: list[str | Path], out_dir: str | Path, threshold: float = 0.5,
                 max_images: int = 0, titles: list[str] | None = None,
                 ground_truth: bool = False) -> list[Path]:
    """Draw one results json (or two, side by side) over ``dataset_name`` into ``out_dir``, each panel
    titled; with ``ground_truth``, the image's annotations in a panel beside them (when it has them).

    Images with detections come first; ``max_images`` > 0 caps the count. Returns the files written.
    """
    if not 1 <= len(results) <= 2:
        raise ValueError(f"give one results file, or two for a side-by-side comparison; got {len(results)}")
    records = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    ids = {r["image_id"] for r in records}
    per_file = [read_results(r, metadata, ids, dataset_name) for r in results]
    default = ["predictions"] if len(results) == 1 else [Path(r).parent.name or Path(r).stem for r in results]
    titles = [*(titles or [])[: len(results)], *default[len(titles or []):]]
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
        panels = [draw_instances(rgb, _to_instances(dets.get(r["image_id"], []), h, w, threshold),
                                 metadata, title) for dets, title in zip(per_file, titles)]
        if ground_truth and "annotations" in r:
            panels.append(draw_ground_truth(rgb, r["annotations"], metadata))
        path = out_dir / f"{Path(r['file_name']).stem}.jpg"
        atomic_write_bytes(path, encode_jpeg(side_by_side(panels)))
        written.append(path)
    return written
