"""Genotypes: immutable (normal, reduction) cell descriptions, their text and JSON forms.

Hidden-state numbering follows TF-slim: 0 = the current cell input (after its
1x1 conv), 1 = the previous cell input (adjusted), and block ``b`` creates state
``b + 2``. A block reads two states, applies one op to each, and combines.
NASNet-B cells (paper appendix B) take four inputs: states 0-3 are the inputs from
the 1st to the 4th previous layer and block ``b`` creates state ``b + 4``; their
text form marks the cell ``normal[4]:`` / ``reduce[4]:`` and their JSON has ``"inputs": 4``.

Text form (round-trips exactly)::

    normal: sep_conv_5x5:0 add sep_conv_3x3:1; ... -> 1,2,3,4,5,6 | reduce: ... -> unused

Each block is ``op_a:input_a COMBINE op_b:input_b``; after ``->`` come the output
states: an explicit comma list, ``unused`` (every state no block reads, A/C
style) or ``all`` (every block output, B style).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ops import COMBINERS, OP_NAMES, PAPER_OPS

__all__ = ["Block", "CellGenotype", "Genotype", "GenotypeError", "NASNET_A", "GENOTYPES",
           "get_genotype", "is_genotype_text", "OUTPUT_RULES", "INPUT_COUNTS", "random_genotype"]

OUTPUT_RULES = ("unused", "all")
INPUT_COUNTS = (2, 4)  # NASNet-A/C cells read 2 earlier states, NASNet-B cells 4


class GenotypeError(ValueError):
    """A malformed genotype; the message names the cell, block and field."""


@dataclass(frozen=True)
class Block:
    """One block: two (input, op) pairs and the combiner that merges them."""

    input_a: int
    input_b: int
    op_a: str
    op_b: str
    combine: str = "add"

    def to_string(self) -> str:
        """``op_a:input_a combine op_b:input_b``."""
        return f"{self.op_a}:{self.input_a} {self.combine} {self.op_b}:{self.input_b}"


@dataclass(frozen=True)
class CellGenotype:
    """B blocks plus the output rule (explicit state indices, 'unused' or 'all') and the input count."""

    blocks: tuple[Block, ...]
    output: tuple[int, ...] | str = "unused"
    num_inputs: int = 2

    @property
    def num_blocks(self) -> int:
        """B, the number of blocks."""
        return len(self.blocks)

    def used_states(self) -> frozenset[int]:
        """States read by some block."""
        return frozenset(i for b in self.blocks for i in (b.input_a, b.input_b))

    def output_states(self) -> tuple[int, ...]:
        """The state indices concatenated to form the cell output."""
        if isinstance(self.output, tuple):
            return self.output
        created = range(self.num_inputs, self.num_inputs + len(self.blocks))
        if self.output == "all":
            return tuple(created)
        used = self.used_states()
        return tuple(i for i in created if i not in used)

    def to_string(self) -> str:
        """Compact text form of this cell."""
        out = ",".join(map(str, self.output)) if isinstance(self.output, tuple) else self.output
        return "; ".join(b.to_string() for b in self.blocks) + f" -> {out}"


@dataclass(frozen=True)
class Genotype:
    """A NASNet architecture: the normal and the reduction cell."""

    normal: CellGenotype
    reduce: CellGenotype

    def __post_init__(self):
        validate(self)

    # ---- text form -------------------------------------------------------
    def to_string(self) -> str:
        """``normal: ... | reduce: ...``; ``Genotype.from_string`` inverts it exactly."""
        tag = "" if self.normal.num_inputs == 2 else f"[{self.normal.num_inputs}]"
        return f"normal{tag}: {self.normal.to_string()} | reduce{tag}: {self.reduce.to_string()}"

    __str__ = to_string

    @classmethod
    def from_string(cls, text: str) -> Genotype:
        """Parse the text form written by ``to_string``."""
        parts = [p.strip() for p in text.strip().split("|")]
        cells = {}
        for part in parts:
            name, sep, body = part.partition(":")
            name, _, count = name.strip().partition("[")
            if not sep or name not in ("normal", "reduce") or (count and not count[:-1].isdigit()):
                raise GenotypeError(f"genotype text: expected 'normal: ...' and 'reduce: ...' "
                                    f"separated by '|', got {part!r}")
            if name in cells:
                raise GenotypeError(f"genotype text: cell {name!r} given twice")
            cells[name] = _parse_cell(name, body, int(count[:-1]) if count else 2)
        missing = [n for n in ("normal", "reduce") if n not in cells]
        if missing:
            raise GenotypeError(f"genotype text: missing cell(s) {', '.join(missing)}")
        return cls(cells["normal"], cells["reduce"])

    # ---- JSON form -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        def cell(c: CellGenotype):
            out = {"blocks": [[b.input_a, b.input_b, b.op_a, b.op_b, b.combine] for b in c.blocks],
                   "output": list(c.output) if isinstance(c.output, tuple) else c.output}
            return out if c.num_inputs == 2 else {**out, "inputs": c.num_inputs}
        return {"normal": cell(self.normal), "reduce": cell(self.reduce)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genotype:
        """Inverse of ``to_dict``; errors name the bad cell/block/field."""
        if not isinstance(data, dict):
            raise GenotypeError(f"genotype JSON must be an object, got {type(data).__name__}")
        unknown = set(data) - {"normal", "reduce"}
        if unknown:
            raise GenotypeError(f"genotype JSON: unknown key(s) {sorted(unknown)}; "
                                "allowed: normal, reduce")
        cells = {}
        for name in ("normal", "reduce"):
            if name not in data:
                raise GenotypeError(f"genotype JSON: missing cell {name!r}")
            cells[name] = _cell_from_dict(name, data[name])
        return cls(cells["normal"], cells["reduce"])

    def to_json(self, indent: int | None = None) -> str:
        """JSON text of ``to_dict``."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Parse JSON text written by ``to_json``."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype JSON is not valid JSON: {e}") from None


