"""A memory file as rlivs' schema version 1 wrote it (the release before indexed retrieval), for migration tests.

The DDL is what version 1 created (read back from sqlite_master of a file it wrote); rows are written with plain
sqlite3 so the file does not depend on any current code.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

V1_DDL = (
    'CREATE TABLE "meta" ("key" TEXT PRIMARY KEY, "value" TEXT NOT NULL)',
    'CREATE TABLE "streams" ("name" TEXT PRIMARY KEY, "source" TEXT NOT NULL, "model_id" TEXT NOT NULL, '
    '"config_hash" TEXT NOT NULL, "created_at" REAL NOT NULL)',
    'CREATE TABLE "clips" ("stream" TEXT NOT NULL REFERENCES "streams"("name"), "idx" INTEGER NOT NULL, '
    '"t_start" REAL NOT NULL, "t_end" REAL NOT NULL, "caption" TEXT NOT NULL, "n_tokens" INTEGER NOT NULL, '
    '"vector" BLOB NOT NULL, "dim" INTEGER NOT NULL, "dtype" TEXT NOT NULL, "committed_at" REAL NOT NULL, '
    'PRIMARY KEY ("stream", "idx"))',
    'CREATE TABLE "fifo" ("stream" TEXT NOT NULL REFERENCES "streams"("name"), "clip_idx" INTEGER NOT NULL, '
    '"n" INTEGER NOT NULL, "dim" INTEGER NOT NULL, "dtype" TEXT NOT NULL, "tokens" BLOB NOT NULL, '
    'PRIMARY KEY ("stream", "clip_idx"))',
)


def write_v1(path: Path, streams: dict[str, int], dim: int = 8, fifo_last: int = 2, seed: int = 0) -> dict:
    """A version-1 memory with `streams` {name: n_clips}; the last `fifo_last` clips of each hold FIFO rows.
    Returns what was written: {stream: [(idx, t_start, t_end, caption, n_tokens, vector)]}, and 'fifo'."""
    rng = np.random.default_rng(seed)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for ddl in V1_DDL:
        conn.execute(ddl)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO meta VALUES ('model_fingerprint', ?)", (json.dumps({"model": "v1"}),))
    written: dict = {"fifo": {}}
    for k, (name, n) in enumerate(streams.items()):
        conn.execute("INSERT INTO streams VALUES (?, 'old.mp4', 'm', 'h1', ?)", (name, 1000.0 + k))
        rows = []
        for i in range(n):
            v = rng.standard_normal(dim).astype(np.float32)
            cap = f"clip {i} of {name}: a person walks past the {['red', 'blue', 'green'][i % 3]} door"
            conn.execute("INSERT INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'float32', ?)",
                         (name, i, 2.0 * i, 2.0 * i + 2, cap, 12, v.tobytes(), dim, 2000.0 + i))
            rows.append((i, 2.0 * i, 2.0 * i + 2, cap, 12, v))
        for i in range(max(0, n - fifo_last), n):
            t = rng.standard_normal((3, dim)).astype(np.float32)
            conn.execute("INSERT INTO fifo VALUES (?, ?, 3, ?, 'float32', ?)", (name, i, dim, t.tobytes()))
            written["fifo"].setdefault(name, []).append((i, t))
        written[name] = rows
    conn.commit()
    conn.close()
    return written
