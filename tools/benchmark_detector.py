#!/usr/bin/env python
"""Real-size detector benchmark: memory per image, projected memory per GPU, s/iter, inference.

Each shipped COCO config runs at its real input size and real ROI / proposal counts on synthetic
COCO-shaped batches (random pixels, 1-20 boxes of COCO-like sizes, 80 classes), with the R50-C4
comparator at the same size in the same run.

Memory. CUDA: the peak allocated bytes of a real training iteration at the config's images per
GPU. CPU: one training-mode forward under grad with saved-tensor hooks whose pack hook adds up
the bytes of every distinct storage autograd saves for backward (views and shared storages
once, parameters not) and keeps nothing, so the pass needs little memory. The backbone + RPN is
measured once; the ROI head is measured at two small ROI counts on the same features and
extrapolated linearly (its cost is per ROI) to ROI_HEADS.BATCH_SIZE_PER_IMAGE. Projected per
GPU = images per GPU (IMS_PER_BATCH / --gpus) x saved bytes per image + parameters + gradients
+ SGD momentum (fp32), without allocator slack and transient workspace.

Time. A real training iteration (forward, backward, SGD step; one image) where the projected
per-image memory is under --max-train-gib, else the training-mode forward only (backbone + RPN
measured, ROI head scaled from the small counts), labelled "fwd". Inference: eval mode, one
image, TEST proposals; measured for models under --max-infer-params, else scaled per ROI.

    python tools/benchmark_detector.py                      # all COCO configs + R50-C4, CPU
    python tools/benchmark_detector.py --configs configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_600.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from nasnet_core.common.cli import tool_main
from nasnet_core.common.fileio import atomic_write_text
from nasnet_core.model.cell import Cell
from nasnet_core.model.complexity import SavedBytes
from nasnet_core.model.network import NASNet
from nasnet_det.engine import setup_cfg_plain

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "configs" / "COCO-Detection"
R50 = COCO / "faster_rcnn_R_50_C4_minival8k.yaml"
NASNET_CONFIGS = ["faster_rcnn_nasnet_a_mobile_600.yaml", "faster_rcnn_nasnet_a_large_800.yaml",
                  "faster_rcnn_nasnet_a_large_1200.yaml", "faster_rcnn_nasnet_a_mobile_fpn.yaml"]
GIB, MIB = 2.0 ** 30, 2.0 ** 20


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


def measure_cpu(model, batch: list[dict], rois: tuple[int, int], target_rois: int = 64) -> dict:
    """Saved bytes and forward seconds of backbone + RPN and of the ROI head at two ROI counts, and
    the most bytes saved inside one cell (the head's at ``target_rois``): what a checkpointed cell's
    recomputation holds again during backward."""
    model.train()
    gt = [x["instances"] for x in batch]
    cells = {n: m for n, m in model.named_modules() if isinstance(m, Cell)}
    with EventStorage(0):
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


def train_iteration(model, batch: list[dict], iters: int) -> float:
    """Seconds of the last of ``iters`` real training iterations (forward, backward, SGD step)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    dt = 0.0
    with EventStorage(0):
        for _ in range(iters):
            t0 = time.perf_counter()
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss)}")
    return dt


def inference(model, batch: list[dict], topk: int | None = None) -> float:
    """Seconds of one eval-mode forward of ``batch`` (optionally with ``topk`` test proposals)."""
    model.eval()
    rpn = model.proposal_generator
    saved = rpn.post_nms_topk[False]
    if topk is not None:
        rpn.post_nms_topk[False] = topk
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
            return time.perf_counter() - t0
    finally:
        rpn.post_nms_topk[False] = saved


