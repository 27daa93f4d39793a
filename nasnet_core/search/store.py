"""The run directory's SQLite store: every child, its reward/status/timings, and the strategy state.

Each state change is one transaction that writes the children rows *and* the strategy state
together, so after a crash or SIGKILL the database holds a consistent snapshot: children that
were asked but not finished are still ``pending`` and the strategy state is the one that asked
them; resuming re-runs exactly those.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from ..common.errors import ProjectError

__all__ = ["RunStore", "DB_NAME", "LOCK_NAME", "StoreError"]

DB_NAME = "search.db"
LOCK_NAME = "search.lock"  # flocked by the one process writing the run (run or resume)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS children (
    id INTEGER PRIMARY KEY,          -- order in which the strategy asked for it
    decisions TEXT NOT NULL,         -- JSON list of ints
    genotype TEXT,                   -- nc.Genotype text form (NASNet spaces)
    status TEXT NOT NULL,            -- pending | done | failed | timeout
    reward REAL,                     -- the reward told (done children): accuracy, or cost-aware
    accuracy REAL,                   -- held-out accuracy when the reward is cost-aware
    mult_adds INTEGER,               -- mult-adds of the child network as built (child reward)
    error TEXT,                      -- why it failed
    seq INTEGER UNIQUE,              -- order in which results came back (1-based)
    t_asked REAL NOT NULL,           -- unix time sampled
    t_started REAL,                  -- unix time its (last) evaluation started
    t_finished REAL,                 -- unix time its result was recorded
    seconds REAL,                    -- evaluation wall time on the worker
    worker TEXT                      -- host:pid that evaluated it
);
CREATE TABLE IF NOT EXISTS strategy (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    state BLOB NOT NULL,
    num_asked INTEGER NOT NULL,
    num_told INTEGER NOT NULL,
    num_updates INTEGER NOT NULL
);
"""


class StoreError(ProjectError, RuntimeError):
    """A missing, foreign or inconsistent run directory."""


def _take_lock(run_dir: Path):
    """An exclusive flock on ``RUN_DIR/search.lock`` held until closed; StoreError if another holds it.

    The kernel drops the lock when its process dies (even by SIGKILL), so no stale lock is left."""
    import fcntl

    handle = open(run_dir / LOCK_NAME, "a")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(f"{run_dir} is in use by another search process (run or --resume); wait "
                         "for it to finish or stop it first") from None
    return handle