def _cell_from_dict(name: str, data: Any) -> CellGenotype:
    if not isinstance(data, dict) or "blocks" not in data:
        raise GenotypeError(f"{name} cell: expected an object with 'blocks' (and 'output')")
    unknown = set(data) - {"blocks", "output", "inputs"}
    if unknown:
        raise GenotypeError(f"{name} cell: unknown key(s) {sorted(unknown)}; allowed: blocks, output, inputs")
    blocks = []
    for b, raw in enumerate(data["blocks"]):
        if isinstance(raw, dict):
            fields = ("input_a", "input_b", "op_a", "op_b", "combine")
            extra = set(raw) - set(fields)
            if extra:
                raise GenotypeError(f"{name} cell, block {b}: unknown field(s) {sorted(extra)}; "
                                    f"allowed: {', '.join(fields)}")
            raw = [raw.get(f) for f in fields[:4]] + [raw.get("combine", "add")]
        if not isinstance(raw, (list, tuple)) or len(raw) != 5:
            raise GenotypeError(f"{name} cell, block {b}: expected [input_a, input_b, op_a, op_b, "
                                f"combine], got {raw!r}")
        blocks.append(Block(*raw))
    output = data.get("output", "unused")
    return CellGenotype(tuple(blocks), tuple(output) if isinstance(output, list) else output,
                        data.get("inputs", 2))


def _parse_cell(name: str, body: str, num_inputs: int = 2) -> CellGenotype:
    blocks_text, arrow, out_text = body.partition("->")
    if not arrow:
        raise GenotypeError(f"{name} cell: missing '-> OUTPUT' (a state list, 'unused' or 'all')")
    out_text = out_text.strip()
    if out_text in OUTPUT_RULES:
        output: tuple[int, ...] | str = out_text
    else:
        try:
            output = tuple(int(t) for t in out_text.split(","))
        except ValueError:
            raise GenotypeError(f"{name} cell, output: {out_text!r} is not a comma list of state "
                                f"indices nor one of {', '.join(OUTPUT_RULES)}") from None
    blocks = []
    for b, chunk in enumerate(t.strip() for t in blocks_text.split(";")):
        tokens = chunk.split()
        if len(tokens) != 3:
            raise GenotypeError(f"{name} cell, block {b}: expected 'op_a:input_a COMBINE "
                                f"op_b:input_b', got {chunk!r}")
        (op_a, in_a), combine, (op_b, in_b) = (
            _parse_operand(name, b, tokens[0], "a"), tokens[1], _parse_operand(name, b, tokens[2], "b"))
        blocks.append(Block(in_a, in_b, op_a, op_b, combine))
    return CellGenotype(tuple(blocks), output, num_inputs)


