"""Architecture search: spaces, strategies, store/resume after SIGKILL, report/export, child training, Ray."""

import gzip
import json
import os
import pickle
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT

import nasnet_core as nc
from nasnet_core.common.config import SEARCH, ConfigError, load_config
from nasnet_core.model.genotype import random_genotype
from nasnet_core.search import SpaceError, make_space, make_strategy
from nasnet_core.search.base import state_from_bytes, state_to_bytes
from nasnet_core.search.report import best_table, export_top, load_run, plot_runs
from nasnet_core.search.runner import resume_search, start_search, topk_means
from nasnet_core.search.store import RunStore, StoreError


def search_config(path=None, **overrides):
    """A resolved search config; ``overrides`` map dotted keys (``__`` for ``.``) to values."""
    pairs = [x for k, v in overrides.items() for x in (k.replace("__", "."), v)]
    return load_config(path, pairs, schema=SEARCH)


# ---- spaces ---------------------------------------------------------------
@pytest.mark.parametrize("variant,blocks", [("A", 5), ("B", 4), ("C", 4)])
def test_nasnet_space_encode_decode_exact(variant, blocks):
    space = make_space(variant)
    assert len(space) == 2 * 5 * blocks
    n_in = 4 if variant == "B" else 2  # NASNet-B cells read the last four layers
    assert space.num_inputs == n_in and space.choices[:5] == (n_in, n_in, 13, 13, len(space.combiners))
    rng = random.Random(0)
    for _ in range(20):
        g = random_genotype(rng, blocks, ops=space.ops, combiners=space.combiners, outputs=(space.output,),
                            num_inputs=n_in)
        d = space.encode(g)
        assert space.decode(d) == g
        assert space.encode(space.decode(d)) == d
    strat = make_strategy("random", space, seed=1)
    for d in strat.ask(10):
        assert space.encode(space.decode(d)) == d


def test_space_errors():
    space = make_space("A")
    with pytest.raises(SpaceError, match="expected 50 decisions"):
        space.decode([0] * 49)
    with pytest.raises(SpaceError, match=r"decision 2 \(normal.0.op_a\): 13 is not in range\(13\)"):
        space.decode([0, 0, 13] + [0] * 47)
    with pytest.raises(SpaceError, match="this space uses 'unused'"):
        space.encode(nc.NASNET_A)  # NASNet-A's explicit TF-slim output lists lie outside the space
    with pytest.raises(SpaceError, match="unknown space variant 'D'; known: A, B, C"):
        make_space("D")
    with pytest.raises(SpaceError, match="unknown op"):
        make_space("A", ops=["sep_conv_3x3", "conv_9x9"])
    with pytest.raises(ValueError, match="unknown strategy 'annealing'; known: ppo, reinforce, random, "
                                         "evolution"):
        make_strategy("annealing", space)
    with pytest.raises(ValueError, match="unknown hparam"):
        make_strategy("ppo", space, learning_rate=0.1)


# ---- strategies -----------------------------------------------------------
def _match_reward(target):
    return lambda d: sum(a == b for a, b in zip(d, target)) / len(target)


def _samples_to_reach(name, space, seed, threshold, budget, **hp):
    g = torch.Generator().manual_seed(1000 + seed)
    reward = _match_reward([int(torch.randint(c, (1,), generator=g)) for c in space.choices])
    s = make_strategy(name, space, seed=seed, **hp)
    for n in range(0, budget, 10):
        ds = s.ask(10)
        rs = [reward(d) for d in ds]
        s.tell(zip(ds, rs))
        if max(rs) >= threshold:
            return n + 10
    return budget


def test_ppo_finds_optimum_neighbourhood_faster_than_random():
    torch.set_num_threads(1)
    space = make_space("A", num_blocks=2)  # 20 decisions, ~1.7e13 lists
    threshold, budget, seeds = 0.8, 1000, range(3)  # >= 16 of 20 decisions equal to the optimum
    ppo = [_samples_to_reach("ppo", space, s, threshold, budget, lr=0.01) for s in seeds]
    rnd = [_samples_to_reach("random", space, s, threshold, budget) for s in seeds]
    # random: P(>= 16/20 correct) ~ 1e-7 per sample, so it cannot get there within the budget
    assert np.mean(ppo) < 0.4 * np.mean(rnd), (ppo, rnd)
    assert max(ppo) < budget


