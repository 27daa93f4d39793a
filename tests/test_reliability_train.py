"""Classification training loses nothing: no silent overwrite of a run, self-contained checkpoints,
no non-finite checkpoint, up-front config checks, readable files, stale temp files cleaned."""

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import load_tool
from test_train_classifier import make_cifar, tiny_cfg

import nasnet_core as nc
from nasnet_core.common import fileio
from nasnet_core.common.config import ConfigError, dump_config, load_config
from nasnet_core.model.genotype import NASNET_A, random_genotype
from nasnet_core.train.trainer import Trainer, TrainingDiverged

RUN_FILES = ("config.yaml", "last.pth", "metrics.json", "backbone.pth")


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _tool(*args):
    """Run tools/train_classifier.py in this process (as its __main__ does); exit code and stderr."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = load_tool("train_classifier").main([str(a) for a in args])
    return _Result(rc, err.getvalue())


def _one_line_error(r, *fragments):
    """Exit 2; the error is one ``error:`` line, the last on stderr (progress bars may precede it)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert sum(ln.startswith("error: ") for ln in lines) == 1
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _all_finite(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return bool(torch.isfinite(obj).all()) if obj.is_floating_point() else True
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


def _config_file(tmp_path, data, name, **extra) -> Path:
    cfg = tiny_cfg(tmp_path, "cifar10", data, **{"solver.epochs": 2, "train.output_dir": str(tmp_path / name),
                                                 **extra})
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    return path


# ------------------------------------------------------------ loses data 1: no silent overwrite
def test_second_run_into_a_run_folder_is_refused(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg_file = _config_file(tmp_path, data, "run", **{"solver.epochs": 1})
    run = tmp_path / "run"
    assert _tool("--config", cfg_file).returncode == 0
    before = _snapshot(run)
    assert set(RUN_FILES) <= set(before)
    r = _tool("--config", cfg_file, "solver.lr", "0.05")  # the same command again, another lr
    _one_line_error(r, "--resume", "--force", str(run))
    assert _snapshot(run) == before  # nothing touched
    # The library refuses the same way (a search retrain drives the Trainer directly).
    with pytest.raises(ValueError, match="--resume.*--force"):
        Trainer(load_config(cfg_file))
    # --force overwrites; --resume continues (here: already finished, nothing to do).
    assert _tool("--config", cfg_file, "--resume").returncode == 0
    r = _tool("--config", cfg_file, "--force", "solver.lr", "0.05")
    assert r.returncode == 0, r.stderr
    assert load_config(run / "config.yaml")["solver"]["lr"] == 0.05
    assert (run / "last.pth").read_bytes() != before["last.pth"]
    # An empty folder, or one holding unrelated files, is not a run.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    Trainer(load_config(cfg_file, ["train.output_dir", str(tmp_path / "empty")]))


# ------------------------------------------------------------ loses data 2: self-contained
def test_checkpoints_and_config_carry_the_genotype_not_its_path(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    import random as pyrandom
    genotype = random_genotype(pyrandom.Random(3), num_blocks=2)
    gfile = tmp_path / "top1.json"
    gfile.write_text(json.dumps({"genotype": genotype.to_dict(), "reward": 0.9}))  # a search export
    cfg = tiny_cfg(tmp_path, "cifar10", data, **{"solver.epochs": 2, "model.genotype": str(gfile),
                                                 "model.N": "null", "model.F": 48})
    trainer = Trainer(cfg)
    trainer.fit(stop_after_epochs=1)
    trainer.close()
    run = Path(cfg["train"]["output_dir"])
    gfile.write_text(json.dumps({"genotype": NASNET_A.to_dict()}))  # another export overwrites it
    # the saved config: genotype text, N and F resolved
    saved = load_config(run / "config.yaml")
    assert saved["model"]["genotype"] == genotype.to_string()
    assert (saved["model"]["N"], saved["model"]["F"]) == (6, 48)  # nasnet_a_cifar's N; the given F
    ckpt = torch.load(run / "last.pth", weights_only=False)
    spec = ckpt["model_spec"]
    assert spec["genotype"] == genotype.to_string() and (spec["N"], spec["F"]) == (6, 48)
    gfile.unlink()
    # the training checkpoint rebuilds its model from itself alone
    model = nc.create_model(ckpt["arch"], **spec)
    model.load_state_dict(ckpt["model"])
    # resume from the run's own config (the genotype file is gone)
    resumed = Trainer(load_config(run / "config.yaml"), resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    resumed.close()
    meta = torch.load(run / "backbone.pth", weights_only=True)
    assert meta["config"]["genotype"] == genotype.to_string() and meta["config"]["N"] == 6
    model = nc.create_model(meta["arch"], **meta["config"])
    nc.load_checkpoint(model, run / "backbone.pth")
    assert resumed.evaluate(model)["top1"] == pytest.approx(resumed.history[-1]["val_top1"])


# ------------------------------------------------------------ loses data 3: non-finite checkpoints
def test_diverged_weights_are_never_written_and_resume_recovers(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg = tiny_cfg(tmp_path, "cifar10", data, **{"solver.epochs": 3, "train.log_every": 1000,
                                                 "solver.ema_decay": 0.9})
    run = Path(cfg["train"]["output_dir"])
    trainer = Trainer(cfg)
    trainer.fit(stop_after_epochs=1)
    good = (run / "last.pth").read_bytes()
    # The loss of every step is finite, but the last update leaves a weight at inf.
    orig_step = trainer.optimizer.step

    def step_then_overflow(*a, **k):
        out = orig_step(*a, **k)
        if trainer.step == 2 * trainer.steps_per_epoch - 1:
            trainer.model.last_linear.weight.data[0, 0] = math.inf
        return out
    trainer.optimizer.step = step_then_overflow
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit()
    msg = str(e.value)
    assert f"step {2 * trainer.steps_per_epoch}" in msg and str(run / "last.pth") in msg
    assert "--resume" in msg and "\n" not in msg
    assert (run / "last.pth").read_bytes() == good  # the last good checkpoint is untouched
    assert not (run / "backbone.pth").exists()
    trainer.close()
    resumed = Trainer(cfg, resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    assert resumed.epoch == 3 and _all_finite(torch.load(run / "last.pth", weights_only=False))


def test_lr_1e12_stops_with_one_line_naming_the_step_and_checkpoint(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg_file = _config_file(tmp_path, data, "run", **{"solver.epochs": 3})
    run = tmp_path / "run"
    assert _tool("--config", cfg_file, "solver.epochs", "1").returncode == 0
    good = (run / "last.pth").read_bytes()
    r = _tool("--config", cfg_file, "--resume", "solver.lr", "1e12", "solver.grad_clip", "0")
    _one_line_error(r, "diverged", "step", str(run / "last.pth"), "--resume")
    assert (run / "last.pth").read_bytes() == good
    for p in run.glob("*.pth"):
        assert _all_finite(torch.load(p, weights_only=False)), p
    r = _tool("--config", cfg_file, "--resume")  # the recipe's lr again: continues from epoch 1
    assert r.returncode == 0, r.stderr[-2000:]
    assert [m["epoch"] for m in json.loads((run / "metrics.json").read_text())] == [1, 2, 3]


# ------------------------------------------------------------ silent ones
@pytest.mark.parametrize("key,value", [("solver.epochs", "0"), ("train.eval_every", "0"),
                                       ("solver.batch_size", "0"), ("train.log_every", "0"),
                                       ("solver.lr", "-0.1"), ("train.keep_every", "-1"),
                                       ("data.workers", "-2")])
def test_config_values_checked_up_front(tmp_path, key, value):
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg_file = _config_file(tmp_path, data, "run")
    r = _tool("--config", cfg_file, key, value)
    _one_line_error(r, key)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Trainer(load_config(cfg_file, [key, value]))


def test_atomic_writes_use_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = fileio.atomic_write_text(tmp_path / "m.json", "{}")
        assert p.stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        p = fileio.atomic_torch_save({"a": torch.ones(1)}, tmp_path / "w.pth")
        assert p.stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)


def test_stale_temp_files_cleaned_when_a_run_starts(tmp_path):
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg = tiny_cfg(tmp_path, "cifar10", data, **{"solver.epochs": 2})
    run = Path(cfg["train"]["output_dir"])
    trainer = Trainer(cfg)
    trainer.fit(stop_after_epochs=1)
    trainer.close()
    stale = [run / ".last.pth.k3x9q1.tmp", run / ".metrics.json.abcd.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = run / "notes.tmp"  # not the atomic writer's pattern: not ours to delete
    keep.write_text("x")
    resumed = Trainer(cfg, resume=True)
    resumed.fit()
    assert not any(p.exists() for p in stale) and keep.exists()


# ------------------------------------------------------------ one training per output folder
def _gated_training(tmp_path, *args) -> tuple:
    """train_classifier.py in a subprocess that stops just before it writes config.yaml (its first
    file) until ``tmp_path/go`` exists: (process, file it creates when it is there)."""
    import subprocess
    import sys

    from conftest import ROOT

    there, go = tmp_path / "there", tmp_path / "go"
    code = ("import os, runpy, sys, time\nfrom pathlib import Path\nimport nasnet_core.train.trainer as tr\n"
            "real = tr.write_config\n"
            "def gated(*a, **k):\n"
            f"    Path({str(there)!r}).write_text(str(os.getpid()))\n"
            f"    while not Path({str(go)!r}).exists():\n"
            "        time.sleep(0.05)\n"
            "    return real(*a, **k)\n"
            "tr.write_config = gated\n"
            f"sys.argv = {['train_classifier.py', *map(str, args)]!r}\n"
            f"runpy.run_path({str(ROOT / 'tools' / 'train_classifier.py')!r}, run_name='__main__')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not there.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, go


@pytest.mark.slow
def test_two_trainings_started_together_on_one_folder(tmp_path):
    """Both ran and left a mixed folder (config.yaml of one, last.pth of the other)."""
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg_file = _config_file(tmp_path, data, "run")
    run = tmp_path / "run"
    first, go = _gated_training(tmp_path, "--config", cfg_file, "solver.lr", "0.1")  # waits, holding run
    try:
        r = _tool("--config", cfg_file, "solver.lr", "0.05")  # passes the folder check: nothing written yet
        _one_line_error(r, f"{run} is in use by another training run (pid {first.pid} on ", "wait for it")
    finally:
        go.write_text("")
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    # the folder is the first run's alone: its config, its checkpoint, its two epochs
    assert load_config(run / "config.yaml")["solver"]["lr"] == 0.1
    ckpt = torch.load(run / "last.pth", weights_only=False)
    assert ckpt["config"]["solver"]["lr"] == 0.1 and ckpt["epoch"] == 2
    assert [m["epoch"] for m in json.loads((run / "metrics.json").read_text())] == [1, 2]
    assert f"pid {first.pid} on " in (run / "train.lock").read_text()  # the last holder, for the record


@pytest.mark.slow
def test_two_resumes_of_one_folder(tmp_path):
    """Two --resume runs of one folder both trained and both wrote last.pth."""
    data = make_cifar(tmp_path / "d", per_batch=8)
    cfg_file = _config_file(tmp_path, data, "run")
    run = tmp_path / "run"
    part = Trainer(load_config(cfg_file))
    part.fit(stop_after_epochs=1)
    part.close()
    first, go = _gated_training(tmp_path, "--config", cfg_file, "--resume")
    try:
        r = _tool("--config", cfg_file, "--resume")
        _one_line_error(r, f"{run} is in use by another training run (pid {first.pid} on ")
        assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 1  # untouched by the refused one
    finally:
        go.write_text("")
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert [m["epoch"] for m in json.loads((run / "metrics.json").read_text())] == [1, 2]
    # a trainer that read last.pth before another run moved it on refuses to write over the newer one
    cfg = load_config(cfg_file, ["solver.epochs", "3"])
    early, late = Trainer(cfg, resume=True), Trainer(cfg, resume=True)
    early.fit()
    early.close()
    with pytest.raises(ValueError, match=r"last\.pth changed after this run read it .* --resume"):
        late.fit()
    assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 3
    # the same for two new runs built before either trained: the second sees the first's run
    fresh = load_config(cfg_file, ["train.output_dir", str(tmp_path / "fresh"), "solver.epochs", "1"])
    a, b = Trainer(fresh), Trainer(fresh)
    a.fit()
    a.close()
    with pytest.raises(ValueError, match="already holds a training run"):
        b.fit()
