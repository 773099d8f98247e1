"""The memory's SQLite schema (version 2) and the in-place migration from version 1.

Version 2 over version 1:
- `clips` gets a stable `id INTEGER PRIMARY KEY` (VACUUM never renumbers it; the keyword and vector indexes refer
  to it), UNIQUE(stream, idx), wall-clock `wall_start`/`wall_end` (UTC unix seconds, NULL when the stream has no
  clock), `sig` (the vector's binary signature, see search.py) and `kept` (the int16 indices selection kept);
- `streams` gets `next_idx` (so forgetting old clips never moves a stream's resume point);
- `clips_fts`: an FTS5 keyword index over the captions (external content, kept in step by triggers, so it
  changes in the very transaction that changes a clip);
- `clips_wall` and `clips_stream_wall` indexes for time-window queries;
- `auto_vacuum = INCREMENTAL`, so space freed by `forget` goes back to the file system.

Migration runs in one BEGIN IMMEDIATE transaction: a kill at any point leaves the version-1 file (the journal
rolls it back) or the version-2 file, never a mix; running it again on a version-2 file does nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

VERSION = 2
TABLES = ("meta", "streams", "clips", "fifo", "clips_fts")

_STREAMS = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY, source TEXT NOT NULL, model_id TEXT NOT NULL, config_hash TEXT NOT NULL,
    created_at REAL NOT NULL, next_idx INTEGER NOT NULL DEFAULT 0)"""
_CLIPS = """
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY, stream TEXT NOT NULL REFERENCES streams(name), idx INTEGER NOT NULL,
    t_start REAL NOT NULL, t_end REAL NOT NULL, wall_start REAL, wall_end REAL,
    caption TEXT NOT NULL, n_tokens INTEGER NOT NULL, vector BLOB NOT NULL, dim INTEGER NOT NULL,
    dtype TEXT NOT NULL, sig BLOB, kept BLOB, committed_at REAL NOT NULL, UNIQUE (stream, idx))"""
_FIFO = """
CREATE TABLE IF NOT EXISTS fifo (
    stream TEXT NOT NULL REFERENCES streams(name), clip_idx INTEGER NOT NULL, n INTEGER NOT NULL,
    dim INTEGER NOT NULL, dtype TEXT NOT NULL, tokens BLOB NOT NULL, PRIMARY KEY (stream, clip_idx))"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS clips_wall ON clips (wall_start)",
    "CREATE INDEX IF NOT EXISTS clips_stream_wall ON clips (stream, wall_start)",
)
# The keyword index: porter stemming ("closes" finds "closed"), external content (the text is stored once, in clips).
_FTS = ("CREATE VIRTUAL TABLE IF NOT EXISTS clips_fts USING fts5("
        "caption, content='clips', content_rowid='id', tokenize='porter unicode61')")
_VOCAB = "CREATE VIRTUAL TABLE IF NOT EXISTS clips_vocab USING fts5vocab(clips_fts, 'row')"
_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS clips_fts_insert AFTER INSERT ON clips BEGIN
         INSERT INTO clips_fts (rowid, caption) VALUES (new.id, new.caption); END""",
    """CREATE TRIGGER IF NOT EXISTS clips_fts_delete AFTER DELETE ON clips BEGIN
         INSERT INTO clips_fts (clips_fts, rowid, caption) VALUES ('delete', old.id, old.caption); END""",
    """CREATE TRIGGER IF NOT EXISTS clips_fts_update AFTER UPDATE OF caption ON clips BEGIN
         INSERT INTO clips_fts (clips_fts, rowid, caption) VALUES ('delete', old.id, old.caption);
         INSERT INTO clips_fts (rowid, caption) VALUES (new.id, new.caption); END""",
)


def create(conn: sqlite3.Connection) -> None:
    """Create every version-2 table, index and trigger (idempotent). Runs inside the caller's transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for sql in (_STREAMS, _CLIPS, _FIFO, *_INDEXES, _FTS, _VOCAB, *_TRIGGERS):
        conn.execute(sql)
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(VERSION),))


def migrate_v1(conn: sqlite3.Connection, pause: Callable[[str], None] | None = None) -> None:
    """Version 1 -> 2 inside the caller's transaction: rebuild `streams` and `clips` with the new columns, copy
    every row (clip order and values unchanged), create the indexes and fill the keyword index.
    `pause(step)` is a test seam called between steps (a crash there must leave the version-1 file)."""
    step = pause or (lambda _: None)
    conn.execute("ALTER TABLE streams RENAME TO streams_v1")
    conn.execute("ALTER TABLE clips RENAME TO clips_v1")
    conn.execute("ALTER TABLE fifo RENAME TO fifo_v1")
    step("renamed")
    create(conn)
    conn.execute("INSERT INTO streams (name, source, model_id, config_hash, created_at, next_idx) "
                 "SELECT s.name, s.source, s.model_id, s.config_hash, s.created_at, "
                 "COALESCE((SELECT MAX(c.idx) + 1 FROM clips_v1 c WHERE c.stream = s.name), 0) FROM streams_v1 s")
    conn.execute("INSERT INTO clips (stream, idx, t_start, t_end, caption, n_tokens, vector, dim, dtype, committed_at) "
                 "SELECT stream, idx, t_start, t_end, caption, n_tokens, vector, dim, dtype, committed_at "
                 "FROM clips_v1 ORDER BY stream, idx")
    step("copied")
    conn.execute("INSERT INTO fifo SELECT stream, clip_idx, n, dim, dtype, tokens FROM fifo_v1")
    for old in ("fifo_v1", "clips_v1", "streams_v1"):
        conn.execute(f"DROP TABLE {old}")
    step("dropped")
