"""TF Object Detection API ``faster_rcnn_nas`` checkpoints (e.g. ``faster_rcnn_nas_coco_2018_01_28``)
as nasnet_det detector weights.

Every TF variable has one place in the C4 detector, and every detector tensor one TF source:

* ``FirstStageFeatureExtractor/<slim>`` -> ``backbone.nasnet.<ours>`` and
  ``SecondStageFeatureExtractor/<slim>`` -> ``roi_heads.res5.nasnet.<ours>``: nasnet_core's TF-slim
  table (``nasnet_core/interop/tf_slim.py``: NHWC -> NCHW, separable depthwise / pointwise, BN);
* ``Conv/{weights,biases}`` (the 3x3 conv after the Cell_10 + Cell_11 concat,
  first_stage_box_predictor_depth 512) -> ``proposal_generator.rpn_head.conv``;
* ``FirstStageBoxPredictor/ClassPredictor``: two logits per anchor (background, object) ->
  ``rpn_head.objectness_logits`` = object - background, whose sigmoid is the softmax's object
  probability; ``FirstStageBoxPredictor/BoxEncodingPredictor``: (ty, tx, th, tw) per anchor ->
  ``rpn_head.anchor_deltas`` (dx, dy, dw, dh). TF's grid anchor generator enumerates the anchors of
  a location aspect-ratio-major (ratio = width / height); Detectron2 size-major (ratio = height /
  width): ``anchor_order`` reorders them;
* ``SecondStageBoxPredictor/ClassPredictor`` ([in, 1 + TF classes], background first) ->
  ``roi_heads.box_predictor.cls_score`` (background last) and ``BoxEncodingPredictor`` ([in, 4 x TF
  classes]) -> ``bbox_pred``: predictor class j is TF label-map id ``label_ids[j]``. The release's
  TF-exact config keeps TF's 90 classes (``ROI_HEADS.TF_LABEL_MAP coco90``: ids 1..90, TF's 91-way
  softmax, the 80 COCO classes mapped after post-processing); an 80-class predictor takes COCO's 80
  category ids (1..90 with gaps) and drops the other rows, so its softmax lacks the 10 unused ids'
  logits (scores then differ from TF's by their share of the softmax).

The box coder's scale factors (10, 10, 5, 5) are the configs' BBOX_REG_WEIGHTS, so deltas carry
over unscaled. What does not fit is refused in one line naming TF's variables; nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from nasnet_core.interop.convert import CheckpointMismatch
from nasnet_core.interop.tf_slim import tf_slim_name, tf_slim_to_torch
from nasnet_core.model.registry import get_config

from .tf_ops import tf_anchor_order
from .tf_postprocess import COCO_CATEGORY_IDS

__all__ = ["TF_BOX_CODE", "PARTS", "anchor_order", "tf_od_plan", "convert_tf_od",
           "tf_od_names", "detector_shapes", "predictor_label_ids", "check_tf_exact",
           "convert_tf_od_checkpoint"]

TF_BOX_CODE = (1, 0, 3, 2)
"""Detectron2's delta k (dx, dy, dw, dh) is TF's code ``TF_BOX_CODE[k]`` of (ty, tx, th, tw)."""
PARTS = {"backbone.nasnet.": "FirstStageFeatureExtractor/",
         "roi_heads.res5.nasnet.": "SecondStageFeatureExtractor/"}
"""Detectron2 module prefix -> TF scope of the two NASNet parts (cells up to Cell_11; the rest per ROI)."""
RPN = "proposal_generator.rpn_head."
BOX = "roi_heads.box_predictor."

Convert = Callable[..., np.ndarray]


def anchor_order(sizes: Sequence[float], ratios: Sequence[float]) -> list[int]:
    """TF's index of each of Detectron2's anchors at one location (the inverse of
    ``tf_ops.tf_anchor_order``)."""
    return torch.argsort(tf_anchor_order(sizes, ratios)).tolist()


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(3, 2, 0, 1)


def _rpn_objectness(order: list[int]) -> tuple[Convert, Convert]:
    fg, bg = [2 * t + 1 for t in order], [2 * t for t in order]
    return (lambda w: _conv(w[..., fg] - w[..., bg])), (lambda b: b[fg] - b[bg])


def _rpn_deltas(order: list[int]) -> tuple[Convert, Convert]:
    cols = [4 * t + k for t in order for k in TF_BOX_CODE]
    return (lambda w: _conv(w[..., cols])), (lambda b: b[cols])


def _second_stage(label_ids: Sequence[int]) -> dict[str, tuple[str, Convert]]:
    cls = [*label_ids, 0]  # TF: background first; Detectron2: last
    box = [4 * (i - 1) + k for i in label_ids for k in TF_BOX_CODE]  # TF has no background box
    p = "SecondStageBoxPredictor/"
    return {BOX + "cls_score.weight": (p + "ClassPredictor/weights", lambda w: w[:, cls].T),
            BOX + "cls_score.bias": (p + "ClassPredictor/biases", lambda b: b[cls]),
            BOX + "bbox_pred.weight": (p + "BoxEncodingPredictor/weights", lambda w: w[:, box].T),
            BOX + "bbox_pred.bias": (p + "BoxEncodingPredictor/biases", lambda b: b[box])}


def _nasnet_part(shapes: dict[str, torch.Size], prefix: str, scope: str) -> dict[str, tuple[str, Convert]]:
    part = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
    plan = {}
    for key in part:
        if key.endswith("num_batches_tracked"):
            continue
        name = tf_slim_name(key, part, aux_scope="")
        if name is None:
            raise ValueError(f"the detector has {prefix}{key}, which TF's NASNet does not")
        plan[prefix + key] = (scope + name, lambda a, key=key: tf_slim_to_torch(key, a).numpy())
    return plan


def tf_od_plan(shapes: dict[str, torch.Size], label_ids: Sequence[int],
               order: list[int]) -> dict[str, tuple[str, Convert]]:
    """Detector key -> (TF variable, array converter) for every tensor of the detector with
    ``shapes`` (its state dict's; BN batch counters aside)."""
    plan: dict[str, tuple[str, Convert]] = {}
    for prefix, scope in PARTS.items():
        plan.update(_nasnet_part(shapes, prefix, scope))
    obj_w, obj_b = _rpn_objectness(order)
    del_w, del_b = _rpn_deltas(order)
    p = "FirstStageBoxPredictor/"
    plan.update({RPN + "conv.weight": ("Conv/weights", _conv),
                 RPN + "conv.bias": ("Conv/biases", lambda b: b),
                 RPN + "objectness_logits.weight": (p + "ClassPredictor/weights", obj_w),
                 RPN + "objectness_logits.bias": (p + "ClassPredictor/biases", obj_b),
                 RPN + "anchor_deltas.weight": (p + "BoxEncodingPredictor/weights", del_w),
                 RPN + "anchor_deltas.bias": (p + "BoxEncodingPredictor/biases", del_b)})
    plan.update(_second_stage(label_ids))
    unplanned = [k for k in shapes if k not in plan and not k.endswith("num_batches_tracked")]
    if unplanned:
        raise ValueError(f"the detector has tensors a TF faster_rcnn_nas checkpoint does not: "
                         f"{', '.join(unplanned[:10])}")
    return plan


def tf_od_names(plan: dict[str, tuple[str, Convert]]) -> dict[str, str]:
    """Detector key -> TF variable name of a plan (several keys may read one variable)."""
    return {key: name for key, (name, _) in plan.items()}


def _check_label_ids(tf_vars: dict[str, np.ndarray], label_ids: Sequence[int], num_classes: int) -> None:
    if len(label_ids) != num_classes:
        raise ValueError(f"{len(label_ids)} label ids for a detector of {num_classes} classes "
                         "(MODEL.ROI_HEADS.NUM_CLASSES); give one TF label-map id per class")
    if len(set(label_ids)) != len(label_ids) or min(label_ids) < 1:
        raise ValueError(f"label ids must be distinct TF label-map ids >= 1, got {list(label_ids)}")
    bias = tf_vars.get("SecondStageBoxPredictor/ClassPredictor/biases")
    if bias is not None and max(label_ids) > bias.shape[0] - 1:
        raise ValueError(f"label id {max(label_ids)} is beyond the checkpoint's {bias.shape[0] - 1} classes "
                         "(SecondStageBoxPredictor/ClassPredictor has background + one logit per label id)")


def _listing(title: str, items: list[str]) -> str:
    more = f" and {len(items) - 12} more" if len(items) > 12 else ""
    return f"{title} ({len(items)}): {', '.join(items[:12])}{more}"


def convert_tf_od(tf_vars: dict[str, np.ndarray], shapes: dict[str, torch.Size], label_ids: Sequence[int],
                  order: list[int]) -> dict[str, torch.Tensor]:
    """The detector state dict (keys and ``shapes`` of its state dict) from a TF faster_rcnn_nas
    checkpoint's variables; CheckpointMismatch naming the missing, left-over and mis-shaped TF
    variables when it does not fit exactly."""
    _check_label_ids(tf_vars, label_ids, shapes[BOX + "cls_score.bias"][0] - 1)
    plan = tf_od_plan(shapes, label_ids, order)
    used = set(tf_od_names(plan).values())
    missing = sorted(used - set(tf_vars))
    extra = sorted(set(tf_vars) - used)
    out, wrong = {}, []
    for key, (name, convert) in plan.items():
        if name not in tf_vars:
            continue
        array = np.asarray(tf_vars[name], dtype=np.float32)
        try:
            value = np.ascontiguousarray(convert(array))
        except (IndexError, ValueError):
            value = None
        if value is None or tuple(value.shape) != tuple(shapes[key]):
            wrong.append(f"{name} {tuple(array.shape)} for {key} {tuple(shapes[key])}")
            continue
        out[key] = torch.from_numpy(value)
    problems = [_listing(t, items) for t, items in (("missing TF variables", missing),
                                                    ("TF variables the detector has no place for", extra),
                                                    ("mis-shaped TF variables", wrong)) if items]
    if problems:
        raise CheckpointMismatch("TF faster_rcnn_nas checkpoint does not fit the detector: "
                                 + "; ".join(problems))
    out.update({k: torch.tensor(0) for k in shapes if k.endswith("num_batches_tracked")})
    return out


def detector_shapes(cfg) -> dict[str, torch.Size]:
    """The shape of every state-dict tensor of the detector ``cfg`` describes (built on the CPU: the
    meta device does not run every module's construction)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def predictor_label_ids(cfg, tf_vars: dict[str, np.ndarray],
                        label_ids: Sequence[int] | None = None) -> list[int]:
    """The TF label-map id of each class of the detector's box predictor: ``label_ids`` when given;
    TF's own 1..N when the predictor has the checkpoint's N classes (e.g. 90 under
    ``ROI_HEADS.TF_LABEL_MAP coco90``); COCO's 80 category ids for an 80-class detector of a 90-class
    checkpoint."""
    classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    bias = tf_vars.get("SecondStageBoxPredictor/ClassPredictor/biases")
    tf_classes = classes if bias is None else int(bias.shape[0]) - 1
    if label_ids:
        return [int(i) for i in label_ids]
    if classes == tf_classes:
        return list(range(1, classes + 1))
    if (classes, tf_classes) == (len(COCO_CATEGORY_IDS), 90):
        return list(COCO_CATEGORY_IDS)  # TF label-map id = COCO category id
    raise ValueError(f"the checkpoint has {tf_classes} classes, the detector {classes} "
                     "(MODEL.ROI_HEADS.NUM_CLASSES): give the TF label-map id of each detector class "
                     "(--label-ids 1,2,...)")


def check_tf_exact(cfg) -> None:
    """ValueError unless the detector computes TF's functions where the weights depend on it:
    TF "SAME" pooling (PAD_MODE tf), TF-slim's BN eps 1e-3, ReLU6 in the RPN head."""
    n = cfg.MODEL.NASNET
    eps = n.BN_EPS if n.BN_EPS >= 0 else get_config(n.ARCH).bn_eps
    problems = [f"MODEL.NASNET.PAD_MODE {n.PAD_MODE!r} (TF's is 'tf')" if n.PAD_MODE != "tf" else "",
                f"BN eps {eps:g} (TF-slim's NASNet: 0.001)" if abs(eps - 1e-3) > 1e-12 else "",
                f"MODEL.RPN.HEAD_NAME {cfg.MODEL.RPN.HEAD_NAME!r} (TF's RPN conv ends in ReLU6: "
                "TFRPNHead)" if cfg.MODEL.RPN.HEAD_NAME != "TFRPNHead" else ""]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"the detector config does not compute what TF's faster_rcnn_nas computes: "
                         f"{'; '.join(problems)}; use a *_tf config (configs/COCO-Detection/)")


def convert_tf_od_checkpoint(tf_vars: dict[str, np.ndarray], cfg,
                             label_ids: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of the detector ``cfg`` describes from a TF faster_rcnn_nas checkpoint's
    variables (see the module docstring); ValueError / CheckpointMismatch in one line otherwise."""
    check_tf_exact(cfg)
    gen = cfg.MODEL.ANCHOR_GENERATOR
    order = anchor_order(gen.SIZES[0], gen.ASPECT_RATIOS[0])
    return convert_tf_od(tf_vars, detector_shapes(cfg), predictor_label_ids(cfg, tf_vars, label_ids), order)
