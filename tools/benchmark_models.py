#!/usr/bin/env python
"""Speed of our NASNet-A models against the public ports, measured in one run and one process.

CPU: median batch latency of interleaved runs, for each thread count and batch size, of
  peer eager      Cadene ``nasnetamobile`` / timm ``nasnetalarge`` (PyTorch eager)
  ours eager      ``nc.create_model(...)`` in eval mode
  ours fused+cl   ``nc.fuse_bn`` + channels_last (eager)
  ours optimised  ``nc.optimize_for_inference`` (fuse_bn, channels_last, traced + frozen)
  ours ORT        our ONNX export in onnxruntime (all graph optimisations; needs the export extra)
with ratios to peer eager (< 1: faster). GPU (``--gpu``): train and inference images/s in
fp32 and bf16 autocast, channels_last.

    python tools/benchmark_models.py --models mobile --threads 1 2 --batch-sizes 1 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

import nasnet_core as nc
from nasnet_core.common.cli import positive_int, tool_main
from nasnet_core.interop.inference import optimize_for_inference

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


def interleaved_latency(runners: list, x: torch.Tensor, iters: int, warmup: int) -> list[list[float]]:
    """Per-runner lists of batch latencies (s), alternating runners each iteration."""
    times: list[list[float]] = [[] for _ in runners]
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runners:
                run(x)
        for _ in range(iters):
            for i, run in enumerate(runners):
                t = time.perf_counter()
                run(x)
                times[i].append(time.perf_counter() - t)
    return times


def ort_runner(model: torch.nn.Module, size: int, threads: int, folder: str):
    """``x -> logits`` through our ONNX export in onnxruntime, or None without the export extra."""
    try:
        from nasnet_core.interop.export import export_onnx, onnx_session
        path = os.path.join(folder, f"{model.arch}_{size}.onnx")
        if not os.path.exists(path):
            export_onnx(model, path, torch.randn(1, 3, size, size))
        sess = onnx_session(path, threads)
    except ValueError as e:  # the export extra is missing
        print(f"  (no onnxruntime column: {e})")
        return None
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def cpu_table(key: str, threads: int, batch: int, args, folder: str) -> None:
    """Time every variant of pair ``key`` at one thread count and batch size; print ratios."""
    arch, kw, peer_name, size = PAIRS[key]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = nc.create_model(arch, aux_head=False, **kw).eval()
    peer = build_peer(peer_name).eval()
    x = torch.randn(batch, 3, size, size)
    variants = [("peer eager", peer), ("ours eager", ours),
                ("ours fused+cl", optimize_for_inference(ours, x[:1], freeze=False)),
                ("ours optimised", optimize_for_inference(ours, x[:1]))]
    fused = variants[2][1]
    runners = [(label, m) for label, m in variants]
    runners[2] = ("ours fused+cl", lambda t: fused(t.contiguous(memory_format=torch.channels_last)))
    ort = ort_runner(ours, size, threads, folder) if not args.no_onnx else None
    if ort is not None:
        runners.append(("ours ORT", ort))
    times = interleaved_latency([r for _, r in runners], x, args.iters, args.warmup)
    base = statistics.median(times[0])
    print(f"CPU {arch}@{size} bs{batch} {threads} thread(s); peer = {peer_name}")
    for (label, _), t in zip(runners, times):
        med = statistics.median(t)
        paired = statistics.median(a / b for a, b in zip(t, times[0]))
        print(f"  {label:15s} {med * 1e3:8.1f} ms  ratio {med / base:.2f}  (median paired {paired:.2f})")


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
    """Run the benchmark and print the ratio tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobile"], choices=list(PAIRS), help="pairs to time")
    ap.add_argument("--threads", nargs="+", type=positive_int, default=[1, 2], help="CPU thread counts")
    ap.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 8], help="CPU batch sizes")
    ap.add_argument("--iters", type=positive_int, default=15, help="timed CPU iterations per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed CPU iterations first")
    ap.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime column")
    ap.add_argument("--gpu", action="store_true", help="also run the CUDA throughput benchmark")
    ap.add_argument("--batch-size", type=positive_int, default=32, help="images per GPU benchmark step")
    ap.add_argument("--gpu-iters", type=positive_int, default=10, help="timed GPU steps")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}; medians of {args.iters} interleaved runs")
    with tempfile.TemporaryDirectory() as folder:
        for key in args.models:
            for threads in args.threads:
                for batch in args.batch_sizes:
                    cpu_table(key, threads, batch, args, folder)
            if args.gpu and torch.cuda.is_available():
                gpu_table(key, args)
    return 0


def gpu_table(key: str, args) -> None:
    """Train/inference images/s of ours and the peer on CUDA, fp32 and bf16."""
    arch, kw, peer_name, size = PAIRS[key]
    ours = nc.create_model(arch, aux_head=False, **kw)
    peer = build_peer(peer_name)
    for train in (False, True):
        for bf16 in (False, True):
            res = {label: gpu_throughput(m, size, args.batch_size, train, bf16, args.gpu_iters)
                   for label, m in (("ours", ours), ("peer", peer))}
            mode = ("train" if train else "infer") + (" bf16" if bf16 else " fp32")
            ratio = res["ours"] / res["peer"]
            print(f"GPU {arch} {mode} channels_last bs{args.batch_size}: ours {res['ours']:.1f} img/s, "
                  f"{peer_name} {res['peer']:.1f} img/s, speed ratio ours/peer {ratio:.3f}")
            ours.cpu(), peer.cpu()


if __name__ == "__main__":
    sys.exit(main())
