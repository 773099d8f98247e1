"""The service's own SQLite file next to the memory: standing queries (watches), their matches, clip thumbnails,
how far each stream's clips have been matched against the watches, and the webhook deliveries still to send.

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

SCHEMA_VERSION = 2  # 2: stream_marks, watch_starts, deliveries

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
CREATE TABLE IF NOT EXISTS stream_marks (
    stream TEXT PRIMARY KEY,
    clip INTEGER NOT NULL           -- every clip of the stream up to this index was matched against every watch
);
CREATE TABLE IF NOT EXISTS watch_starts (
    watch_id INTEGER NOT NULL REFERENCES watches(id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    clip INTEGER NOT NULL,          -- the watch matches clips of the stream after this index (none: every clip)
    PRIMARY KEY (watch_id, stream)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    match_id INTEGER NOT NULL REFERENCES matches(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,          -- unix time it is due
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at, id);
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


@dataclass
class Delivery:
    id: int  # assigned by the store
    match_id: int  # the match to POST
    url: str  # where
    attempts: int  # failed attempts so far


@dataclass
class NewMatch:
    watch_id: int
    score: float  # relevance of the caption to the watch query
    webhook: str | None  # queue a delivery there


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
        # A file from schema 1 has watches but no stream marks: the service sets the marks to the memory's ends so
        # that old clips are not matched again (`upgraded`).
        self.upgraded = row is not None and int(row[0]) < SCHEMA_VERSION
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise UserError(f"{self.path} has service schema {row[0]}, newer than this rlivs reads "
                            f"({SCHEMA_VERSION}): upgrade rlivs")
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- watches --------------------------------------------------------------------------------------------------

    def add_watch(self, query: str, threshold: float, stream: str | None, webhook: str | None,
                  starts: dict[str, int] | None = None) -> Watch:
        """`starts`: stream -> the last clip index the watch ignores (clips committed before it existed)."""
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "INSERT INTO watches (query, threshold, stream, webhook, created_at) VALUES (?, ?, ?, ?, ?)",
                (query, float(threshold), stream, webhook, now))
            wid = int(cur.lastrowid)
            self._conn.executemany("INSERT INTO watch_starts (watch_id, stream, clip) VALUES (?, ?, ?)",
                                   [(wid, s, int(c)) for s, c in (starts or {}).items()])
            return Watch(wid, query, float(threshold), stream, webhook, now)

    def watch_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM watches").fetchone()[0])

    def watch_starts(self) -> dict[int, dict[str, int]]:
        """watch id -> {stream: last clip index it ignores}."""
        out: dict[int, dict[str, int]] = {}
        with self._lock:
            for wid, stream, clip in self._conn.execute("SELECT watch_id, stream, clip FROM watch_starts"):
                out.setdefault(wid, {})[stream] = clip
        return out

    # -- matching marks -------------------------------------------------------------------------------------------

    def marks(self) -> dict[str, int]:
        """stream -> the last clip index matched against every watch."""
        with self._lock:
            return dict(self._conn.execute("SELECT stream, clip FROM stream_marks").fetchall())

    def set_marks(self, marks: dict[str, int]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO stream_marks (stream, clip) VALUES (?, ?)",
                                   [(s, int(c)) for s, c in marks.items()])

    def record_clip(self, stream: str, clip: int, t_start: float, t_end: float, caption: str,
                    matches: list[NewMatch], keep_matches: int) -> list[Match]:
        """In one transaction: the clip's matches, a delivery for each match whose watch has a webhook, the stream's
        mark moved to `clip`, and each matched watch's matches pruned to its newest `keep_matches`. Nothing when the
        mark is already at or past `clip` (matched before: exactly once). Returns the matches stored."""
        now = time.time()
        out = []
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute("SELECT clip FROM stream_marks WHERE stream = ?", (stream,)).fetchone()
            if row is not None and row[0] >= clip:
                return []
            for m in matches:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO matches (watch_id, stream, clip, t_start, t_end, caption, score, matched_at) "
                    "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM watches WHERE id = ?)",
                    (m.watch_id, stream, clip, t_start, t_end, caption, float(m.score), now, m.watch_id))
                if cur.rowcount != 1:
                    continue  # the watch was deleted meanwhile
                mid = int(cur.lastrowid)
                out.append(Match(mid, m.watch_id, stream, clip, t_start, t_end, caption, float(m.score), now))
                if m.webhook:
                    self._conn.execute("INSERT INTO deliveries (match_id, url, next_at, created_at) VALUES (?, ?, ?, ?)",
                                       (mid, m.webhook, now, now))
                self._conn.execute(
                    "DELETE FROM matches WHERE watch_id = ? AND id <= (SELECT id FROM matches WHERE watch_id = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)", (m.watch_id, m.watch_id, int(keep_matches)))
            self._conn.execute("INSERT OR REPLACE INTO stream_marks (stream, clip) VALUES (?, ?)", (stream, int(clip)))
        return out

    # -- webhook deliveries ---------------------------------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int = 64) -> list[Delivery]:
        with self._lock:
            rows = self._conn.execute("SELECT id, match_id, url, attempts FROM deliveries WHERE next_at <= ? "
                                      "ORDER BY next_at, id LIMIT ?", (now, int(limit))).fetchall()
        return [Delivery(*r) for r in rows]

    def pending_deliveries(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    def retry_delivery(self, delivery_id: int, next_at: float) -> None:
        with self._lock, self._conn:
            self._conn.execute("UPDATE deliveries SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                               (next_at, int(delivery_id)))

    def finish_delivery(self, delivery_id: int) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM deliveries WHERE id = ?", (int(delivery_id),))

    def drop_deliveries_over(self, keep: int) -> int:
        """Drop the oldest pending deliveries beyond `keep`; returns how many were dropped."""
        with self._lock, self._conn:
            return self._conn.execute(
                "DELETE FROM deliveries WHERE id <= (SELECT id FROM deliveries ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (int(keep),)).rowcount

    def match(self, match_id: int) -> Match | None:
        with self._lock:
            row = self._conn.execute("SELECT id, watch_id, stream, clip, t_start, t_end, caption, score, matched_at "
                                     "FROM matches WHERE id = ?", (int(match_id),)).fetchone()
        return None if row is None else Match(*row)

    def watches(self) -> list[Watch]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, query, threshold, stream, webhook, created_at FROM watches ORDER BY id").fetchall()
        return [Watch(*r) for r in rows]

    def delete_watch(self, watch_id: int) -> bool:
        with self._lock:
            return self._conn.execute("DELETE FROM watches WHERE id = ?", (int(watch_id),)).rowcount > 0

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

    def drop_thumbnails_before(self, stream: str, clip: int) -> int:
        """Delete the thumbnails of `stream`'s clips before `clip` (their captions were forgotten)."""
        with self._lock:
            return self._conn.execute("DELETE FROM thumbnails WHERE stream = ? AND clip < ?",
                                      (stream, int(clip))).rowcount

    def thumbnail_clips(self, stream: str, clips: list[int]) -> set[int]:
        """Which of these clips of `stream` have a thumbnail."""
        if not clips:
            return set()
        marks = ",".join("?" * len(clips))
        with self._lock:
            rows = self._conn.execute(f"SELECT clip FROM thumbnails WHERE stream = ? AND clip IN ({marks})",
                                      (stream, *[int(c) for c in clips])).fetchall()
        return {r[0] for r in rows}
