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

Rows. Each NASNet config gets four: plain, +ckpt (MODEL.NASNET.GRAD_CHECKPOINTING), +bf16
(autocast as SOLVER.AMP) and +bf16+ckpt (--no-checkpointing / --no-amp drop them); R50-C4 plain.

Time. The median of --iters real training iterations (forward, backward, SGD step; one image)
after a warm-up, where the plain row's per-image memory is under --max-train-gib; else at
INPUT.FIXED_SIZE --ratio-size for every row of that config (the time ratio / plain is what it is
for), and the training-mode forward at full size ("fwd only") with --ratio-size 0. Inference: eval
mode, one image, TEST proposals, as --eval-only runs it (TEST.FAST_EVAL's BN-folded copy, the
per-ROI head in chunks of MODEL.ROI_HEADS.TEST_CHUNK_SIZE) and, for NASNet, the plain model (no
folding, all ROIs at once); the median of --infer-iters for models under --max-infer-params, else
scaled per ROI from the medians at --infer-rois test proposals (16 and 32: one and two chunks).

    python tools/benchmark_detector.py                      # all COCO configs + R50-C4, CPU
    python tools/benchmark_detector.py --configs configs/COCO-Detection/faster_rcnn_nasnet_a_mobile_600.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from nasnet_core.common.cli import tool_main
from nasnet_core.common.fileio import atomic_write_text
from nasnet_core.model.complexity import SavedBytes  # noqa: F401  (tests reach it through the tool)
from nasnet_det.bench import (
    calibrated_model,
    inference,
    measure_cpu,
    set_checkpointing,
    state_bytes,
    synthetic_batch,
    train_iteration,
)
from nasnet_det.engine import setup_cfg_plain
from nasnet_det.fast_eval import maybe_fast_eval

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "configs" / "COCO-Detection"
R50 = COCO / "faster_rcnn_R_50_C4_minival8k.yaml"
NASNET_CONFIGS = ["faster_rcnn_nasnet_a_mobile_600.yaml", "faster_rcnn_nasnet_a_large_800.yaml",
                  "faster_rcnn_nasnet_a_large_1200.yaml", "faster_rcnn_nasnet_a_mobile_fpn.yaml"]
GIB, MIB = 2.0 ** 30, 2.0 ** 20


def modes(model, args) -> list[tuple[bool, bool]]:
    """(checkpointing, autocast) of each row: plain, then for a NASNet +ckpt, +bf16, +bf16+ckpt."""
    nasnet = set_checkpointing(model, False)
    ck = [False, True] if nasnet and args.checkpointing else [False]
    amp = [False, True] if nasnet and args.amp else [False]
    return [(c, a) for a in amp for c in ck]


def bench(config: Path, opts: list, args) -> list[dict]:
    """One config's rows (memory per image, projected per GPU, s/iter; inference s/img on the first):
    plain, then for a NASNet the same with checkpointing, bf16 autocast and both."""
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
    rows, timed = [], {}
    for ck, amp in modes(model, args):
        set_checkpointing(model, ck)
        row = {"config": label + ("+bf16" if amp else "") + ("+ckpt" if ck else ""), "checkpointing": ck,
               "amp": amp, **info}
        if args.device == "cuda":
            row.update(measure_cuda(model, synthetic_batch(max(1, int(per_gpu_imgs)), size, 80), args, amp))
        else:
            plain = next((r for r in rows if r["amp"] == amp and not r["checkpointing"]), None)
            row.update(memory_cpu(model, batch, rois, args, amp, plain))
            row["state_gib"] = (params + 2 * trainable) / GIB
            row["gpu_gib"] = per_gpu_imgs * row["act_gib"] + row["state_gib"]
            if not args.no_train and timed_model(config, opts, model, batch, rows or [row], args, timed):
                m, b, at = timed["m"]
                set_checkpointing(m, ck)
                row.update(train_s=train_iteration(m, b, args.iters, amp), train_size=at or size)
        if rows and "train_s" in row and "train_s" in rows[0]:
            row["train_ratio"] = row["train_s"] / rows[0]["train_s"]
        rows.append(row)
    set_checkpointing(model, False)
    if not args.no_infer:
        rows[0].update(infer(cfg, model, batch, info["params_M"], args))
    return rows


