"""The weight-sharing supernet: a path equals the standalone child with its weights, sharing is real,
BN recalibration is deterministic, SIGKILL + resume is bit-identical, and a supernet-reward search runs
end to end through tools/search.py (report, export, retrain)."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, load_tool
from test_search_retrain import _fashion_like, _retrain_config

import nasnet_core as nc
from nasnet_core.common.config import SEARCH, dump_config, load_config
from nasnet_core.model.genotype import Block, CellGenotype, Genotype
from nasnet_core.search.space import SpaceError, make_space
from nasnet_core.search.supernet import Supernet, extract_child
from nasnet_core.search.supernet_reward import SupernetReward, path_accuracy, recalibrate_bn
from nasnet_core.search.supernet_train import KIND, chance_warning, check_reward_checkpoint, load_supernet

search_tool = load_tool("search")
probe_tool = load_tool("supernet_probe")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny depthwise convs crawl when two OpenMP threads meet other jobs' load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_norms(net: torch.nn.Module, seed: int) -> None:
    """BN statistics and every norm's affine away from their defaults (else they would hide copy errors)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


def _chain(last: str) -> CellGenotype:
    """A cell whose only output is its last block (each block reads the one before): with a concat
    there, reduction_cell_0's output (N = 1) is 2 x 2F = 4F wide, the filters of reduction_cell_1,
    which then reads it without conv_prev_1x1."""
    ops = ("sep_conv_3x3", "identity")
    blocks = [Block(0, 1, *ops, "add")] + [Block(b + 2, b % 2, *ops, last if b == 3 else "add")
                                           for b in range(4)]
    return CellGenotype(tuple(blocks), "unused")


@pytest.mark.parametrize("variant", ["A", "C"])
def test_path_equals_extracted_child(variant):
    space = make_space(variant)
    torch.manual_seed(0)
    net = Supernet(space, N=1, num_conv_filters=2, num_classes=5, in_chans=1)
    _randomise_norms(net, 1)
    net.eval()
    rng = random.Random(0)
    genotypes = [space.decode([rng.randrange(c) for c in space.choices]) for _ in range(6)]
    if variant == "A":
        genotypes.append(Genotype(_chain("add"), _chain("concat")))
    x = torch.randn(3, 1, 32, 32)
    skipped = 0
    for g in genotypes:
        child = extract_child(net, g).eval()  # strict load: every child tensor came from the supernet
        skipped += sum(getattr(child, n).conv_prev_1x1 is None and getattr(child, n).prev_mode == "same"
                       for n in net.names)
        with torch.no_grad():
            diff = (net(x, g) - child(x)).abs().max().item()
        assert diff <= 1e-5, (g.to_string(), diff)
    assert variant != "A" or skipped > 0  # the chain genotype: a cell without conv_prev_1x1 was checked
    if variant == "C":  # the norm combiners are in the paths
        assert any(b.combine.startswith("add_") for g in genotypes for b in g.normal.blocks + g.reduce.blocks)
    with pytest.raises(SpaceError, match="4-input cells \\(NASNet-B, variant B\\)"):
        Supernet(make_space("B"), N=1, num_conv_filters=2)


def test_two_genotypes_share_the_very_same_weights():
    space = make_space("A", num_blocks=2)
    torch.manual_seed(0)
    net = Supernet(space, N=1, num_conv_filters=2, num_classes=4, in_chans=1)
    d1 = [0, 1, 10, 1, 0, 2, 0, 1, 4, 0] * 2  # normal block 0: sep_conv_3x3 on input 0 (left)
    d2 = [0, 0, 10, 8, 1, 1, 2, 3, 9, 1] * 2  # the same left op; everything else of cell 0 differs
    a, b = net.route(d1)[0].ops[0][0], net.route(d2)[0].ops[0][0]
    assert a is b and a.separable_1.depthwise_conv2d.weight.data_ptr() == \
        b.separable_1.depthwise_conv2d.weight.data_ptr()
    own = net.route(d2)[0].ops[0][1]  # g2's right op of block 0 (conv_1x1), not on g1's path
    assert own is not net.route(d1)[0].ops[0][1]
    e1, e2 = extract_child(net, d1), extract_child(net, d2)
    assert torch.equal(e1.cell_0.comb_iter_0_left.separable_1.depthwise_conv2d.weight,
                       e2.cell_0.comb_iter_0_left.separable_1.depthwise_conv2d.weight)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    net.eval()
    with torch.no_grad():
        before = net(x, d2)
    shared, mine = a.separable_1.depthwise_conv2d.weight.clone(), own.conv.weight.clone()
    net.train()
    F.cross_entropy(net(x, d1), y).backward()
    opt = torch.optim.SGD([p for p in net.parameters() if p.grad is not None], lr=0.5)
    opt.step()
    net.eval()
    with torch.no_grad():
        after = net(x, d2)
    assert not torch.equal(a.separable_1.depthwise_conv2d.weight, shared)  # g1's step moved the shared op
    assert torch.equal(own.conv.weight, mine)  # and left g2's own op alone (it had no gradient)
    assert (after - before).abs().max() > 1e-4  # so g2's output changed


