"""The NASNet C4 ROI head: per ROI, reduction_cell_1 + stage-3 normal cells, then mean-pool.

With ``MODEL.ROI_BOX_HEAD.POOLER_TYPE "TFCropAndResize"`` the crops are the TF OD API's
(``tf.image.crop_and_resize`` of boxes normalised by the input tensor's size) instead of ROIAlign's;
with ``MODEL.ROI_HEADS.TF_POSTPROCESS`` detections are post-processed as TF's second stage
(:class:`nasnet_det.tf_postprocess.TFSecondStage`, optionally through ``TF_LABEL_MAP``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.structures import Boxes, Instances
from torch import nn

from .backbone import c4_split
from .model import build_nasnet, trim
from .tf_ops import crop_and_resize, f32
from .tf_postprocess import LABEL_MAPS, TFSecondStage

__all__ = ["NASNetROIHeads", "NASNetCropHead", "TFCropAndResize", "TF_POOLER", "build_tf_second_stage"]

TF_POOLER = "TFCropAndResize"
"""The ``MODEL.ROI_BOX_HEAD.POOLER_TYPE`` that selects :class:`TFCropAndResize` (NASNetROIHeads only)."""


class NASNetCropHead(nn.Module):
    """Runs the cells after the C4 split on ROI crops of the concatenated stride-16 pair."""

    def __init__(self, nasnet):
        super().__init__()
        start = c4_split(nasnet)
        specs = nasnet.cell_specs
        self.start = start
        self.split = specs[start - 2].out_channels  # channels of the older cell of the pair
        self.in_channels = self.split + specs[start - 1].out_channels
        self.out_channels = specs[-1].out_channels
        self.nasnet = trim(nasnet, {s.name for s in specs[start:]})

    def set_training_step(self, step: int) -> None:
        """Drive ScheduledDropPath of the head cells."""
        self.nasnet.set_training_step(step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C_pair, S, S) crops -> (R, C_out, S/2, S/2) final-stage features (after ReLU)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"NASNet ROI head expects {self.in_channels}-channel crops, got {x.shape[1]}")
        outputs = [x[:, :self.split], x[:, self.split:]]
        outputs = self.nasnet.forward_cells(outputs, self.start)
        return F.relu(outputs[-1])


class TFCropAndResize(nn.Module):
    """The OD API's crop of one feature map: proposals normalised by the input tensor's size
    (``to_normalized_coordinates``: ``y * float32(1 / H)``), then ``tf.image.crop_and_resize`` to
    ``output_size``. No max-pool follows: the released model's maxpool_kernel_size 1, stride 1."""

    def __init__(self, resolution: int):
        super().__init__()
        self.output_size = (resolution, resolution)

    def forward(self, features: list[torch.Tensor], boxes: list[Boxes],
                input_size: tuple[int, int]) -> torch.Tensor:
        """(R, C, S, S) crops of ``features[0]`` for the xyxy ``boxes`` of each image (input pixels)."""
        if len(features) != 1:
            raise ValueError(f"{TF_POOLER} crops one feature map (C4), got {len(features)}")
        b = Boxes.cat(boxes).tensor.float()
        sy, sx = ((f32(1.0) / f32(float(s))).to(b.device) for s in input_size)
        normalised = torch.stack([b[:, 1] * sy, b[:, 0] * sx, b[:, 3] * sy, b[:, 2] * sx], dim=1)
        index = torch.cat([torch.full((len(x),), i, device=b.device) for i, x in enumerate(boxes)])
        return crop_and_resize(features[0], normalised, index, self.output_size)


def build_tf_second_stage(cfg) -> TFSecondStage | None:
    """TF's second-stage post-processing from ``MODEL.ROI_HEADS.TF_*``; None when TF_POSTPROCESS is off."""
    heads, name = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_HEADS.TF_LABEL_MAP
    if name and name not in LABEL_MAPS:
        raise ValueError(f"unknown MODEL.ROI_HEADS.TF_LABEL_MAP {name!r}; known: {', '.join(LABEL_MAPS)}")
    if name and not heads.TF_POSTPROCESS:
        raise ValueError(f"MODEL.ROI_HEADS.TF_LABEL_MAP {name!r} needs MODEL.ROI_HEADS.TF_POSTPROCESS True")
    if name and heads.NUM_CLASSES != LABEL_MAPS[name][1]:
        raise ValueError(f"MODEL.ROI_HEADS.TF_LABEL_MAP {name!r} needs MODEL.ROI_HEADS.NUM_CLASSES "
                         f"{LABEL_MAPS[name][1]} (TF's box predictor), got {heads.NUM_CLASSES}")
    if not heads.TF_POSTPROCESS:
        return None
    return TFSecondStage(tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS), heads.SCORE_THRESH_TEST,
                         heads.NMS_THRESH_TEST, heads.TF_MAX_DETECTIONS_PER_CLASS,
                         cfg.TEST.DETECTIONS_PER_IMAGE, LABEL_MAPS[name][0]() if name else None)