def _parse_operand(name: str, b: int, token: str, side: str) -> tuple[str, int]:
    op, sep, idx = token.rpartition(":")
    if not sep:
        raise GenotypeError(f"{name} cell, block {b}, op_{side}: expected 'op:input', got {token!r}")
    try:
        return op, int(idx)
    except ValueError:
        raise GenotypeError(f"{name} cell, block {b}, input_{side}: {idx!r} is not an integer") from None


def _validate_cell(name: str, cell: CellGenotype) -> None:
    if not isinstance(cell, CellGenotype):
        raise GenotypeError(f"{name} cell: expected a CellGenotype, got {type(cell).__name__}")
    if not isinstance(cell.blocks, tuple) or not cell.blocks:
        raise GenotypeError(f"{name} cell: blocks must be a non-empty tuple of Block")
    n_in = cell.num_inputs
    if isinstance(n_in, bool) or n_in not in INPUT_COUNTS:
        raise GenotypeError(f"{name} cell: num_inputs must be one of {INPUT_COUNTS}, got {n_in!r}")
    for b, block in enumerate(cell.blocks):
        where = f"{name} cell, block {b}"
        if not isinstance(block, Block):
            raise GenotypeError(f"{where}: expected a Block, got {type(block).__name__}")
        for side in ("a", "b"):
            idx = getattr(block, f"input_{side}")
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < b + n_in:
                raise GenotypeError(f"{where}, input_{side}: {idx!r} is not an available state; "
                                    f"allowed: {list(range(b + n_in))}")
            op = getattr(block, f"op_{side}")
            if op not in OP_NAMES:
                raise GenotypeError(f"{where}, op_{side}: unknown op {op!r}; allowed: "
                                    f"{', '.join(OP_NAMES)}")
        if block.combine not in COMBINERS:
            raise GenotypeError(f"{where}, combine: unknown combiner {block.combine!r}; allowed: "
                                f"{', '.join(COMBINERS)}")
    num_states = len(cell.blocks) + n_in
    if isinstance(cell.output, tuple):
        if not cell.output:
            raise GenotypeError(f"{name} cell, output: empty state list")
        for i in cell.output:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_states:
                raise GenotypeError(f"{name} cell, output: {i!r} is not a state; allowed: "
                                    f"{list(range(num_states))}")
        if len(set(cell.output)) != len(cell.output):
            raise GenotypeError(f"{name} cell, output: repeated state in {list(cell.output)}")
    elif cell.output not in OUTPUT_RULES:
        raise GenotypeError(f"{name} cell, output: {cell.output!r} is not a state list nor one of "
                            f"{', '.join(OUTPUT_RULES)}")


def validate(genotype: Genotype) -> None:
    """Raise GenotypeError naming the first bad cell/block/field of ``genotype``."""
    _validate_cell("normal", genotype.normal)
    _validate_cell("reduce", genotype.reduce)
    if genotype.normal.num_inputs != genotype.reduce.num_inputs:
        raise GenotypeError(f"normal and reduce cells must take the same number of inputs, got "
                            f"{genotype.normal.num_inputs} and {genotype.reduce.num_inputs}")


