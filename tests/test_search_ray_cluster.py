"""The search on a Ray cluster started as a user starts one: ``ray start --head`` and a second node
(``ray start --address``) on this machine, ``tools/search.py run --backend ray --address``; one node
SIGKILLed mid-run, then the driver SIGKILLed and ``--resume``d. Nothing is lost or recorded twice.

The cluster is this test's own: its own ports, temp folders and token; it is stopped by killing
the processes it started (never ``ray stop``, which would stop every Ray cluster of this machine).
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytest.importorskip("ray", reason="ray not installed (pip install 'nasnet[search]')")

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdlines() -> dict[int, str]:
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out


class LocalCluster:
    """A head and worker nodes on this machine, each a ``ray start`` with its own temp folder."""

    def __init__(self):
        # Short root: Ray's unix sockets live under it (path length limit 107).
        self.root = Path(tempfile.mkdtemp(prefix="nnray-", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0",
                        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        # a lost node is declared dead after ~2 s instead of ~30 s
                        RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="4")
        self.nodes = 0

    def _start(self, args: list[str]) -> Path:
        temp = self.root / f"n{self.nodes}"
        self.nodes += 1
        cmd = [RAY, "start", *args, "--temp-dir", str(temp), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(_free_port())]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return temp

    def start_head(self, num_cpus: int) -> None:
        """``ray start --head`` on a free port."""
        self._start(["--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                     "--num-cpus", str(num_cpus), "--include-dashboard", "false",
                     "--ray-client-server-port", str(_free_port()), "--dashboard-port", str(_free_port())])

    def add_node(self, num_cpus: int) -> Path:
        """``ray start --address`` of one more node; returns its temp folder."""
        return self._start(["--address", self.address, "--num-cpus", str(num_cpus)])

    def pids(self, temp: Path | None = None, match: str = "") -> set[int]:
        """This cluster's processes (of one node: ``temp``) whose command line contains ``match``."""
        keys = [str(temp)] if temp else [str(self.root), f":{self.port} "]
        return {pid for pid, cmd in _cmdlines().items() if match in cmd and any(k in cmd for k in keys)}

    def stop(self) -> None:
        """SIGKILL every process of this cluster, by pid; remove its folders."""
        for _ in range(3):  # a dying raylet may still fork a worker
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start_head(num_cpus=2)
        yield c
    finally:
        c.stop()


def _search(cluster, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "search.py"), "--quiet", *args],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _config(tmp_path: Path, total: int, delay: float) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(f"""
search: {{num_children: {total}, strategy: random, strategy_hparams: {{}}}}
space: {{num_blocks: 2}}
reward: {{name: synthetic, synthetic: {{delay: {delay}}}}}
executor: {{max_retries: 3}}
""")
    return path


def _rows(run: Path) -> list[dict]:
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(run / "search.db")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM children ORDER BY id")]
        finally:
            db.close()
    return []


def _pid(row: dict) -> int | None:
    return int(row["worker"].rsplit(":", 1)[1]) if row["worker"] else None


def _wait(proc: subprocess.Popen, until, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if until():
            return
        if proc.poll() is not None:
            raise AssertionError(f"search ended before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _check_complete(run: Path, total: int) -> list[dict]:
    rows = _rows(run)
    assert [r["id"] for r in rows] == list(range(total))  # none lost
    assert sorted(r["seq"] for r in rows) == list(range(1, total + 1))  # each recorded once
    assert all(r["status"] == "done" and 0 <= r["reward"] <= 1 for r in rows), \
        [(r["id"], r["status"], r["error"]) for r in rows if r["status"] != "done"]
    return rows


def test_search_spreads_over_two_nodes_and_survives_losing_one(cluster, tmp_path):
    node = cluster.add_node(num_cpus=2)
    total, run = 24, tmp_path / "run"
    proc = _search(cluster, "run", "--config", str(_config(tmp_path, total, 1.0)), "--run-dir", str(run),
                   "--backend", "ray", "--address", cluster.address)
    node_workers: set[int] = set()

    def node_busy() -> bool:  # a child finished on the second node, and more run there now
        node_workers.update(cluster.pids(node, "default_worker.py"))
        return any(_pid(r) in node_workers for r in _rows(run)) and len(node_workers) >= 2

    try:
        _wait(proc, node_busy, "children on the second node")
        raylets = cluster.pids(node, "raylet/raylet")
        assert len(raylets) == 1
        os.kill(raylets.pop(), signal.SIGKILL)  # the node is lost with the children it runs
        killed_at = len([r for r in _rows(run) if r["status"] != "pending"])
        summary = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_at < total - 8, "the node must be lost mid-search"
    assert (summary["children"], summary["done"], summary["failed"]) == (total, total, 0)
    rows = _check_complete(run, total)
    on_node = [r for r in rows if _pid(r) in node_workers]
    assert 0 < len(on_node) < total  # children ran on both nodes ...
    late = [r for r in rows if r["seq"] > killed_at + 4]
    assert late and not any(_pid(r) in node_workers for r in late)  # ... and only the head after the loss


def test_driver_killed_and_resumed_on_the_cluster(cluster, tmp_path):
    cluster.add_node(num_cpus=2)
    total, run = 20, tmp_path / "run"
    proc = _search(cluster, "run", "--config", str(_config(tmp_path, total, 0.5)), "--run-dir", str(run),
                   "--backend", "ray", "--address", cluster.address)
    try:
        _wait(proc, lambda: len([r for r in _rows(run) if r["status"] == "done"]) >= 5, "5 children")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    rows = _rows(run)
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) < total and any(r["status"] == "pending" for r in rows)
    summary = _finish(_search(cluster, "--resume", str(run)))
    assert (summary["children"], summary["done"], summary["failed"]) == (total, total, 0)
    rows_after = _check_complete(run, total)
    # what was recorded before the kill is kept as it was; the rest ran after the resume
    before = {r["id"]: r for r in done}
    assert all(rows_after[i]["seq"] == r["seq"] and rows_after[i]["reward"] == r["reward"]
               for i, r in before.items())
