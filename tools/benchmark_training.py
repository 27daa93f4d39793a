#!/usr/bin/env python
"""Training throughput (images/s) of the ImageNet recipes on synthetic data.

Times the whole training step of a recipe -- forward with the aux head, label-smoothed loss,
backward, TF RMSProp, parameter EMA -- in fp32 / NCHW, in bf16 autocast / channels_last (and the
two mixed) and with per-cell activation checkpointing (+ckpt, model.grad_checkpointing), all in
the same run, and prints the speed-up over fp32 and the memory of each mode: the CUDA peak
allocated on a GPU; on a CPU the bytes autograd saves for backward in one forward (distinct
storages, parameters not counted), plus for +ckpt the largest cell's, recomputed in backward.

    python tools/benchmark_training.py                       # GPU: large and mobile, batch 32
    python tools/benchmark_training.py --device cpu --batch-size 2 --iters 1 --warmup 1 \
        --image-size 96 --N 1 --F 192                         # CPU smoke run (tiny settings)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import nasnet_core as nc
from nasnet_core.common.cli import positive_int, tool_main
from nasnet_core.common.config import load_config
from nasnet_core.model.cell import Cell, MultiInputCell
from nasnet_core.model.complexity import SavedBytes
from nasnet_core.train.data import DatasetInfo
from nasnet_core.train.optim import ModelEMA, build_optimizer, smoothed_cross_entropy
from nasnet_core.train.trainer import model_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "classification"
RECIPES = {
    "large": CONFIGS / "imagenet_nasnet_a_large.yaml",
    "mobile": CONFIGS / "imagenet_nasnet_a_mobile.yaml",
    "7_1920": CONFIGS / "imagenet_nasnet_a_7_1920.yaml",
    "5_1536": CONFIGS / "imagenet_nasnet_a_5_1536.yaml",
}
MODES = {  # name: (bf16 autocast, channels_last, activation checkpointing)
    "fp32": (False, False, False),
    "fp32+cl": (False, True, False),
    "bf16": (True, False, False),
    "bf16+cl": (True, True, False),
    "fp32+ckpt": (False, False, True),
    "bf16+ckpt": (True, False, True),
}


def build(recipe: str, args) -> tuple[torch.nn.Module, dict, int]:
    """Model and solver section of a recipe (with the command line's size overrides), built as the
    trainer builds them."""
    sizes = {"model.N": args.N, "model.F": args.F, "data.image_size": args.image_size}
    extra = [x for key, value in sizes.items() if value for x in (key, str(value))]
    cfg = load_config(RECIPES[recipe], extra)
    size = cfg["data"]["image_size"] or nc.get_config(cfg["model"]["arch"]).image_size
    info = DatasetInfo(num_classes=1000, in_chans=3, image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = nc.create_model(cfg["model"]["arch"], **model_overrides(cfg, info, total_steps=1000))
    return model, cfg["solver"], size


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, bf16: bool, ckpt: bool) -> int:
    """Bytes autograd saves in one training forward (checkpointed: plus the largest cell's)."""
    cells = {n: m for n, m in model.named_modules() if isinstance(m, (Cell, MultiInputCell))}
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        model.set_grad_checkpointing(False)
        with SavedBytes(model).watch(cells) as plain:
            model(x)
        if not ckpt:
            return plain.bytes
        model.set_grad_checkpointing(True)
        with SavedBytes(model) as sb:
            model(x)
    return sb.bytes + max(plain.per_module.values())


def throughput(recipe: str, args, bf16: bool, channels_last: bool, ckpt: bool = False) -> tuple[float, int]:
    """Images/s of full training steps for ``recipe`` in one precision / memory-format /
    checkpointing mode, and its memory in bytes (CUDA peak, or saved activations on a CPU)."""
    torch.manual_seed(0)
    model, solver, size = build(recipe, args)
    dev = torch.device(args.device)
    model = model.to(dev).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = build_optimizer(model, solver)
    ema = ModelEMA(model, solver["ema_decay"]) if solver["ema_decay"] > 0 else None
    x = torch.randn(args.batch_size, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)
    memory = saved_bytes(model, x, bf16, ckpt) if dev.type == "cpu" else 0
    model.set_grad_checkpointing(ckpt)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i):
        model.set_training_step(i)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits, aux = model(x)
        loss = smoothed_cross_entropy(logits, y, solver["label_smoothing"])
        loss = loss + solver["aux_weight"] * smoothed_cross_entropy(aux, y, solver["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    t = time.perf_counter()
    for i in range(args.iters):
        step(args.warmup + i)
    sync()
    ips = args.batch_size * args.iters / (time.perf_counter() - t)
    return ips, torch.cuda.max_memory_allocated() if dev.type == "cuda" else memory


@tool_main
def main(argv=None) -> int:
    """Run every recipe in every mode and print images/s and the speed-up over fp32."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["large", "mobile"], choices=list(RECIPES))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=["cpu", "cuda"])
    ap.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    ap.add_argument("--iters", type=positive_int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--image-size", type=int, default=0, help="override the recipe's crop size")
    ap.add_argument("--N", type=int, default=0, help="override N (smoke runs)")
    ap.add_argument("--F", type=int, default=0, help="override F (smoke runs)")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, batch {args.batch_size}, {args.iters} timed steps")
    for recipe in args.recipes:
        base = None
        for mode in args.modes:
            ips, memory = throughput(recipe, args, *MODES[mode])
            base = ips if mode == "fp32" else base
            ratio = f" ({ips / base:.2f}x fp32)" if base and mode != "fp32" else ""
            kind = "CUDA peak" if args.device == "cuda" else "saved act."
            print(f"{recipe:>7} {mode:>9}: {ips:9.1f} img/s{ratio}, {kind} {memory / 2**20:.0f} MiB",
                  flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
