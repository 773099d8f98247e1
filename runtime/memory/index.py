"""The memory's side of retrieval: the signature center and the generation that tells every process's column
cache to reload, signing clips, `search` (search.py does the work) and `reindex`. A mixin of Memory (store.py)."""

from __future__ import annotations

import numpy as np

from rlivs.runtime.errors import UserError

from . import packs
from .records import from_blob
from .search import SIG_MIN, SIG_TAIL, ColumnCache, Shortlist, search, signature


class Index:
    """Memory's search and index upkeep."""

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
        packs.rebuild(conn)  # every signature changed
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
            self._cache.refresh(self._conn, self._generation(), sig_bytes,
                                ColumnCache.needs(streams, wall_from, wall_to, stream_until))
            return search(self._conn, self._cache, center, query_vector, query_text, streams, wall_from, wall_to,
                          mode, shortlist, stream_until)

        return self._read(body)

    def check_packs(self) -> list[str]:
        """Where the packed copy of the search columns disagrees with the clips table (packs.py; empty: they agree).
        Reads every clip row once, in one read transaction."""
        return self._read(lambda: packs.problems(self._conn))

    def reindex(self) -> None:
        """Rebuild the keyword index and every signature (new center) from the clips table, in one transaction."""
        self._refuse_readonly("reindex")

        def body() -> None:
            self._conn.execute("INSERT INTO clips_fts (clips_fts) VALUES ('rebuild')")
            self._conn.execute("DELETE FROM meta WHERE key = 'sig_center'")
            self._conn.execute("UPDATE clips SET sig = NULL")
            self._conn.execute("DELETE FROM clip_packs")  # rebuilt with the new signatures (none below SIG_MIN)
            self._fill_signatures(force=False)
            self._bump_generation()

        self._write(body, what="reindex")
        self._center = None
