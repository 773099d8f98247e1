"""The on-device memory of a video stream, in one SQLite file (memory.db).

Per clip it keeps a caption with its stream-time span, its wall-clock span (when the stream has a clock), a
retrieval vector, the vector's binary signature and the indices of the tokens selection kept; per stream it keeps
the FIFO state (the visual tokens selected from the last N clips), so an interrupted `rlivs ingest` resumes right
after the last committed clip with the same recurrent context. Only the FIFO's *current* tokens are stored: the
rows of evicted clips are deleted in the same transaction that adds a clip, so an hour of video costs about 1 MB.
The captions are also in an FTS5 keyword index (triggers keep it in step, inside the same transaction); search.py
answers questions from the indexes without reading the whole memory. Clips the activity gate left uncaptioned are
runs of idle clips (`commit_idle`, `idle_spans`: one transaction per clip too, the FIFO untouched) and the gate's
reference is kept per stream (`scene`), written with each captioned clip.

Durability: one SQLite transaction per clip (BEGIN IMMEDIATE ... COMMIT). The file is opened
in WAL mode with synchronous=NORMAL: in WAL mode NORMAL keeps the database consistent after a
crash or power loss; only the last committed transaction(s) may roll back, which a resume then
simply re-ingests.

Transactions are controlled by hand: the sqlite3 connection is opened with
``isolation_level=None`` (the driver never opens or commits a transaction on its own), every
write runs between an explicit BEGIN IMMEDIATE and COMMIT (ROLLBACK on any exception), and the
writes inside it are plain ``conn.execute`` statements, so no library call can commit midway.
sqlite-utils (``Database(conn)``) runs the read queries. schema.py owns the tables and the migration of older files.

Arrays are stored as raw little-endian bytes with their dtype name and shape; float32 and
float16 round-trip bit-exactly and come back in the dtype they were stored in.

The class is assembled from one mixin per concern (they share the connection and the transaction helpers below);
the package docstring (runtime/memory/__init__.py) lists which module holds what.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from rlivs.runtime.errors import UserError

from . import schema
from .records import normalize_fingerprint, storage_problem
from .search import ColumnCache

from .commits import Commits
from .housekeeping import Housekeeping
from .index import Index
from .opening import Opening
from .streams import Streams
from .timeline import Timeline


class Memory(Opening, Streams, Commits, Timeline, Index, Housekeeping):
    """The memory.db of one device: streams, their captioned clips and their FIFO state.

    ``synchronous=NORMAL`` in WAL mode keeps the database consistent after power loss; the last
    committed transaction may roll back (that clip is then simply ingested again on resume).
    """

    SCHEMA_VERSION = schema.VERSION
    # Test seam (a class attribute: the migration runs inside the constructor): called between migration steps.
    _migration_pause: Callable[[str], None] | None = None

    def __init__(self, path: str | os.PathLike, model_fingerprint: dict | None = None, readonly: bool = False):
        self.path = Path(os.fspath(path))  # the database file
        self.readonly = bool(readonly)  # opened with mode=ro: every write is refused
        # Test seams: called inside commit_clip's transaction after the clip row is inserted and
        # before the FIFO rows change, and between the steps of a migration (simulate crashes mid-transaction).
        self._after_clip_insert: Callable[[], None] | None = None
        self._last_insert = 0  # the id of the clip row inserted last (packs.pack_tail's bound)
        self._cache = ColumnCache()  # filter columns + signatures for search, caught up per question
        self._center: tuple[str, np.ndarray | None] | None = None  # (generation, signature center)
        self._conn: sqlite3.Connection | None = None
        given = normalize_fingerprint(model_fingerprint)
        self._check_file()
        try:
            if self.readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
            else:
                conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        except sqlite3.Error as e:
            raise UserError(f"cannot open {self.path} ({e}): check the path and its permissions") from e
        self._conn = conn
        try:
            self._db = Database(conn)
            self._setup(given)
        except sqlite3.Error as e:
            self._conn = None
            conn.close()
            problem = storage_problem(e)
            if problem is None:
                raise
            raise UserError(f"cannot open {self.path}: {problem[0]} ({e}); {problem[1]}") from e
        except BaseException:
            self._conn = None
            conn.close()
            raise

    # ------------------------------------------------------------------ transactions

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UserError(f"memory {self.path} is closed: open a new Memory({str(self.path)!r})")
        return self._conn

    def _refuse_readonly(self, what: str) -> None:
        if self.readonly:
            raise UserError(
                f"cannot {what}: {self.path} is opened read-only (readonly=True, e.g. by `rlivs ask`); "
                f"open it without readonly to write"
            )

    def _write(self, body: Callable[[], object], what: str = "write", then: str = "") -> object:
        """Run `body` in exactly one BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception, re-raised.

        An SQLite error caused by the storage or another process (disk full, read-only, I/O error, damaged file,
        write lock) becomes a ValueError saying what went wrong, that nothing of this transaction was written and
        what committed before is intact, and what to do (`what` names the write, `then` is appended to the advice).
        """
        conn = self._live()
        self._refuse_readonly(what)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            problem = storage_problem(e) or ("the write transaction could not start", "check the --db path")
            raise UserError(f"cannot {what} in {self.path}: {problem[0]} ({e}); nothing was written: "
                            f"{problem[1]}{then}") from e
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk, an I/O error)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # keep the original error; the file is consistent (journal) either way
                    pass
            problem = storage_problem(e)
            if problem is None:
                raise
            raise UserError(f"cannot {what} in {self.path}: {problem[0]} ({e}); nothing of it was written and "
                            f"everything committed before is intact: {problem[1]}{then}") from e
        return result

    def _read(self, body: Callable[[], object]) -> object:
        """Run `body` in one read transaction (a consistent snapshot, even while ingest writes)."""
        conn = self._live()
        conn.execute("BEGIN")
        try:
            return body()
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    def info(self) -> dict:
        """What the memory holds: schema, model, per stream (source, model, clips, stream-time and wall-clock span,
        next clip) and the bytes the file and its WAL take."""
        sql = """SELECT s.name, s.source, s.model_id, s.next_idx, COUNT(c.id) AS n_clips, MIN(c.t_start) AS t_start,
                        MAX(c.t_end) AS t_end, MIN(c.wall_start) AS wall_start, MAX(c.wall_end) AS wall_end,
                        SUM(c.wall_start IS NULL) AS no_clock,
                        (SELECT COALESCE(SUM(i.last_idx - i.first_idx + 1), 0) FROM idle i WHERE i.stream = s.name)
                            AS n_idle
                 FROM streams s LEFT JOIN clips c ON c.stream = s.name GROUP BY s.name ORDER BY s.created_at, s.name"""
        streams = [dict(r) for r in self._read(lambda: list(self._db.query(sql)))]
        files = [self.path, Path(f"{self.path}-wal")]
        return dict(path=str(self.path), schema_version=self.SCHEMA_VERSION, model=self.model_fingerprint(),
                    streams=streams, clips=sum(s["n_clips"] for s in streams),
                    bytes=sum(p.stat().st_size for p in files if p.exists()))

    def model_fingerprint(self) -> dict | None:
        """The fingerprint of the model that wrote this database, or None if none was stored."""
        row = self._live().execute("SELECT value FROM meta WHERE key = 'model_fingerprint'").fetchone()
        return None if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the connection (idempotent). A transaction is never left open between calls."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.readonly else "rw"
        return f"Memory({str(self.path)!r}, {mode}{', closed' if self._conn is None else ''})"
