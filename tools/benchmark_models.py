#!/usr/bin/env python
"""Speed of our NASNet-A models against the public ports, measured in the same run.

CPU: batch-1 latency (median of interleaved runs) of ours -- as built, and with
``nc.fuse_bn`` (BN folded into the convs, inference only) -- vs Cadene ``nasnetamobile``
and timm ``nasnetalarge``; ``--channels-last`` runs all of them channels_last. GPU (when
present): train and inference images/s in fp32 and bf16 autocast, channels_last.
Prints ratios ours/peer (< 1 means we are faster).

    python tools/benchmark_models.py --models mobile large
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

import nasnet_core as nc
from nasnet_core.cli import tool_main

PAIRS = {
    # ours (arch, overrides), peer builder, input size
    "mobile": ("nasnet_a_mobile", {}, "cadene nasnetamobile", 224),
    "large": ("nasnet_a_large", {"pad_mode": "timm"}, "timm nasnetalarge", 331),
}


def build_peer(name: str) -> torch.nn.Module:
    """The reference implementation called ``name``."""
    if name == "timm nasnetalarge":
        import timm
        return timm.create_model("nasnetalarge", pretrained=False)
    if name == "cadene nasnetamobile":
        import pretrainedmodels
        return pretrainedmodels.nasnetamobile(num_classes=1000, pretrained=None)
    raise ValueError(f"unknown peer {name!r}")


def interleaved_latency(models: list[torch.nn.Module], x: torch.Tensor, iters: int,
                        warmup: int) -> list[list[float]]:
    """Per-model lists of batch latencies (s), alternating models each iteration."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models:
                m(x)
        for _ in range(iters):
            for i, m in enumerate(models):
                t = time.perf_counter()
                m(x)
                times[i].append(time.perf_counter() - t)
    return times


def gpu_throughput(model: torch.nn.Module, size: int, batch: int, train: bool, bf16: bool,
                   iters: int) -> float:
    """Images/s on CUDA for a train step (SGD) or inference, channels_last."""
    model = model.cuda().to(memory_format=torch.channels_last)
    model.train(train)
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3) if train else None

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            if train:
                out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                loss = torch.nn.functional.cross_entropy(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.inference_mode():
                    model(x)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t)


@tool_main
def main(argv=None) -> int:
    """Run the benchmark and print the ratio table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS), help="pairs to time")
    ap.add_argument("--iters", type=int, default=20, help="timed CPU iterations per model")
    ap.add_argument("--warmup", type=int, default=3, help="untimed CPU iterations first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--channels-last", action="store_true", help="CPU runs in channels_last (all models)")
    ap.add_argument("--gpu", action="store_true", help="also run the CUDA throughput benchmark")
    ap.add_argument("--batch-size", type=int, default=32, help="images per step of the GPU benchmark")
    ap.add_argument("--gpu-iters", type=int, default=10, help="timed GPU steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    for key in args.models:
        arch, kw, peer_name, size = PAIRS[key]
        ours = nc.create_model(arch, aux_head=False, **kw).eval()
        peer = build_peer(peer_name).eval()
        fused = nc.fuse_bn(copy.deepcopy(ours))
        x = torch.randn(1, 3, size, size)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        x = x.to(memory_format=fmt)
        cpu_models = [m.to(memory_format=fmt) for m in (ours, peer, fused)]
        t_ours, t_peer, t_fused = interleaved_latency(cpu_models, x, args.iters, args.warmup)
        mp = statistics.median(t_peer)
        layout = "channels_last" if args.channels_last else "contiguous"
        print(f"CPU batch-1 {arch}@{size} ({layout}): {peer_name} {mp * 1e3:.1f} ms")
        for label, times in (("ours", t_ours), ("ours + fuse_bn", t_fused)):
            mo = statistics.median(times)
            paired = statistics.median(a / b for a, b in zip(times, t_peer))
            print(f"  {label:15s} {mo * 1e3:.1f} ms, ratio of medians {mo / mp:.3f} "
                  f"(median paired ratio {paired:.3f})")
        if args.gpu and torch.cuda.is_available():
            for train in (False, True):
                for bf16 in (False, True):
                    res = {}
                    for label, m in (("ours", ours), ("peer", peer)):
                        res[label] = gpu_throughput(m, size, args.batch_size, train, bf16,
                                                    args.gpu_iters)
                    mode = ("train" if train else "infer") + (" bf16" if bf16 else " fp32")
                    print(f"GPU {arch} {mode} channels_last bs{args.batch_size}: ours "
                          f"{res['ours']:.1f} img/s, {peer_name} {res['peer']:.1f} img/s, "
                          f"speed ratio ours/peer {res['ours'] / res['peer']:.3f} (>1: ours faster)")
                    ours.cpu(), peer.cpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