def random_genotype(rng, num_blocks: int = 5, ops=PAPER_OPS, combiners=COMBINERS,
                    outputs=("unused",), num_inputs: int = 2) -> Genotype:
    """A uniformly random valid genotype (``rng`` is a ``random.Random``)."""
    def cell():
        n = num_inputs
        blocks = tuple(Block(rng.randrange(b + n), rng.randrange(b + n), rng.choice(ops),
                             rng.choice(ops), rng.choice(combiners)) for b in range(num_blocks))
        return CellGenotype(blocks, rng.choice(outputs), n)
    return Genotype(cell(), cell())


def _cell(rows, output) -> CellGenotype:
    return CellGenotype(tuple(Block(ia, ib, oa, ob) for ia, oa, ib, ob in rows), output)


# NASNet-A (paper Fig. 4; TF-slim nasnet_utils NasNetANormalCell / NasNetAReductionCell).
# Rows: (left input, left op, right input, right op); every combiner is 'add'.
# Output states are TF-slim's hard-coded lists (its ``used_hiddenstates``), which keep
# state 1 in the normal cell and state 3 in the reduction cell although blocks read them.
NASNET_A = Genotype(
    normal=_cell([
        (0, "sep_conv_5x5", 1, "sep_conv_3x3"),
        (1, "sep_conv_5x5", 1, "sep_conv_3x3"),
        (0, "avg_pool_3x3", 1, "identity"),
        (1, "avg_pool_3x3", 1, "avg_pool_3x3"),
        (0, "sep_conv_3x3", 0, "identity"),
    ], (1, 2, 3, 4, 5, 6)),
    reduce=_cell([
        (0, "sep_conv_5x5", 1, "sep_conv_7x7"),
        (0, "max_pool_3x3", 1, "sep_conv_7x7"),
        (0, "avg_pool_3x3", 1, "sep_conv_5x5"),
        (3, "identity", 2, "avg_pool_3x3"),
        (2, "sep_conv_3x3", 0, "max_pool_3x3"),
    ], (3, 4, 5, 6)),
)

GENOTYPES = {"nasnet_a": NASNET_A}
"""Named genotypes. NASNet-B/C exist only as figures in the paper's appendix."""


def is_genotype_text(spec: Any) -> bool:
    """Whether ``spec`` is a string in the text form (``normal...: ...``): a genotype, never a path."""
    head, sep, _ = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    return bool(sep) and head.partition("[")[0].strip() in ("normal", "reduce")


def get_genotype(spec: Genotype | str | dict | Path) -> Genotype:
    """A Genotype from a Genotype, a registered name, the text form (never a file), a dict or a JSON path."""
    if isinstance(spec, (Genotype, dict)):
        return spec if isinstance(spec, Genotype) else Genotype.from_dict(spec)
    if isinstance(spec, str) and (is_genotype_text(spec) or (":" in spec and not spec.endswith(".json"))):
        try:
            return Genotype.from_string(spec)
        except GenotypeError as e:  # name the text (a typo'd file name lands here too)
            raise GenotypeError(f"genotype text {spec[:60]!r}: {e}") from None
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith(".json")):
        return _genotype_file(Path(spec))
    if isinstance(spec, str):
        if spec in GENOTYPES:
            return GENOTYPES[spec]
        raise GenotypeError(f"unknown genotype {spec!r}; known: {', '.join(GENOTYPES)} "
                            "(or pass the text form, a dict or a .json path)")
    raise GenotypeError(f"cannot make a genotype from {type(spec).__name__}")


def _genotype_file(path: Path) -> Genotype:
    """The genotype in a JSON file (object, search export or text form); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"genotype file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenotypeError(f"genotype file {path} is not valid JSON: {e}") from None
    if isinstance(data, dict) and "genotype" in data:  # search exports wrap it with metadata
        data = data["genotype"]
    if not isinstance(data, (dict, str)):
        raise GenotypeError(f"genotype file {path} must hold a JSON object with 'normal' and 'reduce' "
                            f"(or the text form as a string), got a JSON {type(data).__name__}")
    try:
        return Genotype.from_dict(data) if isinstance(data, dict) else Genotype.from_string(data)
    except GenotypeError as e:
        raise GenotypeError(f"genotype file {path}: {e}") from None
