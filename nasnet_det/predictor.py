"""Single-image inference with a config's own test-time resizing (fixed square or shortest edge)."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from .checkpoint import NASNetCheckpointer
from .engine import build_augmentations
from .fast_eval import maybe_fast_eval

__all__ = ["Predictor"]


class Predictor:
    """Build the model of ``cfg``, load MODEL.WEIGHTS, and predict on BGR uint8 images (through the
    BN-folded copy of nasnet_det.fast_eval when TEST.FAST_EVAL is on)."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            NASNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        self.model = maybe_fast_eval(self.cfg, model)
        self.augs = build_augmentations(self.cfg, is_train=False)
        self.format = cfg.INPUT.FORMAT
        names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        self.metadata = MetadataCatalog.get(names[0] if names else "__unused")

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray):
        """Instances (boxes, scores, classes) in the coordinates of ``image_bgr``."""
        from detectron2.data import transforms as T

        image = image_bgr[:, :, ::-1] if self.format == "RGB" else image_bgr
        h, w = image.shape[:2]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        T.AugmentationList(self.augs)(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": tensor, "height": h, "width": w}])[0]["instances"]