class RunStore:
    """Transactional access to ``RUN_DIR/search.db``."""

    def __init__(self, run_dir: str | Path, create: bool = False, lock: bool = False):
        """Open (or with ``create``, make) the run's database; ``lock``: as its one writing process."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self._lock = None
        if create:
            if self.path.exists():
                raise StoreError(f"{self.run_dir} already holds a search; resume it with --resume "
                                 f"{self.run_dir} or choose another run directory")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise StoreError(f"no search found in {self.run_dir} (missing {DB_NAME})")
        if lock:
            self._lock = _take_lock(self.run_dir)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self._open(create)
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(f"{self.path} is not a search database ({e})") from None
        except BaseException:
            self.close()
            raise

    def _open(self, create: bool) -> None:
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")  # one fsync per commit; commits stay atomic and durable
        self.db.execute("PRAGMA synchronous=FULL")
        if create:
            self.db.executescript(_SCHEMA)
            return
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "children", "strategy"} <= tables:
            raise StoreError(f"{self.path} is not a search database (tables: {sorted(tables)})")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(children)")}
        for name, kind in (("accuracy", "REAL"), ("mult_adds", "INTEGER")):  # runs made before them
            if name not in columns:
                self.db.execute(f"ALTER TABLE children ADD COLUMN {name} {kind}")

    def close(self) -> None:
        """Close the database and release the writer lock."""
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _txn(self):
        store = self

        class _T:
            def __enter__(self):
                store.db.execute("BEGIN IMMEDIATE")
                return store.db

            def __exit__(self, exc_type, *_):
                store.db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False
        return _T()

    # ---- meta ------------------------------------------------------------
    def init(self, meta: dict, strategy_state: bytes, counts: tuple[int, int, int]) -> None:
        """Write the run's metadata and the initial strategy state (one transaction)."""
        with self._txn() as db:
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            db.execute("INSERT INTO strategy VALUES (0, ?, ?, ?, ?)", (strategy_state, *counts))

    def meta(self) -> dict:
        """All metadata (decoded from JSON)."""
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}

    # ---- strategy --------------------------------------------------------
    def strategy_state(self) -> bytes:
        """The last committed strategy state."""
        row = self.db.execute("SELECT state FROM strategy WHERE id = 0").fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no strategy state")
        return row["state"]

    def strategy_counts(self) -> dict:
        """num_asked / num_told / num_updates of the last committed strategy state."""
        row = self.db.execute("SELECT num_asked, num_told, num_updates FROM strategy WHERE id = 0").fetchone()
        return dict(row)

    # ---- children --------------------------------------------------------
    def add_children(self, children: list[tuple[list[int], str | None]], strategy_state: bytes,
                     counts: tuple[int, int, int]) -> list[int]:
        """Record newly asked children with the strategy state after the ask; returns their ids."""
        now = time.time()
        with self._txn() as db:
            start = db.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM children").fetchone()[0]
            ids = list(range(start, start + len(children)))
            db.executemany("INSERT INTO children (id, decisions, genotype, status, t_asked) "
                           "VALUES (?, ?, ?, 'pending', ?)",
                           [(i, json.dumps(d), g, now) for i, (d, g) in zip(ids, children)])
            db.execute("UPDATE strategy SET state = ?, num_asked = ?, num_told = ?, num_updates = ? "
                       "WHERE id = 0", (strategy_state, *counts))
        return ids

    def finish_child(self, child_id: int, result: dict, strategy_state: bytes | None,
                     counts: tuple[int, int, int] | None) -> int:
        """Record a child's result (and the strategy state after telling it); returns its seq."""
        with self._txn() as db:
            row = db.execute("SELECT status FROM children WHERE id = ?", (child_id,)).fetchone()
            if row is None or row["status"] != "pending":
                raise StoreError(f"child {child_id} is not pending (status "
                                 f"{None if row is None else row['status']!r}); refusing to record it twice")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM children").fetchone()[0]
            db.execute("UPDATE children SET status = ?, reward = ?, accuracy = ?, mult_adds = ?, error = ?, "
                       "seq = ?, t_started = ?, t_finished = ?, seconds = ?, worker = ? WHERE id = ?",
                       (result["status"], result.get("reward"), result.get("accuracy"),
                        result.get("mult_adds"), result.get("error"), seq,
                        result.get("started"), time.time(), result.get("seconds"), result.get("worker"),
                        child_id))
            if strategy_state is not None:
                db.execute("UPDATE strategy SET state = ?, num_asked = ?, num_told = ?, num_updates = ? "
                           "WHERE id = 0", (strategy_state, *counts))
        return seq

    def children(self, status: str | None = None) -> list[dict]:
        """Children rows (decisions decoded), in id order, optionally of one status."""
        q = "SELECT * FROM children" + (" WHERE status = ?" if status else "") + " ORDER BY id"
        rows = self.db.execute(q, (status,) if status else ()).fetchall()
        return [dict(r, decisions=json.loads(r["decisions"])) for r in rows]

    def decisions(self, child_id: int) -> list[int]:
        """The decision list of one child; StoreError if there is no such child."""
        row = self.db.execute("SELECT decisions FROM children WHERE id = ?", (child_id,)).fetchone()
        if row is None:
            raise StoreError(f"no child {child_id} in {self.path}")
        return json.loads(row["decisions"])

    def count(self, status: str | None = None) -> int:
        """Number of children (of one status)."""
        if status is None:
            return self.db.execute("SELECT COUNT(*) FROM children").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM children WHERE status = ?", (status,)).fetchone()[0]
