"""The on-device memory of a video stream, in one SQLite file (memory.db).

Per clip it keeps a caption with its stream-time span and a retrieval vector; per stream it
keeps the FIFO state (the visual tokens selected from the last N clips), so an interrupted
`rlivs ingest` resumes right after the last committed clip with the same recurrent context.
Only the FIFO's *current* tokens are stored: the rows of evicted clips are deleted in the
same transaction that adds a clip, so an hour of video costs a few MB.

Durability: one SQLite transaction per clip (BEGIN IMMEDIATE ... COMMIT). The file is opened
in WAL mode with synchronous=NORMAL: in WAL mode NORMAL keeps the database consistent after a
crash or power loss; only the last committed transaction(s) may roll back, which a resume then
simply re-ingests.

Transactions are controlled by hand: the sqlite3 connection is opened with
``isolation_level=None`` (the driver never opens or commits a transaction on its own), every
write runs between an explicit BEGIN IMMEDIATE and COMMIT (ROLLBACK on any exception), and the
writes inside it are plain ``conn.execute`` statements, so no library call can commit midway.
sqlite-utils (``Database(conn)``) creates the schema (inside that explicit transaction, where
it only uses savepoints) and runs the read queries.

Arrays are stored as raw little-endian bytes with their dtype name and shape; float32 and
float16 round-trip bit-exactly and come back in the dtype they were stored in.
"""

from __future__ import annotations

import json
import math
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlite_utils import Database
from rlivs.runtime.errors import UserError

_SQLITE_HEADER = b"SQLite format 3\x00"
_DTYPES = ("float32", "float16")  # dtypes an array may be stored in
_TABLES = ("meta", "streams", "clips", "fifo")


def _storage_problem(e: BaseException) -> tuple[str, str] | None:
    """(what is wrong, what to do) for an SQLite error caused by the storage or another process, else None.

    Classified by SQLite's own error name (sqlite3 errors carry it since Python 3.11), falling back to its text.
    Constraint errors and programming errors are not storage problems: they return None and propagate as they are.
    """
    if not isinstance(e, sqlite3.Error) or isinstance(e, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        return None
    name = getattr(e, "sqlite_errorname", None) or ""
    text = str(e).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return ("the disk is full", "free space on the device (or pass a --db on another disk)")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return ("the file or its folder is read-only",
                "make both writable (SQLite creates NAME-wal and NAME-shm beside the file) or pass a --db on a "
                "writable disk")
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return ("the disk reported an I/O error", "check the storage device (dmesg) and its free space")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return ("the database file is damaged",
                "keep a copy of it, then recover what it holds with `sqlite3 FILE .recover` or use a new --db")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return ("another process holds the write lock (is another `rlivs ingest` using this --db?)",
                "wait for it or use a new --db")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return ("SQLite cannot open the file or create its -wal/-shm files beside it",
                "check that the folder exists and is writable")
    return None


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality: same dtype, same shape, same bytes."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclass(eq=False)
class ClipRecord:
    """One captioned clip of a stream. Equality is bit-exact on the vector."""

    stream: str  # stream name
    index: int  # 0-based clip index within the stream
    t_start: float  # seconds, stream time
    t_end: float  # seconds, stream time
    caption: str  # the clip's caption text
    n_tokens: int  # caption length in tokens
    vector: np.ndarray  # (D,) float32 (or float16) retrieval vector
    committed_at: float = 0.0  # unix time, set by commit_clip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClipRecord):
            return NotImplemented
        scalars = ("stream", "index", "t_start", "t_end", "caption", "n_tokens", "committed_at")
        return all(getattr(self, k) == getattr(other, k) for k in scalars) and _same_array(self.vector, other.vector)


@dataclass(eq=False)
class StreamState:
    """What a (re)opened stream resumes from. Equality is bit-exact on the FIFO tokens."""

    stream: str  # stream name
    source: str  # where the video came from (path/url)
    model_id: str  # model that ingested the stream
    config_hash: str  # hash of the ingest settings
    next_index: int  # index of the next clip to ingest (last committed + 1, or 0)
    fifo: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (clip index, (n_i, D) float32), oldest first

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamState):
            return NotImplemented
        return (
            (self.stream, self.source, self.model_id, self.config_hash, self.next_index)
            == (other.stream, other.source, other.model_id, other.config_hash, other.next_index)
            and len(self.fifo) == len(other.fifo)
            and all(i == j and _same_array(a, b) for (i, a), (j, b) in zip(self.fifo, other.fifo))
        )


