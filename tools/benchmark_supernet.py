#!/usr/bin/env python
"""Cost of a weight-sharing supernet search: seconds per supernet training step (one uniformly sampled
path, the real training step of tools/search.py supernet), the same step of the standalone children of
the same paths (the peer), and seconds per child evaluation (BN recalibration + held-out accuracy +
mult-adds), on random data of the child's shape. Then a PROJECTION (not a measurement) of a single-device
CIFAR-10 search from these numbers.

    tools/benchmark_supernet.py --threads 1                       # fashion_mnist_small sizes, CPU
    tools/benchmark_supernet.py --enas --device cuda              # ENAS's child size on a GPU

``--enas`` sets ENAS's micro-search child (Pham et al., 2018; none of this is in the NASNet paper):
20 filters, N = 2 (6 normal + 2 reduction cells), batch 128, 3 channels; the projection assumes its
150 epochs over 45,000 training images and scoring ``--project-children`` children on 5,000 held-out
images each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from nasnet_core.common.cli import positive_int, tool_main
from nasnet_core.model.complexity import complexity
from nasnet_core.search.child import prepare_child_data
from nasnet_core.search.space import SPACE_VARIANTS, make_space
from nasnet_core.search.supernet import child_model
from nasnet_core.search.supernet_reward import calibration_batches, path_accuracy, recalibrate_bn
from nasnet_core.search.supernet_train import SupernetTrainer, build_supernet, sample_decisions
from nasnet_core.train.checks import resolve_device

ENAS = {"num_conv_filters": 20, "N": 2, "batch_size": 128, "in_chans": 3}
PROJECT_EPOCHS, PROJECT_TRAIN, PROJECT_VAL = 150, 45000, 5000  # ENAS's schedule, CIFAR-10's 45k / 5k split


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_training(args, dev) -> tuple[float, float, list]:
    """(supernet s/step, standalone child s/step, the paths) over ``args.steps`` timed steps."""
    rng = np.random.default_rng(0)
    n = max(args.batch_size * (args.steps + args.warmup), 2 * args.batch_size)
    x = rng.integers(0, 256, (n + 1, 32, 32, args.in_chans), dtype=np.uint8)
    data = prepare_child_data(x, rng.integers(0, 10, n + 1), val_size=1)
    space = make_space(args.space)
    sizes = {"N": args.N, "num_conv_filters": args.num_conv_filters, "stem_multiplier": 3.0,
             "num_classes": 10, "in_chans": args.in_chans}
    spec = {"space": space.to_dict(), "sizes": sizes,
            "recipe": {"batch_size": args.batch_size, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                       "grad_clip": 5.0, "crop_pad": 4, "flip": True},
            "steps": args.steps + args.warmup, "seed": 0}
    start = time.perf_counter()
    net = build_supernet(spec).to(dev)
    print(json.dumps({"supernet_build_s": round(time.perf_counter() - start, 2),
                      "supernet_params": sum(p.numel() for p in net.parameters())}), flush=True)
    fit = SupernetTrainer(net, data, spec, None, dev)
    net.train()
    batches, paths, sn_s = fit.batches(), [], 0.0
    for i in range(args.warmup + args.steps):
        xb, yb = next(batches)
        _sync(dev)
        t = time.perf_counter()
        fit.train_step(xb, yb)
        _sync(dev)
        if i >= args.warmup:
            sn_s += time.perf_counter() - t
            paths.append((xb, yb))
    gen = torch.Generator().manual_seed(1)
    child_s = 0.0
    for xb, yb in paths:  # the peer: a standalone child's step on the same batch
        child = child_model(space.decode(sample_decisions(space, gen)), spec["sizes"]).to(dev).train()
        opt = torch.optim.SGD(child.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for k in range(2):  # the first step of a fresh model warms it up
            _sync(dev)
            t = time.perf_counter()
            loss = F.cross_entropy(child(xb.to(dev)), yb.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(child.parameters(), 5.0)
            opt.step()
            _sync(dev)
            child_s += (time.perf_counter() - t) if k else 0.0
    return sn_s / args.steps, child_s / args.steps, (net, data, space)


def time_evaluation(args, dev, net, data, space) -> dict:
    """Seconds per child evaluation: BN recalibration, held-out accuracy, mult-adds."""
    calib = [x.to(dev) for x in calibration_batches(data, args.calib_batches, args.batch_size, 0)]
    val_x = torch.randn(args.val_images, args.in_chans, 32, 32, device=dev)
    val_y = torch.randint(0, 10, (args.val_images,), device=dev)
    gen = torch.Generator().manual_seed(2)
    parts = {"calibrate": 0.0, "evaluate": 0.0, "mult_adds": 0.0}
    for _ in range(args.children):
        g = space.decode(sample_decisions(space, gen))
        for name, fn in (("calibrate", lambda g=g: recalibrate_bn(net, g, calib)),
                         ("evaluate", lambda g=g: path_accuracy(net, g, val_x, val_y, 500)),
                         ("mult_adds", lambda g=g: complexity(child_model(g, net.sizes), 32))):
            _sync(dev)
            t = time.perf_counter()
            fn()
            _sync(dev)
            parts[name] += time.perf_counter() - t
    return {k: v / args.children for k, v in parts.items()}


@tool_main
def main(argv=None) -> int:
    """Entry point: exit code 2 and one error line for a bad option or device."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="A", choices=[v for v in SPACE_VARIANTS if v != "B"])
    p.add_argument("--N", type=positive_int, default=2, help="normal cells per stage")
    p.add_argument("--num-conv-filters", type=positive_int, default=4, help="first-stage filters")
    p.add_argument("--batch-size", type=positive_int, default=16, help="SGD batch (and calibration batch)")
    p.add_argument("--in-chans", type=positive_int, default=1, help="input channels (1: Fashion-MNIST)")
    p.add_argument("--enas", action="store_true", help="ENAS's child size: 20 filters, N 2, batch 128, RGB")
    p.add_argument("--steps", type=positive_int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--children", type=positive_int, default=5, help="child evaluations timed")
    p.add_argument("--calib-batches", type=positive_int, default=8, help="BN recalibration batches")
    p.add_argument("--val-images", type=positive_int, default=500, help="held-out images per evaluation")
    p.add_argument("--project-children", type=positive_int, default=1000, help="children in the projection")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = p.parse_args(argv)
    if args.enas:
        for k, v in ENAS.items():
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device, key="--device")
    step_s, child_step_s, (net, data, space) = time_training(args, dev)
    ev = time_evaluation(args, dev, net, data, space)
    eval_s = sum(ev.values())
    steps = PROJECT_EPOCHS * (PROJECT_TRAIN // args.batch_size)
    eval_proj = ev["calibrate"] + ev["evaluate"] * PROJECT_VAL / args.val_images + ev["mult_adds"]
    print(json.dumps({
        "device": str(dev), "threads": torch.get_num_threads(), "space": args.space, "N": args.N,
        "num_conv_filters": args.num_conv_filters, "batch_size": args.batch_size, "in_chans": args.in_chans,
        "supernet_s_per_step": round(step_s, 4), "child_s_per_step": round(child_step_s, 4),
        "supernet_over_child_step": round(step_s / child_step_s, 2),
        "child_eval_s": round(eval_s, 3), **{f"child_eval_{k}_s": round(v, 3) for k, v in ev.items()},
        "eval_images": args.val_images, "calib_images": args.calib_batches * args.batch_size}))
    print(json.dumps({
        "PROJECTION (not measured)": f"{PROJECT_EPOCHS} epochs x {PROJECT_TRAIN} images at batch "
                                     f"{args.batch_size} = {steps} supernet steps, then "
                                     f"{args.project_children} "
                                     f"children scored on {PROJECT_VAL} held-out images each, at the sizes "
                                     f"above on {dev}",
        "projected_supernet_hours": round(steps * step_s / 3600, 2),
        "projected_evaluation_hours": round(args.project_children * eval_proj / 3600, 2),
        "projected_total_hours": round((steps * step_s + args.project_children * eval_proj) / 3600, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
