"""The measuring parts of ``tools/benchmark_detector.py``: synthetic COCO-shaped batches, a model
with real BN statistics, saved-activation bytes per part, timed training steps and inference."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from pathlib import Path

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from nasnet_core.model.cell import Cell
from nasnet_core.model.complexity import SavedBytes
from nasnet_core.model.network import NASNet

from .amp import amp_dtype
from .engine import setup_cfg_plain

__all__ = ["synthetic_batch", "calibrated_model", "state_bytes", "measure_cpu", "set_checkpointing",
           "autocast", "train_iteration", "inference"]


def synthetic_batch(n: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    """``n`` random size x size images, each with 1-20 boxes of COCO-like sizes and classes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        k = int(torch.randint(1, 21, (1,), generator=g))
        # COCO box areas span ~(8 px)^2 .. the whole image at 640 px: log-uniform side, ratio 1/3..3
        side = size * torch.exp(torch.empty(k).uniform_(math.log(8 / 640), 0.0, generator=g))
        ratio = torch.exp(torch.empty(k).uniform_(-math.log(3), math.log(3), generator=g))
        w = (side * ratio.sqrt()).clamp(2, size)
        h = (side / ratio.sqrt()).clamp(2, size)
        x0 = torch.rand(k, generator=g) * (size - w)
        y0 = torch.rand(k, generator=g) * (size - h)
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.stack([x0, y0, x0 + w, y0 + h], 1))
        inst.gt_classes = torch.randint(0, num_classes, (k,), generator=g)
        img = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).float()
        batch.append({"image": img, "height": size, "width": size, "instances": inst})
    return batch


def calibrated_model(config: Path, opts: list, batch: list[dict]):
    """The config's model, its BN statistics taken from ``batch`` before freezing as configured.

    Random init has no statistics: FrozenBN at identity lets activations grow cell by cell until
    the RPN proposes nothing. So the model is built with BN, run once on the batch (running
    statistics = batch statistics), then BN becomes FrozenBN where the config freezes it, as
    ImageNet weights would leave it.
    """
    cfg = setup_cfg_plain(str(config), opts)
    frozen_bn = "FrozenBN" in (cfg.MODEL.NASNET.NORM, cfg.MODEL.RESNETS.NORM)
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    cfg = setup_cfg_plain(str(config), opts + ["MODEL.NASNET.NORM", "BN", "MODEL.RESNETS.NORM", "BN",
                                               "MODEL.BACKBONE.FREEZE_AT", 0])
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model.backbone(model.preprocess_image(batch).tensor)
    if frozen_bn:
        model = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    if hasattr(model.backbone, "freeze"):  # detectron2's ResNet: stem + res2 as configured
        model.backbone.freeze(freeze_at)
    return model


def state_bytes(model: torch.nn.Module) -> tuple[float, float]:
    """(all parameter + buffer bytes, trainable parameter bytes)."""
    params = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return params, trainable


def measure_cpu(model, batch: list[dict], rois: tuple[int, int], target_rois: int = 64,
                amp: bool = False) -> dict:
    """Saved bytes and forward seconds of backbone + RPN and of the ROI head at two ROI counts, and
    the most bytes saved inside one cell (the head's at ``target_rois``): what a checkpointed cell's
    recomputation holds again during backward. ``amp``: under bf16 autocast."""
    model.train()
    gt = [x["instances"] for x in batch]
    cells = {n: m for n, m in model.named_modules() if isinstance(m, Cell)}
    with EventStorage(0), autocast(model, amp):
        with SavedBytes(model).watch(cells) as base:
            t0 = time.perf_counter()
            images = model.preprocess_image(batch)
            feats = model.backbone(images.tensor)
            props, _ = model.proposal_generator(images, feats, gt)
            t_base = time.perf_counter() - t0
        head, head_cells = {}, {}
        for k in rois:
            model.roi_heads.batch_size_per_image = k
            seen = {p: (n, list(r)) for p, (n, r) in base.seen.items()}
            with SavedBytes(model, seen).watch(cells) as hb:
                t0 = time.perf_counter()
                model.roi_heads(images, feats, props, gt)
                head[k], head_cells[k] = (hb.bytes, time.perf_counter() - t0), hb.per_module
    (k1, (b1, s1)), (k2, (b2, s2)) = sorted(head.items())
    if min(len(p) for p in props) < k2:
        raise RuntimeError(f"only {min(len(p) for p in props)} proposals: the ROI head was not measured")
    c1, c2 = head_cells[k1], head_cells[k2]
    head_cell = max((c1[n] + (target_rois - k1) * (c2[n] - c1[n]) / (k2 - k1) for n in c1), default=0)
    return {"base_bytes": base.bytes, "base_s": t_base, "roi_bytes": (b2 - b1) / (k2 - k1),
            "head0_bytes": b1 - k1 * (b2 - b1) / (k2 - k1), "roi_s": max(s2 - s1, 0.0) / (k2 - k1),
            "head0_s": s1, "k1": k1, "proposals": min(len(p) for p in props),
            "cell_bytes": max(max(base.per_module.values(), default=0), head_cell)}


def set_checkpointing(model, on: bool) -> bool:
    """Turn per-cell activation checkpointing on or off in every NASNet part; whether there is one."""
    parts = [m for m in model.modules() if isinstance(m, NASNet)]
    for part in parts:
        part.set_grad_checkpointing(on)
    return bool(parts)


def autocast(model, on: bool):
    """bf16 (fp16 on CUDA cards without bf16) autocast on ``model``'s device when ``on``, else nothing."""
    if not on:
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=amp_dtype(device))


def train_iteration(model, batch: list[dict], iters: int, amp: bool = False) -> float:
    """Median seconds of ``iters`` real training iterations (forward, backward, SGD step) after one
    untimed warm-up; forward and losses under bf16 autocast with ``amp``."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    times = []
    with EventStorage(0):
        for _ in range(iters + 1):
            t0 = time.perf_counter()
            with autocast(model, amp):
                loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):  # also waits for a GPU to finish the step
                raise FloatingPointError(f"non-finite training loss {float(loss)}")
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def inference(model, batch: list[dict], topk: int | None = None, iters: int = 1) -> float:
    """Median seconds of ``iters`` eval-mode forwards of ``batch`` (optionally with ``topk`` test
    proposals); ``model`` may be a detector or its fast-eval copy."""
    model.eval()
    rpn = getattr(model, "model", model).proposal_generator
    saved = rpn.post_nms_topk[False]
    if topk is not None:
        rpn.post_nms_topk[False] = topk
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batch]
    times = []
    try:
        with torch.no_grad():
            for _ in range(iters):
                t0 = time.perf_counter()
                model(inputs)
                times.append(time.perf_counter() - t0)
    finally:
        rpn.post_nms_topk[False] = saved
    return statistics.median(times)
