"""Search tools on bad input and interrupted work: nothing overwritten without --force, one error line
naming the problem (exit 2), no second writer on a run, a synthetic target independent of the search seed."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT, load_tool

from nasnet_core.common.config import SEARCH, load_config
from nasnet_core.search.rewards import SyntheticReward, build_space
from nasnet_core.search.runner import start_search
from nasnet_core.search.store import RunStore, StoreError

SYNTHETIC = ["search.strategy", "random", "search.strategy_hparams", "{}", "space.num_blocks", "2",
             "reward.name", "synthetic"]


def _tool(capsys, *argv):
    """(exit code, stdout, stderr) of tools/search.py run in-process."""
    capsys.readouterr()
    rc = load_tool("search").main(["--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _run(capsys, run_dir, *extra, n=6):
    return _tool(capsys, "run", "--run-dir", run_dir, *SYNTHETIC, "search.num_children", n, *extra)


# ---- Loses data: run --run-dir into a foreign folder, export over existing files --------------
def test_run_refuses_a_folder_that_holds_something_else(tmp_path, capsys):
    run = tmp_path / "train_run"
    run.mkdir()
    (run / "config.yaml").write_text("solver: {epochs: 600}\n")  # a classification run's config
    (run / "last.pth").write_bytes(b"weights")
    rc, _, err = _run(capsys, run)
    line = _one_error_line(err)
    assert rc == 2 and "is not empty and holds no search" in line
    assert "--resume" in line and "--force" in line and "config.yaml" in line
    assert (run / "config.yaml").read_text() == "solver: {epochs: 600}\n"  # untouched
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pth"]
    # an empty existing folder is a fine run directory; --force writes into a foreign one
    (tmp_path / "empty").mkdir()
    assert _run(capsys, tmp_path / "empty")[0] == 0
    rc, out, _ = _run(capsys, run, "--force")
    assert rc == 0 and json.loads(out.splitlines()[-1])["children"] == 6
    assert (run / "last.pth").read_bytes() == b"weights"
    # a folder that already holds a search names --resume
    rc, _, err = _run(capsys, run)
    assert rc == 2 and "already holds a search" in _one_error_line(err) and "--resume" in err
    # a file where the folder should be
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, tmp_path / "file")
    assert rc == 2 and "is not a folder" in _one_error_line(err)


def test_export_never_overwrites_without_force(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(capsys, run, n=8)[0] == 0
    out_dir = tmp_path / "genotypes"
    rc, out, _ = _tool(capsys, "export", run, "--top", 2, "--output", out_dir)
    assert rc == 0 and out.split() == [str(out_dir / "top1.json"), str(out_dir / "top2.json")]
    (out_dir / "top2.json").write_text("my edited genotype")
    rc, _, err = _tool(capsys, "export", run, "--top", 2, "--output", out_dir)
    line = _one_error_line(err)
    assert rc == 2 and "top1.json" in line and "top2.json" in line and "--force" in line
    assert (out_dir / "top2.json").read_text() == "my edited genotype"
    # nothing is written when one of several files exists: top3 stays absent
    rc, _, err = _tool(capsys, "export", run, "--top", 3, "--output", out_dir)
    assert rc == 2 and not (out_dir / "top3.json").exists()
    rc, _, _ = _tool(capsys, "export", run, "--top", 2, "--output", out_dir, "--force")
    assert rc == 0 and json.loads((out_dir / "top2.json").read_text())["rank"] == 2
    rc, _, err = _tool(capsys, "export", run, "--top", 0, "--output", tmp_path / "none")
    assert rc == 2 and "--top must be >= 1" in _one_error_line(err)


# ---- Silent or misleading ------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,message", [
    ("search.num_children", "-1", "search.num_children must be >= 1, got -1"),
    ("search.num_children", "0", "search.num_children must be >= 1, got 0"),
    ("search.max_in_flight", "-2", "search.max_in_flight must be >= 0, got -2"),
    ("executor.cpus_per_child", "0", "executor.cpus_per_child must be >= 1, got 0"),
    ("executor.max_retries", "-1", "executor.max_retries must be >= 0, got -1"),
    ("reward.child.epochs", "0", "reward.child.epochs must be >= 1, got 0"),
    ("reward.child.batch_size", "0", "reward.child.batch_size must be >= 1, got 0"),
    ("reward.child.lr", "-0.1", "reward.child.lr must be > 0, got -0.1"),
    ("reward.child.momentum", "1.5", "reward.child.momentum must be in [0, 1), got 1.5"),
    ("reward.synthetic.delay", "-1", "reward.synthetic.delay must be >= 0, got -1"),
    ("space.num_blocks", "0", "space.num_blocks must be >= 1 or null, got 0"),
])
def test_nonsensical_search_values_name_the_key(tmp_path, capsys, key, value, message):
    rc, _, err = _run(capsys, tmp_path / "run", key, value)
    assert rc == 2 and _one_error_line(err) == f"error: {message}"
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_synthetic_target_is_independent_of_the_search_seed(tmp_path):
    """Random search used to draw exactly the hidden target first (both streams seeded 0): reward 1.0."""
    firsts = []
    for seed in range(8):
        cfg = load_config(None, [*SYNTHETIC, "search.num_children", "1", "search.seed", str(seed),
                                 "reward.synthetic.target_seed", str(seed)], schema=SEARCH)
        summary = start_search(tmp_path / f"s{seed}", cfg, progress=False)
        firsts.append(summary["best"])
    assert max(firsts) < 0.8, firsts
    # the expected score of a uniform sample: mean over decisions of 1 / choices
    space = build_space(cfg["space"])
    expected = sum(1 / c for c in space.choices) / len(space)
    assert abs(sum(firsts) / len(firsts) - expected) < 0.15, (firsts, expected)
    # the target is still a deterministic function of target_seed, and differs between seeds
    reward = SyntheticReward(space, target_seed=3)
    assert reward.landscape.target == SyntheticReward(space, target_seed=3).landscape.target
    assert reward.landscape.target != SyntheticReward(space, target_seed=4).landscape.target
    assert reward(0, reward.landscape.target) == 1.0


def _search_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "search.py"), "--quiet", *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count(run):
    try:
        return sqlite3.connect(run / "search.db").execute("SELECT COUNT(*) FROM children").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_second_resume_refuses_at_start(tmp_path, capsys):
    run = tmp_path / "run"
    first = _search_cli("run", "--run-dir", run, *SYNTHETIC, "search.num_children", 400,
                        "reward.synthetic.delay", 0.05)
    second = None
    try:
        _wait(lambda: _count(run) >= 3, first)
        rc, _, err = _tool(capsys, "--resume", run)  # while `run` is still writing
        assert rc == 2 and "in use by another search process" in _one_error_line(err)
        first.kill()
        first.wait()
        second = _search_cli("--resume", run)
        _wait(lambda: _count(run) >= 10, second)
        before = RunStore(run).children()
        t0 = time.time()
        rc, _, err = _tool(capsys, "resume", run)
        assert rc == 2 and "in use by another search process" in _one_error_line(err)
        assert time.time() - t0 < 5  # refused at start, not after training a child
        second.kill()
        second.wait()
        after = RunStore(run).children()
        done_before = {c["id"] for c in before if c["status"] != "pending"}
        # every child the refused process could have touched is as the running process left it
        assert {c["id"] for c in after if c["status"] != "pending"} >= done_before
        assert len({c["seq"] for c in after if c["seq"]}) == sum(c["seq"] is not None for c in after)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    # once nobody holds it, resuming works again
    rc, out, _ = _tool(capsys, "resume", run, "--num-children", _count(run) + 2)
    assert rc == 0 and json.loads(out.splitlines()[-1])["children"] == _count(run)


def _wait(cond, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("timed out")


# ---- Tracebacks where one line belongs ------------------------------------------------------------
def test_search_db_that_is_not_a_database(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "search.db").write_bytes(b"this is a text file, not SQLite\n" * 40)
    for argv in (["--resume", run], ["report", run], ["export", run]):
        rc, _, err = _tool(capsys, *argv)
        line = _one_error_line(err)
        assert rc == 2 and f"{run / 'search.db'} is not a search database" in line, line
    with pytest.raises(StoreError, match="not a search database"):
        RunStore(run)
    rc, _, err = _tool(capsys, "resume", tmp_path / "run", "--num-children", 0)
    assert rc == 2 and "--num-children must be >= 1" in _one_error_line(err)


# ---- Overrides after options; report's plots not overwritten without --force -----------------
def test_run_takes_overrides_before_and_after_options(tmp_path, capsys):
    run = tmp_path / "mixed"
    rc, out, err = _tool(capsys, "run", *SYNTHETIC[:4], "--run-dir", run, *SYNTHETIC[4:],
                         "--backend", "inprocess", "search.num_children", 3)
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1])["children"] == 3
    cfg = load_config(run / "config.yaml", schema=SEARCH)
    assert cfg["search"]["strategy"] == "random" and cfg["reward"]["name"] == "synthetic"
    with pytest.raises(SystemExit) as exit_:  # argparse's one usage error
        _tool(capsys, "run", "--run-dir", tmp_path / "other", *SYNTHETIC, "--no-such-flag")
    assert exit_.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_report_refuses_to_overwrite_a_plot_without_force(tmp_path, capsys):
    run = tmp_path / "r"
    assert _run(capsys, run, n=4)[0] == 0
    plot = tmp_path / "fig6.png"
    plot.write_bytes(b"an earlier figure")
    rc, _, err = _tool(capsys, "report", run, "--plot", plot)
    assert rc == 2 and "--force" in _one_error_line(err)
    assert plot.read_bytes() == b"an earlier figure"
    rc, _, err = _tool(capsys, "report", run, "--plot", plot, "--force")
    assert rc == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- A search killed as it starts; foreign databases ----------------------------------------------
def _killed_python(code: str) -> int:
    """Run ``code`` in a fresh interpreter that imports this checkout; its exit code (< 0: a signal)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300).returncode