@ROI_HEADS_REGISTRY.register()
class NASNetROIHeads(Res5ROIHeads):
    """Res5ROIHeads whose per-ROI block is NASNet's second reduction cell and last stage."""

    @configurable
    def __init__(self, *, tf_second_stage: TFSecondStage | None = None, test_chunk_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        if test_chunk_size < 0:
            raise ValueError(f"MODEL.ROI_HEADS.TEST_CHUNK_SIZE must be >= 0, got {test_chunk_size}")
        self.test_chunk_size = test_chunk_size
        self.tf_crop = isinstance(self.pooler, TFCropAndResize)
        self.tf_second_stage = tf_second_stage
        label_map = tf_second_stage.label_map if tf_second_stage else None
        if label_map is not None:  # dataset class -> predictor class, for the training targets
            table = label_map.tolist()
            to_predictor = sorted(range(len(table)), key=lambda k: table[k])[table.count(-1):]
            self.register_buffer("to_predictor", torch.tensor(to_predictor, device="cpu"), persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        """Res5ROIHeads' settings; POOLER_TYPE TFCropAndResize builds :class:`TFCropAndResize`."""
        tf_crop = cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == TF_POOLER
        if tf_crop and cfg.MODEL.MASK_ON:
            raise ValueError(f"POOLER_TYPE {TF_POOLER} has no mask head (MODEL.MASK_ON)")
        base = cfg.clone()
        base.defrost()
        if tf_crop:  # detectron2's ROIPooler refuses the name: build it with ROIAlign, then replace
            base.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
        ret = super().from_config(base, input_shape)
        if tf_crop:
            ret["pooler"] = TFCropAndResize(cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION)
        ret["tf_second_stage"] = build_tf_second_stage(cfg)
        ret["test_chunk_size"] = cfg.MODEL.ROI_HEADS.TEST_CHUNK_SIZE
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        """The NASNet crop head and its output width (final-stage cell width)."""
        head = NASNetCropHead(build_nasnet(cfg))
        return head, head.out_channels

    def box_features(self, features: list[torch.Tensor], boxes: list[Boxes],
                     input_size: tuple[int, int]) -> torch.Tensor:
        """The head's (R, C, 9, 9) output for proposal boxes in input pixels (the crop as configured);
        at inference on a CPU ``test_chunk_size`` ROIs at a time (crop, then cells), so that each
        chunk's activations stay in the CPU's caches (the same numbers as all at once)."""
        chunk = self.test_chunk_size
        on_cpu = features[0].device.type == "cpu"
        if self.training or not chunk or not on_cpu or sum(len(b) for b in boxes) <= chunk:
            return self._crop_head(features, boxes, input_size)
        out = []
        for i, image_boxes in enumerate(boxes):
            image_features = [f[i:i + 1] for f in features]
            for j in range(0, len(image_boxes), chunk):
                out.append(self._crop_head(image_features, [image_boxes[j:j + chunk]], input_size))
        return torch.cat(out)

    def _crop_head(self, features, boxes, input_size):
        crops = self.pooler(features, boxes, input_size) if self.tf_crop else self.pooler(features, boxes)
        return self.res5(crops)

    def _shared_roi_transform(self, features: list[torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
        """Res5ROIHeads' crop + per-ROI block, through :meth:`box_features` (chunked at inference)."""
        return self.box_features(features, boxes, None)

    def forward(self, images, features, proposals, targets=None):
        """Res5ROIHeads.forward, with the input tensor's size passed to the TF crop / post-processing."""
        if not (self.tf_crop or self.tf_second_stage):
            return super().forward(images, features, proposals, targets)
        input_size = tuple(images.tensor.shape[-2:])
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, self._predictor_targets(targets))
        x = self.box_features([features[f] for f in self.in_features], [p.proposal_boxes for p in proposals],
                              input_size)
        predictions = self.box_predictor(x.mean(dim=[2, 3]))
        if self.training:
            return [], self.box_predictor.losses(predictions, proposals)
        if self.tf_second_stage is not None:
            return self.tf_second_stage(predictions, proposals, input_size), {}
        return self.box_predictor.inference(predictions, proposals)[0], {}

    def _predictor_targets(self, targets):
        """Ground truth with the dataset's classes turned into the TF label map's (if one is set)."""
        if not hasattr(self, "to_predictor"):
            return targets
        mapped = []
        for t in targets:
            m = Instances(t.image_size, **t.get_fields())
            m.gt_classes = self.to_predictor[t.gt_classes]
            mapped.append(m)
        return mapped