def bench(config: Path, opts: list, args) -> list[dict]:
    """One config's rows (memory per image, projected per GPU, s/iter, inference s/img): plain, then
    for a NASNet with ``--checkpointing`` the same with per-cell activation checkpointing."""
    label = config.stem + (f"@{opts[1]}" if opts else "")
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device, *opts, *args.opts]
    cfg = setup_cfg_plain(str(config), opts)
    torch.manual_seed(0)
    size, rois = cfg.INPUT.FIXED_SIZE or cfg.INPUT.MIN_SIZE_TEST, cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    batch = synthetic_batch(1, size, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    model = calibrated_model(config, opts, batch)
    per_gpu_imgs = cfg.SOLVER.IMS_PER_BATCH / args.gpus
    params, trainable = state_bytes(model)
    info = {"size": size, "rois": rois, "imgs_per_gpu": per_gpu_imgs,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    modes = [False, True] if set_checkpointing(model, False) and args.checkpointing else [False]
    rows = []
    for ck in modes:
        set_checkpointing(model, ck)
        row = {"config": label + ("+ckpt" if ck else ""), "checkpointing": ck, **info}
        if args.device == "cuda":
            row.update(measure_cuda(model, synthetic_batch(max(1, int(per_gpu_imgs)), size, 80), args))
        else:
            m = measure_cpu(model, batch, tuple(args.head_rois), rois)
            # checkpointed: the cells' inputs are saved, plus one cell's activations recomputed in backward
            recompute = rows[0]["cell_gib"] * GIB if ck else 0.0
            act = m["base_bytes"] + m["head0_bytes"] + rois * m["roi_bytes"] + recompute
            row.update(act_gib=act / GIB, base_gib=m["base_bytes"] / GIB, roi_mib=m["roi_bytes"] / MIB,
                       state_gib=(params + 2 * trainable) / GIB, proposals=m["proposals"],
                       cell_gib=m["cell_bytes"] / GIB, recompute_gib=recompute / GIB)
            row["gpu_gib"] = per_gpu_imgs * row["act_gib"] + row["state_gib"]
            row["fwd_s"] = m["base_s"] + m["head0_s"] + (rois - m["k1"]) * m["roi_s"]
            if row["act_gib"] < args.max_train_gib and not args.no_train:
                row["train_s"] = train_iteration(model, batch, args.iters)
        rows.append(row)
    set_checkpointing(model, False)
    if args.device != "cuda" and not args.no_infer:
        rows[0].update(infer_cpu(model, batch, cfg.MODEL.RPN.POST_NMS_TOPK_TEST, info["params_M"], args))
    if len(rows) == 2:  # eval never checkpoints: the same inference
        rows[1].update({k: v for k, v in rows[0].items() if k.startswith("infer")})
        if "train_s" in rows[0] and "train_s" in rows[1]:
            rows[1]["train_ratio"] = rows[1]["train_s"] / rows[0]["train_s"]
    return rows


def infer_cpu(model, batch: list[dict], topk: int, params_m: float, args) -> dict:
    """Inference seconds per image: measured under --max-infer-params, else scaled per ROI."""
    if params_m < args.max_infer_params:
        inference(model, batch)  # warm-up
        return {"infer_s": inference(model, batch), "infer_kind": "measured"}
    k1, k2 = args.head_rois
    t1, t2 = inference(model, batch, k1), inference(model, batch, k2)
    return {"infer_s": t1 + (topk - k1) * max(t2 - t1, 0.0) / (k2 - k1), "infer_kind": "scaled"}


def measure_cuda(model, batch: list[dict], args) -> dict:
    """Peak CUDA memory and seconds of real training iterations at the images per GPU."""
    torch.cuda.reset_peak_memory_stats()
    dt = train_iteration(model, batch, args.iters)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"gpu_gib": peak / GIB, "act_gib": peak / GIB / len(batch), "train_s": dt,
            "infer_s": inference(model, batch[:1]), "infer_kind": "measured"}


def table(rows: list[dict], limit: float) -> str:
    """Markdown table of the rows."""
    head = ("| config | input | ROIs/img | imgs/GPU | saved act./img GiB (backbone+RPN; head MiB/ROI"
            "[; recomputed]) "
            "| params+grads+momentum GiB | projected GiB/GPU | fits | train s/iter (1 img) "
            "| train time ckpt / plain | infer s/img |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        train = f"{r['train_s']:.1f}" if "train_s" in r else f"fwd only {r.get('fwd_s', 0):.1f}"
        detail = f"{r['act_gib']:.2f} ({r.get('base_gib', 0):.2f}; {r.get('roi_mib', 0):.1f}"
        detail += f"; + {r['recompute_gib']:.2f} one cell recomputed)" if r.get("recompute_gib") else ")"
        infer = f"{r['infer_s']:.2f} ({r['infer_kind']})" if "infer_s" in r else "not run"
        ratio = f"{r['train_ratio']:.2f}" if "train_ratio" in r else ""
        lines.append(f"| {r['config']} | {r['size']} | {r['rois']} | {r['imgs_per_gpu']:g} | {detail} | "
                     f"{r.get('state_gib', 0):.2f} | {r['gpu_gib']:.1f} | "
                     f"{'yes' if r['gpu_gib'] <= limit else 'NO'} | {train} | {ratio} | {infer} |")
    return "\n".join(lines)


def jobs(args) -> list[tuple[Path, list]]:
    """(config, opts) pairs: each config, then R50-C4 at its size with its batch (once per size)."""
    out, sizes = [], set()
    for c in args.configs:
        cfg = setup_cfg_plain(str(c), ["MODEL.DEVICE", "cpu", *args.opts])
        out.append((Path(c), []))
        size = cfg.INPUT.FIXED_SIZE or cfg.INPUT.MIN_SIZE_TEST
        if args.r50 and size not in sizes and "R_50" not in str(c):
            sizes.add(size)
            out.append((R50, ["INPUT.FIXED_SIZE", size, "SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH]))
    return out


@tool_main
def main(argv=None) -> int:
    """Benchmark every config, print the table and the mobile/R50 inference ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=[str(COCO / c) for c in NASNET_CONFIGS])
    p.add_argument("--no-r50", dest="r50", action="store_false", help="skip the R50-C4 comparators")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpus", type=int, default=8, help="GPUs IMS_PER_BATCH is split over")
    p.add_argument("--limit-gib", type=float, default=70.0, help="per-GPU budget (80 GB card)")
    p.add_argument("--head-rois", type=int, nargs=2, default=[2, 4],
                   help="ROI counts the head is measured at")
    p.add_argument("--max-train-gib", type=float, default=4.0, help="CPU: real training iteration below this")
    p.add_argument("--max-infer-params", type=float, default=60.0, help="CPU: measured inference below (M)")
    p.add_argument("--iters", type=int, default=2, help="training iterations (the last is timed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="skip the NASNet rows with MODEL.NASNET.GRAD_CHECKPOINTING on")
    p.add_argument("--no-train", action="store_true", help="CPU: no real training iteration (memory only)")
    p.add_argument("--no-infer", action="store_true", help="CPU: no inference timing")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides for every model (KEY VALUE ...)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for c in args.configs:
        if not Path(c).is_file():
            raise FileNotFoundError(f"no config {c}")
    rows = []
    for config, opts in jobs(args):
        for row in bench(config, opts, args):
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(table(rows, args.limit_gib))
    mobile = next((r for r in rows if "mobile_600" in r["config"]), None)
    r50 = next((r for r in rows if "R_50" in r["config"] and r["size"] == 600), None)
    if mobile and r50 and "infer_s" in mobile and "infer_s" in r50:
        print(f"inference, NASNet-A mobile 600 / R50-C4 600: {mobile['infer_s'] / r50['infer_s']:.2f} "
              f"({mobile['infer_s']:.2f} s / {r50['infer_s']:.2f} s per image)")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
