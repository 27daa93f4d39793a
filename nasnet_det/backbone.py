"""NASNet backbones for Detectron2: C4 (stride-16 cell pair, the paper's system) and FPN (P2-P6)."""

from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .model import build_nasnet, freeze, trim

__all__ = ["NASNetBackbone", "build_nasnet_c4_backbone", "build_nasnet_fpn_backbone",
           "C4_FEATURE", "FPN_BOTTOM_UP", "c4_split"]

C4_FEATURE = "nasnet16"
"""Name of the C4 backbone's one output: concat of the last two stride-16 cell outputs."""

FPN_BOTTOM_UP = {4: "n2", 8: "n3", 16: "n4", 32: "n5"}
"""Stride -> name of the FPN bottom-up features (last cell output at that stride)."""


class NASNetBackbone(Backbone):
    """conv0 + cells ``cell_specs[:end]`` of a nasnet_core NASNet.

    ``mode="c4"``: one output, the channel-concat of the last two cell outputs (both
    stride 16 when ``end`` stops after stage 2). ``mode="strides"``: the last cell output at
    each stride of ``FPN_BOTTOM_UP``.
    """

    def __init__(self, nasnet, end: int, mode: str = "c4", freeze_at: int = 0):
        super().__init__()
        if mode not in ("c4", "strides"):
            raise ValueError(f"unknown NASNetBackbone mode {mode!r}; known: c4, strides")
        specs = nasnet.cell_specs[:end]
        self.nasnet = trim(nasnet, {"conv0"} | {s.name for s in specs})
        freeze(self.nasnet, freeze_at)
        self.end, self.mode = end, mode
        if mode == "c4":
            a, b = specs[-2], specs[-1]
            self.pair_channels = (a.out_channels, b.out_channels)
            self._shapes = {C4_FEATURE: ShapeSpec(channels=a.out_channels + b.out_channels,
                                                  stride=b.stride)}
        else:
            last = {st: i for st, i in nasnet.plan.last_per_stride(end).items() if st in FPN_BOTTOM_UP}
            self._taps = {FPN_BOTTOM_UP[st]: i for st, i in last.items()}
            self._shapes = {FPN_BOTTOM_UP[st]: ShapeSpec(channels=specs[i].out_channels, stride=st)
                            for st, i in last.items()}
        self._out_features = list(self._shapes)

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded to a multiple of 32."""
        return 32

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every output feature."""
        return dict(self._shapes)

    def set_training_step(self, step: int) -> None:
        """Drive ScheduledDropPath of the backbone cells."""
        self.nasnet.set_training_step(step)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named features of an image batch."""
        outputs = self.nasnet.forward_cells([self.nasnet.conv0(x)], 0, self.end)
        if self.mode == "c4":
            return {C4_FEATURE: torch.cat(outputs[-2:], 1)}
        # outputs[0] is conv0; cell i's output is outputs[i + 1].
        return {name: outputs[i + 1] for name, i in self._taps.items()}


def c4_split(nasnet) -> int:
    """Number of cells the C4 backbone runs: everything before stage 3 (``reduction_cell_1``)."""
    return nasnet.plan.stage_start(3)


@BACKBONE_REGISTRY.register()
def build_nasnet_c4_backbone(cfg, input_shape: ShapeSpec) -> NASNetBackbone:
    """NASNet C4 backbone: stem + cells up to the last stride-16 cell, one stride-16 feature."""
    _check_input(cfg, input_shape)
    nasnet = build_nasnet(cfg)
    return NASNetBackbone(nasnet, c4_split(nasnet), "c4", cfg.MODEL.NASNET.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_nasnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """NASNet + FPN: the whole network to stride 32 as bottom-up, P2-P5 plus P6 by max-pool."""
    _check_input(cfg, input_shape)
    nasnet = build_nasnet(cfg)
    bottom_up = NASNetBackbone(nasnet, len(nasnet.cell_specs), "strides", cfg.MODEL.NASNET.FREEZE_AT)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def _check_input(cfg, input_shape: ShapeSpec) -> None:
    if input_shape.channels != 3:
        raise ValueError(f"NASNet backbones take 3-channel images, got {input_shape.channels}")
    if not hasattr(cfg.MODEL, "NASNET"):
        raise KeyError("cfg has no MODEL.NASNET; call nasnet_det.add_nasnet_config(cfg) first")
