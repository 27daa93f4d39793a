"""NASNet-B: four-input cells (genotype form, space variant B, wiring, any N @ F, training step)."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

import nasnet_core as nc
from nasnet_core.model.genotype import Block, CellGenotype, Genotype, GenotypeError, random_genotype
from nasnet_core.model.network_b import NASNetB
from nasnet_core.search import make_space, make_strategy


def _random_b(seed):
    space = make_space("B")
    return random_genotype(random.Random(seed), 4, ops=space.ops, combiners=space.combiners,
                           outputs=("all",), num_inputs=4)


def test_b_genotype_text_json_and_space_round_trip():
    space = make_space("B")
    assert space.num_inputs == 4 and space.choices[:5] == (4, 4, 13, 13, 4)
    assert space.choices[15:20] == (7, 7, 13, 13, 4)  # block 3 reads 4 inputs or 3 earlier blocks
    for seed in range(10):
        g = _random_b(seed)
        assert g.to_string().startswith("normal[4]: ") and " | reduce[4]: " in g.to_string()
        assert Genotype.from_string(g.to_string()) == g
        assert Genotype.from_json(g.to_json()) == g and g.to_dict()["normal"]["inputs"] == 4
        assert g.normal.output_states() == (4, 5, 6, 7)
        d = space.encode(g)
        assert space.decode(d) == g and space.encode(space.decode(d)) == d
    for d in make_strategy("evolution", space, seed=0).ask(5):
        assert space.encode(space.decode(d)) == d
    assert "inputs" not in nc.NASNET_A.to_dict()["normal"]  # two-input forms are unchanged


def test_b_genotype_errors():
    blocks = (Block(5, 0, "identity", "identity"),)
    bad = CellGenotype(blocks, "all", 4)
    with pytest.raises(GenotypeError, match=r"input_a: 5 is not an available state; allowed: \[0, 1, 2, 3\]"):
        Genotype(bad, bad)
    ok = CellGenotype((Block(3, 0, "identity", "identity"),), "all", 4)
    with pytest.raises(GenotypeError, match="same number of inputs, got 4 and 2"):
        Genotype(ok, CellGenotype((Block(1, 0, "identity", "identity"),), "all"))
    with pytest.raises(GenotypeError, match=r"num_inputs must be one of \(2, 4\), got 3"):
        Genotype(CellGenotype(ok.blocks, "all", 3), CellGenotype(ok.blocks, "all", 3))
    with pytest.raises(GenotypeError, match="expected 'normal: ...'"):
        Genotype.from_string("normal[x]: identity:0 add identity:1 -> all | "
                             "reduce: identity:0 add identity:1 -> all")
    with pytest.raises(ValueError, match="needs 4 block outputs as outputs"):
        nc.create_model("nasnet_a_cifar", genotype=Genotype(ok, ok), N=1, F=16)  # one block, one output


def test_b_wiring_output_k_goes_to_the_kth_next_layer():
    cell = CellGenotype((Block(0, 1, "sep_conv_3x3", "identity"), Block(2, 3, "avg_pool_3x3", "sep_conv_5x5"),
                         Block(4, 5, "identity", "max_pool_3x3", "concat"),
                         Block(6, 0, "conv_1x1", "identity", "add_layernorm")), "all", 4)
    model = nc.create_model("nasnet_a_cifar", genotype=Genotype(cell, cell), N=2, F=96, aux_head=False)
    assert isinstance(model, NASNetB) and model.cell_names == [
        "cell_0", "cell_1", "reduction_cell_0", "cell_2", "cell_3", "reduction_cell_1", "cell_4", "cell_5"]
    # resolution factor of each input: earlier layers beyond a reduction are at twice the size
    def factors(cell):  # None: an input no block of the cell reads (no adapter is built)
        return [getattr(a, "factor", None) for a in cell.inputs]
    assert factors(model.reduction_cell_1) == [1, 1, 1, 2] and factors(model.cell_4) == [1, 2, 2, 2]
    assert factors(model.cell_0) == [1, 1, 1, 1]
    seen_in, seen_out = {}, {"stem": None}
    model.conv0.register_forward_hook(lambda m, i, o: seen_out.__setitem__("stem", o))
    for name in model.cell_names:
        cell = getattr(model, name)
        cell.register_forward_hook(lambda m, i, o, name=name: seen_out.__setitem__(name, o))
        cell.register_forward_pre_hook(lambda m, i, name=name: seen_in.__setitem__(name, i[0]))
    model.eval()(torch.randn(2, 3, 32, 32))
    names = ["stem"] + model.cell_names
    for layer, name in enumerate(names[1:], 1):
        for k in range(1, 5):
            src = names[max(layer - k, 0)]
            expect = seen_out[src] if src == "stem" else seen_out[src][k - 1]
            assert seen_in[name][k - 1] is expect, (name, k, src)


@pytest.mark.parametrize("seed", range(4))
def test_random_b_genotypes_build_and_train_a_step_at_2_at_96(seed):
    torch.manual_seed(seed)
    g = _random_b(seed)
    model = nc.create_model("nasnet_a_cifar", genotype=g, N=2, F=96)
    assert model.last_linear.in_features == sum(model.cell_5.out_channels)
    assert model.cell_0.filters == 96 // 16  # F = 4 outputs x 2 doublings x 2 x filters
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    logits, aux = model(x)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and logits.shape == aux.shape == (4, 10)
    params = list(model.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, params)]
    graded = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]
    # only parameters with a gradient moved; those without sit in blocks whose output goes to an
    # input that the receiving cell does not read, or past the last cell (outputs 2-4 of cell_4, ...)
    assert all(g for c, g in zip(changed, graded) if c) and sum(changed) > 0.3 * len(params)
    assert not torch.equal(before[0], params[0])  # the stem conv learned
    stats = nc.complexity(model, 32)
    assert stats["params"] > 100_000 and stats["mult_adds"] > 1_000_000


def test_draw_cell_tool(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "cell.png"
    cmd = [sys.executable, str(ROOT / "tools" / "draw_cell.py"), "--random-b", "3", "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 20_000 and res.stdout.splitlines()[0] == _random_b(3).normal.to_string()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # never overwrites silently
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: {out} exists; pass --force to overwrite it"


def test_trainer_trains_a_b_genotype_with_scheduled_drop_path(tmp_path):
    """The classification Trainer (and so `search.py retrain`) runs four-input cells: NASNetB has the
    drop-path schedule the Trainer reads, equal to NASNet's formula."""
    from test_train_classifier import make_cifar, tiny_cfg

    from nasnet_core.train import Trainer

    genotype = tmp_path / "b.json"
    genotype.write_text(_random_b(0).to_json())
    cfg = tiny_cfg(tmp_path, "cifar10", make_cifar(tmp_path / "c10"), **{
        "model.genotype": str(genotype), "model.F": 96, "solver.epochs": 1})
    trainer = Trainer(cfg)
    model, total = trainer.model, trainer.model.total_training_steps
    assert type(model).__name__ == "NASNetB"
    n = len(model.cell_names)
    assert model.drop_path_keep_probs(0) == [1.0] * n
    end = model.drop_path_keep_probs(total)
    assert end == pytest.approx([1 - (i + 1) / n * 0.3 for i in range(n)]) and end[-1] == pytest.approx(0.7)
    metrics = trainer.fit()
    assert trainer.step == total and math.isfinite(metrics["train_loss"])
    assert [getattr(model, c).drop_path_keep for c in model.cell_names] == pytest.approx(end)
