#!/usr/bin/env python
"""Print parameters and mult-adds of registered NASNet models next to the paper's numbers.

    python tools/analyze_model.py                      # every registered model
    python tools/analyze_model.py nasnet_a_large --image-size 331 --aux-head
    python tools/analyze_model.py nasnet_a_mobile --N 4 --F 1056 --genotype run/top1.json
"""

from __future__ import annotations

import argparse
import sys

import nasnet_core as nc
from nasnet_core.common.cli import tool_main


def _fmt(n: float) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.2f} M"


@tool_main
def main(argv=None) -> int:
    """Parse arguments and print the complexity table; exit 2 with one line for an unknown model."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*",
                    help=f"registered names (default: all): {', '.join(nc.list_models())}")
    ap.add_argument("--image-size", type=int, help="input size (default: the model's)")
    ap.add_argument("--aux-head", action="store_true", help="count the auxiliary head's parameters")
    ap.add_argument("--N", type=int, help="normal cells per stage")
    ap.add_argument("--F", type=int, help="penultimate width")
    ap.add_argument("--genotype", help="registered name, text form or JSON path")
    ap.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    args = ap.parse_args(argv)
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size must be a positive integer, got {args.image_size}")
    overrides = {"aux_head": args.aux_head}
    for key in ("N", "F", "genotype", "num_classes"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    names = args.models or nc.list_models()
    print(f"{'model':24s} {'image':>5s} {'params':>10s} {'mult-adds':>11s} {'paper params':>13s} "
          f"{'paper mult-adds':>15s}")
    for name in names:
        model = nc.create_model(name, **overrides)
        size = args.image_size if args.image_size is not None else model.image_size
        c = nc.complexity(model, size)
        paper = model.default_cfg.paper
        pp = _fmt(paper["params"]) if "params" in paper else "-"
        pm = _fmt(paper["mult_adds"]) if "mult_adds" in paper else "-"
        print(f"{name:24s} {size:5d} {c['params']:>10,d} {_fmt(c['mult_adds']):>11s} {pp:>13s} {pm:>15s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
