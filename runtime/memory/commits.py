"""What ingest writes, one transaction per clip: a captioned clip (row, arrays, FIFO change, gate reference) or an
idle clip (the activity gate's runs); and the reads of the gate's records (idle runs, the scene reference).
A mixin of Memory (store.py)."""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence

import numpy as np

from rlivs.runtime.activity import SceneRef
from rlivs.runtime.errors import UserError

from . import packs
from .checks import check_record, kept_to_blob, scene_to_row
from .records import ClipRecord, IdleSpan, to_blob
from .search import signature

IDLE_SQL = "SELECT stream, first_idx, last_idx, t_start, t_end, wall_start, wall_end, scene_idx, score FROM idle"


def _idle_from_row(row: tuple) -> IdleSpan:
    return IdleSpan(*row)


class Commits:
    """Memory's per-clip writes and the gate's records."""

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
        index, t_start, t_end, n_tokens, wall = check_record(record)
        kept_blob = kept_to_blob(record.kept, index)
        vec_blob, vec_dtype = to_blob(record.vector, f"clip {index} vector", 1)
        dim = int(record.vector.shape[0])
        fifo_row = None
        if fifo_tokens is not None:
            tok_blob, tok_dtype = to_blob(fifo_tokens, f"fifo_tokens of clip {index}", 2)
            fifo_row = (int(fifo_tokens.shape[0]), int(fifo_tokens.shape[1]), tok_dtype, tok_blob)
        stream = record.stream
        scene_row = None if scene is None else scene_to_row(scene, index)
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
            else:
                packs.pack_tail(conn, self._last_insert)  # one commit in PACK_ROWS writes a pack
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
        index, t_start, t_end, _, wall = check_record(probe)
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
        self._last_insert = self._conn.execute(
            "INSERT INTO clips (stream, idx, t_start, t_end, wall_start, wall_end, caption, n_tokens, sig, "
            "committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, index, t_start, t_end, *wall, caption, n_tokens, sig, committed_at)).lastrowid
        self._conn.execute("INSERT INTO clip_arrays (id, vector, dim, dtype, kept) VALUES (?, ?, ?, ?, ?)",
                           (self._last_insert, *arrays))