def _search_then_sigterm(run, patch: str) -> int:
    """``search.py run`` of 4 children in a subprocess whose ``patch`` sends it SIGTERM."""
    argv = ["search.py", "--quiet", "run", "--run-dir", str(run), *SYNTHETIC, "search.num_children", "4"]
    return _killed_python(f"import os, runpy, signal, sys, time\n{patch}\nsys.argv = {argv!r}\n"
                          f"runpy.run_path({str(ROOT / 'tools' / 'search.py')!r}, run_name='__main__')\n")


def _usable(capsys, run, expect_children: int) -> None:
    """report and export of ``run`` work (exit 0) and see ``expect_children`` children."""
    rc, out, err = _tool(capsys, "report", run)
    assert rc == 0 and f"| {expect_children} | {expect_children} | 0 | 0 |" in out, err
    rc, out, err = _tool(capsys, "export", run, "--top", 1, "--output", run / "genotypes")
    assert rc == 0 and (run / "genotypes" / "top1.json").is_file(), err


SIGTERM_AT = {
    # where the kill lands -> what the folder is then: "fresh" (run starts afresh), "resume" (run names
    # --resume, which finishes the search)
    "before the database is renamed into place": (
        "os.replace = lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(60))", "fresh"),
    "after the database, before config.yaml": (
        "import nasnet_core.search.runner as r\n"
        "r.write_config = lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(60))", "resume"),
}


