#!/usr/bin/env python
"""Does a supernet learn under a given path sampling? Trains the supernet of a search config (its data,
sizes and recipe: the real ``SupernetTrainer`` step) for ``--steps`` steps, in memory (nothing is
written), with the paths drawn by ``--mode``, and prints the sampled paths' training loss, the mean of
each tenth of the run, as one JSON line. The probe behind docs/search.md "Why the supernet does not rank
here".

    tools/supernet_probe.py --config configs/search/fashion_mnist_supernet.yaml --mode fixed
    tools/supernet_probe.py --config configs/search/fashion_mnist_supernet.yaml --mode pool --pool 16
    tools/supernet_probe.py --config configs/search/fashion_mnist_supernet.yaml --mode ops --steps 200

Modes: ``uniform`` (what ``tools/search.py supernet`` trains), ``fixed`` (one random path, its seed
``--path-seed``), ``pool`` (``--pool`` random paths in turn), and ``inputs`` / ``ops`` / ``combiners``
(uniform over that kind of decision only, the others those of the fixed path). Chance is ln C.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch

from nasnet_core.common.cli import positive_int, tool_main
from nasnet_core.common.config import SEARCH, load_config
from nasnet_core.search.supernet_train import (
    SupernetTrainer,
    build_supernet,
    sample_decisions,
    supernet_setup,
)

KINDS = {"inputs": (0, 1), "ops": (2, 3), "combiners": (4,)}  # positions within a block's 5 decisions
MODES = ("uniform", "fixed", "pool", *KINDS)


def make_sampler(mode: str, space, path_seed: int, pool: int):
    """A (space, generator) -> decisions function for ``mode`` (see the module docstring)."""
    fixed = sample_decisions(space, torch.Generator().manual_seed(path_seed))
    if mode == "uniform":
        return sample_decisions
    if mode == "fixed":
        return lambda sp, gen: list(fixed)
    if mode == "pool":
        paths = [sample_decisions(space, torch.Generator().manual_seed(path_seed + i)) for i in range(pool)]
        turn = itertools.count()
        return lambda sp, gen: list(paths[next(turn) % pool])
    keep = KINDS[mode]

    def some(sp, gen):
        d = sample_decisions(sp, gen)
        return [d[i] if i % 5 in keep else fixed[i] for i in range(len(d))]
    return some


@tool_main
def main(argv=None) -> int:
    """Entry point: exit code 2 and one error line for a bad option, config or dataset path."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="search YAML with reward.child and supernet sections")
    p.add_argument("--mode", choices=MODES, default="uniform", help="which paths are trained")
    p.add_argument("--steps", type=positive_int, default=200, help="SGD steps (cosine over these)")
    p.add_argument("--pool", type=positive_int, default=4, help="--mode pool: number of paths")
    p.add_argument("--path-seed", type=int, default=5, help="seed of the fixed path (pool: its first)")
    p.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="config overrides in pairs")
    args = p.parse_args(argv)
    cfg = load_config(args.config, ["supernet.steps", args.steps, *args.overrides], schema=SEARCH)
    dev, data, spec = supernet_setup(cfg)
    net = build_supernet(spec).to(dev)
    trainer = SupernetTrainer(net, data, spec, None, dev)
    trainer.sample = make_sampler(args.mode, net.space, args.path_seed, args.pool)
    net.train()
    losses, batches, start = [], trainer.batches(), time.perf_counter()
    for _ in range(args.steps):
        xb, yb = next(batches)
        losses.append(trainer.train_step(xb, yb)[0].item())
    k = max(1, args.steps // 10)
    tenths = [round(sum(losses[i:i + k]) / len(losses[i:i + k]), 3) for i in range(0, args.steps, k)]
    print(json.dumps({"mode": args.mode, "pool": args.pool if args.mode == "pool" else None,
                      "steps": args.steps, "loss_by_tenth": tenths, "first": tenths[0], "last": tenths[-1],
                      "chance": round(math.log(data.num_classes), 4),
                      "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
