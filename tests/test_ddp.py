"""Classification DDP on CPU (gloo) under torchrun, as a user launches it: the same weights as one
process with the same global batch, rank-0-only files, exact resume after a SIGKILL, and evaluation
that counts every validation image once."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_train_classifier import make_cifar, tiny_cfg

import nasnet_core as nc
from nasnet_core.config import dump_config
from nasnet_core.train.data import EpochSampler

pytestmark = pytest.mark.slow
TOOL = str(ROOT / "tools" / "train_classifier.py")
VAL_IMAGES = 13  # not a multiple of 2 ranks x batch 4: a padded sampler would count some twice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, TOOL, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), TOOL, *args]


def _run(nproc: int, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(_command(nproc, args), cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _config(tmp_path: Path, name: str, data: Path, **extra) -> Path:
    """A tiny NASNet-A CIFAR run: 20 training images, 13 validation images, 2 epochs of 10 images
    per step (4 steps: a loss this far from converged amplifies float rounding order over many)."""
    cfg = tiny_cfg(tmp_path, "cifar10", data, **{
        "model.norm": "GN", "model.dropout": 0.0, "model.drop_path_keep_prob": 1.0,
        "data.train_limit": 20, "solver.epochs": 2, "solver.lr": 0.01, "solver.ema_decay": 0.9, "solver.label_smoothing": 0.1,
        "train.deterministic": True, "train.output_dir": str(tmp_path / name), **extra})
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    return path


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return make_cifar(tmp_path_factory.mktemp("c10") / "d", per_batch=12, test=VAL_IMAGES)


def _files(folder: Path) -> list[str]:
    """Files under ``folder``; TensorBoard event files (named by host and pid) as tb/events."""
    names = (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return sorted("tb/events" if n.startswith("tb/events.out.tfevents.") else n for n in names)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def _state(run: Path) -> dict:
    return torch.load(run / "last.pth", weights_only=False, map_location="cpu")


def test_eval_sampler_covers_every_image_once():
    for n, world in ((13, 2), (24, 5), (3, 4)):
        shards = [list(EpochSampler(n, r, world, shuffle=False)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        train = [list(EpochSampler(n, r, world, shuffle=True, seed=3)) for r in range(world)]
        assert len({len(s) for s in train}) == 1  # padded: every rank takes the same number of steps
        assert set(i for s in train for i in s) == set(range(n))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, cifar):
    # 2 ranks x 5 images per step against 1 process x 10: the same 10 images in every step.
    # GroupNorm: per-sample statistics, so sharding the batch changes nothing (BatchNorm would
    # normalise each rank's 5 images by their own mean; SyncBN has no CPU kernel in torch).
    # Dropout and drop-path are off: each rank draws its own masks, 1 process draws one stream.
    one = _config(tmp_path, "one", cifar, **{"solver.batch_size": 10})
    two = _config(tmp_path, "two", cifar, **{"solver.batch_size": 5})
    (tmp_path / "cwd1").mkdir()
    (tmp_path / "cwd2").mkdir()
    _run(1, ["--config", str(one)], tmp_path / "cwd1")
    r = _run(2, ["--config", str(two)], tmp_path / "cwd2")
    assert "world 2" in r.stderr + r.stdout
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert a["step"] == b["step"] == 4 and len(b["rng"]) == 2  # 2 steps per epoch either way
    assert _max_diff(a["model"], b["model"]) <= 1e-5
    assert _max_diff(a["ema"]["module"], b["ema"]["module"]) <= 1e-5
    ha, hb = a["history"][-1], b["history"][-1]
    assert hb["train_loss"] == pytest.approx(ha["train_loss"], abs=1e-5)
    assert hb["val_top1"] == ha["val_top1"]
    torch.manual_seed(0)  # train.seed: the initial weights, to show they moved far past the tolerance
    init = nc.create_model(a["arch"], **a["model_overrides"]).state_dict()
    assert _max_diff(init, a["model"]) > 1e-3
    # Only rank 0 wrote: the same files as one process (one TensorBoard events file), nothing in cwd.
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert _files(tmp_path / "two").count("tb/events") == 1
    assert _files(tmp_path / "cwd2") == []
    assert {"config.yaml", "last.pth", "metrics.json", "backbone.pth"} <= set(_files(tmp_path / "two"))
