"""Bulk changes: `import_clips` (all or nothing, one transaction) and `forget` (retention; freed pages go back to
the file system). A mixin of Memory (store.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from rlivs.runtime.errors import UserError
from rlivs.runtime.validate import check_caption, check_stream_name

import numpy as np

from . import packs
from .checks import check_record, kept_to_blob
from .records import ClipRecord, to_blob
from .search import signature


class Housekeeping:
    """Memory's bulk import and deletion."""

    def import_clips(self, records: Iterable[ClipRecord], batch: int = 5000, source: str = "import",
                     model_id: str = "import") -> int:
        """Bulk-load clips in ONE transaction: all of them, or none when any is refused or anything fails (the memory
        is then exactly as before). Streams that do not exist are created with `source` and `model_id` (the model
        that computed the vectors). Each record is checked as commit_clip checks a clip, plus the rules for what
        comes from outside (rlivs.runtime.validate: stream names, captions); each stream's clips must continue its
        indices in increasing order: gaps are accepted (idle clips of the activity gate and clips deleted by retention
        leave them in an export), a clip already stored, given twice or going backwards is refused. After every `batch` clips the signature center
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
                index, t_start, t_end, n_tokens, wall = check_record(r)
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
                if index < expected:
                    raise UserError(f"{where} does not continue it (it is already stored, given twice or goes "
                                    f"backwards; its next clip is {expected} or later); nothing was imported: "
                                    f"import into a new --db or a new stream name")
                vec_blob, vec_dtype = to_blob(r.vector, f"clip {index} vector", 1)
                sig = None if center is None else signature(r.vector, center)
                self._insert_clip(r.stream, index, t_start, t_end, wall, r.caption, n_tokens, sig,
                                  r.committed_at or now,
                                  (vec_blob, int(r.vector.shape[0]), vec_dtype, kept_to_blob(r.kept, index)))
                self._conn.execute("UPDATE streams SET next_idx = ? WHERE name = ?", (index + 1, r.stream))
                stored += 1
                if center is None and stored % batch == 0:
                    self._fill_signatures(force=False)
                    center = self._signature_center()
            if center is None:
                self._fill_signatures(force=False)  # (packs every clip once signed)
            else:
                packs.pack_tail(self._conn)
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
                gone = [r[0] for r in self._conn.execute("SELECT id FROM clips WHERE stream = ? ORDER BY id",
                                                          (stream,))]
                self._conn.execute("DELETE FROM clip_arrays WHERE id IN (SELECT id FROM clips WHERE stream = ?)",
                                   (stream,))
                n = self._conn.execute("DELETE FROM clips WHERE stream = ?", (stream,)).rowcount
                self._conn.execute("DELETE FROM fifo WHERE stream = ?", (stream,))
                self._conn.execute("DELETE FROM idle WHERE stream = ?", (stream,))
                self._conn.execute("DELETE FROM scenes WHERE stream = ?", (stream,))
                self._conn.execute("DELETE FROM streams WHERE name = ?", (stream,))
                self._conn.execute("DELETE FROM meta WHERE key = ?", (f"clock:{stream}",))
            else:
                # wall_start <= wall_end for every clip: the first condition lets SQLite range-scan the clips_wall
                # index instead of reading every row (retention runs this every 10 minutes, mostly deleting nothing)
                cond, args = "wall_start < ? AND wall_end < ?", [float(before), float(before)]
                if stream is not None:
                    cond, args = cond + " AND stream = ?", args + [stream]
                gone = [r[0] for r in self._conn.execute(f"SELECT id FROM clips WHERE {cond} ORDER BY id", args)]
                self._conn.execute(f"DELETE FROM clip_arrays WHERE id IN (SELECT id FROM clips WHERE {cond})", args)
                n = self._conn.execute(f"DELETE FROM clips WHERE {cond}", args).rowcount
                self._conn.execute(f"DELETE FROM idle WHERE {cond}", args)
            if n:
                packs.drop_ids(self._conn, np.array(gone, dtype=np.int64))  # the packs keep agreeing with the rows
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