@pytest.mark.parametrize("where", list(SIGTERM_AT))
def test_sigterm_as_a_search_starts_leaves_a_usable_folder(tmp_path, capsys, where):
    """SIGTERM between a search's database and its settings left a database without metadata: `run`
    refused the folder and --resume / report / export crashed (KeyError: 'config')."""
    run = tmp_path / "run"
    patch, expect = SIGTERM_AT[where]
    assert _search_then_sigterm(run, patch) == -15
    if expect == "fresh":  # killed with the database built but not yet in place
        assert list(run.glob(".search.db.*.tmp")) and not (run / "search.db").exists()
    else:  # killed with the database in place, before config.yaml
        assert RunStore(run).meta()["config"]["search"]["num_children"] == 4
        assert not (run / "config.yaml").exists()
    rc, out, err = _run(capsys, run, n=4)
    if expect == "resume":
        line = _one_error_line(err)
        assert rc == 2 and "already holds a search" in line and f"--resume {run}" in line
        rc, out, err = _tool(capsys, "--resume", run)
    assert rc == 0 and json.loads(out.splitlines()[-1])["children"] == 4, err
    assert load_config(run / "config.yaml", schema=SEARCH)["search"]["num_children"] == 4
    assert not list(run.glob(".search.db.*"))  # the unfinished temp database is gone
    _usable(capsys, run, 4)


