#!/usr/bin/env python
"""Draw one cell of a genotype (inputs, per-block ops and combiner, outputs) as a PNG.

    tools/draw_cell.py --random-b 0 --output docs/search_nasnet_b_cell.png     # a random B-space cell
    tools/draw_cell.py --genotype nasnet_a --cell reduce --output cell.png
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from nasnet_core.common.cli import refuse_existing, tool_main
from nasnet_core.common.fileio import atomic_write
from nasnet_core.model.genotype import CellGenotype, get_genotype, random_genotype

_COMBINE = {"add": "+", "concat": "||", "add_layernorm": "+ LN", "add_instancenorm": "+ IN"}


def _input_label(k: int, n: int) -> str:
    if n == 4:
        return f"input {k}\n(output {k + 1} of\nlayer L-{k + 1})"
    return ["h[L-1]\n(current)", "h[L-2]\n(previous)"][k]


def _layout(cell: CellGenotype) -> dict[int, tuple[float, float]]:
    """Position of every state: inputs on the bottom row, blocks staggered upwards."""
    n = cell.num_inputs
    pos = {k: (2.4 * k, 0.0) for k in range(n)}
    for b in range(cell.num_blocks):
        pos[n + b] = (1.2 + 2.4 * (b % 2) + 1.2 * (b // 2 % 2), 3.2 + 2.6 * b)
    return pos


def draw_cell(cell: CellGenotype, out: str | Path, title: str) -> Path:
    """Draw ``cell`` to the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, pos = cell.num_inputs, _layout(cell)
    top = 3.2 + 2.6 * cell.num_blocks + 0.6
    fig, ax = plt.subplots(figsize=(8, 2 + 1.3 * cell.num_blocks))
    box = dict(boxstyle="round,pad=0.3", fc="#e8eef7", ec="#34568b")
    arrow = dict(arrowstyle="->", color="#555555", lw=0.9)
    for k in range(n):
        ax.text(*pos[k], _input_label(k, n), ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3", fc="#f2f2f2", ec="#777777"))
    for b, blk in enumerate(cell.blocks):
        x, y = pos[n + b]
        for dx, src, op in ((-1.0, blk.input_a, blk.op_a), (1.0, blk.input_b, blk.op_b)):
            ax.annotate("", (x + dx, y - 1.1), pos[src], arrowprops=arrow)
            ax.text(x + dx, y - 1.1, op, ha="center", va="center", fontsize=7.5, bbox=box)
            ax.annotate("", (x, y), (x + dx, y - 1.1), arrowprops=arrow)
        ax.text(x, y, _COMBINE[blk.combine], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="circle,pad=0.25", fc="#fde9c9", ec="#b7791f"))
        ax.text(x + 0.45, y + 0.15, f"state {n + b}", fontsize=6.5, color="#555555")
    for k, s in enumerate(cell.output_states()):
        label = f"output {k + 1}\n-> layer L+{k + 1}" if n == 4 else f"state {s}"
        ox = 2.4 * k
        ax.annotate("", (ox, top), pos[s], arrowprops=dict(arrowstyle="->", color="#2f7d32", lw=1.1))
        ax.text(ox, top + 0.3, label, ha="center", va="bottom", fontsize=8, color="#2f7d32")
    ax.set_xlim(-1.5, 2.4 * max(n, len(cell.output_states())) + 0.3)
    ax.set_ylim(-1.2, top + 1.8)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)


@tool_main
def main(argv=None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--genotype", help="registered name, text form or JSON path")
    src.add_argument("--random-b", type=int, metavar="SEED", help="a random cell of the B space")
    p.add_argument("--cell", choices=["normal", "reduce"], default="normal")
    p.add_argument("--output", required=True, help="PNG path")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    args = p.parse_args(argv)
    refuse_existing(args.output, args.force)
    if args.random_b is not None:
        from nasnet_core.search import make_space

        space = make_space("B")
        g = random_genotype(random.Random(args.random_b), space.num_blocks, ops=space.ops,
                            combiners=space.combiners, outputs=(space.output,), num_inputs=space.num_inputs)
        title = f"random NASNet-B-space {args.cell} cell (seed {args.random_b})"
    else:
        g = get_genotype(args.genotype)
        title = f"{args.cell} cell"
    cell = g.normal if args.cell == "normal" else g.reduce
    print(cell.to_string())
    print(draw_cell(cell, args.output, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