def test_reinforce_learns_too():
    torch.set_num_threads(1)
    space = make_space("A", num_blocks=2)
    n = _samples_to_reach("reinforce", space, 0, 0.8, 1000, lr=0.01)
    assert n < 600


@pytest.mark.parametrize("name", ["ppo", "reinforce", "random"])
def test_strategy_state_round_trip(name):
    space = make_space("A", num_blocks=2)
    hp = {} if name == "random" else {"lr": 0.01, "batch_size": 6}
    reward = _match_reward([1] * len(space))
    a = make_strategy(name, space, seed=3, **hp)
    for _ in range(3):  # leave asked-but-untold samples and a partial minibatch behind
        ds = a.ask(5)
        a.tell([(d, reward(d)) for d in ds[:4]])
    b = make_strategy(name, space, seed=99, **hp)
    b.load_state_dict(state_from_bytes(state_to_bytes(a.state_dict())))
    assert (b.num_asked, b.num_told, b.num_updates) == (a.num_asked, a.num_told, a.num_updates) == (
        15, 12, 0 if name == "random" else 2)
    for _ in range(4):
        da, db = a.ask(5), b.ask(5)
        assert da == db
        a.tell([(d, reward(d)) for d in da])
        b.tell([(d, reward(d)) for d in db])
    sa, sb = a.state_dict(), b.state_dict()
    if name != "random":
        for k, v in sa["controller"].items():
            assert torch.equal(v, sb["controller"][k]), k
        assert sa["baseline"] == sb["baseline"] and sa["pending"] == sb["pending"]
    with pytest.raises(ValueError, match="different decision space"):
        make_strategy(name, make_space("A", num_blocks=3), **hp).load_state_dict(sa)


# ---- config ---------------------------------------------------------------
def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  num_childs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown search config key 'search.num_childs' \(did you mean "
                                          r"search.num_children\b.*; known keys in 'search'"):
        search_config(bad)
    with pytest.raises(ConfigError, match="'reward.child.epochs' expects int"):
        search_config(reward__child__epochs="many")
    with pytest.raises(ConfigError, match="config file not found"):
        search_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown reward 'nope'; known: synthetic, child"):
        start_search(tmp_path / "r", search_config(reward__name="nope"), progress=False)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        start_search(tmp_path / "r", search_config(reward__child__data_dir=str(tmp_path / "no")),
                     progress=False)
    assert not (tmp_path / "r").exists()  # nothing written for a rejected config
    for path in sorted((ROOT / "configs" / "search").glob("*.yaml")):
        search_config(path)  # every shipped config is valid
    # KEY VALUE strings are read as YAML, as on the command line; a whole section takes a mapping
    cfg = search_config(search__strategy_hparams="{lr: 0.01}", reward__child="{epochs: 2, lr: 0.1}")
    child = cfg["reward"]["child"]
    assert cfg["search"]["strategy_hparams"] == {"lr": 0.01}
    assert (child["epochs"], child["lr"], child["N"]) == (2, 0.1, 2)


# ---- runs, failures, store, report, export --------------------------------
def _synthetic_cfg(n, **synthetic):
    return search_config(search__num_children=n, search__strategy_hparams={"lr": 0.01, "batch_size": 5},
                         space__num_blocks=2, reward__name="synthetic", reward__synthetic=synthetic)


def test_failed_children_recorded_and_search_goes_on(tmp_path):
    cfg = _synthetic_cfg(12, faults={3: "raise", 7: "nan"})
    summary = start_search(tmp_path / "run", cfg, progress=False)
    assert (summary["children"], summary["done"], summary["failed"]) == (12, 10, 2)
    assert (summary["num_told"], summary["num_updates"]) == (10, 2)
    store = RunStore(tmp_path / "run")
    rows = {c["id"]: c for c in store.children()}
    assert rows[3]["status"] == "failed" and "injected failure in child 3" in rows[3]["error"]
    assert rows[7]["status"] == "failed" and rows[7]["error"] == "reward is nan"
    assert all(r["status"] == "done" and 0 <= r["reward"] <= 1 for i, r in rows.items() if i not in (3, 7))
    assert sorted(r["seq"] for r in rows.values()) == list(range(1, 13))
    store.close()
    with pytest.raises(StoreError, match="already holds a search"):
        start_search(tmp_path / "run", cfg, progress=False)
    with pytest.raises(StoreError, match="no search found"):
        resume_search(tmp_path / "nothing", progress=False)


