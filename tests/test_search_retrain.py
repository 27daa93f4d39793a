"""Retraining the top K of a search: choice by reward, kill + resume = uninterrupted, report and plot."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, load_tool

import nasnet_core as nc
from nasnet_core.common.config import SEARCH, load_config
from nasnet_core.model.genotype import random_genotype
from nasnet_core.search.report import load_run, plot_retrained, retrained_table, spearman
from nasnet_core.search.retrain import RESULTS, load_results, retrain_top, select_top
from nasnet_core.search.space import make_space
from nasnet_core.search.store import RunStore, StoreError

search_tool = load_tool("search")


def _fake_run(run_dir: Path, outcomes: list) -> list[str]:
    """A search run whose children get the given rewards (None: failed); returns their genotypes."""
    cfg = load_config(None, ["space.num_blocks", 2, "reward.name", "synthetic"], schema=SEARCH)
    space = make_space("A", num_blocks=2)
    rng = random.Random(0)
    genotypes = [random_genotype(rng, 2, ops=space.ops, combiners=space.combiners, outputs=(space.output,))
                 for _ in outcomes]
    genotypes[3] = genotypes[1]  # the same cell sampled twice
    store = RunStore.create(run_dir, {"config": cfg}, b"", (0, 0, 0))
    ids = store.add_children([(space.encode(g), g.to_string()) for g in genotypes], b"", (0, 0, 0))
    for i, r in zip(ids, outcomes):
        store.finish_child(i, {"status": "failed", "error": "x"} if r is None else
                           {"status": "done", "reward": r, "accuracy": r, "mult_adds": 1000 + i}, None, None)
    store.close()
    return [g.to_string() for g in genotypes]


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _fashion_like(root: Path, n_train=24, n_test=8) -> Path:
    """Fashion-MNIST-format IDX files: 4 classes of 28x28 images, each a noisy grey level."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 4
        rng.shuffle(labels)
        imgs = np.clip(labels[:, None, None] * 70 + 20 + rng.integers(-25, 26, (n, 28, 28)), 0, 255)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", imgs)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def _retrain_config(tmp_path: Path, epochs=2) -> Path:
    data = _fashion_like(tmp_path / "data")
    path = tmp_path / "retrain.yaml"
    path.write_text(f"""
model: {{arch: nasnet_a_cifar, N: 1, F: 48, drop_path_keep_prob: 0.8}}
data: {{dataset: fashion_mnist, path: {data}, pad: 2, workers: 0}}
solver: {{epochs: {epochs}, batch_size: 12, lr: 0.05}}
train: {{threads: 1, log_every: 2}}
""")
    return path


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "search.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- choice of the top K and errors -------------------------------------------------------------
def test_top_k_by_reward_distinct_genotypes_and_errors(tmp_path, capsys):
    rewards = [0.30, 0.70, None, 0.90, 0.50, 0.65, 0.20]  # child 3 = child 1's genotype, best reward
    genotypes = _fake_run(tmp_path / "run", rewards)
    picks = select_top(tmp_path / "run", 3)
    # child 3 (0.90) stands for its genotype; child 1 (0.70, the same cell) is not trained again
    assert [p["child"] for p in picks] == [3, 5, 4]
    assert [p["reward"] for p in picks] == [0.90, 0.65, 0.50] and [p["rank"] for p in picks] == [1, 2, 3]
    assert [p["genotype"] for p in picks] == [genotypes[3], genotypes[5], genotypes[4]]
    assert len(select_top(tmp_path / "run", 5)) == 5  # 6 done, 5 distinct
    with pytest.raises(ValueError, match="5 finished children with distinct genotypes; --top 6"):
        select_top(tmp_path / "run", 6)
    with pytest.raises(ValueError, match="at least 1"):
        select_top(tmp_path / "run", 0)
    _fake_run(tmp_path / "failed", [None] * 4)
    cfg = _retrain_config(tmp_path)
    cases = [(["retrain", tmp_path / "nothing", "--top", 1, "--config", cfg], "no search found"),
             (["retrain", tmp_path / "run", "--top", 0, "--config", cfg], "at least 1"),
             (["retrain", tmp_path / "failed", "--top", 1, "--config", cfg], "no finished child"),
             (["retrain", tmp_path / "run", "--top", 1, "--config", tmp_path / "no.yaml"], "not found"),
             (["retrain", tmp_path / "run", "--top", 1, "--config", cfg, "solver.epoch", 1], "solver.epochs"),
             (["retrain", tmp_path / "run", "--top", 1, "--config", cfg, "data.path", tmp_path / "x"],
              "dataset folder not found")]
    for argv, message in cases:
        assert search_tool.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "run" / "retrain").exists()  # nothing written by a rejected command


# ---- kill + resume ------------------------------------------------------------------------------
def _state(root: Path) -> dict:
    keys = ("status", "top1", "top5", "val_loss", "train_loss", "epochs", "steps", "params", "mult_adds")
    res = load_results(root)
    out = {}
    for cid in res["top"]:
        e = res["children"][str(cid)]
        hist = json.loads((root / e["dir"] / "metrics.json").read_text())
        weights = torch.load(root / e["dir"] / "backbone.pth", weights_only=True)["state_dict"]
        out[cid] = ({k: e[k] for k in keys}, [{k: v for k, v in h.items() if k != "epoch_seconds"}
                                               for h in hist], weights)
    return out


