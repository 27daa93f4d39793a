"""The TF OD API's RPN head: Detectron2's StandardRPNHead with ReLU6 after the 3x3 conv.

TF's Faster R-CNN first stage (``faster_rcnn_meta_arch``: ``slim.conv2d(..., activation_fn=
tf.nn.relu6, scope='Conv')``) caps the RPN's hidden features at 6; Detectron2's head uses ReLU.
``MODEL.RPN.HEAD_NAME: "TFRPNHead"`` computes what converted TF weights (tf_convert.py) expect.
"""

from __future__ import annotations

from detectron2.layers import Conv2d
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY, StandardRPNHead
from torch import nn

__all__ = ["TFRPNHead"]


@RPN_HEAD_REGISTRY.register()
class TFRPNHead(StandardRPNHead):
    """StandardRPNHead (same modules and checkpoint keys) whose 3x3 conv ends in ReLU6."""

    def _get_rpn_conv(self, in_channels: int, out_channels: int) -> Conv2d:
        return Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU6())
