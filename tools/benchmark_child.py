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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nasnet_core.search import make_space  # noqa: E402
from nasnet_core.search.child import load_dataset, split_train_val, train_child  # noqa: E402


def data(args):
    """(train, val, num_classes) as whitened float tensors."""
    if args.dataset == "random":  # CIFAR-10-shaped uint8 images, 10 classes
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, 50000)
    else:
        x, y = load_dataset(args.dataset, args.data_dir)
    tr, va = split_train_val(len(x), 5000, 0)
    xf = torch.from_numpy(x).float().div_(255)
    mean, std = xf[tr].mean((0, 2, 3), keepdim=True), xf[tr].std((0, 2, 3), keepdim=True)
    xf = (xf - mean) / std
    y = torch.from_numpy(np.asarray(y, np.int64))
    return (xf[tr], y[tr]), (xf[va], y[va]), int(y.max()) + 1


def main(argv=None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="random", choices=["random", "cifar10", "fashion_mnist"])
    p.add_argument("--data-dir", help="dataset folder (cifar10 / fashion_mnist)")
    p.add_argument("--num-conv-filters", type=int, default=20, help="child width (paper: 'small'; not given)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=640, help="training images timed per child")
    p.add_argument("--children", type=int, default=3, help="random genotypes to time")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--full", action="store_true", help="train one full 20-epoch child on 45k images")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, val, num_classes = data(args)
    space = make_space("A")
    rng = random.Random(0)
    rows = []
    for i in range(1 if args.full else args.children):
        decisions = [rng.randrange(c) for c in space.choices]
        n = len(train[0]) if args.full else args.images
        sub = (train[0][:n], train[1][:n])
        start = time.perf_counter()
        out = train_child(space.decode(decisions), sub, (val[0][:500], val[1][:500]), num_classes,
                          num_conv_filters=args.num_conv_filters, epochs=20 if args.full else 1,
                          batch_size=args.batch_size, device=args.device)
        seconds = time.perf_counter() - start
        ips = out["images"] / out["train_seconds"]
        rows.append({"child": i, "images": out["images"], "train_seconds": round(out["train_seconds"], 2),
                     "seconds_incl_eval": round(seconds, 2),
                     "images_per_s": round(ips, 1), "val_acc": out["val_acc"],
                     "projected_s_per_paper_child": round(20 * 45000 / ips, 1)})
        print(json.dumps(rows[-1]), flush=True)
    ips = sum(r["images"] for r in rows) / sum(r["train_seconds"] for r in rows)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps({"dataset": args.dataset, "device": device, "threads": torch.get_num_threads(),
                      "num_conv_filters": args.num_conv_filters, "batch_size": args.batch_size,
                      "images_per_s": round(ips, 1),
                      "seconds_per_paper_child_20ep_45k": round(20 * 45000 / ips, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