def memory_cpu(model, batch: list[dict], rois: int, args, amp: bool, plain: dict | None) -> dict:
    """Saved activations per image (a checkpointed row adds the most bytes one cell of ``plain``, the
    row without checkpointing, saves: recomputed in backward) and the training-mode forward time."""
    m = measure_cpu(model, batch, tuple(args.head_rois), rois, amp)
    recompute = plain["cell_gib"] * GIB if plain is not None else 0.0
    act = m["base_bytes"] + m["head0_bytes"] + rois * m["roi_bytes"] + recompute
    return {"act_gib": act / GIB, "base_gib": m["base_bytes"] / GIB, "roi_mib": m["roi_bytes"] / MIB,
            "proposals": m["proposals"], "cell_gib": m["cell_bytes"] / GIB, "recompute_gib": recompute / GIB,
            "fwd_s": m["base_s"] + m["head0_s"] + (rois - m["k1"]) * m["roi_s"]}


def timed_model(config: Path, opts: list, model, batch, rows: list[dict], args, timed: dict) -> bool:
    """Decide once per config (``timed["m"]``) what its training steps are timed on: the model itself
    where the plain row's saved activations per image are under --max-train-gib, else a copy built at
    INPUT.FIXED_SIZE --ratio-size (every row of the config at that size); False: not timed."""
    if "m" not in timed:
        timed["m"] = None
        if rows[0]["act_gib"] < args.max_train_gib:
            timed["m"] = (model, batch, None)
        elif args.ratio_size:
            small = synthetic_batch(1, args.ratio_size, 80)
            timed["m"] = (calibrated_model(config, [*opts, "INPUT.FIXED_SIZE", args.ratio_size], small),
                          small, args.ratio_size)
    return timed["m"] is not None


def infer(cfg, model, batch: list[dict], params_m: float, args) -> dict:
    """Inference s/image as --eval-only runs it (``infer_s``: the TEST.FAST_EVAL copy, the head in
    chunks of TEST_CHUNK_SIZE) and, for a NASNet, the plain model (``infer_plain_s``: no folding, all
    ROIs at once); measured (median of --infer-iters) below --max-infer-params on a CPU, else scaled."""
    kind = "measured" if args.device == "cuda" or params_m < args.max_infer_params else "scaled"
    fast = maybe_fast_eval(cfg, model)
    out = {"infer_kind": kind, "infer_s": time_inference(fast, batch, cfg.MODEL.RPN.POST_NMS_TOPK_TEST, kind,
                                                         args)}
    if fast is not model:
        heads = model.roi_heads  # NASNetROIHeads chunks; the FPN config's StandardROIHeads does not
        chunk = getattr(heads, "test_chunk_size", None)
        if chunk is not None:
            heads.test_chunk_size = 0
        try:
            out["infer_plain_s"] = time_inference(model, batch, cfg.MODEL.RPN.POST_NMS_TOPK_TEST, kind, args)
        finally:
            if chunk is not None:
                heads.test_chunk_size = chunk
    return out


def time_inference(model, batch: list[dict], topk: int, kind: str, args) -> float:
    """Seconds per image: the median of --infer-iters after a warm-up, or scaled per ROI from the
    medians at each of --infer-rois test proposals."""
    if kind == "measured":
        inference(model, batch)  # warm-up
        return inference(model, batch, iters=args.infer_iters)
    k1, k2 = args.infer_rois
    t1, t2 = (inference(model, batch, k, iters=args.infer_iters) for k in (k1, k2))
    return t1 + (topk - k1) * max(t2 - t1, 0.0) / (k2 - k1)


def measure_cuda(model, batch: list[dict], args, amp: bool) -> dict:
    """Peak CUDA memory and median seconds of real training iterations at the images per GPU."""
    torch.cuda.reset_peak_memory_stats()
    dt = train_iteration(model, batch, args.iters, amp)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"gpu_gib": peak / GIB, "act_gib": peak / GIB / len(batch), "train_s": dt,
            "train_size": int(batch[0]["image"].shape[-1])}


