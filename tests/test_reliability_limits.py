"""Limits a new user meets: a genotype text longer than a file name, a broken image deep in a class
folder, a Ray address where nothing listens, a disk that fills during a checkpoint. Each ends in one
error line (exit 2) or just works, and nothing already written is lost."""

import contextlib
import errno
import io
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, load_tool
from test_search_retrain import _retrain_config
from test_train_classifier import make_cifar, make_folder, tiny_cfg

from nasnet_core.common import fileio
from nasnet_core.common.config import SEARCH, dump_config, load_config
from nasnet_core.model.genotype import NASNET_A, get_genotype, is_genotype_text, random_genotype
from nasnet_core.search.runner import start_search
from nasnet_core.search.space import make_space
from nasnet_core.search.store import LOCK_NAME, RunStore
from nasnet_core.train.trainer import Trainer


def _tool(name: str, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``tools/<name>.py`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = load_tool(name).main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def _error_line(err: str) -> str:
    """The one ``error:`` line a refused command ends with (progress bars and logs may precede it)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err[-3000:]
    assert sum(ln.startswith("error: ") for ln in lines) == 1, err[-3000:]
    return lines[-1]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, less what a reader leaves by design: the lock file's text (its latest
    holder's pid) and SQLite's -shm / -wal side files of a WAL database opened read-only."""
    return {str(p.relative_to(folder)): b"" if p.name == LOCK_NAME else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-shm", "-wal"))}


# ---- 1. a genotype text longer than a file name (NASNet-A's is 379 characters) -------------------
@pytest.mark.slow
def test_long_genotype_text_trains_resumes_and_evaluates(tmp_path):
    text = NASNET_A.to_string()
    assert len(text) >= 256  # a path lookup of it fails with ENAMETOOLONG (names are <= 255 bytes)
    assert is_genotype_text(text) and not any(map(is_genotype_text, ("runs/top1.json", "nasnet_a", "a:b")))
    assert get_genotype(text) == NASNET_A
    gfile = tmp_path / "top1.json"
    gfile.write_text(json.dumps({"genotype": NASNET_A.to_dict(), "reward": 0.9}))  # a search export
    cfg = tiny_cfg(tmp_path, "cifar10", make_cifar(tmp_path / "d", per_batch=8),
                   **{"solver.epochs": 2, "model.genotype": str(gfile), "model.aux_head": False})
    trainer = Trainer(cfg)
    trainer.fit(stop_after_epochs=1)
    trainer.close()
    run = Path(cfg["train"]["output_dir"])
    assert load_config(run / "config.yaml")["model"]["genotype"] == text  # the run stores the text
    rc, _, err = _tool("train_classifier", "--config", run / "config.yaml", "--resume")
    assert rc == 0, err[-3000:]
    assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 2
    rc, out, err = _tool("train_classifier", "--config", run / "config.yaml", "--eval-only",
                         run / "backbone.pth")
    assert rc == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["images"] == 24 and res["source"] == "exported weights"
    # the text given directly, not through a file: a new run trains with it as well
    cfg = tiny_cfg(tmp_path, "cifar10", tmp_path / "d", **{"solver.epochs": 1, "model.genotype": text,
                                                           "train.output_dir": str(tmp_path / "direct")})
    assert Trainer(cfg).cfg["model"]["genotype"] == text


def test_search_retrain_of_long_genotypes(tmp_path):
    space = make_space("A", num_blocks=5)
    rng = random.Random(0)
    genotypes = [random_genotype(rng, 5, ops=space.ops, combiners=space.combiners, outputs=(space.output,))
                 for _ in range(2)]
    assert min(len(g.to_string()) for g in genotypes) >= 256
    cfg = load_config(None, ["space.num_blocks", 5, "reward.name", "synthetic"], schema=SEARCH)
    with RunStore.create(tmp_path / "run", {"config": cfg}, b"", (0, 0, 0)) as store:
        ids = store.add_children([(space.encode(g), g.to_string()) for g in genotypes], b"", (0, 0, 0))
        for i, reward in zip(ids, (0.5, 0.9)):
            store.finish_child(i, {"status": "done", "reward": reward, "accuracy": reward, "mult_adds": 1},
                               None, None)
    rc, out, err = _tool("search", "retrain", tmp_path / "run", "--top", 1, "--config",
                         _retrain_config(tmp_path, epochs=1))
    assert rc == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["best_child"]) == (1, 0, ids[1])
    child = tmp_path / "run" / "retrain" / f"child{ids[1]}"
    assert load_config(child / "config.yaml")["model"]["genotype"] == genotypes[1].to_string()


# ---- 2. an unreadable image that is not the first of its class ----------------------------------
def test_unreadable_image_deep_in_a_class_is_refused_before_anything_is_written(tmp_path):
    inet = make_folder(tmp_path / "inet")
    broken = [inet / "train" / "n00000002" / "img_1.JPEG", inet / "val" / "n00000001" / "img_3.JPEG"]
    for path in broken:
        path.write_bytes(b"\xff\xd8 not a jpeg")
    cfg = tiny_cfg(tmp_path, "imagenet", inet, **{"solver.epochs": 1})
    config = tmp_path / "c.yaml"
    config.write_text(dump_config(cfg))
    rc, _, err = _tool("train_classifier", "--config", config)
    line = _error_line(err)
    assert rc == 2 and "2 of the 88 images under" in line and "cannot be read as images" in line
    assert all(str(p) in line for p in broken)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    # A truncated download keeps its header: it fails when read, with one line, and --resume goes on.
    for path in broken:
        path.unlink()
    good = inet / "val" / "n00000003" / "img_4.JPEG"  # every epoch reads all of val
    data = good.read_bytes()
    good.write_bytes(data[: data.index(b"\xff\xda") + 40])  # the headers and the first bytes of the scan
    rc, _, err = _tool("train_classifier", "--config", config)
    line = _error_line(err)
    assert rc == 2 and f"cannot decode image {good}" in line and "--resume" in line
    good.write_bytes(data)
    rc, _, err = _tool("train_classifier", "--config", config, "--resume")
    assert rc == 0, err[-3000:]
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=False)["epoch"] == 1


# ---- 3. a Ray address where nothing listens ------------------------------------------------------
def _dead_loopback_address() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _search(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "tools" / "search.py"), "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env)


SYNTHETIC = ["search.strategy", "random", "search.strategy_hparams", "{}", "space.num_blocks", 2,
             "reward.name", "synthetic"]


@pytest.mark.slow
def test_ray_address_where_nothing_listens_ends_in_one_line_and_writes_nothing(tmp_path):
    pytest.importorskip("ray", reason="ray not installed (pip install 'nasnet[search]')")
    address = _dead_loopback_address()
    run = tmp_path / "run"
    r = _search("run", "--run-dir", run, "--backend", "ray", "--address", address, *SYNTHETIC)
    line = _error_line(r.stderr)
    assert r.returncode == 2 and f"no Ray cluster answers at {address}" in line, r.stderr[-3000:]
    assert not run.exists()


@pytest.mark.slow
def test_resume_and_retrain_of_a_run_whose_ray_cluster_is_gone(tmp_path):
    pytest.importorskip("ray", reason="ray not installed (pip install 'nasnet[search]')")
    address = _dead_loopback_address()
    run = tmp_path / "run"
    start_search(run, load_config(None, [*SYNTHETIC, "search.num_children", 3], schema=SEARCH),
                 progress=False)
    with contextlib.closing(sqlite3.connect(run / "search.db")) as db, db:  # as if run on that cluster
        cfg = json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        cfg["executor"].update(backend="ray", address=address)
        db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(cfg),))
    before = _files(run)
    r = _search("--resume", run)  # reuses the stored address
    line = _error_line(r.stderr)
    assert r.returncode == 2 and f"no Ray cluster answers at {address}" in line, r.stderr[-3000:]
    assert _files(run) == before
    r = _search("retrain", run, "--top", 1, "--config", _retrain_config(tmp_path))
    assert r.returncode == 2 and f"no Ray cluster answers at {address}" in _error_line(r.stderr)
    assert _files(run) == before


# ---- 4. a full disk during a checkpoint write ----------------------------------------------------
def _enospc_like_torch(obj, f):
    """What torch.save does when the disk fills: the write's OSError, then its zip writer's RuntimeError."""
    f.write(b"PK\x03\x04 partial zip")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904


def _runtime_error_alone(obj, f):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def test_full_disk_is_named_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    last = tmp_path / "last.pth"
    fileio.atomic_torch_save({"epoch": 1}, last)
    good = last.read_bytes()
    monkeypatch.setattr(torch, "save", _enospc_like_torch)
    with pytest.raises(fileio.DiskFullError, match=rf"no space left on device writing {last} \([0-9.]+ MiB "
                                                   rf"free there\); {last} is unchanged") as info:
        fileio.atomic_torch_save({"epoch": 2}, last)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    # torch's RuntimeError alone (no OSError behind it) on a file system with < 1 MiB left
    monkeypatch.setattr(torch, "save", _runtime_error_alone)
    monkeypatch.setattr(fileio, "_free_bytes", lambda folder: 4096.0)
    with pytest.raises(fileio.DiskFullError, match=r"\(0\.0 MiB free there\)"):
        fileio.atomic_torch_save({"epoch": 2}, last)
    monkeypatch.setattr(fileio, "_free_bytes", lambda folder: 2.0**30)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room left it is some other failure
        fileio.atomic_torch_save({"epoch": 2}, last)
    assert last.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs under tmp_path (needs root; skipped where mount is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_filling_during_training_checkpoint(tmp_path, small_disk):
    cfg = tiny_cfg(tmp_path, "cifar10", make_cifar(tmp_path / "d", per_batch=8),
                   **{"solver.epochs": 2, "train.output_dir": str(small_disk / "run")})
    trainer = Trainer(cfg)
    trainer.fit(stop_after_epochs=1)
    trainer.close()
    run = small_disk / "run"
    last = run / "last.pth"
    good = last.read_bytes()
    st = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(bytes(st.f_bavail * st.f_frsize - len(good) // 2))
    rc, _, err = _tool("train_classifier", "--config", run / "config.yaml", "--resume")
    line = _error_line(err)
    assert rc == 2 and f"no space left on device writing {last}" in line and f"{last} is unchanged" in line
    assert last.read_bytes() == good and not list(run.glob(".*.tmp"))
    (small_disk / "filler").unlink()  # room again: the run goes on from the kept checkpoint
    rc, _, err = _tool("train_classifier", "--config", run / "config.yaml", "--resume")
    assert rc == 0, err[-3000:]
    assert torch.load(last, weights_only=False)["epoch"] == 2
