"""Decision spaces: a sequence of categorical decisions, and the NASNet cell space built on it.

The controller of the paper (section 3) predicts 2 x 5B decisions: for each block of the
normal cell, then of the reduction cell, (1) first input, (2) second input, (3) op on the
first input, (4) op on the second input, (5) combiner. ``NASNetSpace`` maps such a
decision list to an ``nc.Genotype`` and back, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..model.genotype import INPUT_COUNTS, Block, CellGenotype, Genotype
from ..model.ops import COMBINERS, OP_NAMES, PAPER_OPS

__all__ = ["DecisionSpace", "NASNetSpace", "SpaceError", "SPACE_VARIANTS", "make_space"]


class SpaceError(ValueError):
    """Decisions that do not fit a space, or a space that cannot be built."""


@dataclass(frozen=True)
class DecisionSpace:
    """A fixed sequence of categorical decisions; ``choices[i]`` is decision i's option count."""

    choices: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.choices:
            raise SpaceError("a decision space needs at least one decision")
        for i, c in enumerate(self.choices):
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise SpaceError(f"decision {i}: choice count must be a positive int, got {c!r}")
        if self.names and len(self.names) != len(self.choices):
            raise SpaceError(f"{len(self.names)} names for {len(self.choices)} decisions")

    def __len__(self) -> int:
        return len(self.choices)

    def log10_size(self) -> float:
        """log10 of the number of distinct decision lists."""
        return sum(math.log10(c) for c in self.choices)

    def name(self, i: int) -> str:
        """Human-readable name of decision ``i``."""
        return self.names[i] if self.names else f"d{i}"

    def validate(self, decisions) -> list[int]:
        """Return ``decisions`` as a list of ints, or raise SpaceError naming the bad entry."""
        decisions = list(decisions)
        if len(decisions) != len(self.choices):
            raise SpaceError(f"expected {len(self.choices)} decisions, got {len(decisions)}")
        for i, (d, c) in enumerate(zip(decisions, self.choices)):
            if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < c:
                raise SpaceError(f"decision {i} ({self.name(i)}): {d!r} is not in range({c})")
        return [int(d) for d in decisions]

    def to_dict(self) -> dict:
        """Plain-data form."""
        return {"choices": list(self.choices), "names": list(self.names)}


@dataclass(frozen=True)
class NASNetSpace(DecisionSpace):
    """The NASNet cell space: B blocks per cell, normal then reduction, 5 decisions per block;
    a block's inputs choose among the cell's ``num_inputs`` inputs and the earlier blocks."""

    num_blocks: int = 5
    num_inputs: int = 2  # 2: NASNet-A/C cells; 4: NASNet-B cells (the last four layers' outputs)
    ops: tuple[str, ...] = PAPER_OPS  # the paper's 13; any op of the table may be named
    combiners: tuple[str, ...] = ("add", "concat")
    output: str = "unused"
    choices: tuple[int, ...] = field(default=(), init=False)
    names: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self):
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise SpaceError(f"num_blocks must be a positive int, got {self.num_blocks!r}")
        for kind, given, known in (("op", self.ops, OP_NAMES), ("combiner", self.combiners, COMBINERS)):
            if not given:
                raise SpaceError(f"the {kind} set is empty")
            bad = [x for x in given if x not in known]
            if bad:
                raise SpaceError(f"unknown {kind}(s) {bad}; known: {', '.join(known)}")
            if len(set(given)) != len(given):
                raise SpaceError(f"repeated {kind} in {list(given)}")
        if self.num_inputs not in INPUT_COUNTS:
            raise SpaceError(f"num_inputs must be one of {INPUT_COUNTS}, got {self.num_inputs!r}")
        if self.output not in ("unused", "all"):
            raise SpaceError(f"output must be 'unused' or 'all', got {self.output!r}")
        choices, names = [], []
        for cell in ("normal", "reduce"):
            for b in range(self.num_blocks):
                n = b + self.num_inputs
                choices += [n, n, len(self.ops), len(self.ops), len(self.combiners)]
                names += [f"{cell}.{b}.{x}" for x in ("input_a", "input_b", "op_a", "op_b", "combine")]
        object.__setattr__(self, "choices", tuple(choices))
        object.__setattr__(self, "names", tuple(names))
        super().__post_init__()

    def decode(self, decisions) -> Genotype:
        """The genotype that ``decisions`` (2 x 5B ints) describe."""
        d = self.validate(decisions)
        per_cell = 5 * self.num_blocks

        def cell(offset: int) -> CellGenotype:
            blocks = []
            for b in range(self.num_blocks):
                ia, ib, oa, ob, cb = d[offset + 5 * b: offset + 5 * b + 5]
                blocks.append(Block(ia, ib, self.ops[oa], self.ops[ob], self.combiners[cb]))
            return CellGenotype(tuple(blocks), self.output, self.num_inputs)

        return Genotype(cell(0), cell(per_cell))

    def encode(self, genotype: Genotype) -> list[int]:
        """The decisions that decode to ``genotype``; SpaceError if it lies outside this space."""
        out = []
        for name, cell in (("normal", genotype.normal), ("reduce", genotype.reduce)):
            if cell.num_blocks != self.num_blocks:
                raise SpaceError(f"{name} cell has {cell.num_blocks} blocks; "
                                 f"this space has {self.num_blocks}")
            if cell.num_inputs != self.num_inputs:
                raise SpaceError(f"{name} cell takes {cell.num_inputs} inputs; this space's cells take "
                                 f"{self.num_inputs}")
            if cell.output != self.output:
                raise SpaceError(f"{name} cell output is {cell.output!r}; this space uses {self.output!r}")
            for b, blk in enumerate(cell.blocks):
                for what, value, table in (("op_a", blk.op_a, self.ops), ("op_b", blk.op_b, self.ops),
                                           ("combine", blk.combine, self.combiners)):
                    if value not in table:
                        raise SpaceError(f"{name} cell, block {b}, {what}: {value!r} is not in this "
                                         f"space's set {list(table)}")
                out += [blk.input_a, blk.input_b, self.ops.index(blk.op_a), self.ops.index(blk.op_b),
                        self.combiners.index(blk.combine)]
        return out

    def to_dict(self) -> dict:
        """Plain-data form (enough to rebuild the space)."""
        return {"num_blocks": self.num_blocks, "ops": list(self.ops), "combiners": list(self.combiners),
                "output": self.output, "num_inputs": self.num_inputs}


# Paper variants (appendix): A = B 5, add/concat, unused states concatenated; B = B 4, four cell
# inputs (the outputs of the last four layers), all four block outputs are the cell's outputs,
# four combiners; C = B 4, unused states concatenated, four combiners.
SPACE_VARIANTS: dict[str, dict] = {
    "A": dict(num_blocks=5, combiners=("add", "concat"), output="unused"),
    "B": dict(num_blocks=4, combiners=COMBINERS, output="all", num_inputs=4),
    "C": dict(num_blocks=4, combiners=COMBINERS, output="unused"),
}


def make_space(variant: str | None = "A", **overrides) -> NASNetSpace:
    """A NASNet space from a paper variant (A/B/C) with any field overridden."""
    if variant is None:
        base = {}
    elif variant in SPACE_VARIANTS:
        base = dict(SPACE_VARIANTS[variant])
    else:
        raise SpaceError(f"unknown space variant {variant!r}; known: {', '.join(SPACE_VARIANTS)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("ops", "combiners"):
        if key in base:
            base[key] = tuple(base[key])
    return NASNetSpace(**base)