def table(rows: list[dict], limit: float) -> str:
    """Markdown table of the rows."""
    head = ("| config | input | ROIs/img | imgs/GPU | saved act./img GiB (backbone+RPN; head MiB/ROI"
            "[; recomputed]) | params+grads+momentum GiB | projected GiB/GPU | fits "
            "| train s/iter (1 img, median) | train time / plain | infer s/img: plain, default (FAST_EVAL) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        train = f"fwd only {r.get('fwd_s', 0):.1f}"
        if "train_s" in r:
            at = f" (at {r['train_size']})" if r["train_size"] != r["size"] else ""
            train = f"{r['train_s']:.1f}{at}"
        detail = f"{r['act_gib']:.2f} ({r.get('base_gib', 0):.2f}; {r.get('roi_mib', 0):.1f}"
        detail += f"; + {r['recompute_gib']:.2f} one cell recomputed)" if r.get("recompute_gib") else ")"
        infer = "not run"
        if "infer_s" in r:
            plain = f"{r['infer_plain_s']:.2f} -> " if "infer_plain_s" in r else ""
            infer = f"{plain}{r['infer_s']:.2f} ({r['infer_kind']})"
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


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=[str(COCO / c) for c in NASNET_CONFIGS])
    p.add_argument("--no-r50", dest="r50", action="store_false", help="skip the R50-C4 comparators")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpus", type=int, default=8, help="GPUs IMS_PER_BATCH is split over")
    p.add_argument("--limit-gib", type=float, default=70.0, help="per-GPU budget (80 GB card)")
    p.add_argument("--head-rois", type=int, nargs=2, default=[2, 4],
                   help="ROI counts the head is measured at")
    p.add_argument("--max-train-gib", type=float, default=4.0,
                   help="CPU: real training iterations at the config's size below this (GiB per image)")
    p.add_argument("--ratio-size", type=int, default=320,
                   help="CPU: above --max-train-gib, time every row's training step at this INPUT.FIXED_SIZE "
                        "(0: not timed)")
    p.add_argument("--max-infer-params", type=float, default=60.0, help="CPU: measured inference below (M)")
    p.add_argument("--infer-rois", type=int, nargs=2, default=[16, 32],
                   help="CPU, above --max-infer-params: test proposal counts inference is scaled from")
    p.add_argument("--iters", type=int, default=3, help="timed training iterations (median; after a warm-up)")
    p.add_argument("--infer-iters", type=int, default=3,
                   help="timed inference runs (median; after a warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="skip the NASNet rows with MODEL.NASNET.GRAD_CHECKPOINTING on")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="skip the NASNet rows under bf16 autocast (SOLVER.AMP)")
    p.add_argument("--no-train", action="store_true", help="no real training iteration (memory only)")
    p.add_argument("--no-infer", action="store_true", help="no inference timing")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides for every model (KEY VALUE ...)")
    return p.parse_args(argv)


@tool_main
def main(argv=None) -> int:
    """Benchmark every config, print the table and the mobile/R50 inference ratio."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for c in args.configs:
        if not Path(c).is_file():
            raise FileNotFoundError(f"no config {c}")
    start, load = time.perf_counter(), os.getloadavg()
    rows = []
    for config, opts in jobs(args):
        for row in bench(config, opts, args):
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(table(rows, args.limit_gib))
    mobile = next((r for r in rows if r["config"].endswith("mobile_600")), None)
    r50 = next((r for r in rows if "R_50" in r["config"] and r["size"] == 600), None)
    if mobile and r50 and "infer_s" in mobile and "infer_s" in r50:
        plain = mobile.get("infer_plain_s", mobile["infer_s"])
        print(f"inference, NASNet-A mobile 600 / R50-C4 600: {mobile['infer_s'] / r50['infer_s']:.2f} "
              f"({mobile['infer_s']:.2f} s / {r50['infer_s']:.2f} s per image; plain eval path "
              f"{plain / r50['infer_s']:.2f}, {plain:.2f} s)")
    print(f"{torch.get_num_threads()} thread(s), {time.perf_counter() - start:.0f} s wall; load average "
          f"(1/5/15 min) at the start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, at the end "
          + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