def test_report_and_export(tmp_path):
    for strat in ("ppo", "random"):
        cfg = _synthetic_cfg(30)
        cfg["search"]["strategy"] = strat
        if strat == "random":
            cfg["search"]["strategy_hparams"] = {}
        start_search(tmp_path / strat, cfg, progress=False)
    runs = [load_run(tmp_path / s) for s in ("ppo", "random")]
    table = best_table(runs, top=3)
    best = max(runs[0]["rewards"])
    assert "| ppo (ppo) | 1 |" in table and f"{best:.4f}" in table
    png = plot_runs(runs, tmp_path / "fig6.png")
    assert png.stat().st_size > 10_000
    paths = export_top(runs[0], 2, tmp_path / "export")
    data = json.loads(paths[0].read_text())
    assert data["reward"] == best and data["rank"] == 1
    model = nc.create_model("nasnet_a_cifar", genotype=str(paths[0]), N=1, num_conv_filters=4, aux_head=False)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert topk_means([0.1, 0.5, 0.3], ks=(1, 2)) == {1: [0.1, 0.5, 0.5], 2: [None, 0.3, 0.4]}


def _search_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "search.py"), "--quiet", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Killed at a seeded moment, each must continue exactly (evolution: with 3 children in flight).
KILL_CASES = {
    "ppo": dict(hp="{lr: 0.01, batch_size: 10}", in_flight=0, delay=0.02, updates=4),
    "evolution": dict(hp="{population_size: 10, sample_size: 3}", in_flight=3, delay=0.04, updates=30),
}


@pytest.mark.parametrize("strategy", list(KILL_CASES))
def test_sigkill_and_resume_loses_and_duplicates_nothing(tmp_path, strategy):
    total, case = 40, KILL_CASES[strategy]
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"""
search: {{num_children: {total}, strategy: {strategy}, strategy_hparams: {case['hp']},
          max_in_flight: {case['in_flight']}}}
space: {{num_blocks: 2}}
reward: {{name: synthetic, synthetic: {{delay: {case['delay']}}}}}
""")
    run = tmp_path / "run"
    proc = _search_cli("run", "--config", str(cfg_path), "--run-dir", str(run))
    db = run / "search.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until children are being recorded, then kill at a drawn moment
        try:
            if sqlite3.connect(db).execute("SELECT COUNT(*) FROM children").fetchone()[0] >= 3:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.0))  # seeded: the same moment on every run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = RunStore(run)
    killed_at = store.count()
    store.close()
    assert 0 < killed_at < total, "the kill must land mid-search"
    res = _search_cli("--resume", str(run))
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["children"], summary["done"], summary["failed"]) == (total, total, 0)
    counts = (summary["num_asked"], summary["num_told"], summary["num_updates"])
    assert counts == (total, total, case["updates"])
    store = RunStore(run)
    rows = store.children()
    assert [r["id"] for r in rows] == list(range(total))
    assert sorted(r["seq"] for r in rows) == list(range(1, total + 1))
    # the strategy continued exactly where it was: same children as a run never interrupted
    ref_cfg = store.meta()["config"]
    store.close()
    start_search(tmp_path / "ref", ref_cfg, progress=False)
    ref = RunStore(tmp_path / "ref").children()
    assert [r["decisions"] for r in rows] == [r["decisions"] for r in ref]
    assert [r["reward"] for r in rows] == [r["reward"] for r in ref]
    assert [r["seq"] for r in rows] == [r["seq"] for r in ref]  # and they finished in the same order