def test_bn_recalibration_is_deterministic_and_recomputes_the_path_statistics():
    space = make_space("C", num_blocks=2)
    torch.manual_seed(0)
    net = Supernet(space, N=1, num_conv_filters=2, num_classes=3, in_chans=1)
    _randomise_norms(net, 2)
    g1, g2 = space.decode([0] * len(space)), space.decode([1] * len(space))
    batches = [torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    norms = recalibrate_bn(net, g1, batches)
    assert not net.training and all(m.momentum == 0.1 for m in norms)  # momentum restored
    stem = net.conv0
    with torch.no_grad():  # the stem BN: the average of the per-batch means of its conv output
        want = torch.stack([stem.conv(b).mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(stem.bn.running_mean, want, atol=1e-6) and int(stem.bn.num_batches_tracked) == 3
    first = {id(m): (m.running_mean.clone(), m.running_var.clone()) for m in norms}
    recalibrate_bn(net, g2, batches)  # another path resets the shared layers
    shared = net.cells[1].conv_1x1.bn  # reads cell_0's output, which differs between the two paths
    assert not torch.equal(shared.running_var, first[id(shared)][1])
    recalibrate_bn(net, g1, batches)
    assert all(torch.equal(m.running_mean, first[id(m)][0]) and torch.equal(m.running_var, first[id(m)][1])
               for m in norms)
    # the extracted child carries the recalibrated statistics: same accuracy as the path
    x, y = torch.randn(20, 1, 32, 32), torch.randint(0, 3, (20,))
    child = extract_child(net, g1).eval()
    with torch.no_grad():
        child_acc = float((child(x).argmax(1) == y).float().mean())
    assert path_accuracy(net, g1, x, y, 7) == pytest.approx(child_acc)


def test_training_one_fixed_path_is_training_its_standalone_child(tmp_path, monkeypatch):
    """The supernet's training step on a path is the child's SGD step: with the path held fixed, 6 steps
    of SupernetTrainer and 6 of a plain SGD loop on the extracted child end with equal weights (bit for
    bit without the clip; the clip's norm sums the slabs in another order, a last-bit difference)."""
    import nasnet_core.search.supernet_train as st
    from nasnet_core.search.child import load_child_data
    from nasnet_core.train.optim import LRSchedule, build_optimizer

    cfg = load_config(_config(tmp_path, steps=6), ["reward.child.grad_clip", 0.0], schema=SEARCH)
    c = cfg["reward"]["child"]
    data = load_child_data(c["dataset"], c["data_dir"], c["val_size"])
    spec = st.supernet_spec(cfg, data.num_classes, 1)
    net = st.build_supernet(spec)
    d = [1, 0, 10, 4, 1, 2, 1, 8, 3, 0] * 2  # a concat block (2F wide) read by the next block
    monkeypatch.setattr(st, "sample_decisions", lambda space, gen: d)
    child = extract_child(net, d).train()
    trainer = st.SupernetTrainer(net, data, spec, None, torch.device("cpu"))
    solver = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
              "schedule": "cosine", "min_lr": 0.0, "epochs": 6, "warmup_epochs": 0.0}
    opt, schedule = build_optimizer(child, solver), LRSchedule(solver, 1)
    net.train()
    batches = trainer.batches()
    for step in range(6):
        xb, yb = next(batches)
        loss, _ = trainer.train_step(xb, yb)
        schedule.apply(opt, step)
        child_loss = F.cross_entropy(child(xb), yb)
        opt.zero_grad(set_to_none=True)
        child_loss.backward()
        opt.step()
        assert torch.equal(loss, child_loss), step
    got, want = extract_child(net, d).state_dict(), child.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    initial = extract_child(st.build_supernet(spec), d)  # the same init, untrained: the steps moved it
    assert not torch.equal(want["last_linear.weight"], initial.last_linear.weight)


# ---- training, resume, search ------------------------------------------------------------------
def _config(tmp_path: Path, steps=60, **extra) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        _fashion_like(data, n_train=96, n_test=8)
    cfg = load_config(None, ["space.num_blocks", 2, "reward.name", "supernet",
                             "reward.child.data_dir", str(data), "reward.child.val_size", 32,
                             "reward.child.N", 1, "reward.child.num_conv_filters", 2,
                             "reward.child.batch_size", 8, "reward.child.lr", 0.05,
                             "reward.child.num_threads", 1, "supernet.steps", steps,
                             "supernet.checkpoint_every", 5, "supernet.log_every", 5,
                             "reward.supernet.checkpoint", str(tmp_path / "sn" / "supernet.pth"),
                             "reward.supernet.calib_batches", 2, "search.strategy", "evolution",
                             "search.strategy_hparams", {"population_size": 4, "sample_size": 2},
                             "search.num_children", 6, *sum(extra.items(), ())], schema=SEARCH)
    path = tmp_path / "search.yaml"
    path.write_text(dump_config(cfg, SEARCH))
    return path


def _cli(*args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "search.py"), "--quiet", *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(path: Path) -> dict:
    ck = torch.load(path, weights_only=True)
    return {k: ck[k] for k in ("model", "optimizer", "step", "path_rng", "torch_rng", "spec", "loss_ema")}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys):
    cfg = _config(tmp_path)
    killed = tmp_path / "killed"
    proc = _cli("supernet", "--config", cfg, "--out", killed)
    ck, deadline = killed / "supernet.pth", time.time() + 120
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # a checkpoint is on disk: kill mid-run
    proc.wait()
    step = torch.load(ck, weights_only=True)["step"]
    assert 0 < step < 60, "the kill must land mid-training"
    with pytest.raises(ValueError, match=f"is at step {step} of 60; finish it first"):  # no reward from it
        check_reward_checkpoint(ck, make_space("A", num_blocks=2).to_dict())
    # no --resume: refused, nothing changed
    assert search_tool.main(["supernet", "--config", str(cfg), "--out", str(killed)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert torch.load(ck, weights_only=True)["step"] == step
    res = _cli("supernet", "--config", cfg, "--out", killed, "--resume")
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err
    assert f"resumed from {ck}: step {step} of 60" in err
    ref = ["--quiet", "supernet", "--config", str(cfg), "--out", str(tmp_path / "ref")]
    assert search_tool.main(ref) == 0  # uninterrupted, in this process
    got, want = _state(ck), _state(tmp_path / "ref" / "supernet.pth")
    assert got["step"] == want["step"] == 60
    for key in ("model", "optimizer", "path_rng", "torch_rng", "spec"):
        assert _equal(got[key], want[key]), key
    assert not list(killed.glob(".*.tmp")) and (killed / "tb").is_dir()


def test_supernet_reward_search_end_to_end_with_report_and_retrain(tmp_path, capsys):
    cfg = _config(tmp_path, steps=12)
    assert search_tool.main(["--quiet", "supernet", "--config", str(cfg), "--out", str(tmp_path / "sn")]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    net, ck = load_supernet(tmp_path / "sn" / "supernet.pth")
    assert ck["kind"] == KIND and ck["step"] == 12 and net.sizes["in_chans"] == 1
    assert trained["loss_ema"] == round(ck["loss_ema"], 4) and trained["chance_loss"] == round(math.log(4), 4)
    assert trained["warning"] == chance_warning(trained["loss_ema"], 4)
    run = tmp_path / "run"
    assert search_tool.main(["--quiet", "run", "--config", str(cfg), "--run-dir", str(run)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (6, 0)
    from nasnet_core.search.report import load_run

    children = load_run(run)["children"]
    space = make_space("A", num_blocks=2)
    reward = SupernetReward(space, str(tmp_path / "sn" / "supernet.pth"), calib_batches=2)
    for c in children[:3]:  # recorded = recomputed (deterministic), and mult-adds of the child as built
        again = reward(c["id"], c["decisions"])
        assert again["reward"] == c["reward"] == c["accuracy"] and 0 <= c["reward"] <= 1
        built = nc.create_model("nasnet_a_cifar", genotype=space.decode(c["decisions"]), num_cells=3,
                                num_conv_filters=2, num_classes=4, in_chans=1, aux_head=False)
        assert c["mult_adds"] == again["mult_adds"] == nc.complexity(built, 32)["mult_adds"]
    assert search_tool.main(["report", str(run), "--plot", str(tmp_path / "fig6.png")]) == 0
    assert "| evolution (run) | 1 |" in capsys.readouterr().out and (tmp_path / "fig6.png").exists()
    assert search_tool.main(["export", str(run), "--top", "2", "--output", str(tmp_path / "exp")]) == 0
    retrain_cfg = _retrain_config(tmp_path / "rt", 1)
    assert search_tool.main(["retrain", str(run), "--top", "1", "--config", str(retrain_cfg)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["done"], res["failed"]) == (1, 0) and 0 <= res["best_top1"] <= 100


def test_probe_samplers_draw_the_paths_their_mode_names(tmp_path, capsys):
    space = make_space("A")
    gen = torch.Generator().manual_seed(0)
    fixed = probe_tool.make_sampler("fixed", space, 5, 1)(space, gen)
    assert all(probe_tool.make_sampler("fixed", space, 5, 1)(space, gen) == fixed for _ in range(3))
    pool = probe_tool.make_sampler("pool", space, 5, 3)
    drawn = [tuple(pool(space, gen)) for _ in range(6)]
    assert drawn[:3] == drawn[3:] and len(set(drawn)) == 3 and list(drawn[0]) == fixed
    for mode, kept in (("ops", (0, 1, 4)), ("inputs", (2, 3, 4)), ("combiners", (0, 1, 2, 3))):
        sampler = probe_tool.make_sampler(mode, space, 5, 1)
        paths = [sampler(space, gen) for _ in range(8)]
        assert all(p[i] == fixed[i] for p in paths for i in range(len(p)) if i % 5 in kept), mode
        assert len({tuple(p) for p in paths}) > 1, mode  # the sampled kind does vary
    cfg = _config(tmp_path)
    assert probe_tool.main(["--config", str(cfg), "--mode", "pool", "--pool", "2", "--steps", "10"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["loss_by_tenth"]) == 10 and out["chance"] == round(math.log(4), 4)
    assert all(math.isfinite(v) and v > 0 for v in out["loss_by_tenth"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "search.yaml"]  # nothing written


def test_chance_warning_names_the_smoothed_loss_and_chance():
    assert chance_warning(None, 10) is None and chance_warning(1.2, 10) is None
    assert chance_warning(0.94 * math.log(10), 10) is None
    warning = chance_warning(2.25, 10)
    assert "ends at 2.25" in warning and "(ln 10 = 2.30)" in warning and "random reward" in warning


def test_supernet_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    cfg = _config(tmp_path, steps=6)
    out = tmp_path / "sn"
    cases = [
        (["supernet", "--config", cfg, "--out", out, "reward.child.data_dir", tmp_path / "nowhere"],
         "data path does not exist"),
        (["supernet", "--config", cfg, "--out", out, "space.variant", "D"], "unknown space variant 'D'"),
        (["supernet", "--config", cfg, "--out", out, "space.variant", "B"], "NASNet-B, variant B"),
        (["supernet", "--config", cfg, "--out", out, "supernet.steps", 0], "supernet.steps must be >= 1"),
        (["run", "--config", cfg, "--run-dir", tmp_path / "run"], "supernet checkpoint not found"),
    ]
    for argv, message in cases:
        assert search_tool.main([str(a) for a in argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert not (out / "supernet.pth").exists() and not (tmp_path / "run").exists()
    assert search_tool.main(["--quiet", "supernet", "--config", str(cfg), "--out", str(out)]) == 0
    capsys.readouterr()
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {}}, wrong)
    cases = [
        (["supernet", "--config", cfg, "--out", out], "holds a supernet (supernet.pth); pass --resume"),
        (["supernet", "--config", cfg, "--out", out, "--resume", "reward.child.lr", 0.1],
         "was trained with another config (recipe.lr: 0.05 -> 0.1)"),
        (["run", "--config", cfg, "--run-dir", tmp_path / "run", "reward.supernet.checkpoint", wrong],
         "is not a supernet checkpoint"),
        (["run", "--config", cfg, "--run-dir", tmp_path / "run", "space.num_blocks", 3],
         "covers the space"),
    ]
    before = torch.load(out / "supernet.pth", weights_only=True)
    for name, change, message in [("reshaped.pth", "shape", "has shape (3,), the supernet's is"),
                                  ("short.pth", "drop", "does not fit this supernet: 1 tensors missing")]:
        ck = dict(before, model=dict(before["model"]))
        key = "classifier_bias"
        if change == "shape":
            ck["model"][key] = torch.zeros(3)
        else:
            del ck["model"][key]
        torch.save(ck, tmp_path / name)
        cases.append((["run", "--config", cfg, "--run-dir", tmp_path / "run", "reward.supernet.checkpoint",
                       tmp_path / name], message))
    before = before["model"]
    for argv, message in cases:
        assert search_tool.main([str(a) for a in argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert _equal(torch.load(out / "supernet.pth", weights_only=True)["model"], before)
    assert not (tmp_path / "run").exists()
