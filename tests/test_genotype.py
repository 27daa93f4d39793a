import dataclasses
import json
import random

import pytest

from nasnet_core import NASNET_A, Block, CellGenotype, Genotype, GenotypeError
from nasnet_core.model.genotype import get_genotype
from nasnet_core.model.genotype import random_genotype as _random_genotype


def random_genotype(rng, num_blocks=5):
    return _random_genotype(rng, num_blocks, outputs=("unused", "all", (0, num_blocks + 1)))


def test_nasnet_a_matches_tf_slims_cells():
    n = NASNET_A.normal
    assert [(b.input_a, b.op_a, b.input_b, b.op_b) for b in n.blocks] == [
        (0, "sep_conv_5x5", 1, "sep_conv_3x3"), (1, "sep_conv_5x5", 1, "sep_conv_3x3"),
        (0, "avg_pool_3x3", 1, "identity"), (1, "avg_pool_3x3", 1, "avg_pool_3x3"),
        (0, "sep_conv_3x3", 0, "identity")]
    assert n.output_states() == (1, 2, 3, 4, 5, 6)
    r = NASNET_A.reduce
    assert [(b.input_a, b.op_a, b.input_b, b.op_b) for b in r.blocks][3:] == [
        (3, "identity", 2, "avg_pool_3x3"), (2, "sep_conv_3x3", 0, "max_pool_3x3")]
    assert r.output_states() == (3, 4, 5, 6)
    assert all(b.combine == "add" for b in n.blocks + r.blocks)


def test_genotypes_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NASNET_A.normal = NASNET_A.reduce
    with pytest.raises(dataclasses.FrozenInstanceError):
        NASNET_A.normal.blocks[0].op_a = "identity"
    assert hash(NASNET_A) == hash(Genotype.from_string(NASNET_A.to_string()))


def test_text_form_is_compact_and_readable():
    text = NASNET_A.to_string()
    assert text.startswith("normal: sep_conv_5x5:0 add sep_conv_3x3:1; sep_conv_5x5:1 add")
    assert "-> 1,2,3,4,5,6 | reduce: " in text and text.endswith("-> 3,4,5,6")


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("num_blocks", [4, 5])
def test_round_trips_exactly(seed, num_blocks):
    g = random_genotype(random.Random(seed), num_blocks)
    assert Genotype.from_string(g.to_string()) == g
    assert Genotype.from_string(g.to_string()).to_string() == g.to_string()
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_output_rules():
    blocks = (Block(0, 1, "identity", "identity"), Block(2, 0, "conv_1x1", "identity"),
              Block(1, 1, "max_pool_3x3", "conv_3x3"), Block(3, 4, "sep_conv_3x3", "identity"))
    assert CellGenotype(blocks, "unused").output_states() == (5,)
    assert CellGenotype(blocks, "all").output_states() == (2, 3, 4, 5)
    assert CellGenotype(blocks, (1, 5)).output_states() == (1, 5)


def _with_block(block, output="unused"):
    blocks = list(NASNET_A.normal.blocks)
    blocks[2] = block
    return Genotype(CellGenotype(tuple(blocks), output), NASNET_A.reduce)


