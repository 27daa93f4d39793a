"""nasnet_det: NASNet-A as a Detectron2 backbone (Faster R-CNN, C4 and FPN).

``import nasnet_det`` registers the backbones (``build_nasnet_c4_backbone``,
``build_nasnet_fpn_backbone``), the meta-architecture (``NASNetRCNN``), the ROI head
(``NASNetROIHeads``), TF's first stage (``TFRPN``, ``TFRPNHead``) and the datasets (shapes,
COCO 2014 mini-val 8k splits) with Detectron2.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without detectron2
    raise ImportError(
        "nasnet_det needs Detectron2, which is not on PyPI: install torch first, then "
        "`pip install --no-build-isolation -e \".[detectron2]\"` from this repository."
    ) from e

from .backbone import NASNetBackbone, build_nasnet_c4_backbone, build_nasnet_fpn_backbone
from .checkpoint import NASNetCheckpointer
from .config import add_nasnet_config
from .datasets import register_all
from .meta_arch import NASNetRCNN
from .roi_heads import NASNetROIHeads
from .tf_rpn import TFRPN, TFRPNHead

register_all()

__all__ = [
    "NASNetBackbone", "NASNetCheckpointer", "NASNetRCNN", "NASNetROIHeads", "TFRPN", "TFRPNHead",
    "add_nasnet_config", "build_nasnet_c4_backbone", "build_nasnet_fpn_backbone", "register_all",
]
