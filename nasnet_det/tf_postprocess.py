"""The TF OD API Faster R-CNN's two selection steps, per image, on :mod:`nasnet_det.tf_ops`.

* :func:`select_proposals`: ``FasterRCNNMetaArch._predict_first_stage`` (anchors clipped to the
  input at test time, pruned to those inside it in training) + ``_postprocess_rpn``: TF box
  decoding, objectness as a probability, NMS over all anchors (no pre-NMS top-k), then clipping
  to the image window and dropping zero-area boxes.
* :func:`multiclass_nms`: ``post_processing.batch_multiclass_non_max_suppression`` for one image
  (per-class NMS on unclipped boxes, merge by score, clip, drop zero area, keep the top N).
* :class:`TFSecondStage`: ``_postprocess_box_classifier`` (softmax, per-class decoding against
  the proposals as TF holds them, :func:`multiclass_nms`), with an optional label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.structures import Boxes, Instances

from .tf_ops import clip_boxes, decode_boxes, f32, nms, positive_area

__all__ = ["select_proposals", "multiclass_nms", "TFSecondStage", "LABEL_MAPS", "COCO_CATEGORY_IDS"]

COCO_CATEGORY_IDS = tuple(c["id"] for c in COCO_CATEGORIES if c["isthing"])
"""The 80 category ids COCO's instances json uses (of 1..90), from Detectron2's own COCO metadata;
Detectron2's contiguous class i is the i-th. TF's COCO label map (mscoco_label_map.pbtxt) is ids
1..90 with these 80 named."""


def _coco90() -> torch.Tensor:
    """TF class index (label-map id - 1, 0..89) -> Detectron2 contiguous COCO class, -1 if unused."""
    contiguous = {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS)}
    return torch.tensor([contiguous.get(k + 1, -1) for k in range(90)], dtype=torch.long, device="cpu")


LABEL_MAPS = {
    # MODEL.ROI_HEADS.TF_LABEL_MAP name -> predictor class -> dataset class (-1: dropped), NUM_CLASSES
    "coco90": (_coco90, 90),
}


def _to_normalized_and_back(boxes: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """TF keeps proposals normalised (``y * float32(1 / H)``) and decodes against ``that * H``."""
    h, w = (float(s) for s in input_size)
    scale = boxes.new_tensor([w, h, w, h])
    inverse = torch.stack([f32(1.0) / f32(w), f32(1.0) / f32(h)] * 2).to(boxes.device)
    return (boxes * inverse) * scale


def select_proposals(anchors: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor, weights: tuple,
                     input_size: tuple[int, int], image_size: tuple[int, int], nms_thresh: float,
                     max_proposals: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """TF's proposals of one image from xyxy ``anchors`` (N, 4) in TF's order, objectness ``logits``
    (N,) and Detectron2 ``deltas`` (N, 4): (boxes (P, 4) xyxy, their logits), by descending score.

    ``input_size``: the input tensor's (H, W) (TF's image_shape); ``image_size``: the image's own
    (TF's true_image_shape, the clip window)."""
    h, w = input_size
    if training:  # TF prunes anchors not inside the input (_remove_invalid_anchors_and_predictions)
        inside = (anchors[:, :2] >= 0).all(1) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)
        anchors, logits, deltas = anchors[inside], logits[inside], deltas[inside]
    else:  # ... and clips them at test time
        anchors = clip_boxes(anchors, h, w)
    boxes = decode_boxes(deltas.float(), anchors.float(), weights)
    keep = nms(boxes, torch.sigmoid(logits.float()), nms_thresh, max_proposals, score_threshold=0.0)
    boxes = clip_boxes(boxes[keep], *image_size)
    valid = positive_area(boxes)
    return boxes[valid], logits[keep][valid]


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int],
                   score_thresh: float, iou_thresh: float, max_per_class: int,
                   max_total: int) -> tuple[torch.Tensor, ...]:
    """TF's multiclass NMS of one image: ``boxes`` (R, K, 4) xyxy, ``scores`` (R, K) -> (boxes (D, 4)
    clipped to ``image_size``, scores (D,), classes (D,)), by descending score, D <= max_total.

    Per class: NMS on the unclipped boxes (score > ``score_thresh``, IOU > ``iou_thresh`` drops, at
    most ``max_per_class``); the classes' selections merged in class order and sorted by score
    (stable); then clipped, zero-area boxes dropped, the first ``max_total`` kept."""
    picked = [(nms(boxes[:, k], scores[:, k], iou_thresh, max_per_class, score_thresh), k)
              for k in range(scores.shape[1])]
    index = torch.cat([i for i, _ in picked])
    classes = torch.cat([torch.full_like(i, k) for i, k in picked])
    out_scores = scores[index, classes]
    order = torch.sort(out_scores, descending=True, stable=True).indices
    out_boxes = clip_boxes(boxes[index[order], classes[order]], *image_size)
    valid = positive_area(out_boxes)
    order = order[valid][:max_total]
    return out_boxes[valid][:max_total], out_scores[order], classes[order]


@dataclass
class TFSecondStage:
    """``_postprocess_box_classifier`` with ``batch_non_max_suppression`` and the SOFTMAX converter."""

    weights: tuple                         # ROI_BOX_HEAD.BBOX_REG_WEIGHTS (TF's scale factors, reordered)
    score_thresh: float                    # TF score_threshold
    nms_thresh: float                      # TF iou_threshold
    max_per_class: int                     # TF max_detections_per_class
    max_total: int                         # TF max_total_detections
    label_map: torch.Tensor | None = None  # predictor class -> output class, -1 dropped (after the top N)

    def image(self, class_logits: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor,
              input_size: tuple[int, int], image_size: tuple[int, int]) -> Instances:
        """Detections of one image from Detectron2's predictor outputs: ``class_logits`` (R, K + 1),
        background last; class-specific ``deltas`` (R, 4K); ``proposals`` (R, 4) in input pixels."""
        r, k = class_logits.shape[0], class_logits.shape[1] - 1
        anchors = _to_normalized_and_back(proposals.float(), input_size)
        boxes = decode_boxes(deltas.float().reshape(r * k, 4), anchors.repeat_interleave(k, 0), self.weights)
        scores = torch.softmax(class_logits.float(), dim=1)[:, :k]
        boxes, scores, classes = multiclass_nms(boxes.view(r, k, 4), scores, image_size, self.score_thresh,
                                                self.nms_thresh, self.max_per_class, self.max_total)
        if self.label_map is not None:
            classes = self.label_map.to(classes.device)[classes]
            keep = classes >= 0
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        result = Instances(image_size)
        result.pred_boxes, result.scores, result.pred_classes = Boxes(boxes), scores, classes
        return result

    def __call__(self, predictions: tuple, proposals: list[Instances], input_size: tuple[int, int]):
        """Per-image :meth:`image` of FastRCNNOutputLayers' (scores, deltas) over the batch."""
        class_logits, deltas = predictions
        sizes = [len(p) for p in proposals]
        return [self.image(c, d, p.proposal_boxes.tensor, input_size, p.image_size)
                for c, d, p in zip(class_logits.split(sizes), deltas.split(sizes), proposals)]
