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
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from sqlite_utils import Database

from rlivs.runtime.errors import UserError
from rlivs.runtime.validate import check_caption, check_stream_name

from . import schema
from rlivs.runtime.activity import SceneRef

from .records import (SQLITE_HEADER, ClipRecord, IdleSpan, StreamState, from_blob, normalize_fingerprint,
                      storage_problem, to_blob)
from .search import (RECORD_SQL, SIG_MIN, SIG_TAIL, ColumnCache, Shortlist, fetch, filter_sql, keyword_matches,
                     record_from_row, search, signature)

log = logging.getLogger("rlivs.memory")
_V1_TABLES = ("meta", "streams", "clips", "fifo")


def _check_wall(record: ClipRecord, index: int) -> tuple[float | None, float | None]:
    """The record's wall-clock span as floats (both or neither), or UserError."""
    w0, w1 = record.wall_start, record.wall_end
    if w0 is None and w1 is None:
        return None, None
    if w0 is None or w1 is None:
        raise UserError(f"clip {index} has wall-clock start {w0} and end {w1}: give both or neither")
    try:
        w0, w1 = float(w0), float(w1)
    except (TypeError, ValueError) as e:
        raise UserError(f"clip {index} wall-clock times must be numbers ({e})") from e
    if not (math.isfinite(w0) and math.isfinite(w1) and w0 <= w1):
        raise UserError(f"clip {index} has wall-clock times [{w0}, {w1}]: they must be finite with start <= end")
    return w0, w1


def _check_record(record: ClipRecord) -> tuple[int, float, float, int, tuple[float | None, float | None]]:
    """(index, t_start, t_end, n_tokens, wall span) of a clip record, or UserError: what commit_clip (ingest) and
    import_clips check alike (integers that are not booleans, finite times with start <= end, wall both or neither)."""
    try:
        if isinstance(record.index, bool) or isinstance(record.n_tokens, bool):
            raise TypeError("a boolean is not a clip index or a token count")
        index = operator.index(record.index)
        n_tokens = operator.index(record.n_tokens)
    except TypeError as e:
        raise UserError(f"clip index, n_tokens and evict must be integers ({e})") from e
    try:
        t_start, t_end = float(record.t_start), float(record.t_end)
    except (TypeError, ValueError) as e:
        raise UserError(f"clip {index} times must be numbers ({e})") from e
    if not (math.isfinite(t_start) and math.isfinite(t_end) and t_start <= t_end):
        raise UserError(f"clip {index} has times [{t_start}, {t_end}]: they must be finite with t_start <= t_end")
    if index < 0:
        raise UserError(f"clip index {index} is negative: clip indices start at 0")
    if n_tokens < 0:
        raise UserError(f"clip {index} has n_tokens {n_tokens}: it must be >= 0")
    if not isinstance(record.caption, str):
        raise UserError(f"clip {index} caption must be a string, got {type(record.caption).__name__}")
    return index, t_start, t_end, n_tokens, _check_wall(record, index)


IDLE_SQL = "SELECT stream, first_idx, last_idx, t_start, t_end, wall_start, wall_end, scene_idx, score FROM idle"


def _idle_from_row(row: tuple) -> IdleSpan:
    return IdleSpan(*row)


def _scene_row(scene: SceneRef, index: int) -> tuple:
    """(idx, t_end, rows, cols, cells bytes) of a gate reference, or UserError."""
    cells = np.asarray(scene.cells)
    if cells.ndim != 3 or cells.dtype != np.uint8:
        raise UserError(f"clip {index}: the gate reference must be a (rows, cols, channels) uint8 array, got "
                        f"{cells.dtype} {cells.shape}")
    return int(scene.index), float(scene.t_end), int(cells.shape[0]), int(cells.shape[1]), cells.tobytes()


def _kept_blob(kept: np.ndarray | None, index: int) -> bytes | None:
    """(N,) kept token indices as little-endian int16 bytes (None stays None), or UserError."""
    if kept is None:
        return None
    kept = np.asarray(kept)
    if kept.ndim != 1 or kept.dtype.kind not in "iu" or (kept.size and (kept.min() < 0 or kept.max() > 32767)):
        raise UserError(f"clip {index} kept indices must be a 1-D integer array in [0, 32767]")
    return kept.astype("<i2").tobytes()


