"""``MODEL.PROPOSAL_GENERATOR.NAME "TFRPN"``: Detectron2's RPN whose proposals are the TF OD API's;
``MODEL.RPN.HEAD_NAME "TFRPNHead"``: Detectron2's RPN head with TF's ReLU6 after the 3 x 3 conv.

Head, anchors and losses are Detectron2's (``MODEL.RPN.*``); the proposals are selected as
``FasterRCNNMetaArch`` does (:func:`nasnet_det.tf_postprocess.select_proposals`): anchors in TF's
grid order (so equal scores resolve as in TF), clipped to the input (test) or pruned to it
(training), TF box decoding without Detectron2's clamp, NMS at ``RPN.NMS_THRESH`` over every anchor
(``RPN.PRE_NMS_TOPK_*`` and ``PROPOSAL_GENERATOR.MIN_SIZE`` are not used: TF has neither),
``RPN.POST_NMS_TOPK_*`` proposals (TF's first_stage_max_proposals), clipped to the image.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY, StandardRPNHead
from detectron2.structures import Boxes, Instances
from torch import nn

from .tf_ops import tf_anchor_order
from .tf_postprocess import select_proposals

__all__ = ["TFRPN", "TFRPNHead"]


@RPN_HEAD_REGISTRY.register()
class TFRPNHead(StandardRPNHead):
    """StandardRPNHead whose 3 x 3 conv is followed by ReLU6, as the OD API's first-stage box
    predictor conv (``activation_fn=tf.nn.relu6``); Detectron2's uses ReLU."""

    def _get_rpn_conv(self, in_channels, out_channels):
        return Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU6())


@PROPOSAL_GENERATOR_REGISTRY.register()
class TFRPN(RPN):
    """RPN with TF's first-stage proposal selection (one feature map, as the C4 detector)."""

    @configurable
    def __init__(self, *, tf_order: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        # Detectron2 cell-anchor index of each TF anchor index of a cell (not saved in checkpoints).
        self.register_buffer("tf_order", tf_order, persistent=False)
        self._input_size: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        """RPN's settings plus TF's anchor order from ``MODEL.ANCHOR_GENERATOR``."""
        gen = cfg.MODEL.ANCHOR_GENERATOR
        if len(cfg.MODEL.RPN.IN_FEATURES) != 1 or len(gen.SIZES) != 1 or len(gen.ASPECT_RATIOS) != 1:
            raise ValueError("PROPOSAL_GENERATOR.NAME TFRPN needs one RPN feature map with one list of "
                             f"anchor sizes and ratios (TF's grid anchors), got RPN.IN_FEATURES "
                             f"{list(cfg.MODEL.RPN.IN_FEATURES)}")
        ret = super().from_config(cfg, input_shape)
        ret["tf_order"] = tf_anchor_order(gen.SIZES[0], gen.ASPECT_RATIOS[0])
        return ret

    def forward(self, images, features, gt_instances=None):
        """RPN.forward, noting the input tensor's size (TF's image_shape) for the selection."""
        self._input_size = tuple(images.tensor.shape[-2:])
        return super().forward(images, features, gt_instances)

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        """TF's proposals for the images of the batch last seen by :meth:`forward`."""
        return self.select(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes, self._input_size)

    @torch.no_grad()
    def select(self, anchors: list[Boxes], logits: list[torch.Tensor], deltas: list[torch.Tensor],
               image_sizes: list[tuple[int, int]], input_size: tuple[int, int]) -> list[Instances]:
        """Per image: ``proposal_boxes`` and ``objectness_logits`` as TF's first stage selects them.

        ``anchors`` / ``logits`` (N, H*W*A) / ``deltas`` (N, H*W*A, 4): RPN.forward's, one level."""
        a = anchors[0].tensor
        k = len(self.tf_order)
        cells = torch.arange(len(a) // k, device=a.device)
        order = (cells[:, None] * k + self.tf_order.to(a.device)[None]).flatten()
        out = []
        for i, size in enumerate(image_sizes):
            boxes, kept = select_proposals(a[order], logits[0][i][order], deltas[0][i][order],
                                           self.box2box_transform.weights, input_size, size, self.nms_thresh,
                                           int(self.post_nms_topk[self.training]), self.training)
            result = Instances(size)
            result.proposal_boxes, result.objectness_logits = Boxes(boxes), kept
            out.append(result)
        return out