def test_database_without_settings_left_by_an_older_version(tmp_path, capsys):
    """Older versions made search.db (tables, no metadata), then wrote config.yaml, then the metadata;
    a folder killed in between now gives one line naming `run`, and `run` starts afresh in it."""
    from nasnet_core.search import store

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("search: {num_children: 4}\n")
    old_start = ("import os, signal, sqlite3\nfrom nasnet_core.search.store import _SCHEMA\n"
                 f"open({str(run / 'search.lock')!r}, 'a')\n"
                 f"db = sqlite3.connect({str(run / 'search.db')!r}, isolation_level=None)\n"
                 "db.execute('PRAGMA journal_mode=WAL'); db.executescript(_SCHEMA)\n"
                 "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert _killed_python(old_start) == -9
    assert sqlite3.connect(run / "search.db").execute("SELECT COUNT(*) FROM meta").fetchone() == (0,)
    for argv in (["--resume", run], ["resume", run], ["report", run], ["export", run, "--top", 1]):
        rc, _, err = _tool(capsys, *argv)
        line = _one_error_line(err)
        assert rc == 2 and f"{run / 'search.db'} holds no search settings" in line, line
        assert f"tools/search.py run --run-dir {run}" in line
    assert _run(capsys, run, n=4)[0] == 0
    assert RunStore(run).count("done") == 4 and store.DB_NAME in os.listdir(run)
    _usable(capsys, run, 4)


def _foreign_db(path, children_columns="id INTEGER PRIMARY KEY, decisions TEXT, status TEXT"):
    db = sqlite3.connect(path)
    db.executescript(f"CREATE TABLE meta (key TEXT, value TEXT); CREATE TABLE children ({children_columns});"
                     "CREATE TABLE strategy (id INTEGER, state BLOB, num_asked INTEGER, num_told INTEGER,"
                     " num_updates INTEGER); INSERT INTO meta VALUES ('config', '{}');"
                     "INSERT INTO children VALUES (0, '[1]', 'done');")
    db.commit()
    db.close()


def test_children_table_without_a_column_is_one_line(tmp_path, capsys):
    """A children table lacking `genotype` (and reward, ...) gave KeyError: 'genotype' in report / export."""
    run = tmp_path / "run"
    run.mkdir()
    _foreign_db(run / "search.db")
    for argv in (["--resume", run], ["report", run], ["export", run]):
        rc, _, err = _tool(capsys, *argv)
        line = _one_error_line(err)
        assert rc == 2 and f"{run / 'search.db'} is not a search database (its children table lacks " \
                           "column(s) error, genotype, reward, seconds, seq, t_asked, t_finished, " \
                           "t_started, worker)" in line, line


def test_report_never_modifies_a_foreign_sqlite_file(tmp_path, capsys):
    """report / export / --resume of a folder whose search.db is another program's SQLite database: one
    line, and the file is byte-identical (report used to switch it to WAL mode)."""
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / "search.db")
    db.executescript("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
    db.commit()
    db.close()
    before = (run / "search.db").read_bytes()
    assert before[18:20] == b"\x01\x01"  # rollback-journal mode (WAL would be 2, 2)
    for argv in (["report", run], ["export", run], ["--resume", run]):
        rc, _, err = _tool(capsys, *argv)
        assert rc == 2 and "is not a search database (tables: ['users'])" in _one_error_line(err)
        assert (run / "search.db").read_bytes() == before, argv
        assert os.listdir(run) == ["search.db"]  # no lock file, no -wal / -shm either


def test_export_says_when_fewer_children_finished_than_asked(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(capsys, run, n=8)[0] == 0
    rc, out, err = _tool(capsys, "export", run, "--top", 20, "--output", tmp_path / "g")
    assert rc == 0 and len(out.split()) == 8 and len(list((tmp_path / "g").iterdir())) == 8
    assert err.strip() == f"exported 8 of the 20 asked; only 8 children of {run} finished"
    rc, out, err = _tool(capsys, "export", run, "--top", 8, "--output", tmp_path / "h")
    assert rc == 0 and len(out.split()) == 8 and err == ""
