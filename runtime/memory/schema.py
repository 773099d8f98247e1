"""The memory's SQLite schema (version 4) and the in-place migrations from versions 1, 2 and 3.

Version 4 over version 3: `clip_packs`, the packed copy of what a search reads per clip (packs.py), kept in the
transaction of every change to the clips; migrating a version-3 file builds it from the clips table in one
transaction (a kill leaves the version-3 file).

Version 3 over version 2 (the activity gate, runtime/activity.py):
- `idle`: runs of consecutive clips the gate left uncaptioned, each against the captioned clip whose scene they
  still show (`scene_idx`): stream-time and wall-clock span, clip count and the highest gate score in the run;
- `scenes`: per stream, the gate's reference (the last captioned clip's last frame as colour cells), so a resumed
  stream gates exactly as an uninterrupted one.
Both change in the transaction of the clip that changes them; migrating a version-2 file only adds them.

Version 2 over version 1:
- `clips` gets a stable `id INTEGER PRIMARY KEY` (VACUUM never renumbers it; the keyword and vector indexes refer
  to it), UNIQUE(stream, idx), wall-clock `wall_start`/`wall_end` (UTC unix seconds, NULL when the stream has no
  clock) and `sig` (the vector's binary signature, see columns.py); its arrays move to `clip_arrays` (the vector,
  and `kept`: the int16 indices selection kept), so that reading the clips table for the search cache, the keyword
  join and the timeline reads ~0.4 KB a clip, not the 4 KB of its vector;
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

from . import packs

VERSION = 4
TABLES_V2 = ("meta", "streams", "clips", "clip_arrays", "fifo", "clips_fts")
TABLES_V3 = (*TABLES_V2, "idle", "scenes")
TABLES = (*TABLES_V3, "clip_packs")

_STREAMS = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY, source TEXT NOT NULL, model_id TEXT NOT NULL, config_hash TEXT NOT NULL,
    created_at REAL NOT NULL, next_idx INTEGER NOT NULL DEFAULT 0)"""
_CLIPS = """
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY, stream TEXT NOT NULL REFERENCES streams(name), idx INTEGER NOT NULL,
    t_start REAL NOT NULL, t_end REAL NOT NULL, wall_start REAL, wall_end REAL,
    caption TEXT NOT NULL, n_tokens INTEGER NOT NULL, sig BLOB, committed_at REAL NOT NULL, UNIQUE (stream, idx))"""
_ARRAYS = """
CREATE TABLE IF NOT EXISTS clip_arrays (
    id INTEGER PRIMARY KEY REFERENCES clips(id) ON DELETE CASCADE, vector BLOB NOT NULL, dim INTEGER NOT NULL,
    dtype TEXT NOT NULL, kept BLOB)"""
_FIFO = """
CREATE TABLE IF NOT EXISTS fifo (
    stream TEXT NOT NULL REFERENCES streams(name), clip_idx INTEGER NOT NULL, n INTEGER NOT NULL,
    dim INTEGER NOT NULL, dtype TEXT NOT NULL, tokens BLOB NOT NULL, PRIMARY KEY (stream, clip_idx))"""
_IDLE = """
CREATE TABLE IF NOT EXISTS idle (
    id INTEGER PRIMARY KEY, stream TEXT NOT NULL REFERENCES streams(name), first_idx INTEGER NOT NULL,
    last_idx INTEGER NOT NULL, t_start REAL NOT NULL, t_end REAL NOT NULL, wall_start REAL, wall_end REAL,
    scene_idx INTEGER, score REAL NOT NULL, UNIQUE (stream, first_idx))"""
_SCENES = """
CREATE TABLE IF NOT EXISTS scenes (
    stream TEXT PRIMARY KEY REFERENCES streams(name), idx INTEGER NOT NULL, t_end REAL NOT NULL,
    rows INTEGER NOT NULL, cols INTEGER NOT NULL, cells BLOB NOT NULL)"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS idle_stream_last ON idle (stream, last_idx)",
    "CREATE INDEX IF NOT EXISTS idle_wall ON idle (wall_start)",
    "CREATE INDEX IF NOT EXISTS idle_scene ON idle (stream, scene_idx)",
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
    """Create every version-4 table, index and trigger (idempotent). Runs inside the caller's transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for sql in (_STREAMS, _CLIPS, _ARRAYS, _FIFO, _IDLE, _SCENES, *_INDEXES, _FTS, _VOCAB, *_TRIGGERS, packs.TABLE):
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
    conn.execute("INSERT INTO clips (stream, idx, t_start, t_end, caption, n_tokens, committed_at) "
                 "SELECT stream, idx, t_start, t_end, caption, n_tokens, committed_at FROM clips_v1 ORDER BY stream, idx")
    conn.execute("INSERT INTO clip_arrays (id, vector, dim, dtype) SELECT c.id, v.vector, v.dim, v.dtype "
                 "FROM clips c JOIN clips_v1 v ON v.stream = c.stream AND v.idx = c.idx")
    step("copied")
    conn.execute("INSERT INTO fifo SELECT stream, clip_idx, n, dim, dtype, tokens FROM fifo_v1")
    for old in ("fifo_v1", "clips_v1", "streams_v1"):
        conn.execute(f"DROP TABLE {old}")
    step("dropped")


def migrate_v2(conn: sqlite3.Connection) -> None:
    """Version 2 or 3 -> 4 inside the caller's transaction: add the `idle` and `scenes` tables (no row changes) and
    the packs, built from the clips table."""
    create(conn)
    packs.rebuild(conn)