# ---- child training -------------------------------------------------------
def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _stripes(n, seed):
    """Class 0: horizontal stripes, class 1: vertical stripes, random phase and noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.zeros((n, 28, 28))
    for i in range(n):
        phase = rng.integers(0, 4)
        line = (np.arange(28) + phase) % 4 < 2
        x[i] = line[:, None] if y[i] == 0 else line[None, :]
    x = np.clip(x * 200 + rng.normal(0, 40, x.shape), 0, 255)
    return x, y


def test_child_training_learns_from_idx_files(tmp_path):
    from nasnet_core.common.datasets import DataError, load_arrays
    from nasnet_core.search.child import ChildTrainer, load_child_data, split_train_val

    x, y = _stripes(600, 0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    tr, va = split_train_val(600, 100, seed=0)
    assert len(tr) == 500 and len(va) == 100 and not set(tr) & set(va)
    assert (split_train_val(600, 100, seed=0)[1] == va).all()
    data = load_child_data("fashion_mnist", tmp_path, val_size=100)
    assert data.train_x.shape == (500, 32, 32, 1) and data.val_x.shape == (100, 32, 32, 1)
    assert (data.train_y == y[tr]).all() and (data.val_y == y[va]).all() and data.num_classes == 2
    # 28x28 zero-padded to the child's 32x32; whitening statistics of the training split
    assert (data.val_x[:, 2:30, 2:30, 0] == x.astype(np.uint8)[va]).all() and data.val_x[:, :2].max() == 0
    padded = np.pad(x.astype(np.uint8)[tr], ((0, 0), (2, 2), (2, 2))) / 255
    assert data.mean[0] == pytest.approx(padded.mean(), rel=1e-4)
    assert data.std[0] == pytest.approx(padded.std(), rel=1e-4)
    space = make_space("A", num_blocks=2)
    trainer = ChildTrainer(space, "fashion_mnist", str(tmp_path), val_size=100, N=1, num_conv_filters=4,
                           epochs=1, batch_size=20, lr=0.1, num_threads=1)
    decisions = make_strategy("random", space, seed=0).ask(1)[0]
    out = trainer(0, decisions)
    acc = out["accuracy"]
    assert acc >= 0.8, acc  # 25 SGD steps separate the stripes; chance is ~0.5
    assert out["reward"] == acc  # cost_target 0: the reward is the accuracy
    built = nc.create_model("nasnet_a_cifar", genotype=space.decode(decisions), num_cells=3,
                            num_conv_filters=4, num_classes=2, in_chans=1, aux_head=False)
    assert out["mult_adds"] == nc.complexity(built, 32)["mult_adds"] > 0
    # CIFAR-10 python batches
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for i in range(1, 6):
        with open(cifar / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": np.full((4, 3072), i, np.uint8), b"labels": [i % 10] * 4}, f)
    cx, cy = load_arrays("cifar10", tmp_path)
    assert cx.shape == (20, 32, 32, 3) and cx[-1].max() == 5 and list(cy[:4]) == [1] * 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data_batch_1"):
        load_child_data("cifar10", tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset 'mnist'; known datasets: cifar10, fashion_mnist"):
        load_child_data("mnist", tmp_path)


# ---- Ray ------------------------------------------------------------------
def test_ray_search_failures_and_worker_death(tmp_path):
    pytest.importorskip("ray", reason="ray not installed (pip install 'nasnet[search]')")
    cfg = search_config(search__num_children=8, search__strategy="random", space__num_blocks=2,
                        executor="{backend: ray, num_cpus: 2, max_retries: 2, child_timeout: 5}",
                        reward__name="synthetic",
                        reward__synthetic={"delay": 0.2, "faults": {2: "raise", 5: "die_once", 6: "hang"},
                                           "fault_dir": str(tmp_path)})
    summary = start_search(tmp_path / "run", cfg, progress=False)
    assert (summary["children"], summary["done"], summary["failed"], summary["timeout"]) == (8, 6, 1, 1)
    rows = {c["id"]: c for c in RunStore(tmp_path / "run").children()}
    assert rows[2]["status"] == "failed" and "injected failure in child 2" in rows[2]["error"]
    assert rows[5]["status"] == "done"  # its first worker was SIGKILLed mid-child; Ray re-ran it
    assert (tmp_path / "child5.attempt").read_text() == "2"
    # the worker stops a child past executor.child_timeout and records it; the search goes on
    assert rows[6]["status"] == "timeout" and "child_timeout = 5 s" in rows[6]["error"]
    assert len({r["worker"] for r in rows.values() if r["worker"]}) >= 2  # ran on several workers
