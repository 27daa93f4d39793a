"""Classification DDP on CPU (gloo) under torchrun, as a user launches it: the same weights as one
process with the same global batch, rank-0-only files, exact resume after a SIGKILL, and evaluation
that counts every validation image once."""

import contextlib
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
from nasnet_core.common.config import dump_config
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
        "data.train_limit": 20, "solver.epochs": 2, "solver.lr": 0.01, "solver.ema_decay": 0.9,
        "solver.label_smoothing": 0.1,
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar) -> Path:
    """The same training as 1 process x 10 images per step and as 2 ranks x 5 (cwd: empty folders)."""
    tmp = tmp_path_factory.mktemp("ddp")
    for name, nproc in (("one", 1), ("two", 2)):
        cfg = _config(tmp, name, cifar, **{"solver.batch_size": 10 // nproc})
        (tmp / f"cwd_{name}").mkdir()
        r = _run(nproc, ["--config", str(cfg)], tmp / f"cwd_{name}")
        assert f"world {nproc}" in r.stderr + r.stdout
    return tmp


def test_two_processes_match_one_with_the_same_global_batch(runs):
    # 2 ranks x 5 images per step against 1 process x 10: the same 10 images in every step.
    # GroupNorm: per-sample statistics, so sharding the batch changes nothing (BatchNorm would
    # normalise each rank's 5 images by their own mean; SyncBN has no CPU kernel in torch).
    # Dropout and drop-path are off: each rank draws its own masks, 1 process draws one stream.
    tmp_path = runs
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
    assert _files(tmp_path / "cwd_two") == []
    assert {"config.yaml", "last.pth", "metrics.json", "backbone.pth"} <= set(_files(tmp_path / "two"))


def test_two_rank_evaluation_counts_every_image_once(runs):
    # 13 validation images, 4 per batch, 2 ranks: rank 0 sees 7, rank 1 sees 6; a padded sampler
    # would count 16 (or 14). The counts are summed over ranks, so top-1 is exactly 1 process's.
    ckpt = str(runs / "two" / "last.pth")
    res = {}
    for nproc in (1, 2):
        args = ["--config", str(runs / "two.yaml"), "--eval-only", ckpt, "solver.batch_size", "4"]
        r = _run(nproc, args, runs / "cwd_two")
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        assert len(lines) == 1, r.stdout  # rank 0 alone prints
        res[nproc] = json.loads(lines[0])
    assert res[1]["images"] == res[2]["images"] == VAL_IMAGES
    assert res[2]["source"] == "EMA weights"
    assert (res[2]["top1"], res[2]["top5"]) == (res[1]["top1"], res[1]["top5"])
    assert res[2]["loss"] == pytest.approx(res[1]["loss"], rel=1e-6)
    assert res[2]["top1"] == _state(runs / "two")["history"][-1]["val_top1"]  # as in training
    assert 0 < res[2]["top5"] < 100  # counts that a duplicated or lost image would change


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts each rank in a session of its own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _wait_for_epoch(proc: subprocess.Popen, metrics: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(metrics.read_text())) >= 1:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"no epoch finished (exit code {proc.poll()})")


def test_killed_and_resumed_two_process_run_ends_as_uninterrupted(tmp_path, cifar):
    # Dropout and drop-path on: each rank's own random stream must be saved and restored.
    extra = {"model.dropout": 0.3, "model.drop_path_keep_prob": 0.7, "solver.epochs": 3,
             "solver.batch_size": 5}
    full = _config(tmp_path, "full", cifar, **extra)
    part = _config(tmp_path, "part", cifar, **extra)
    _run(2, ["--config", str(full)], tmp_path)
    proc = subprocess.Popen(_command(2, ["--config", str(part)]), cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_epoch(proc, tmp_path / "part" / "metrics.json")
    finally:
        ranks = _descendants(proc.pid)
        assert len(ranks) >= 3  # torchrun and its 2 ranks
        for pid in ranks:  # SIGKILL all of them, as a lost machine
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    killed = _state(tmp_path / "part")
    assert killed["epoch"] < 3 and not (tmp_path / "part" / "backbone.pth").exists()
    r = _run(2, ["--config", str(part), "--resume"], tmp_path)
    assert f"resumed from {tmp_path / 'part' / 'last.pth'}: epoch {killed['epoch']}" in r.stderr + r.stdout
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert a["step"] == b["step"] == 6
    assert _max_diff(a["model"], b["model"]) == 0 and _max_diff(a["ema"]["module"], b["ema"]["module"]) == 0
    assert all(torch.equal(x["torch"], y["torch"]) for x, y in zip(a["rng"], b["rng"]))
    assert [h["val_top1"] for h in a["history"]] == [h["val_top1"] for h in b["history"]]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_syncbn_on_cpu_fails_before_anything_is_written(tmp_path, cifar):
    cfg = _config(tmp_path, "sync", cifar, **{"model.norm": "SyncBN", "solver.batch_size": 5})
    r = subprocess.run(_command(2, ["--config", str(cfg)]), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and all("model.norm SyncBN needs CUDA under DDP" in ln for ln in errors)
    assert "Traceback" not in r.stderr.split("error: ")[0]  # the ranks print one line each, no traceback
    assert not (tmp_path / "sync").exists()
