"""The NASNet C4 ROI head: per ROI, reduction_cell_1 + stage-3 normal cells, then mean-pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from .backbone import c4_split
from .model import build_nasnet, trim

__all__ = ["NASNetROIHeads", "NASNetCropHead"]


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


@ROI_HEADS_REGISTRY.register()
class NASNetROIHeads(Res5ROIHeads):
    """Res5ROIHeads whose per-ROI block is NASNet's second reduction cell and last stage."""

    @classmethod
    def _build_res5_block(cls, cfg):
        """The NASNet crop head and its output width (final-stage cell width)."""
        head = NASNetCropHead(build_nasnet(cfg))
        return head, head.out_channels
