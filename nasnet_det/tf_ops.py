"""TensorFlow's arithmetic for the TF Object Detection API's ``faster_rcnn_nas``, in torch.

Each function computes what the named TF function computes, in float32 and in TF's order of
operations, so converted TF weights give TF's numbers (``tests/test_tf_exact_ops.py`` checks each
against TensorFlow itself). Boxes are Detectron2's ``(x1, y1, x2, y2)`` except where TF's own
signature is mirrored (``crop_and_resize`` takes TF's normalised ``(y1, x1, y2, x2)``).
"""

from __future__ import annotations

import torch
from torchvision.ops import nms as _torchvision_nms

__all__ = ["resize_bilinear_legacy", "crop_and_resize", "decode_boxes", "clip_boxes", "positive_area",
           "nms", "tf_anchor_order", "f32"]

_CHUNK_ELEMENTS = 1 << 25  # crop_and_resize gathers at most this many values per corner at once
_NMS_BLOCK = 4096          # candidates per block of the early-stopping greedy NMS


def f32(value: float) -> torch.Tensor:
    """``value`` as a float32 scalar tensor (TF turns Python floats into float32 constants)."""
    return torch.tensor(value, dtype=torch.float32, device="cpu")


def _legacy_grid(in_size: int, out_size: int, device) -> tuple:
    """TF ResizeBilinear's source rows for align_corners=False, half_pixel_centers=False."""
    scale = f32(in_size) / f32(out_size)  # CalculateResizeScale: float division
    pos = torch.arange(out_size, dtype=torch.float32, device=device) * scale.to(device)
    low = torch.floor(pos)
    lerp = pos - low
    upper = torch.ceil(pos).clamp(max=in_size - 1).long()
    return low.long().clamp(min=0), upper, lerp


def resize_bilinear_legacy(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``tf.compat.v1.image.resize_images(..., BILINEAR, align_corners=False)`` of a (C, H, W) image.

    TF1's resize (what the OD API's ``fixed_shape_resizer`` calls): source coordinate
    ``i * in / out`` (no half-pixel offset, no antialiasing), then TF's lerp order."""
    img = image.float()
    (h, w), (oh, ow) = img.shape[-2:], size
    if (h, w) == (oh, ow):
        return img  # TF skips the op when the size already matches
    y0, y1, ly = _legacy_grid(h, oh, img.device)
    x0, x1, lx = _legacy_grid(w, ow, img.device)
    top, bottom = img[:, y0], img[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * lx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * lx
    return top + (bottom - top) * ly[:, None]


def _sample_points(lo: torch.Tensor, hi: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """crop_and_resize's corner-aligned sample grid along one axis: (R, n) image coordinates."""
    if n == 1:  # TF: 0.5 * (y1 + y2) * (image_height - 1), the 0.5 a double
        return (0.5 * (lo + hi).double() * (size - 1)).float()[:, None]
    step = (hi - lo) * float(size - 1) / float(n - 1)
    idx = torch.arange(n, dtype=torch.float32, device=lo.device)
    return (lo * float(size - 1))[:, None] + idx[None] * step[:, None]


def crop_and_resize(features: torch.Tensor, boxes: torch.Tensor, box_indices: torch.Tensor,
                    crop_size: tuple[int, int], extrapolation_value: float = 0.0) -> torch.Tensor:
    """``tf.image.crop_and_resize`` (bilinear) of (B, C, H, W) features: (R, C, ch, cw) crops.

    ``boxes`` (R, 4) are TF's normalised (y1, x1, y2, x2): y maps to ``y * (H - 1)``, and crop row
    i samples ``y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (ch - 1)`` (a grid through the corners,
    not ROIAlign's cell centres). A sample outside ``[0, H - 1] x [0, W - 1]`` is
    ``extrapolation_value``. Differentiable in ``features``."""
    (_, c, h, w), (ch, cw) = features.shape, crop_size
    boxes = boxes.float()
    ys = _sample_points(boxes[:, 0], boxes[:, 2], h, ch)
    xs = _sample_points(boxes[:, 1], boxes[:, 3], w, cw)
    inside = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
    nhwc = features.permute(0, 2, 3, 1)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, ch * cw * c))
    out = [_bilinear(nhwc, box_indices[i:i + chunk], ys[i:i + chunk], xs[i:i + chunk])
           for i in range(0, len(boxes), chunk)]
    crops = torch.cat(out) if out else nhwc.new_zeros((0, ch, cw, c))
    return crops.masked_fill_(~inside[..., None], extrapolation_value).permute(0, 3, 1, 2)


