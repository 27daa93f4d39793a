"""ImageNet image transforms: TF-slim's Inception preprocessing and torchvision-style options.

TF-slim's ``inception_preprocessing``, as its ``train_image_classifier`` applies it (fast mode,
no ground-truth boxes, so the whole image is the box), trains on: a distorted bounding-box crop
(area fraction in [0.05, 1], aspect ratio width / height drawn uniformly from [0.75, 1.33], the
crop covering at least 10 % of the box -- which makes 0.1 the effective smallest area -- 100
attempts, then the whole image), resized bilinearly to the square input, a random horizontal
flip, random brightness (+-32/255) then random saturation (x [0.5, 1.5]), clipped to [0, 1].
It evaluates on the central 0.875 of each side, resized to the square input (aspect ratio not
kept). The torchvision-style alternatives: random-resized crop (area uniform in [min_scale, 1],
aspect log-uniform in [3/4, 4/3], 10 tries, then a centred box) and, for evaluation, resizing
the shorter side to size / crop_pct before a centre crop.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TRAIN_CROPS", "EVAL_CROPS", "COLOR_DISTORTIONS", "tf_distorted_box", "random_resized_box",
           "tf_central_box", "distort_color", "adjust_saturation"]

TRAIN_CROPS = ("tf", "torchvision")
EVAL_CROPS = ("tf", "torchvision")
COLOR_DISTORTIONS = ("fast", "none")

BRIGHTNESS_DELTA = 32 / 255  # TF-slim distort_color, fast mode
SATURATION_RANGE = (0.5, 1.5)


def _rint(v: float) -> int:
    return int(round(v))  # round half to even, as C's lrintf


def _tf_crop_size(width: int, height: int, aspect: float, min_area: float, max_area: float,
                  rng: np.random.Generator) -> tuple[int, int] | None:
    """One attempt of TF's crop-size draw: the height uniform between the heights that give
    ``min_area`` and ``max_area`` at ``aspect``, the width from it; None if it does not fit."""
    h = _rint(math.sqrt(min_area / aspect))
    h_max = _rint(math.sqrt(max_area / aspect))
    if _rint(h_max * aspect) > width:  # the tallest crop whose rounded width still fits
        h_max = int((width + 0.5 - 1e-7) / aspect)
        if _rint(h_max * aspect) > width:
            h_max -= 1
    h_max = min(h_max, height)
    h = min(h, h_max)
    if h < h_max:
        h += int(rng.integers(0, h_max - h + 1))
    w = _rint(h * aspect)
    if w * h < min_area:  # rounding left it too small: one row more
        h += 1
        w = _rint(h * aspect)
    if w * h > max_area:  # or too large: one row less
        h -= 1
        w = _rint(h * aspect)
    if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
        return None
    return w, h


def tf_distorted_box(width: int, height: int, rng: np.random.Generator, area_range=(0.05, 1.0),
                     aspect_range=(0.75, 1.33), min_object_covered: float = 0.1,
                     max_attempts: int = 100) -> tuple[int, int, int, int]:
    """TF's ``sample_distorted_bounding_box`` with the whole image as the box: (x0, y0, x1, y1)."""
    area = width * height
    for _ in range(max_attempts):
        aspect = rng.uniform(aspect_range[0], aspect_range[1])
        size = _tf_crop_size(width, height, aspect, area_range[0] * area, area_range[1] * area, rng)
        if size is None or size[0] * size[1] < min_object_covered * area:
            continue
        w, h = size
        # TF draws the offset from [0, free) when there is free room: never flush right / bottom.
        y = int(rng.integers(0, height - h)) if h < height else 0
        x = int(rng.integers(0, width - w)) if w < width else 0
        return x, y, x + w, y + h
    return 0, 0, width, height


def random_resized_box(width: int, height: int, rng: np.random.Generator, min_scale: float,
                       ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision-style crop box: area in [min_scale, 1] of the image, aspect ratio log-uniform
    in ``ratio``; 10 tries, then the largest centred box of an allowed aspect ratio."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return x, y, x + w, y + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    x, y = (width - w) // 2, (height - h) // 2
    return x, y, x + w, y + h


def tf_central_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """TF's ``central_crop``: the central ``fraction`` of each side, (x0, y0, x1, y1)."""
    y0 = int((height - height * fraction) / 2)
    x0 = int((width - width * fraction) / 2)
    return x0, y0, width - x0, height - y0


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Scale the HSV saturation of an (H, W, 3) float RGB image by ``factor`` (clipped to [0, 1]),
    keeping hue and value: each channel moves towards or away from the pixel's maximum."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]  # per-plane max / min: 8x faster than axis=-1
    v = np.maximum(np.maximum(r, g), b)
    spread = v - np.minimum(np.minimum(r, g), b)  # saturation x value
    new_spread = np.minimum(spread * np.float32(factor), v)  # new saturation capped at 1
    ratio = np.divide(new_spread, spread, out=np.ones_like(spread), where=(spread > 0) & (v > 0))
    v = v[..., None]
    out = v - img
    out *= ratio[..., None]
    return np.subtract(v, out, out=out)


def distort_color(img: np.ndarray, rng: np.random.Generator, mode: str = "fast") -> np.ndarray:
    """TF-slim's fast-mode colour distortion of an (H, W, 3) float image in [0, 1]: brightness
    + U(-32/255, 32/255), then saturation x U(0.5, 1.5), clipped to [0, 1]; ``none``: unchanged."""
    if mode == "none":
        return img
    if mode != "fast":
        raise ValueError(f"unknown colour distortion {mode!r}; known: {', '.join(COLOR_DISTORTIONS)}")
    delta = rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    factor = rng.uniform(*SATURATION_RANGE)
    return np.clip(adjust_saturation(img + np.float32(delta), factor), 0.0, 1.0)
