"""The run directory's SQLite store: every child, its reward/status/timings, and the strategy state.

Each state change is one transaction that writes the children rows *and* the strategy state
together, so after a crash or SIGKILL the database holds a consistent snapshot: children that
were asked but not finished are still ``pending`` and the strategy state is the one that asked
them; resuming re-runs exactly those. The database itself is born complete (``RunStore.create``):
built with its metadata under a temp name and renamed into place, so a kill while a search starts
leaves no ``search.db`` or one that resumes. Readers (report, export, retrain) open it read-only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from ..common.errors import ProjectError
from ..common.fileio import atomic_write_bytes
from ..common.locks import lock_folder

__all__ = ["RunStore", "DB_NAME", "LOCK_NAME", "StoreError", "left_by_start"]

DB_NAME = "search.db"
LOCK_NAME = "search.lock"  # flocked by the one process writing the run (run or resume)
_TEMP_GLOB = f".{DB_NAME}.*.tmp"  # a database being built (RunStore.create)

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


_MIGRATED = {"accuracy": "REAL", "mult_adds": "INTEGER"}  # children columns newer than the first runs


def _schema_columns() -> dict[str, set[str]]:
    """Each table's columns as ``_SCHEMA`` defines them."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        tables = ("meta", "children", "strategy")
        return {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        db.close()


_COLUMNS = _schema_columns()


def left_by_start(name: str) -> bool:
    """Whether ``name`` is a file a search leaves in its folder before its database exists (the lock,
    a database being built): a folder holding only these is a search that was stopped as it started."""
    return name == LOCK_NAME or Path(name).match(_TEMP_GLOB)


def _take_lock(run_dir: Path):
    """An exclusive flock on ``RUN_DIR/search.lock`` held until closed; StoreError if another holds it."""
    return lock_folder(run_dir, LOCK_NAME, "another search process (run or --resume)", StoreError)


def _check_tables(db: sqlite3.Connection, path: Path) -> set[str]:
    """StoreError unless ``db`` holds the search tables with their columns (read-only); returns the
    children columns newer than the database (``_MIGRATED``) that it lacks."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not set(_COLUMNS) <= tables:
        raise StoreError(f"{path} is not a search database (tables: {sorted(tables)})")
    have = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in _COLUMNS}
    for table, want in _COLUMNS.items():
        lacking = sorted(want - have[table] - (set(_MIGRATED) if table == "children" else set()))
        if lacking:
            raise StoreError(f"{path} is not a search database (its {table} table lacks column(s) "
                             f"{', '.join(lacking)})")
    return set(_MIGRATED) - have["children"]


def _unstarted(db: sqlite3.Connection) -> bool:
    """A database with the tables but no settings: an older version's search killed as it started."""
    return db.execute("SELECT COUNT(*) FROM meta WHERE key = 'config'").fetchone()[0] == 0


def _remove_unstarted(path: Path, run_dir: Path) -> None:
    """Delete ``path`` if it is an unstarted search (no settings, no child); else StoreError (a search)."""
    with RunStore(run_dir, check_started=False) as old:
        unstarted = _unstarted(old.db) and old.count() == 0
    if not unstarted:
        raise StoreError(f"{run_dir} already holds a search; resume it with --resume {run_dir} or choose "
                         "another run directory")
    for p in (path, path.with_name(DB_NAME + "-wal"), path.with_name(DB_NAME + "-shm")):
        p.unlink(missing_ok=True)


def _build(path: Path, meta: dict, strategy_state: bytes, counts: tuple[int, int, int]) -> None:
    """Write schema, ``meta`` and the strategy state into a temp database beside ``path``, then put its
    bytes at ``path`` with the atomic writer: the database appears complete or not at all."""
    for stale in path.parent.glob(_TEMP_GLOB):  # left by a killed build (the caller holds the lock)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{DB_NAME}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=MEMORY")  # no journal file beside the temp
            db.executescript(_SCHEMA)
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            db.execute("INSERT INTO strategy VALUES (0, ?, ?, ?, ?)", (strategy_state, *counts))
        finally:
            db.close()
        atomic_write_bytes(path, Path(tmp).read_bytes())
    finally:
        Path(tmp).unlink(missing_ok=True)


class RunStore:
    """Transactional access to ``RUN_DIR/search.db``: read-only, or as the run's one writer (``lock``)."""

    def __init__(self, run_dir: str | Path, lock: bool = False, check_started: bool = True, _held=None):
        """Open the run's database; ``lock``: as its one writing process (else read-only, changing no byte
        of the file: a foreign SQLite file is refused as it is)."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.db, self._lock, self._missing = None, _held, set()
        if not self.path.is_file():
            raise StoreError(f"no search found in {self.run_dir} (missing {DB_NAME})")
        try:
            if lock and _held is None:
                self._open(False, check_started)  # a foreign or unstarted file: refused before any write
                self.db.close()
                self._lock = _take_lock(self.run_dir)
            self._open(self._lock is not None, check_started)
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(f"{self.path} is not a search database ({e})") from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, run_dir: str | Path, meta: dict, strategy_state: bytes,
               counts: tuple[int, int, int]) -> RunStore:
        """Make the run's database holding ``meta`` and the first strategy state; open it as the writer.

        StoreError when ``run_dir`` already holds a search; a database an older version left without
        settings and children (killed as it started) is replaced."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _take_lock(run_dir)
        try:
            path = run_dir / DB_NAME
            if path.exists():
                _remove_unstarted(path, run_dir)
            _build(path, meta, strategy_state, counts)
        except BaseException:
            handle.close()
            raise
        return cls(run_dir, _held=handle)  # closes the lock if the open fails

    def _open(self, write: bool, check_started: bool) -> None:
        uri = self.path.absolute().as_uri() + ("" if write else "?mode=ro")
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
        self.db.row_factory = sqlite3.Row
        self._missing = _check_tables(self.db, self.path)  # before anything is written to the file
        if check_started and _unstarted(self.db):
            raise StoreError(f"{self.path} holds no search settings: the search that made it was stopped as "
                             f"it started, before any child; start it again with tools/search.py run "
                             f"--run-dir {self.run_dir} (it replaces this database)" if self.count() == 0 else
                             f"{self.path} is not a search database (it holds children but no settings)")
        if write:
            self.db.execute("PRAGMA journal_mode=WAL")  # one fsync per commit; commits atomic and durable
            self.db.execute("PRAGMA synchronous=FULL")
            for name in sorted(self._missing):  # runs made before these columns
                self.db.execute(f"ALTER TABLE children ADD COLUMN {name} {_MIGRATED[name]}")
            self._missing = set()

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
        blank = dict.fromkeys(self._missing)  # columns a read-only open of an older run lacks
        return [{**blank, **dict(r), "decisions": json.loads(r["decisions"])} for r in rows]

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
