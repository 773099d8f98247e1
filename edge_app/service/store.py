"""The service's own SQLite file next to the memory: standing queries (watches), their matches, clip thumbnails.

`memory.db` -> `memory.edge.db`. Kept apart from the memory so that its schema (owned by `runtime.memory`) never
changes and `rlivs ingest`/`ask` keep working on the memory alone. One connection shared by the service's threads
behind a lock (writes are a few rows per clip; WAL lets other processes read meanwhile).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from rlivs.runtime.errors import UserError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query TEXT NOT NULL,            -- the standing query, e.g. 'a person at the door'
    threshold REAL NOT NULL,        -- a caption matches when its relevance to the query is >= this
    stream TEXT,                    -- only captions of this stream (NULL = every stream)
    webhook TEXT,                   -- POST each match here as JSON (NULL = none)
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS matches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    watch_id INTEGER NOT NULL REFERENCES watches(id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    clip INTEGER NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    caption TEXT NOT NULL,
    score REAL NOT NULL,
    matched_at REAL NOT NULL,
    UNIQUE (watch_id, stream, clip)
);
CREATE INDEX IF NOT EXISTS matches_by_watch ON matches (watch_id, id);
CREATE TABLE IF NOT EXISTS thumbnails (
    stream TEXT NOT NULL,
    clip INTEGER NOT NULL,
    jpeg BLOB NOT NULL,             -- the clip's middle frame, small JPEG
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    PRIMARY KEY (stream, clip)
);
"""


def edge_db_path(memory_db: str | os.PathLike) -> Path:
    """memory.db -> memory.edge.db (same folder)."""
    p = Path(memory_db)
    return p.with_name(f"{p.stem}.edge{p.suffix or '.db'}")


@dataclass
class Watch:
    id: int  # assigned by the store
    query: str  # the standing query text
    threshold: float  # match when relevance >= threshold
    stream: str | None  # only this stream (None = all)
    webhook: str | None  # URL to POST matches to
    created_at: float  # unix time

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Match:
    id: int  # assigned by the store
    watch_id: int  # the watch that fired
    stream: str  # the caption's stream
    clip: int  # the caption's clip index
    t_start: float  # seconds, stream time
    t_end: float  # seconds, stream time
    caption: str  # the caption text
    score: float  # its relevance to the watch query
    matched_at: float  # unix time

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class EdgeStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path} is a directory: the service keeps its watches in a file there")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not an rlivs service database ({e}): move it away or delete it") from e
        if row is None:
            self._conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise UserError(f"{self.path} has service schema {row[0]}, newer than this rlivs reads "
                            f"({SCHEMA_VERSION}): upgrade rlivs")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- watches --------------------------------------------------------------------------------------------------

    def add_watch(self, query: str, threshold: float, stream: str | None, webhook: str | None) -> Watch:
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO watches (query, threshold, stream, webhook, created_at) VALUES (?, ?, ?, ?, ?)",
                (query, float(threshold), stream, webhook, now))
            return Watch(int(cur.lastrowid), query, float(threshold), stream, webhook, now)

    def watches(self) -> list[Watch]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, query, threshold, stream, webhook, created_at FROM watches ORDER BY id").fetchall()
        return [Watch(*r) for r in rows]

    def delete_watch(self, watch_id: int) -> bool:
        with self._lock:
            return self._conn.execute("DELETE FROM watches WHERE id = ?", (int(watch_id),)).rowcount > 0

    def add_match(self, watch_id: int, stream: str, clip: int, t_start: float, t_end: float, caption: str,
                  score: float) -> Match | None:
        """Record a match; None when this watch already matched this clip (or the watch was deleted meanwhile)."""
        now = time.time()
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO matches (watch_id, stream, clip, t_start, t_end, caption, score, matched_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (watch_id, stream, clip, t_start, t_end, caption, score, now))
            except sqlite3.IntegrityError:
                return None
        return Match(int(cur.lastrowid), watch_id, stream, clip, t_start, t_end, caption, float(score), now)

    def matches(self, watch_id: int | None = None, limit: int = 50, before_id: int | None = None) -> list[Match]:
        """Newest first."""
        where, args = [], []
        if watch_id is not None:
            where.append("watch_id = ?")
            args.append(int(watch_id))
        if before_id is not None:
            where.append("id < ?")
            args.append(int(before_id))
        sql = ("SELECT id, watch_id, stream, clip, t_start, t_end, caption, score, matched_at FROM matches"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        with self._lock:
            rows = self._conn.execute(sql, (*args, int(limit))).fetchall()
        return [Match(*r) for r in rows]

    def match_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT watch_id, COUNT(*) FROM matches GROUP BY watch_id").fetchall())

    # -- thumbnails -----------------------------------------------------------------------------------------------

    def put_thumbnail(self, stream: str, clip: int, jpeg: bytes, width: int, height: int) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO thumbnails (stream, clip, jpeg, width, height) "
                               "VALUES (?, ?, ?, ?, ?)", (stream, int(clip), jpeg, int(width), int(height)))

    def thumbnail(self, stream: str, clip: int) -> bytes | None:
        with self._lock:
            row = self._conn.execute("SELECT jpeg FROM thumbnails WHERE stream = ? AND clip = ?",
                                     (stream, int(clip))).fetchone()
        return None if row is None else bytes(row[0])

    def thumbnail_clips(self, stream: str, clips: list[int]) -> set[int]:
        """Which of these clips of `stream` have a thumbnail."""
        if not clips:
            return set()
        marks = ",".join("?" * len(clips))
        with self._lock:
            rows = self._conn.execute(f"SELECT clip FROM thumbnails WHERE stream = ? AND clip IN ({marks})",
                                      (stream, *[int(c) for c in clips])).fetchall()
        return {r[0] for r in rows}
