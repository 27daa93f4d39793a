"""A deterministic COCO-format detection dataset of shapes on textured backgrounds (no download).

Each image holds 1-4 filled shapes (circle, square, triangle) of random size and colour;
shapes may overlap (a later one partly hides an earlier one, which stays at least 60 %
visible; its box is the full shape). Backgrounds mix a colour gradient, stripes and noise.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

__all__ = ["CLASSES", "SPLITS", "generate", "ensure_shapes", "shapes_root", "render_image"]

CLASSES = ("circle", "square", "triangle")
SPLITS = {"train": dict(seed=0, count=1000), "val": dict(seed=1, count=150)}
"""Split -> RNG seed and number of images."""
IMAGE_SIZE = 128
SIZE_RANGE = (18, 56)  # shape extent in pixels (box side)
MAX_SHAPES = 4
MIN_VISIBLE = 0.6  # fraction of an occluded shape that must stay visible


def shapes_root() -> Path:
    """Where the shapes dataset lives: ``$DETECTRON2_DATASETS/nasnet_shapes`` (default ./datasets)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "nasnet_shapes"


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) + 1) / 2
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    freq, angle = rng.uniform(4, 16), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    img += stripes[..., None] * rng.uniform(5, 25)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 1.5)
    img += noise * rng.uniform(10, 30)
    return img


def _shape_mask(kind: str, rng: np.random.RandomState, size: int, side: int) -> tuple[np.ndarray, list]:
    mask = np.zeros((size, size), np.uint8)
    x0, y0 = rng.randint(0, size - side + 1, 2)
    if kind == "circle":
        r = side / 2
        cv2.circle(mask, (int(round(x0 + r)), int(round(y0 + r))), int(round(r)), 1, -1, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(mask, (int(x0), int(y0)), (int(x0 + side - 1), int(y0 + side - 1)), 1, -1)
    elif kind == "triangle":
        pts = np.array([[x0 + side / 2, y0], [x0, y0 + side - 1], [x0 + side - 1, y0 + side - 1]])
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(CLASSES)}")
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
    return mask.astype(bool), box


def render_image(seed: int) -> tuple[np.ndarray, list[dict]]:
    """One RGB uint8 image and its annotations (category index, COCO xywh box, area)."""
    rng = np.random.RandomState(seed)
    img = _background(rng, IMAGE_SIZE)
    placed: list[dict] = []
    for _ in range(rng.randint(1, MAX_SHAPES + 1)):
        cls = rng.randint(len(CLASSES))
        side = rng.randint(SIZE_RANGE[0], SIZE_RANGE[1] + 1)
        mask, box = _shape_mask(CLASSES[cls], rng, IMAGE_SIZE, side)
        # A new shape may hide at most 1 - MIN_VISIBLE of any earlier one.
        if any((p["visible"] & ~mask).sum() < MIN_VISIBLE * p["mask"].sum() for p in placed):
            continue
        for p in placed:
            p["visible"] &= ~mask
        hsv = np.uint8([[[rng.randint(0, 180), rng.randint(150, 256), rng.randint(150, 256)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        img[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        placed.append(dict(cls=cls, box=box, mask=mask, visible=mask.copy()))
    img = np.clip(img, 0, 255).astype(np.uint8)
    anns = [dict(category=p["cls"], bbox=p["box"], area=float(p["mask"].sum())) for p in placed]
    return img, anns


def generate(root: str | Path, split: str, count: int | None = None) -> Path:
    """Write ``root/<split>/*.jpg`` and ``root/annotations/instances_<split>.json`` atomically."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; known: {', '.join(SPLITS)}")
    root = Path(root)
    seed, count = SPLITS[split]["seed"], count or SPLITS[split]["count"]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=root))
    images, annotations = [], []
    for i in range(count):
        img, anns = render_image(seed * 1_000_003 + i)
        name = f"{i:06d}.jpg"
        cv2.imwrite(str(tmp / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=i + 1, file_name=name, width=IMAGE_SIZE, height=IMAGE_SIZE))
        for a in anns:
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=a["category"] + 1,
                                    bbox=a["bbox"], area=a["area"], iscrowd=0))
    data = dict(info=dict(description=f"nasnet_det shapes {split} (seed {seed})"), images=images,
                annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(CLASSES)])
    if (root / split).exists():
        shutil.rmtree(root / split)
    tmp.replace(root / split)
    json_tmp = root / "annotations" / f".instances_{split}.json.tmp"
    json_tmp.write_text(json.dumps(data))
    json_tmp.replace(root / "annotations" / f"instances_{split}.json")
    return root / "annotations" / f"instances_{split}.json"


def ensure_shapes(root: str | Path | None = None) -> Path:
    """Generate every split that is missing under ``root`` (default shapes_root()); returns root."""
    root = Path(root) if root is not None else shapes_root()
    for split in SPLITS:
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            generate(root, split)
    return root