class Memory:
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

    # ------------------------------------------------------------------ opening

    def _not_rlivs(self, why: str) -> UserError:
        return UserError(
            f"{self.path} is not an rlivs memory database: {why}; pass a memory.db written by rlivs or a new path"
        )

    def _check_file(self) -> None:
        """Refuse paths SQLite would reject, before opening (so nothing is ever written to them)."""
        p = self.path
        if p.is_dir():
            raise UserError(f"{p} is a directory: pass a file path such as {p / 'memory.db'}")
        if p.exists():
            with open(p, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
            if head and head != SQLITE_HEADER:
                raise self._not_rlivs(f"the file does not start with the SQLite header (starts with {head[:16]!r})")
        elif self.readonly:
            raise UserError(f"no memory database at {p}: run `rlivs ingest` first or check the --db path")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)

    def _setup(self, given: dict | None) -> None:
        db, conn = self._db, self._conn
        try:
            tables = set(db.table_names())
        except sqlite3.DatabaseError as e:
            raise self._not_rlivs(str(e)) from e
        version = None
        if not tables:
            if self.readonly:
                raise self._not_rlivs("it is empty (nothing was ingested into it)")
            fresh = True
        else:
            fresh = False
            version = self._check_schema(tables)
            stored = self.model_fingerprint()
            if stored is not None and given is not None and stored != given:
                raise UserError(
                    f"{self.path} was written by a model with {stored}; this model has {given}: "
                    f"use a new --db or the same model"
                )
        if self.readonly:
            if version is not None and version < self.SCHEMA_VERSION:
                self._migrate_with_writer()
            conn.execute("PRAGMA query_only=ON")
            return
        # Only now (the file is ours and compatible) change anything.
        if fresh:  # must precede the first table; space freed by forget then goes back with incremental_vacuum
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if version is not None and version < self.SCHEMA_VERSION:
            self._migrate()
        if fresh or (given is not None and self.model_fingerprint() is None):
            self._write(lambda: self._init_schema(given))

    def _check_schema(self, tables: set[str]) -> int:
        if "meta" not in tables:
            raise self._not_rlivs(f"it holds the tables {sorted(tables)} but no rlivs `meta` table")
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError, TypeError) as e:
            raise self._not_rlivs(f"its `meta` table is unreadable ({e})") from e
        if not isinstance(version, int):
            raise self._not_rlivs("its `meta` table has no schema_version")
        if version > self.SCHEMA_VERSION:
            raise UserError(
                f"{self.path} has memory schema version {version}, newer than this rlivs reads "
                f"({self.SCHEMA_VERSION}): upgrade rlivs or use a new --db"
            )
        needed = {1: _V1_TABLES, 2: schema.TABLES_V2}.get(version, schema.TABLES)
        missing = [t for t in needed if t not in tables]
        if missing:
            raise self._not_rlivs(f"the rlivs tables {missing} are missing")
        return version

    def _init_schema(self, given: dict | None) -> None:
        """Create the tables (idempotent) and the meta rows. Runs inside _write's transaction."""
        schema.create(self._conn)
        if given is not None:
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('model_fingerprint', ?)", (json.dumps(given),)
            )

    def _migrate(self) -> None:
        """Migrate an older file in place: one transaction (a kill leaves the old or the new schema), then VACUUM so
        that the file uses incremental auto-vacuum (a kill during VACUUM leaves the migrated file as it was)."""
        old = json.loads(self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        log.info("migrating %s from memory schema version %d to %d", self.path, old, self.SCHEMA_VERSION)

        def body() -> None:
            if old == 1:
                schema.migrate_v1(self._conn, self._migration_pause)
                self._fill_signatures(force=False)
            else:  # version 2: the gate's tables are added, nothing else changes
                schema.migrate_v2(self._conn)

        self._write(body, what=f"migrate the memory to schema version {self.SCHEMA_VERSION}",
                    then=" (the file still holds the previous version, intact)")
        if old == 1:
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("VACUUM")
        log.info("migrated %s to memory schema version %d", self.path, self.SCHEMA_VERSION)

    def _migrate_with_writer(self) -> None:
        """A read-only open of an older file: migrate it through a short-lived writer first (refused when the file
        cannot be written, with what to do)."""
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            raise UserError(f"{self.path} has an older memory schema and must be migrated once, which needs write "
                            f"access to it and its folder: run `rlivs memory info --db {self.path}` as a user who "
                            f"can write it")
        Memory(self.path).close()

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

    # ------------------------------------------------------------------ streams

    def _stream_row(self, stream: str) -> dict | None:
        rows = list(self._db.query("SELECT * FROM streams WHERE name = ?", [stream]))
        return rows[0] if rows else None

    def _next_index(self, stream: str) -> int:
        row = self._conn.execute("SELECT next_idx FROM streams WHERE name = ?", (stream,)).fetchone()
        return 0 if row is None else row[0]

    def _fifo(self, stream: str) -> list[tuple[int, np.ndarray]]:
        rows = self._db.query(
            "SELECT clip_idx, n, dim, dtype, tokens FROM fifo WHERE stream = ? ORDER BY clip_idx", [stream]
        )
        return [(r["clip_idx"], from_blob(r["tokens"], r["dtype"], (r["n"], r["dim"]))) for r in rows]

    def _state(self, row: dict) -> StreamState:
        name = row["name"]
        return StreamState(
            stream=name,
            source=row["source"],
            model_id=row["model_id"],
            config_hash=row["config_hash"],
            next_index=self._next_index(name),
            fifo=self._fifo(name),
        )

    def open_stream(self, stream: str, source: str, model_id: str, config_hash: str) -> StreamState:
        """Register a new stream (next_index 0, empty FIFO) or return an existing one's resume state."""
        if not isinstance(stream, str) or not stream:
            raise UserError(f"stream name must be a non-empty string, got {stream!r}: pass e.g. --stream cam0")
        for name, value in (("source", source), ("model_id", model_id), ("config_hash", config_hash)):
            if not isinstance(value, str):
                raise UserError(f"{name} must be a string, got {type(value).__name__}")

        def body() -> StreamState:
            row = self._stream_row(stream)
            if row is None:
                self._refuse_readonly(f"create stream {stream!r}")
                check_stream_name(stream)  # a new name: the rules of every name that enters (existing ones resume)
                now = time.time()
                row = dict(name=stream, source=source, model_id=model_id, config_hash=config_hash, created_at=now)
                self._conn.execute(
                    "INSERT INTO streams (name, source, model_id, config_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                    tuple(row.values()),
                )
            elif row["config_hash"] != config_hash:
                raise UserError(
                    f"stream {stream!r} in {self.path} was ingested with other settings "
                    f"(config hash {row['config_hash']}, now {config_hash}): use the same settings to resume it "
                    f"or a new stream name"
                )
            return self._state(row)

        self._live()
        return self._read(body) if self.readonly else self._write(body)

    def streams(self) -> list[dict]:
        """Every stream: name, source, model_id, config_hash, n_clips (captioned), n_idle (left uncaptioned by the
        activity gate), t_end (of the last clip watched, captioned or idle), created_at, next_idx."""
        self._live()
        sql = """
            SELECT s.name, s.source, s.model_id, s.config_hash,
                   (SELECT COUNT(*) FROM clips c WHERE c.stream = s.name) AS n_clips,
                   (SELECT COALESCE(SUM(i.last_idx - i.first_idx + 1), 0) FROM idle i WHERE i.stream = s.name)
                       AS n_idle,
                   (SELECT MAX(e) FROM (
                       SELECT (SELECT c.t_end FROM clips c WHERE c.stream = s.name ORDER BY c.idx DESC LIMIT 1) AS e
                       UNION ALL
                       SELECT (SELECT i.t_end FROM idle i WHERE i.stream = s.name ORDER BY i.last_idx DESC LIMIT 1)))
                       AS t_end,
                   s.created_at, s.next_idx
            FROM streams s ORDER BY s.created_at, s.name
        """
        return list(self._db.query(sql))

    def set_stream_clock(self, stream: str, clock: dict) -> None:
        """Note where a stream's clock comes from (a JSON object: for a robot recording, its time basis, topic and
        the log-time offset of its clips), kept until the stream is forgotten; written only when it changed."""
        key, value = f"clock:{stream}", json.dumps(clock, sort_keys=True)
        if self._meta(key) == value:
            return
        self._write(lambda: self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                               (key, value)), what=f"note the clock of stream {stream!r}")

    def stream_clocks(self) -> dict[str, dict]:
        """stream -> what `set_stream_clock` noted (streams without a note are absent)."""
        rows = self._live().execute("SELECT key, value FROM meta WHERE key LIKE 'clock:%'").fetchall()
        return {k.removeprefix("clock:"): json.loads(v) for k, v in rows}

    # ------------------------------------------------------------------ clips

    def commit_clip(self, record: ClipRecord, fifo_tokens: np.ndarray | None, evict: Sequence[int] = (),
                    scene: SceneRef | None = None) -> None:
        """Store one clip in exactly one transaction: its row, its FIFO tokens, the eviction of
        the FIFO rows of the clip indices in `evict`, and (with the activity gate) the stream's new gate reference
        `scene`. Nothing is written if anything is refused or fails.

        record.index must be the stream's next index (no duplicates, no gaps). Every index in `evict`
        must be in the FIFO (the clip being committed included). On success record.committed_at is set.
        """
        self._live()
        self._refuse_readonly(f"commit clip {getattr(record, 'index', '?')}")
        if not isinstance(record, ClipRecord):
            raise UserError(f"commit_clip takes a ClipRecord, got {type(record).__name__}")
        try:
            evict_ids = sorted({operator.index(i) for i in evict})
        except TypeError as e:
            raise UserError(f"clip index, n_tokens and evict must be integers ({e})") from e
        index, t_start, t_end, n_tokens, wall = _check_record(record)
        kept_blob = _kept_blob(record.kept, index)
        vec_blob, vec_dtype = to_blob(record.vector, f"clip {index} vector", 1)
        dim = int(record.vector.shape[0])
        fifo_row = None
        if fifo_tokens is not None:
            tok_blob, tok_dtype = to_blob(fifo_tokens, f"fifo_tokens of clip {index}", 2)
            fifo_row = (int(fifo_tokens.shape[0]), int(fifo_tokens.shape[1]), tok_dtype, tok_blob)
        stream = record.stream
        scene_row = None if scene is None else _scene_row(scene, index)
        now = time.time()
        conn = self._conn

        def body() -> None:
            if self._stream_row(stream) is None:
                raise UserError(f"unknown stream {stream!r} in {self.path}: call open_stream({stream!r}, ...) first")
            expected = self._next_index(stream)
            if index != expected:
                kind = "already committed" if index < expected else "a gap"
                raise UserError(
                    f"clip {index} of stream {stream!r} is {kind}: the next clip to commit is {expected} "
                    f"(resume from open_stream(...).next_index)"
                )
            row = conn.execute("SELECT dim FROM clip_arrays LIMIT 1").fetchone()
            if row is not None and row[0] != dim:
                raise UserError(
                    f"clip {index} vector has dim {dim} but the clips in {self.path} have dim {row[0]}: "
                    f"use the same retrieval vectors or a new --db"
                )
            in_fifo = {r[0]: r[1] for r in conn.execute("SELECT clip_idx, dim FROM fifo WHERE stream = ?", (stream,))}
            if fifo_row is not None:
                dims = set(in_fifo.values())
                if dims and dims != {fifo_row[1]}:
                    raise UserError(
                        f"fifo_tokens of clip {index} have dim {fifo_row[1]} but the FIFO of stream {stream!r} "
                        f"holds dim {sorted(dims)[0]}: pass tokens from the same model"
                    )
                in_fifo[index] = fifo_row[1]
            unknown = [i for i in evict_ids if i not in in_fifo]
            if unknown:
                raise UserError(
                    f"cannot evict clips {unknown} of stream {stream!r}: they are not in its FIFO "
                    f"(it holds {sorted(in_fifo)}); evict only clips whose tokens were committed"
                )
            center = self._signature_center()
            sig = None if center is None else signature(record.vector, center)
            self._insert_clip(stream, index, t_start, t_end, wall, record.caption, n_tokens, sig, now,
                              (vec_blob, dim, vec_dtype, kept_blob))
            conn.execute("UPDATE streams SET next_idx = ? WHERE name = ?", (index + 1, stream))
            if center is None:
                self._fill_signatures(force=False)
            if self._after_clip_insert is not None:
                self._after_clip_insert()
            if fifo_row is not None:
                conn.execute(
                    "INSERT INTO fifo (stream, clip_idx, n, dim, dtype, tokens) VALUES (?, ?, ?, ?, ?, ?)",
                    (stream, index, *fifo_row),
                )
            conn.executemany("DELETE FROM fifo WHERE stream = ? AND clip_idx = ?", [(stream, i) for i in evict_ids])
            if scene_row is not None:
                conn.execute("INSERT OR REPLACE INTO scenes (stream, idx, t_end, rows, cols, cells) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (stream, *scene_row))

        self._write(body, what=f"store clip {index} of stream {stream!r}",
                    then=f", then run the same command again: the stream resumes at clip {index}")
        record.committed_at = now

    def commit_idle(self, stream: str, index: int, t_start: float, t_end: float,
                    wall: tuple[float | None, float | None] = (None, None), scene_idx: int | None = None,
                    score: float = 0.0) -> IdleSpan:
        """Record that clip `index` of `stream` was watched but not captioned (the activity gate found nothing new
        since clip `scene_idx`), in exactly one transaction: the stream's run of idle clips against that scene
        grows by it (or a run starts) and the stream's next index moves past it. The FIFO is not touched.
        Returns the run as stored."""
        self._live()
        self._refuse_readonly(f"record idle clip {index}")
        probe = ClipRecord(stream, index, t_start, t_end, "", 0, np.zeros(1, np.float32), wall_start=wall[0],
                           wall_end=wall[1])
        index, t_start, t_end, _, wall = _check_record(probe)
        if scene_idx is not None:
            scene_idx = operator.index(scene_idx)
        score = float(score)
        conn = self._conn

        def body() -> IdleSpan:
            if self._stream_row(stream) is None:
                raise UserError(f"unknown stream {stream!r} in {self.path}: call open_stream({stream!r}, ...) first")
            expected = self._next_index(stream)
            if index != expected:
                kind = "already committed" if index < expected else "a gap"
                raise UserError(f"idle clip {index} of stream {stream!r} is {kind}: the next clip to commit is "
                                f"{expected} (resume from open_stream(...).next_index)")
            run = conn.execute("SELECT id, last_idx, scene_idx FROM idle WHERE stream = ? ORDER BY last_idx DESC "
                               "LIMIT 1", (stream,)).fetchone()
            if run is not None and run[1] == index - 1 and run[2] == scene_idx:
                conn.execute("UPDATE idle SET last_idx = ?, t_end = ?, wall_end = COALESCE(?, wall_end), "
                             "score = MAX(score, ?) WHERE id = ?", (index, t_end, wall[1], score, run[0]))
                rid = run[0]
            else:
                rid = conn.execute(
                    "INSERT INTO idle (stream, first_idx, last_idx, t_start, t_end, wall_start, wall_end, scene_idx, "
                    "score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (stream, index, index, t_start, t_end, *wall, scene_idx, score)).lastrowid
            conn.execute("UPDATE streams SET next_idx = ? WHERE name = ?", (index + 1, stream))
            return _idle_from_row(conn.execute(IDLE_SQL + " WHERE id = ?", (rid,)).fetchone())

        return self._write(body, what=f"record idle clip {index} of stream {stream!r}",
                           then=f", then run the same command again: the stream resumes at clip {index}")

    def idle_spans(self, stream: str | None = None, *, streams: list[str] | None = None,
                   wall_from: float | None = None, wall_to: float | None = None, scene_idx: int | None = None,
                   after_t: float | None = None) -> list[IdleSpan]:
        """Runs of idle clips (`commit_idle`), by stream then index: of `stream` (or of `streams`), overlapping
        the wall-clock window [wall_from, wall_to) (a run without a clock is outside any window), against the
        captioned clip `scene_idx`, or ending after stream time `after_t`."""
        where, args = [], []
        names = [stream] if stream is not None else streams
        if names is not None and not names:
            return []
        if names is not None:
            where.append(f"stream IN ({', '.join('?' * len(names))})")
            args += list(names)
        if wall_to is not None:
            where.append("wall_start < ?")
            args.append(float(wall_to))
        if wall_from is not None:
            where.append("(wall_end > ? OR wall_start >= ?)")
            args += [float(wall_from), float(wall_from)]
        if scene_idx is not None:
            where.append("scene_idx = ?")
            args.append(int(scene_idx))
        if after_t is not None:
            where.append("t_end > ?")
            args.append(float(after_t))
        sql = IDLE_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY stream, first_idx"
        return [_idle_from_row(r) for r in self._live().execute(sql, args).fetchall()]

    def scene(self, stream: str) -> SceneRef | None:
        """The activity gate's reference of `stream` (stored with its last captioned clip while gated), or None; None
        too when a later clip was captioned without the gate (the reference is stale: the gate starts afresh)."""
        row = self._live().execute(
            "SELECT idx, t_end, rows, cols, cells FROM scenes s WHERE stream = ? "
            "AND idx >= COALESCE((SELECT MAX(c.idx) FROM clips c WHERE c.stream = s.stream), -1)",
            (stream,)).fetchone()
        if row is None:
            return None
        cells = np.frombuffer(row[4], dtype=np.uint8).reshape(row[2], row[3], -1).copy()  # (rows, cols, channels)
        return SceneRef(int(row[0]), float(row[1]), cells)

    def _insert_clip(self, stream: str, index: int, t_start: float, t_end: float, wall: tuple, caption: str,
                     n_tokens: int, sig: bytes | None, committed_at: float, arrays: tuple) -> None:
        """The clip's row and its arrays' row (vector, dim, dtype, kept), inside the caller's transaction."""
        cur = self._conn.execute(
            "INSERT INTO clips (stream, idx, t_start, t_end, wall_start, wall_end, caption, n_tokens, sig, "
            "committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, index, t_start, t_end, *wall, caption, n_tokens, sig, committed_at))
        self._conn.execute("INSERT INTO clip_arrays (id, vector, dim, dtype, kept) VALUES (?, ?, ?, ?, ?)",
                           (cur.lastrowid, *arrays))

    def clips(
        self,
        stream: str | None = None,
        t_from: float | None = None,
        t_to: float | None = None,
        limit: int | None = None,
        offset: int = 0,
        *,
        wall_from: float | None = None,
        wall_to: float | None = None,
        by_time: bool = False,
    ) -> list[ClipRecord]:
        """Clips ordered by stream then index (or by wall-clock start with `by_time`), optionally of one stream and
        overlapping [t_from, t_to] in stream time and [wall_from, wall_to) in wall-clock time (UTC unix seconds,
        half-open like every time window; a clip without a clock is outside any wall-clock window).

        A clip covers [t_start, t_end) in stream time: it overlaps the window when it starts inside
        it, or the window starts inside the clip (so a clip ending exactly at t_from is excluded).
        """
        self._live()
        where, args = [], []
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        if t_from is not None and t_to is not None and t_from > t_to:
            raise UserError(f"time window [{t_from}, {t_to}] is empty: pass t_from <= t_to")
        if t_to is not None:
            where.append("t_start <= ?")
            args.append(float(t_to))
        if t_from is not None:
            where.append("(t_end > ? OR t_start >= ?)")
            args += [float(t_from), float(t_from)]
        if wall_from is not None and wall_to is not None and wall_from > wall_to:
            raise UserError(f"wall-clock window [{wall_from}, {wall_to}] is empty: pass a start before the end")
        more, more_args = filter_sql("", None, wall_from, wall_to)
        where, args = where + more, args + more_args
        if limit is not None and limit < 0:
            raise UserError(f"limit must be >= 0 or None, got {limit}")
        if offset < 0:
            raise UserError(f"offset must be >= 0, got {offset}")
        # the columns of `where` are the clips table's alone (clip_arrays shares none but id): no prefix needed
        sql = (RECORD_SQL + (" WHERE " + " AND ".join(where) if where else "")
               + (" ORDER BY c.wall_start, c.stream, c.idx" if by_time else " ORDER BY c.stream, c.idx")
               + " LIMIT ? OFFSET ?")
        rows = self._live().execute(sql, (*args, -1 if limit is None else int(limit), int(offset))).fetchall()
        return [record_from_row(r) for r in rows]

    # ------------------------------------------------------------------ search

    def _meta(self, key: str) -> str | None:
        row = self._live().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _generation(self) -> str:
        return self._meta("generation") or "0"

    def _bump_generation(self) -> None:
        """Tell every process's ColumnCache to reload (rows were deleted or signatures recomputed)."""
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?)",
                           (str(int(self._generation()) + 1),))

    def _signature_center(self) -> np.ndarray | None:
        """The (D,) float32 center the signatures are taken around, or None before the memory held SIG_MIN clips."""
        gen = self._generation()
        if self._center is None or self._center[0] != gen:
            raw = self._meta("sig_center")
            center = None if raw is None else np.frombuffer(bytes.fromhex(raw), dtype="<f4").astype(np.float32)
            self._center = (gen, center)
        return self._center[1]

    def _fill_signatures(self, force: bool) -> None:
        """Inside a write transaction: once the memory holds SIG_MIN clips (or when `force`), fix the center as the
        mean of all vectors and sign every clip around it; bumps the generation."""
        conn = self._conn
        n = conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
        if n == 0 or (not force and n < SIG_MIN):
            return
        total, rows = None, 0
        for (blob, dtype, dim) in conn.execute("SELECT vector, dtype, dim FROM clip_arrays"):
            v = from_blob(blob, dtype, (dim,)).astype(np.float64)
            total = v if total is None else total + v
            rows += 1
        center = (total / rows).astype(np.float32)
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('sig_center', ?)",
                     (center.astype("<f4").tobytes().hex(),))
        batch = []
        for (cid, blob, dtype, dim) in conn.execute("SELECT id, vector, dtype, dim FROM clip_arrays"):
            batch.append((signature(from_blob(blob, dtype, (dim,)), center), cid))
            if len(batch) == 10000:
                conn.executemany("UPDATE clips SET sig = ? WHERE id = ?", batch)
                batch = []
        conn.executemany("UPDATE clips SET sig = ? WHERE id = ?", batch)
        self._bump_generation()
        self._center = None

    def search(self, query_vector: np.ndarray, query_text: str | None = None, *, streams: list[str] | None = None,
               wall_from: float | None = None, wall_to: float | None = None, mode: str = "hybrid",
               shortlist: int = 64, stream_until: float | None = None) -> Shortlist:
        """The best `shortlist` clips for a question inside the filters (search.py), without reading the rest:
        `streams`, a wall-clock window (UTC unix seconds), and `stream_until` (only clips whose stream-time end is
        at or before it: what a question asked at that stream time could have seen)."""
        if wall_from is not None and wall_to is not None and wall_from > wall_to:
            raise UserError(f"wall-clock window [{wall_from}, {wall_to}] is empty: pass a start before the end")

        def body() -> Shortlist:
            center = self._signature_center()
            sig_bytes = None if center is None else (len(center) + 7) // 8 + SIG_TAIL
            self._cache.refresh(self._conn, self._generation(), sig_bytes)
            return search(self._conn, self._cache, center, query_vector, query_text, streams, wall_from, wall_to,
                          mode, shortlist, stream_until)

        return self._read(body)

    def keyword_matches(self, text: str, *, streams: list[str] | None = None, wall_from: float | None = None,
                        wall_to: float | None = None, stream_until: float | None = None
                        ) -> tuple[int, ClipRecord | None, ClipRecord | None]:
        """Clips inside the filters whose caption holds every informative word of `text`: (count, earliest,
        latest). What "how many times" and "when ... last/first" questions are answered from."""

        def body():
            n, first, last = keyword_matches(self._conn, text, streams, wall_from, wall_to, stream_until)
            recs = fetch(self._conn, [i for i in (first, last) if i is not None])
            return n, recs.get(first), recs.get(last)

        return self._read(body)

    def clip(self, stream: str, index: int) -> ClipRecord | None:
        """One clip (with its kept token indices), or None."""
        row = self._live().execute(RECORD_SQL + " WHERE c.stream = ? AND c.idx = ?", (stream, int(index))).fetchone()
        return None if row is None else record_from_row(row)

    def _scalar(self, expr: str, streams: list[str] | None = None, stream_until: float | None = None,
                also: tuple[str, ...] = ()):
        """One value over the clips inside the filters (filter_sql, plus the conditions in `also`)."""
        where, args = filter_sql("", streams, None, None, stream_until)
        where = [*also, *where]
        sql = f"SELECT {expr} FROM clips" + (" WHERE " + " AND ".join(where) if where else "") + " LIMIT 1"
        row = self._live().execute(sql, args).fetchone()
        return None if row is None else row[0]

    def count_clips(self, stream: str | None = None, stream_until: float | None = None) -> int:
        """How many clips (of `stream`; with a stream-time end at or before `stream_until`)."""
        return self._scalar("COUNT(*)", None if stream is None else [stream], stream_until)

    def latest_end(self, stream: str | None = None, stream_until: float | None = None) -> float | None:
        """The latest stream-time clip end (of `stream`; at or before `stream_until`), or None without clips."""
        return self._scalar("MAX(t_end)", None if stream is None else [stream], stream_until)

    def has_clock(self, streams: list[str] | None = None) -> bool:
        """Whether any clip (of `streams`) has wall-clock times."""
        return self._scalar("1", streams, also=("wall_start IS NOT NULL",)) is not None

    # ------------------------------------------------------------------ housekeeping

    def import_clips(self, records: Iterable[ClipRecord], batch: int = 5000, source: str = "import",
                     model_id: str = "import") -> int:
        """Bulk-load clips in ONE transaction: all of them, or none when any is refused or anything fails (the memory
        is then exactly as before). Streams that do not exist are created with `source` and `model_id` (the model
        that computed the vectors). Each record is checked as commit_clip checks a clip, plus the rules for what
        comes from outside (rlivs.runtime.validate: stream names, captions); each stream's clips must continue its
        indices (a clip already stored, or given twice, is refused). After every `batch` clips the signature center
        is fixed once the memory holds SIG_MIN clips, as a run of commits would. Returns the number stored."""
        self._refuse_readonly("import clips")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UserError(f"batch must be an integer >= 1, got {batch!r}")

        def body() -> int:
            center = self._signature_center()
            now = time.time()
            stored = 0
            for r in records:
                if not isinstance(r, ClipRecord):
                    raise UserError(f"import_clips takes ClipRecords, got {type(r).__name__}")
                index, t_start, t_end, n_tokens, wall = _check_record(r)
                where = f"imported clip {index} of stream {str(r.stream)[:40]!r}"
                try:
                    check_stream_name(r.stream)
                    check_caption(r.caption)
                except UserError as e:
                    raise UserError(f"{where}: {e}") from None
                if self._stream_row(r.stream) is None:
                    self._conn.execute(
                        "INSERT INTO streams (name, source, model_id, config_hash, created_at, next_idx) "
                        "VALUES (?, ?, ?, 'import', ?, 0)", (r.stream, source, model_id, now))
                expected = self._next_index(r.stream)
                if index != expected:
                    kind = "is already stored (or given twice)" if index < expected else "leaves a gap"
                    raise UserError(f"{where} does not continue it (it {kind}; its next clip is {expected}); "
                                    f"nothing was imported: import into a new --db or a new stream name")
                vec_blob, vec_dtype = to_blob(r.vector, f"clip {index} vector", 1)
                sig = None if center is None else signature(r.vector, center)
                self._insert_clip(r.stream, index, t_start, t_end, wall, r.caption, n_tokens, sig,
                                  r.committed_at or now,
                                  (vec_blob, int(r.vector.shape[0]), vec_dtype, _kept_blob(r.kept, index)))
                self._conn.execute("UPDATE streams SET next_idx = ? WHERE name = ?", (index + 1, r.stream))
                stored += 1
                if center is None and stored % batch == 0:
                    self._fill_signatures(force=False)
                    center = self._signature_center()
            if center is None:
                self._fill_signatures(force=False)
            return stored

        return self._write(body, what="import clips")

    def forget(self, stream: str | None = None, before: float | None = None) -> int:
        """Delete clips: of `stream` (all streams when None) whose wall-clock end is before `before` (UTC unix
        seconds; clips without a clock are kept), or the whole stream (its FIFO too) when `before` is None.
        One transaction; the freed pages go back to the file system. Returns the number of clips deleted."""
        self._refuse_readonly("forget clips")
        if stream is None and before is None:
            raise UserError("forget needs a stream, a time or both: e.g. --stream cam0 or --before 2026-11-01")

        def body() -> int:
            if stream is not None and self._stream_row(stream) is None:
                names = [s["name"] for s in self.streams()]
                raise UserError(f"no stream {stream!r} in {self.path}: it holds {', '.join(names) or 'none'}")
            if before is None:
                self._conn.execute("DELETE FROM clip_arrays WHERE id IN (SELECT id FROM clips WHERE stream = ?)",
                                   (stream,))
                n = self._conn.execute("DELETE FROM clips WHERE stream = ?", (stream,)).rowcount
                self._conn.execute("DELETE FROM fifo WHERE stream = ?", (stream,))
                self._conn.execute("DELETE FROM idle WHERE stream = ?", (stream,))
                self._conn.execute("DELETE FROM scenes WHERE stream = ?", (stream,))
                self._conn.execute("DELETE FROM streams WHERE name = ?", (stream,))
                self._conn.execute("DELETE FROM meta WHERE key = ?", (f"clock:{stream}",))
            else:
                cond, args = "wall_end < ?", [float(before)]
                if stream is not None:
                    cond, args = cond + " AND stream = ?", args + [stream]
                self._conn.execute(f"DELETE FROM clip_arrays WHERE id IN (SELECT id FROM clips WHERE {cond})", args)
                n = self._conn.execute(f"DELETE FROM clips WHERE {cond}", args).rowcount
                self._conn.execute(f"DELETE FROM idle WHERE {cond}", args)
            if n:
                self._bump_generation()
            return n

        n = self._write(body, what="forget clips")
        self._return_free_pages()
        return n

    def _return_free_pages(self) -> None:
        """Give the pages freed by deletions back to the file system (incremental auto-vacuum). Python's sqlite3
        steps a statement without result columns once, and each step of incremental_vacuum frees one page, so the
        pragma runs until the free list is empty."""
        conn = self._conn
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        while free > 0:
            conn.execute(f"PRAGMA incremental_vacuum({free})")
            left = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if left >= free:  # auto_vacuum is off (a file written before it was set): nothing more to do here
                break
            free = left

    def reindex(self) -> None:
        """Rebuild the keyword index and every signature (new center) from the clips table, in one transaction."""
        self._refuse_readonly("reindex")

        def body() -> None:
            self._conn.execute("INSERT INTO clips_fts (clips_fts) VALUES ('rebuild')")
            self._conn.execute("DELETE FROM meta WHERE key = 'sig_center'")
            self._conn.execute("UPDATE clips SET sig = NULL")
            self._fill_signatures(force=False)
            self._bump_generation()

        self._write(body, what="reindex")
        self._center = None

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

    def export_jsonl(self, fp: IO[str], stream: str | None = None) -> int:
        """Write one JSON line per clip (stream, index, stream times, wall-clock times, caption, n_tokens) in stream
        then index order; vectors are not exported (`rlivs memory import` recomputes them). Returns the count."""
        n, offset, page = 0, 0, 10000
        while True:
            rows = self.clips(stream, limit=page, offset=offset)
            for r in rows:
                fp.write(json.dumps(dict(stream=r.stream, index=r.index, t_start=r.t_start, t_end=r.t_end,
                                         wall_start=r.wall_start, wall_end=r.wall_end, caption=r.caption,
                                         n_tokens=r.n_tokens), ensure_ascii=False) + "\n")
            n += len(rows)
            offset += page
            if len(rows) < page:
                return n

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