def test_sigkill_mid_retrain_then_resume_equals_uninterrupted(tmp_path, capsys):
    _fake_run(tmp_path / "run", [0.30, 0.70, None, 0.90, 0.50, 0.65, 0.20])
    cfg_path = _retrain_config(tmp_path)
    root = tmp_path / "run" / "retrain"
    proc = _cli("retrain", tmp_path / "run", "--top", 2, "--config", cfg_path)
    first = root / "child3" / "last.pth"  # the best child trains first
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # one epoch of the first child is checkpointed: kill now
    proc.wait()
    epochs_done = sum(torch.load(p, weights_only=False)["epoch"] for p in root.glob("child*/last.pth"))
    assert 0 < epochs_done < 2 * 2, "the kill must land mid-retrain"
    assert sum(e["status"] == "done" for e in load_results(root)["children"].values()) < 2
    res = _cli("retrain", tmp_path / "run", "--top", 2, "--config", cfg_path)
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err
    assert "resumed from" in out  # the half-trained child continued from its last.pth
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["top"]) == (2, 0, 2)
    # the same end state as a retrain never interrupted
    ref = retrain_top(tmp_path / "run", 2, load_config(cfg_path), tmp_path / "ref")
    assert ref["best_top1"] == summary["best_top1"] and ref["best_child"] == summary["best_child"]
    got, want = _state(root), _state(tmp_path / "ref")
    assert list(got) == list(want) == [3, 5]
    for cid in got:
        assert got[cid][0] == want[cid][0] and got[cid][1] == want[cid][1]
        assert all(torch.equal(got[cid][2][k], want[cid][2][k]) for k in want[cid][2])
    # each child is the search's genotype at the config's depth/width: params and mult-adds agree
    results = load_results(root)
    for cid in (3, 5):
        e = results["children"][str(cid)]
        assert load_config(root / e["dir"] / "config.yaml")["model"]["genotype"] == e["genotype"]
        # F 48 = 2 filters for NASNet-A: every child is built with num_conv_filters 2, as in a search
        model = nc.create_model("nasnet_a_cifar", genotype=e["genotype"], N=1, num_conv_filters=2,
                                num_classes=10, in_chans=1, image_size=28, aux_head=False)
        cx = nc.complexity(model, 28, 1)
        assert (e["params"], e["mult_adds"]) == (cx["params"], cx["mult_adds"]) and e["epochs"] == 2
    # a third call finds both done and trains nothing; another recipe is refused
    again = retrain_top(tmp_path / "run", 2, load_config(cfg_path))
    assert again["trained_now"] == 0 and _state(root)[3][0] == got[3][0]
    with pytest.raises(ValueError, match=r"solver.lr: 0.05 -> 0.1"):
        retrain_top(tmp_path / "run", 2, load_config(cfg_path, ["solver.lr", 0.1]))
    assert search_tool.main(["report", str(tmp_path / "run")]) == 0
    assert f"| 1 | 3 | 0.9000 | {results['children']['3']['top1']:.2f} |" in capsys.readouterr().out


# ---- report ------------------------------------------------------------------------------------
def test_spearman_matches_hand_computed_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0.9, 0.8, 0.7, 0.6], [80, 85, 70, 60]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / 22.5 ** 0.5)  # ties: mean ranks
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_report_table_and_plot(tmp_path, capsys):
    _fake_run(tmp_path / "run", [0.6, 0.7, 0.8, 0.95, 0.9])  # child 3 = child 1's genotype
    picks = select_top(tmp_path / "run", 4)  # children 3, 4, 2, 0
    top1 = {3: 80.0, 4: 85.0, 2: 70.0, 0: 60.0}
    children = {str(p["child"]): {**p, "dir": f"child{p['child']}", "status": "done",
                                  "top1": top1[p["child"]], "mult_adds": 2_000_000 * (p["child"] + 1),
                                  "params": 30_000, "epochs": 3} for p in picks}
    children["0"]["status"] = "failed"
    (tmp_path / "run" / "retrain").mkdir()
    (tmp_path / "run" / "retrain" / RESULTS).write_text(json.dumps(
        {"run_dir": str(tmp_path / "run"), "config": {}, "children": children,
         "top": [p["child"] for p in picks]}))
    run = load_run(tmp_path / "run")
    table = retrained_table(run)
    assert "| 1 | 3 | 0.9500 | 80.00 | 2 | 8.00 | 0.030 | 3 |" in table
    assert "| 2 | 4 | 0.9000 | 85.00 | 1 | 10.00 | 0.030 | 3 |" in table
    assert "| 4 | 0 | 0.6000 | failed |" in table
    assert "(3 children): 0.500" in table  # reward ranks 3, 2, 1 vs top-1 ranks 2, 3, 1
    assert "best after retraining: child 4 (reward rank 2), top-1 85.00 %" in table
    png = plot_retrained(run, tmp_path / "fig5.png")
    assert png.stat().st_size > 10_000
    assert search_tool.main(["report", str(tmp_path / "run"), "--plot-retrained", str(png)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert search_tool.main(["report", str(tmp_path / "run"), "--plot-retrained", str(png), "--force"]) == 0
    assert "| 1 | 3 | 0.9500 | 80.00 |" in capsys.readouterr().out
    two = plot_retrained([run, dict(run, label="again")], tmp_path / "fig5_two.png")  # a colour per run
    assert two.stat().st_size > png.stat().st_size * 0.8
    with pytest.raises(StoreError):
        load_run(tmp_path / "nothing")