@pytest.mark.parametrize("block,pattern", [
    (Block(0, 1, "sep_conv_9x9", "identity"),
     r"normal cell, block 2, op_a: unknown op 'sep_conv_9x9'; allowed: identity, conv_1x3_3x1"),
    (Block(0, 1, "identity", "conv_5x5"), r"normal cell, block 2, op_b: unknown op 'conv_5x5'"),
    (Block(4, 1, "identity", "identity"),
     r"normal cell, block 2, input_a: 4 is not an available state; allowed: \[0, 1, 2, 3\]"),
    (Block(0, -1, "identity", "identity"), r"normal cell, block 2, input_b: -1 is not an available"),
    (Block(0, "1", "identity", "identity"), r"normal cell, block 2, input_b: '1' is not"),
    (Block(0, 1, "identity", "identity", "mul"),
     r"normal cell, block 2, combine: unknown combiner 'mul'; allowed: add, concat, add_layernorm"),
])
def test_block_validation_errors_name_the_field(block, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        _with_block(block)


@pytest.mark.parametrize("output,pattern", [
    ((1, 9), r"normal cell, output: 9 is not a state; allowed: \[0, 1, 2, 3, 4, 5, 6\]"),
    ((), "normal cell, output: empty state list"),
    ((2, 2), "normal cell, output: repeated state"),
    ("some", "normal cell, output: 'some' is not a state list nor one of unused, all"),
])
def test_output_validation_errors(output, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        Genotype(CellGenotype(NASNET_A.normal.blocks, output), NASNET_A.reduce)


def test_empty_cell_is_an_error():
    with pytest.raises(GenotypeError, match="reduce cell: blocks must be a non-empty tuple"):
        Genotype(NASNET_A.normal, CellGenotype((), "all"))


@pytest.mark.parametrize("text,pattern", [
    ("normal: identity:0 add identity:1 -> 2", "missing cell"),
    ("normal: identity:0 add identity:1 -> 2 | middle: x", "expected 'normal: ...'"),
    ("normal: identity:0 add identity:1 | reduce: identity:0 add identity:1 -> 2",
     "normal cell: missing '-> OUTPUT'"),
    ("normal: identity:0 identity:1 -> 2 | reduce: identity:0 add identity:1 -> 2",
     "normal cell, block 0: expected 'op_a:input_a COMBINE op_b:input_b'"),
    ("normal: identity add identity:1 -> 2 | reduce: identity:0 add identity:1 -> 2",
     "normal cell, block 0, op_a: expected 'op:input'"),
    ("normal: identity:x add identity:1 -> 2 | reduce: identity:0 add identity:1 -> 2",
     "normal cell, block 0, input_a: 'x' is not an integer"),
    ("normal: identity:0 add identity:1 -> 2,x | reduce: identity:0 add identity:1 -> 2",
     "normal cell, output: '2,x' is not a comma list"),
    ("normal: identity:0 add identity:1 -> 2 | normal: identity:0 add identity:1 -> 2",
     "cell 'normal' given twice"),
])
def test_text_parse_errors(text, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.from_string(text)


@pytest.mark.parametrize("data,pattern", [
    ([], "must be an object"),
    ({"normal": {}, "reduce": {}}, "normal cell: expected an object with 'blocks'"),
    ({"normal": NASNET_A.to_dict()["normal"]}, "missing cell 'reduce'"),
    ({**NASNET_A.to_dict(), "extra": 1}, r"unknown key\(s\) \['extra'\]"),
    ({"normal": {"blocks": [[0, 1, "identity"]], "output": "all"}, "reduce": NASNET_A.to_dict()["reduce"]},
     r"normal cell, block 0: expected \[input_a, input_b, op_a, op_b, combine\]"),
    ({"normal": {"blocks": [{"input_a": 0, "input_b": 1, "op_a": "identity", "op_b": "identity",
                             "kernel": 3}], "output": "all"}, "reduce": NASNET_A.to_dict()["reduce"]},
     r"normal cell, block 0: unknown field\(s\) \['kernel'\]"),
])
def test_json_errors(data, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.from_dict(data)


def test_invalid_json_text():
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.from_json("{")


def test_get_genotype_accepts_every_form(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(NASNET_A.to_json())
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"reward": 0.9, "genotype": NASNET_A.to_dict()}))
    for spec in ("nasnet_a", NASNET_A.to_string(), NASNET_A.to_dict(), str(path), path, wrapped):
        assert get_genotype(spec) == NASNET_A
    with pytest.raises(GenotypeError, match="unknown genotype 'nasnet_z'; known: nasnet_a"):
        get_genotype("nasnet_z")
    with pytest.raises(FileNotFoundError, match="genotype file not found"):
        get_genotype(str(tmp_path / "missing.json"))