def _to_blob(arr: np.ndarray, what: str, ndim: int) -> tuple[bytes, str]:
    """Validate an array and return (little-endian bytes, dtype name)."""
    if not isinstance(arr, np.ndarray):
        raise UserError(
            f"{what} must be a numpy array, got {type(arr).__name__}: pass np.asarray(x, dtype=np.float32)"
        )
    if arr.ndim != ndim:
        want = "(D,)" if ndim == 1 else "(n, D)"
        raise UserError(f"{what} must be {ndim}-D {want}, got shape {arr.shape}: reshape it to {want}")
    name = arr.dtype.name
    if arr.dtype.kind != "f" or name not in _DTYPES:
        raise UserError(
            f"{what} has dtype {arr.dtype}; memory stores float32 or float16 only: convert with .astype(np.float32)"
        )
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return little.tobytes(), name


def _from_blob(blob: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of _to_blob: a fresh, writable, native-endian array."""
    little = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(blob, dtype=little).reshape(shape).astype(np.dtype(dtype))


def _normalize_fingerprint(fp: dict | None) -> dict | None:
    if fp is None:
        return None
    if not isinstance(fp, dict):
        raise UserError(f"model_fingerprint must be a dict or None, got {type(fp).__name__}")
    try:
        return json.loads(json.dumps(fp, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise UserError(
            f"model_fingerprint must be JSON-serializable ({e}): use str/int/float/list/dict values"
        ) from e


class CaptionIndex(Protocol):
    """What answering a question reads from a memory: the captioned clips and their retrieval vectors. `Memory`
    has it; so does a view of a memory that hides some clips (e.g. those after a question's time)."""

    def vectors(self, stream: str | None = None) -> tuple[list[ClipRecord], np.ndarray]:
        """The clip records of `stream` (None: every stream) and their vectors as one (N, D) float32 matrix, in the
        same order."""


class Memory:
    """The memory.db of one device: streams, their captioned clips and their FIFO state.

    ``synchronous=NORMAL`` in WAL mode keeps the database consistent after power loss; the last
    committed transaction may roll back (that clip is then simply ingested again on resume).
    """

    SCHEMA_VERSION = 1

    def __init__(self, path: str | os.PathLike, model_fingerprint: dict | None = None, readonly: bool = False):
        self.path = Path(os.fspath(path))  # the database file
        self.readonly = bool(readonly)  # opened with mode=ro: every write is refused
        # Test seam: called inside commit_clip's transaction after the clip row is inserted and
        # before the FIFO rows change (simulates a crash mid-transaction).
        self._after_clip_insert: Callable[[], None] | None = None
        self._conn: sqlite3.Connection | None = None
        given = _normalize_fingerprint(model_fingerprint)
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
            problem = _storage_problem(e)
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
                head = f.read(len(_SQLITE_HEADER))
            if head and head != _SQLITE_HEADER:
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
        if not tables:
            if self.readonly:
                raise self._not_rlivs("it is empty (nothing was ingested into it)")
            fresh = True
        else:
            fresh = False
            self._check_schema(tables)
            stored = self.model_fingerprint()
            if stored is not None and given is not None and stored != given:
                raise UserError(
                    f"{self.path} was written by a model with {stored}; this model has {given}: "
                    f"use a new --db or the same model"
                )
        if self.readonly:
            conn.execute("PRAGMA query_only=ON")
            return
        # Only now (the file is ours and compatible) change anything.
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if fresh or (given is not None and self.model_fingerprint() is None):
            self._write(lambda: self._init_schema(given))

    def _check_schema(self, tables: set[str]) -> None:
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
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise self._not_rlivs(f"the rlivs tables {missing} are missing")

    def _init_schema(self, given: dict | None) -> None:
        """Create the tables (idempotent) and the meta rows. Runs inside _write's transaction."""
        db, conn = self._db, self._conn
        db["meta"].create({"key": str, "value": str}, pk="key", not_null=["value"], if_not_exists=True)
        db["streams"].create(
            {"name": str, "source": str, "model_id": str, "config_hash": str, "created_at": float},
            pk="name",
            not_null=["source", "model_id", "config_hash", "created_at"],
            if_not_exists=True,
        )
        db["clips"].create(
            {
                "stream": str,
                "idx": int,
                "t_start": float,
                "t_end": float,
                "caption": str,
                "n_tokens": int,
                "vector": bytes,
                "dim": int,
                "dtype": str,
                "committed_at": float,
            },
            pk=("stream", "idx"),
            foreign_keys=[("stream", "streams", "name")],
            not_null=[
                "stream", "idx", "t_start", "t_end", "caption", "n_tokens", "vector", "dim", "dtype", "committed_at"
            ],
            if_not_exists=True,
        )
        db["fifo"].create(
            {"stream": str, "clip_idx": int, "n": int, "dim": int, "dtype": str, "tokens": bytes},
            pk=("stream", "clip_idx"),
            foreign_keys=[("stream", "streams", "name")],
            not_null=["stream", "clip_idx", "n", "dim", "dtype", "tokens"],
            if_not_exists=True,
        )
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (json.dumps(self.SCHEMA_VERSION),)
        )
        if given is not None:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('model_fingerprint', ?)", (json.dumps(given),)
            )

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
            problem = _storage_problem(e) or ("the write transaction could not start", "check the --db path")
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
            problem = _storage_problem(e)
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
        row = self._conn.execute("SELECT MAX(idx) FROM clips WHERE stream = ?", (stream,)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def _fifo(self, stream: str) -> list[tuple[int, np.ndarray]]:
        rows = self._db.query(
            "SELECT clip_idx, n, dim, dtype, tokens FROM fifo WHERE stream = ? ORDER BY clip_idx", [stream]
        )
        return [(r["clip_idx"], _from_blob(r["tokens"], r["dtype"], (r["n"], r["dim"]))) for r in rows]

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
        """Every stream: name, source, model_id, config_hash, n_clips, t_end (of the last clip), created_at."""
        self._live()
        sql = """
            SELECT s.name, s.source, s.model_id, s.config_hash,
                   (SELECT COUNT(*) FROM clips c WHERE c.stream = s.name) AS n_clips,
                   (SELECT c.t_end FROM clips c WHERE c.stream = s.name ORDER BY c.idx DESC LIMIT 1) AS t_end,
                   s.created_at
            FROM streams s ORDER BY s.created_at, s.name
        """
        return list(self._db.query(sql))

    # ------------------------------------------------------------------ clips

    def commit_clip(self, record: ClipRecord, fifo_tokens: np.ndarray | None, evict: Sequence[int] = ()) -> None:
        """Store one clip in exactly one transaction: its row, its FIFO tokens, and the eviction of
        the FIFO rows of the clip indices in `evict`. Nothing is written if anything is refused or fails.

        record.index must be the stream's next index (no duplicates, no gaps). Every index in `evict`
        must be in the FIFO (the clip being committed included). On success record.committed_at is set.
        """
        self._live()
        self._refuse_readonly(f"commit clip {getattr(record, 'index', '?')}")
        if not isinstance(record, ClipRecord):
            raise UserError(f"commit_clip takes a ClipRecord, got {type(record).__name__}")
        try:
            index = operator.index(record.index)
            n_tokens = operator.index(record.n_tokens)
            evict_ids = sorted({operator.index(i) for i in evict})
        except TypeError as e:
            raise UserError(f"clip index, n_tokens and evict must be integers ({e})") from e
        t_start, t_end = float(record.t_start), float(record.t_end)
        if not (math.isfinite(t_start) and math.isfinite(t_end) and t_start <= t_end):
            raise UserError(f"clip {index} has times [{t_start}, {t_end}]: they must be finite with t_start <= t_end")
        if n_tokens < 0:
            raise UserError(f"clip {index} has n_tokens {n_tokens}: it must be >= 0")
        if not isinstance(record.caption, str):
            raise UserError(f"clip {index} caption must be a string, got {type(record.caption).__name__}")
        vec_blob, vec_dtype = _to_blob(record.vector, f"clip {index} vector", 1)
        dim = int(record.vector.shape[0])
        fifo_row = None
        if fifo_tokens is not None:
            tok_blob, tok_dtype = _to_blob(fifo_tokens, f"fifo_tokens of clip {index}", 2)
            fifo_row = (int(fifo_tokens.shape[0]), int(fifo_tokens.shape[1]), tok_dtype, tok_blob)
        stream = record.stream
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
            row = conn.execute("SELECT dim FROM clips LIMIT 1").fetchone()
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
            conn.execute(
                "INSERT INTO clips (stream, idx, t_start, t_end, caption, n_tokens, vector, dim, dtype, committed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (stream, index, t_start, t_end, record.caption, n_tokens, vec_blob, dim, vec_dtype, now),
            )
            if self._after_clip_insert is not None:
                self._after_clip_insert()
            if fifo_row is not None:
                conn.execute(
                    "INSERT INTO fifo (stream, clip_idx, n, dim, dtype, tokens) VALUES (?, ?, ?, ?, ?, ?)",
                    (stream, index, *fifo_row),
                )
            conn.executemany("DELETE FROM fifo WHERE stream = ? AND clip_idx = ?", [(stream, i) for i in evict_ids])

        self._write(body, what=f"store clip {index} of stream {stream!r}",
                    then=f", then run the same command again: the stream resumes at clip {index}")
        record.committed_at = now

    def _record(self, r: dict) -> ClipRecord:
        return ClipRecord(
            stream=r["stream"],
            index=r["idx"],
            t_start=r["t_start"],
            t_end=r["t_end"],
            caption=r["caption"],
            n_tokens=r["n_tokens"],
            vector=_from_blob(r["vector"], r["dtype"], (r["dim"],)),
            committed_at=r["committed_at"],
        )

    def clips(
        self,
        stream: str | None = None,
        t_from: float | None = None,
        t_to: float | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ClipRecord]:
        """Clips ordered by stream then index, optionally of one stream and overlapping [t_from, t_to].

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
        if limit is not None and limit < 0:
            raise UserError(f"limit must be >= 0 or None, got {limit}")
        if offset < 0:
            raise UserError(f"offset must be >= 0, got {offset}")
        rows = self._db["clips"].rows_where(
            where=" AND ".join(where) or None,
            where_args=args,
            order_by="stream, idx",
            limit=-1 if limit is None else int(limit),
            offset=int(offset),
        )
        return [self._record(r) for r in rows]

    def vectors(self, stream: str | None = None) -> tuple[list[ClipRecord], np.ndarray]:
        """Records (as clips(stream)) and their vectors as one (N, D) float32 matrix, same order."""
        records = self.clips(stream)
        if records:
            return records, np.stack([r.vector for r in records]).astype(np.float32, copy=False)
        row = self._conn.execute("SELECT dim FROM clips LIMIT 1").fetchone()
        return records, np.zeros((0, row[0] if row else 0), dtype=np.float32)

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
