#!/usr/bin/env python
"""Child-training throughput in the paper's child setting (N = 2, CIFAR stem, 32x32, SGD + cosine).

Trains children of random genotypes from the NASNet-A space for ``--images`` images each and
reports images/s and the projected seconds per paper child (20 epochs x 45k images). With
``--full`` (meant for a GPU) it instead trains one complete 20-epoch child on 45k images.

    tools/benchmark_child.py                                    # CIFAR-shaped random images
    tools/benchmark_child.py --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist
    tools/benchmark_child.py --device cuda --full               # a real 20-epoch child
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np
import torch

from nasnet_core.common.cli import positive_int, tool_main
from nasnet_core.search import make_space
from nasnet_core.search.child import load_child_data, prepare_child_data, train_child
from nasnet_core.train.trainer import resolve_device


def data(args, train_subset: int):
    """The search's child data (45k / 5k split, whitened by the child trainer) of ``args.dataset``."""
    split = dict(val_size=5000, split_seed=0, train_subset=train_subset, val_subset=500)
    if args.dataset == "random":  # CIFAR-10-shaped uint8 images, 10 classes
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
        return prepare_child_data(x, rng.integers(0, 10, 50000), **split)
    return load_child_data(args.dataset, args.data_dir, **split)


@tool_main
def main(argv=None) -> int:
    """Entry point: exit code 2 and one error line for a bad dataset folder or option."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="random", choices=["random", "cifar10", "fashion_mnist"])
    p.add_argument("--data-dir", help="dataset folder (cifar10 / fashion_mnist)")
    p.add_argument("--num-conv-filters", type=positive_int, default=20, help="child width (paper: 'small'; "
                   "not given)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="SGD batch size")
    p.add_argument("--images", type=positive_int, default=640, help="training images timed per child")
    p.add_argument("--children", type=positive_int, default=3, help="random genotypes to time")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes (crop/flip)")
    p.add_argument("--full", action="store_true", help="train one full 20-epoch child on 45k images")
    args = p.parse_args(argv)
    if args.dataset != "random" and not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (the folder holding its files)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, key="--device").type
    child_data = data(args, 0 if args.full else args.images)
    space = make_space("A")
    rng = random.Random(0)
    rows = []
    for i in range(1 if args.full else args.children):
        decisions = [rng.randrange(c) for c in space.choices]
        start = time.perf_counter()
        out = train_child(space.decode(decisions), child_data, num_conv_filters=args.num_conv_filters,
                          epochs=20 if args.full else 1, batch_size=args.batch_size, device=device,
                          workers=args.workers)
        seconds = time.perf_counter() - start
        ips = out["images"] / out["train_seconds"]
        rows.append({"child": i, "images": out["images"], "train_seconds": round(out["train_seconds"], 2),
                     "seconds_incl_eval": round(seconds, 2),
                     "images_per_s": round(ips, 1), "val_acc": out["val_acc"],
                     "projected_s_per_paper_child": round(20 * 45000 / ips, 1)})
        print(json.dumps(rows[-1]), flush=True)
    ips = sum(r["images"] for r in rows) / sum(r["train_seconds"] for r in rows)
    print(json.dumps({"dataset": args.dataset, "device": device, "threads": torch.get_num_threads(),
                      "num_conv_filters": args.num_conv_filters, "batch_size": args.batch_size,
                      "images_per_s": round(ips, 1),
                      "seconds_per_paper_child_20ep_45k": round(20 * 45000 / ips, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
