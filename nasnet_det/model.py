"""Build a nasnet_core NASNet from ``MODEL.NASNET`` and cut it into detector parts.

Both the backbone and the ROI head hold a trimmed ``NASNet`` whose remaining modules keep
nasnet_core's names (``conv0``, ``cell_stem_0``, ``cell_11``, ``reduction_cell_1`` ...), so a
nasnet_core ImageNet checkpoint fills both by dotted-suffix matching.
"""

from __future__ import annotations

from detectron2.layers import FrozenBatchNorm2d

import nasnet_core as nc
from nasnet_core.model.network import NASNet

__all__ = ["build_nasnet", "trim", "stage_of", "freeze"]


def build_nasnet(cfg) -> NASNet:
    """The full nasnet_core network ``MODEL.NASNET`` describes (no aux head)."""
    n = cfg.MODEL.NASNET
    if n.NORM not in nc.NORMS:  # the names of nasnet_core's norm table
        raise ValueError(f"unknown MODEL.NASNET.NORM {n.NORM!r}; known: {', '.join(nc.NORMS)}")
    # FrozenBN is built as BN, then converted to Detectron2's FrozenBatchNorm2d, the class
    # its checkpoint loading and FREEZE_AT conversion handle.
    norm = "BN" if n.NORM == "FrozenBN" else n.NORM
    over = dict(aux_head=False, norm=norm, pad_mode=n.PAD_MODE,
                drop_path_keep_prob=float(n.DROP_PATH_KEEP_PROB),
                total_training_steps=max(int(cfg.SOLVER.MAX_ITER), 1))
    optional = {"genotype": (n.GENOTYPE, ""), "N": (n.N, 0), "F": (n.F, 0),
                "stem_multiplier": (n.STEM_MULTIPLIER, 0.0),
                "skip_reduction_layer_input": (n.SKIP_REDUCTION_LAYER_INPUT, -1),
                "bn_eps": (n.BN_EPS, -1.0), "bn_momentum": (n.BN_MOMENTUM, -1.0)}
    for key, (value, unset) in optional.items():
        if value != unset:
            over[key] = bool(value) if key == "skip_reduction_layer_input" else value
    model = nc.create_model(n.ARCH, **over)
    model.set_grad_checkpointing(bool(n.GRAD_CHECKPOINTING))  # reaches the backbone and the ROI head
    if n.NORM == "FrozenBN":
        FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    return model


def stage_of(model: NASNet) -> dict[str, int]:
    """FREEZE_AT stage of every module: conv0 1, stem cells 2, stage 1 3, reduction 0 + stage 2 4,
    reduction 1 + stage 3 5 (the plan's cell stage + 2)."""
    return {model.plan.stem.module: 1, **{s.name: s.stage + 2 for s in model.plan.cells}}


def trim(model: NASNet, keep: set[str]) -> NASNet:
    """Delete every conv0/cell/classifier module of ``model`` not named in ``keep``; returns it."""
    names = ["conv0", "last_linear", "dropout"] + [s.name for s in model.cell_specs]
    for name in names:
        if name not in keep and hasattr(model, name):
            delattr(model, name)
    return model


def freeze(model: NASNet, freeze_at: int) -> None:
    """Freeze (no grad, FrozenBN) every present module whose stage is <= ``freeze_at``."""
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"MODEL.NASNET.FREEZE_AT must be 0..5, got {freeze_at}")
    for name, stage in stage_of(model).items():
        module = getattr(model, name, None)
        if module is None or stage > freeze_at:
            continue
        for p in module.parameters():
            p.requires_grad_(False)
        frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        if frozen is not module:
            setattr(model, name, frozen)
