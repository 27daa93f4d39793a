"""``MODEL.META_ARCHITECTURE "NASNetRCNN"``: Detectron2's GeneralizedRCNN, plus TF's input handling.

With ``INPUT.TF_RESIZE`` the model itself does what the TF OD API's ``FasterRCNNMetaArch.preprocess``
does for ``faster_rcnn_nas``: each image (as read, RGB 0-255) is resized in float32 to
``INPUT.FIXED_SIZE`` squared by TF1's bilinear resize (``fixed_shape_resizer``: align_corners
False, no half-pixel offset, no antialiasing, aspect ratio not kept), then scaled as the NAS
extractor's ``preprocess``, ``(2 / 255) x - 1`` (``PIXEL_MEAN`` / ``PIXEL_STD`` are not used), and
not padded. The data loader then does not resize (``engine.build_augmentations``). Detections come
back in the image's own pixels (``height`` / ``width`` of the input, else the image's shape): the
fixed-size boxes scaled by original / FIXED_SIZE, i.e. TF's normalised boxes x the original size.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList, Instances

from .tf_ops import f32, resize_bilinear_legacy

__all__ = ["NASNetRCNN", "tf_preprocess", "META_ARCH"]

META_ARCH = "NASNetRCNN"
"""The ``MODEL.META_ARCHITECTURE`` that ``INPUT.TF_RESIZE`` needs."""


def tf_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, H, W) 0-255 image as the OD API feeds faster_rcnn_nas: fixed_shape_resizer to ``size``
    squared, then ``(2 / 255) x - 1`` in float32."""
    return resize_bilinear_legacy(image.float(), (size, size)) * f32(2.0 / 255.0).to(image.device) - 1.0


def _resized_targets(inputs: dict, size: int) -> dict:
    """A training input whose ground truth is moved into the ``size`` x ``size`` resized image."""
    if "instances" not in inputs:
        return inputs
    gt = inputs["instances"]
    h, w = inputs["image"].shape[-2:]
    out = Instances((size, size), **gt.get_fields())
    if out.has("gt_boxes"):
        boxes = out.gt_boxes.clone()
        boxes.scale(size / w, size / h)
        out.gt_boxes = boxes
    return {**inputs, "instances": out}


@META_ARCH_REGISTRY.register()
class NASNetRCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose preprocessing is TF's when ``INPUT.TF_RESIZE`` (else unchanged)."""

    @configurable
    def __init__(self, *, tf_resize: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.tf_resize = tf_resize  # INPUT.FIXED_SIZE under INPUT.TF_RESIZE, else 0

    @classmethod
    def from_config(cls, cfg):
        """GeneralizedRCNN's settings plus INPUT.TF_RESIZE's size."""
        ret = super().from_config(cfg)
        if cfg.INPUT.TF_RESIZE:
            if cfg.INPUT.FIXED_SIZE <= 0:
                raise ValueError("INPUT.TF_RESIZE needs INPUT.FIXED_SIZE > 0 (TF's fixed_shape_resizer "
                                 f"height = width), got {cfg.INPUT.FIXED_SIZE}")
            ret["tf_resize"] = cfg.INPUT.FIXED_SIZE
        return ret

    def preprocess_image(self, batched_inputs):
        """TF's resize and scaling, no padding (INPUT.TF_RESIZE); else Detectron2's normalise and pad."""
        if not self.tf_resize:
            return super().preprocess_image(batched_inputs)
        return ImageList.from_tensors([tf_preprocess(self._move_to_current_device(x["image"]), self.tf_resize)
                                       for x in batched_inputs])

    def forward(self, batched_inputs):
        """GeneralizedRCNN.forward; in training under INPUT.TF_RESIZE the ground truth is resized too."""
        if self.tf_resize and self.training:
            batched_inputs = [_resized_targets(x, self.tf_resize) for x in batched_inputs]
        return super().forward(batched_inputs)

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        """GeneralizedRCNN.inference; under INPUT.TF_RESIZE results default to the image's own size."""
        if self.tf_resize:
            batched_inputs = [{"height": x["image"].shape[-2], "width": x["image"].shape[-1], **x}
                              for x in batched_inputs]
        return super().inference(batched_inputs, detected_instances, do_postprocess)