def _bilinear(nhwc: torch.Tensor, b: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """CropAndResize's per-sample lerp: top, bottom along x, then along y (TF's order)."""
    h, w = nhwc.shape[1:3]
    top, ly = ys.floor(), ys - ys.floor()
    left, lx = xs.floor(), xs - xs.floor()
    t, bt = top.long().clamp(0, h - 1), ys.ceil().long().clamp(0, h - 1)
    lf, rt = left.long().clamp(0, w - 1), xs.ceil().long().clamp(0, w - 1)
    bi = b.long()[:, None, None]

    def _at(yi, xi):
        return nhwc[bi, yi[:, :, None], xi[:, None, :]]

    lx = lx[:, None, :, None]
    top_row = _at(t, lf) + (_at(t, rt) - _at(t, lf)) * lx
    bottom_row = _at(bt, lf) + (_at(bt, rt) - _at(bt, lf)) * lx
    return top_row + (bottom_row - top_row) * ly[:, :, None, None]


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, weights: tuple) -> torch.Tensor:
    """TF FasterRcnnBoxCoder.decode of (N, 4) Detectron2 deltas (dx, dy, dw, dh) on xyxy anchors.

    ``weights`` is Detectron2's (wx, wy, ww, wh) = TF's scale factors (10, 10, 5, 5) reordered.
    Unlike Detectron2's Box2BoxTransform, dw / dh are not clamped."""
    wx, wy, ww, wh = (float(v) for v in weights)
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2.0, anchors[:, 1] + ha / 2.0
    dx, dy, dw, dh = deltas[:, 0] / wx, deltas[:, 1] / wy, deltas[:, 2] / ww, deltas[:, 3] / wh
    w, h = torch.exp(dw) * wa, torch.exp(dh) * ha
    xc, yc = dx * wa + xa, dy * ha + ya
    return torch.stack([xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0], dim=1)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """box_list_ops.clip_to_window to [0, 0, height, width]: ``max(min(v, hi), lo)`` per coordinate."""
    hi = boxes.new_tensor([width, height, width, height])
    return torch.maximum(torch.minimum(boxes, hi), boxes.new_zeros(4))


def positive_area(boxes: torch.Tensor) -> torch.Tensor:
    """box_list_ops.area > 0: the boxes TF's clip_to_window(filter_nonoverlapping=True) keeps."""
    return (boxes[..., 3] - boxes[..., 1]) * (boxes[..., 2] - boxes[..., 0]) > 0


def _tf_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IOU of TF's NMS kernel between (N, 4) and (M, 4) boxes: 0 where either area is <= 0."""
    area_a = (a[:, 3] - a[:, 1]) * (a[:, 2] - a[:, 0])
    area_b = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0])
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi[..., 1] - lo[..., 1]).clamp(min=0) * (hi[..., 0] - lo[..., 0]).clamp(min=0)
    iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    return torch.where((area_a[:, None] > 0) & (area_b[None, :] > 0), iou, torch.zeros_like(iou))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_output: int,
        score_threshold: float = 0.0) -> torch.Tensor:
    """Indices TF's ``non_max_suppression_with_scores`` (hard NMS) selects, in its order.

    Candidates: score > ``score_threshold``, taken by descending score, ties by lower index;
    one is dropped when its IOU with a kept box is > ``iou_threshold`` (float32); stops at
    ``max_output``. Early-stopping blocks, so no pre-NMS top-k is needed for speed."""
    cand = torch.nonzero(scores > score_threshold).flatten()
    cand = cand[torch.sort(scores[cand], descending=True, stable=True).indices]
    # TF compares the float32 IOU with the float32 threshold; torchvision with a double: give it
    # the float32 value, so that IOU == float32(0.6) (> 0.6 as a double) is kept as in TF.
    thr = f32(iou_threshold).to(boxes.device)
    kept = cand[:0]
    for start in range(0, len(cand), _NMS_BLOCK):
        if len(kept) >= max_output:
            break
        block = cand[start:start + _NMS_BLOCK]
        if len(kept):
            block = block[~(_tf_iou(boxes[block], boxes[kept]) > thr).any(dim=1)]
        rank = -torch.arange(len(block), dtype=torch.float32, device=boxes.device)
        kept = torch.cat([kept, block[_torchvision_nms(boxes[block].float(), rank, float(thr))]])
    return kept[:max_output]


def tf_anchor_order(sizes, aspect_ratios) -> torch.Tensor:
    """Detectron2 cell-anchor index of each TF grid-anchor index, for the same (size, ratio) set.

    TF's GridAnchorGenerator orders a cell's anchors ratio-major (``meshgrid(scales, ratios)``)
    with ratio = width / height; Detectron2's size-major with ratio = height / width. So TF anchor
    (ratio r, scale s) is Detectron2's (size s, ratio 1 / r). Flattened maps are (y, x, anchor)."""
    sizes, ratios = [float(s) for s in sizes], [float(r) for r in aspect_ratios]
    order = []
    for r in ratios:
        inverse = [abs(q - 1.0 / r) for q in ratios]
        j = inverse.index(min(inverse))
        if inverse[j] > 1e-6 * max(1.0, 1.0 / r):
            raise ValueError(f"aspect ratios {ratios} are not closed under 1/r: TF's ratio {r} "
                             "(width / height) has no Detectron2 anchor (height / width)")
        order += [i * len(ratios) + j for i in range(len(sizes))]
    return torch.tensor(order, dtype=torch.long, device="cpu")
