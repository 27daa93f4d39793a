"""Classification training killed (SIGKILL) at seeded random moments, some while last.pth is being
written, then resumed each time: the end state is bit-identical to an uninterrupted run's, and no
temp file is left."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import ROOT
from test_train_classifier import make_cifar, tiny_cfg

from nasnet_core.common.config import dump_config
from nasnet_core.train import Trainer

EPOCHS = 5
KILLS = ("time", "write", "time", "write")
"""time: a seeded moment within an epoch, once the restarted run has written a checkpoint;
write: the moment a temp file of last.pth appears (mid-write, before the rename)."""


def _cfg(tmp_path: Path, data: Path, name: str) -> dict:
    return tiny_cfg(tmp_path, "cifar10", data, **{
        "train.output_dir": str(tmp_path / name), "train.deterministic": True, "solver.epochs": EPOCHS,
        "solver.ema_decay": 0.9, "model.dropout": 0.2, "train.log_every": 2})


def _start(cfg_file: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "tools" / "train_classifier.py"), "--config",
                                 str(cfg_file), "--resume"], stdout=f, stderr=f)


def _mtime(p: Path) -> float:
    return p.stat().st_mtime_ns if p.exists() else 0


def _temps(run: Path) -> set:
    return set(run.glob(".last.pth.*.tmp"))


def _kill(proc: subprocess.Popen, kind: str, run: Path, delay: float) -> str | None:
    """SIGKILL ``proc`` at a moment of ``kind``; what it interrupted ('write' / 'time'), None if it ended.

    'write' is returned only when the kill left this process's half-written temp file behind."""
    last, start, stale = run / "last.pth", _mtime(run / "last.pth"), _temps(run)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if kind == "write":
            if _temps(run) - stale:  # this process is writing last.pth now
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "write" if _temps(run) - stale else "time"  # the rename may have won the race
            time.sleep(0.0005)
        elif _mtime(last) != start:  # a checkpoint of this process is on disk: progress is kept
            time.sleep(delay)
            if proc.poll() is not None:
                return None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "time"
        else:
            time.sleep(0.01)
    return None


def _strip_times(history: list) -> list:
    return [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in history]


def _tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_sigkill_at_random_moments_and_resume_is_bit_identical(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    ref = Trainer(_cfg(tmp_path, data, "ref"))
    ref.fit()
    ref.close()
    epoch_s = sum(m["epoch_seconds"] for m in ref.history) / EPOCHS

    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(dump_config(_cfg(tmp_path, data, "killed")))
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    rng = random.Random(0)  # seeded: the same moments on every run
    landed = []
    for kind in KILLS:
        proc = _start(cfg_file, log)
        what = _kill(proc, kind, run, rng.uniform(0.0, 1.0) * epoch_s)
        if what is None:
            break
        landed.append(what)
    final = _start(cfg_file, log)
    assert final.wait(timeout=300) == 0, log.read_text()[-3000:]

    assert len(landed) == len(KILLS) and "time" in landed, landed
    assert "write" in landed, "no kill landed inside a checkpoint write"
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []
    assert "left by an interrupted write" in log.read_text()  # the next start cleaned them
    a = torch.load(ref.out / "last.pth", weights_only=False)
    b = torch.load(run / "last.pth", weights_only=False)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, EPOCHS * ref.steps_per_epoch)
    for key in ("model", "ema", "optimizer"):
        assert _tensors_equal(a[key], b[key]), key
    # the dropout / drop-path stream continues where it was (numpy / python: process state, not drawn)
    assert _tensors_equal([r["torch"] for r in a["rng"]], [r["torch"] for r in b["rng"]])
    assert _strip_times(a["history"]) == _strip_times(b["history"])
    assert _strip_times(json.loads((run / "metrics.json").read_text())) == _strip_times(ref.history)
    ba = torch.load(ref.out / "backbone.pth", weights_only=True)
    bb = torch.load(run / "backbone.pth", weights_only=True)
    assert _tensors_equal(ba["state_dict"], bb["state_dict"]) and ba["config"] == bb["config"]
