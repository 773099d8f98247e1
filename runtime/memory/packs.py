"""The packed copy of what a search reads per clip (schema version 4): ids, signatures, stream, wall-clock span and
stream-time end of PACK_ROWS clips at a time, as a few BLOBs in one `clip_packs` row.

Why: a process's first question must hold these columns of every clip (columns.py). Stepping a million `clips`
rows through SQLite and Python took 1.5-3 s; reading ~250 BLOBs of a few hundred KB takes a small fraction of it.

The invariant (checked by `problems`, `Memory.check`): the packs are disjoint id ranges [first_id, last_id] in id
order; each holds exactly the clips whose id is in its range, in id order, with the values their rows hold;
`last_id` is the highest id it holds. Every clip above the last pack's `last_id` (the "tail", fewer than PACK_ROWS
clips in steady state) is read from `clips` itself. New clip ids are max(id) + 1, so always above every pack.

Upkeep, always inside the transaction that changes the clips (nothing committed can disagree with its packs):
- `pack_tail` after a clip is inserted (commit_clip, import_clips): once the tail spans PACK_ROWS ids, its first
  PACK_ROWS clips become one pack (one commit in PACK_ROWS reads them, ~10 ms; the others write nothing more);
- `drop_ids` when `forget` deletes clips: each pack holding a deleted id is rewritten without it (or deleted);
- `rebuild` when every signature changes (the center fixed or recomputed: `_fill_signatures`, `reindex`) and by
  the migration from version 3 (one transaction; a kill leaves the version-3 file).
Clips without a signature (a memory below SIG_MIN clips) are never packed: they stay in the tail.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np

PACK_ROWS = 4096  # clips per pack: ~0.6 MB of BLOBs at D = 896; ~250 packs at 1M clips

TABLE = """
CREATE TABLE IF NOT EXISTS clip_packs (
    first_id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL, n INTEGER NOT NULL, names TEXT NOT NULL,
    ids BLOB NOT NULL, codes BLOB NOT NULL, wall BLOB NOT NULL, t_end BLOB NOT NULL, sigs BLOB NOT NULL)"""
# the small columns first: a row skipped by its last_id never reads its BLOBs' overflow pages

ROW_COLS = ("id", "stream", "wall_start", "wall_end", "t_end", "sig")  # what a pack holds of a clip row
BLOBS = {"ids": ("ids",), "stream": ("names", "codes"), "wall": ("wall",), "t_end": ("t_end",), "sig": ("sigs",)}


def packed_to(conn: sqlite3.Connection) -> int:
    """The highest clip id held in a pack (0 when none): the tail is every clip above it."""
    row = conn.execute("SELECT last_id FROM clip_packs ORDER BY first_id DESC LIMIT 1").fetchone()
    return 0 if row is None else int(row[0])


def arrays_from_rows(rows: list[tuple]) -> dict:
    """Rows of ROW_COLS -> the pack's arrays: ids (n,) int64, names (stream names) with codes (n,) uint16 into them,
    wall (n, 2) float64 (NaN: no clock), t_end (n,) float64, sigs: the signatures joined (None if one is NULL or
    their lengths differ)."""
    ids, streams, w0, w1, t_end, sigs = zip(*rows)
    names = sorted(set(streams))
    local = {name: i for i, name in enumerate(names)}
    wall = np.empty((len(rows), 2), dtype=np.float64)
    wall[:, 0] = np.array(w0, dtype=np.float64)  # None -> NaN
    wall[:, 1] = np.array(w1, dtype=np.float64)
    try:
        joined = b"".join(sigs)
    except TypeError:  # a NULL signature
        joined = None
    if joined is not None and sigs and len(joined) != len(sigs[0]) * len(sigs):
        joined = None
    return dict(ids=np.array(ids, dtype=np.int64), names=names,
                codes=np.fromiter(map(local.__getitem__, streams), dtype=np.uint16, count=len(rows)),
                wall=wall, t_end=np.array(t_end, dtype=np.float64), sigs=joined)


def _write(conn: sqlite3.Connection, a: dict) -> None:
    ids = a["ids"]
    conn.execute("INSERT INTO clip_packs (first_id, last_id, n, names, ids, codes, wall, t_end, sigs) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (int(ids[0]), int(ids[-1]), len(ids), json.dumps(a["names"]), ids.astype("<i8").tobytes(),
                  a["codes"].astype("<u2").tobytes(), a["wall"].astype("<f8").tobytes(),
                  a["t_end"].astype("<f8").tobytes(), a["sigs"]))


def pack_tail(conn: sqlite3.Connection, newest_id: int | None = None) -> int:
    """Inside a write transaction: turn the tail into packs of PACK_ROWS clips while it spans PACK_ROWS ids (fewer
    clips when forget left gaps); stops at a clip without a signature. `newest_id`: the highest clip id, when the
    caller knows it (commit_clip: the row it inserted). Returns the packs written."""
    start = packed_to(conn)
    top = newest_id if newest_id is not None else (conn.execute("SELECT MAX(id) FROM clips").fetchone()[0] or 0)
    written = 0
    while top - start >= PACK_ROWS:
        rows = conn.execute(f"SELECT {', '.join(ROW_COLS)} FROM clips WHERE id > ? AND id <= ? ORDER BY id",
                            (start, start + PACK_ROWS)).fetchall()
        if not rows:  # a gap of PACK_ROWS ids (forgotten clips): nothing to pack there
            start += PACK_ROWS
            continue
        a = arrays_from_rows(rows)
        if a["sigs"] is None:  # unsigned clips (no center yet): they stay in the tail
            break
        _write(conn, a)
        written += 1
        start = int(a["ids"][-1])
    return written


def rebuild(conn: sqlite3.Connection) -> int:
    """Inside a write transaction: every pack again from the clips table (signatures changed, or a migration)."""
    conn.execute("DELETE FROM clip_packs")
    return pack_tail(conn)


def drop_ids(conn: sqlite3.Connection, deleted: np.ndarray) -> int:
    """Inside forget's transaction: rewrite each pack that holds one of the (sorted) `deleted` clip ids without
    them (delete it when none is left). Returns the packs changed."""
    if len(deleted) == 0:
        return 0
    lo, hi = int(deleted[0]), int(deleted[-1])
    rows = conn.execute("SELECT first_id, ids FROM clip_packs WHERE last_id >= ? AND first_id <= ? ORDER BY first_id",
                        (lo, hi)).fetchall()
    changed = 0
    for first_id, blob in rows:
        ids = np.frombuffer(blob, dtype="<i8")
        gone = np.isin(ids, deleted, assume_unique=True)
        if not gone.any():
            continue
        changed += 1
        (names, codes, wall, t_end, sigs) = conn.execute(
            "SELECT names, codes, wall, t_end, sigs FROM clip_packs WHERE first_id = ?", (first_id,)).fetchone()
        conn.execute("DELETE FROM clip_packs WHERE first_id = ?", (first_id,))
        keep = ~gone
        if not keep.any():
            continue
        width = len(sigs) // len(ids)
        _write(conn, dict(ids=ids[keep], names=json.loads(names), codes=np.frombuffer(codes, "<u2")[keep],
                          wall=np.frombuffer(wall, "<f8").reshape(-1, 2)[keep], t_end=np.frombuffer(t_end, "<f8")[keep],
                          sigs=np.frombuffer(sigs, np.uint8).reshape(-1, width)[keep].tobytes()))
    return changed


def read(conn: sqlite3.Connection, after: int, upto: int | None, groups: tuple[str, ...]):
    """Yield the packed clips with after < id <= upto (upto None: no bound) in id order, one dict a pack: `ids`
    and, per name in `groups` (keys of BLOBS), its arrays (names + codes for "stream", sigs as (n, width) uint8).
    Only the BLOBs asked for are read."""
    cols = [c for g in ("ids", *groups) for c in BLOBS[g]]
    bound = "" if upto is None else " AND first_id <= ?"
    args = (after,) if upto is None else (after, upto)
    cur = conn.execute(f"SELECT {', '.join(cols)} FROM clip_packs WHERE last_id > ?{bound} ORDER BY first_id", args)
    for row in cur:
        got = dict(zip(cols, row))
        ids = np.frombuffer(got["ids"], dtype="<i8")
        keep = None
        if ids[0] <= after or (upto is not None and ids[-1] > upto):
            keep = (ids > after) & (ids <= (upto if upto is not None else ids[-1]))
        out = {"ids": ids.astype(np.int64)}
        if "stream" in groups:
            out["names"], out["codes"] = json.loads(got["names"]), np.frombuffer(got["codes"], "<u2")
        if "wall" in groups:
            out["wall"] = np.frombuffer(got["wall"], "<f8").reshape(-1, 2)
        if "t_end" in groups:
            out["t_end"] = np.frombuffer(got["t_end"], "<f8")
        if "sig" in groups:
            out["sigs"] = np.frombuffer(got["sigs"], np.uint8).reshape(len(ids), -1)
        if keep is not None:
            out = {k: (v if k == "names" else v[keep]) for k, v in out.items()}
        yield out


def problems(conn: sqlite3.Connection, limit: int = 20) -> list[str]:
    """Where the packs disagree with the clips table (empty when they agree): ranges that overlap or are out of
    order, a pack whose ids, streams, times or signatures differ from its clips' rows, a clip inside a pack's range
    missing from it. Reads every clip row once (a check, not a question's path)."""
    out: list[str] = []
    prev = 0
    for first_id, last_id, n, names, ids, codes, wall, t_end, sigs in conn.execute(
            "SELECT first_id, last_id, n, names, ids, codes, wall, t_end, sigs FROM clip_packs ORDER BY first_id"):
        where = f"pack [{first_id}, {last_id}]"
        if first_id <= prev:
            out.append(f"{where} overlaps the pack before it (which ends at {prev})")
        prev = last_id
        rows = conn.execute(f"SELECT {', '.join(ROW_COLS)} FROM clips WHERE id >= ? AND id <= ? ORDER BY id",
                            (first_id, last_id)).fetchall()
        if not rows:
            out.append(f"{where}: no clip holds an id in its range")
            continue
        want = arrays_from_rows(rows)
        pid = np.frombuffer(ids, "<i8")
        if len(pid) != n or not np.array_equal(pid, want["ids"]):
            missing = sorted(set(want["ids"].tolist()) - set(pid.tolist()))[:5]
            out.append(f"{where}: holds {len(pid)} clip ids, the clips table {len(rows)} (missing e.g. {missing})")
        elif pid[0] != first_id or pid[-1] != last_id:
            out.append(f"{where}: its range is not its first and last id ({pid[0]}, {pid[-1]})")
        else:
            streams = np.array(json.loads(names), dtype=object)[np.frombuffer(codes, "<u2")]
            wanted = np.array(want["names"], dtype=object)[want["codes"]]
            for what, same in (("streams", np.array_equal(streams, wanted)),
                               ("wall-clock spans", np.array_equal(np.frombuffer(wall, "<f8").reshape(-1, 2),
                                                                   want["wall"], equal_nan=True)),
                               ("stream-time ends", np.array_equal(np.frombuffer(t_end, "<f8"), want["t_end"])),
                               ("signatures", sigs == want["sigs"])):
                if not same:
                    out.append(f"{where}: its {what} differ from the clips' rows")
        if len(out) >= limit:
            return out
    held = conn.execute("SELECT COALESCE(SUM(n), 0) FROM clip_packs").fetchone()[0]
    below = conn.execute("SELECT COUNT(*) FROM clips WHERE id <= ?", (prev,)).fetchone()[0]
    if held != below:
        out.append(f"the packs hold {held} clips, the clips table {below} up to id {prev} (a clip between packs)")
    return out
