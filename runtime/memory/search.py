"""Indexed retrieval over the memory: filters, a binary-signature vector index, FTS5 keywords, fused.

A question never loads the whole memory. Per clip the database keeps, in the clip's own row and transaction:
- `sig`: a binary signature of the retrieval vector, one bit per dimension: sign(vector - center), with `center`
  the mean vector of the memory when it first reached SIG_MIN clips (stored in `meta`; `reindex` recomputes it),
  followed by |vector - center| and (vector - center).center as float32. Captions' mean-of-unit-token vectors share
  a large common direction; removing it makes the bits informative, and the two scalars turn the bits' angle
  estimate into an estimate of the dot product (`estimated_scores`).
- the caption in the FTS5 keyword index (triggers, see schema.py).

`ColumnCache` keeps, per process, what filtering and the vector scan need: clip ids, stream codes, wall-clock
spans and signatures (D/8 bytes a clip: 112 MB for a million 896-d clips). It is read once, then caught up with
the rows committed since (`id > last id`); `forget`/`reindex` bump `meta.generation`, which makes it reload.

`search` (one question):
1. filter: the streams and the wall-clock window select rows of the cache (inside the query: nothing outside
   the filters is scored);
2. vector candidates: within the filter, the `VECTOR_CANDIDATES` best by the signatures' estimate of the
   similarity (|r| cos(pi * Hamming / D), numkong's SIMD Hamming kernel), re-ranked by the exact float similarity of
   their stored vectors; when the filter
   leaves at most `EXACT_MAX` clips, all of them are scored exactly;
3. keyword candidates: FTS5 BM25 over the caption text, with the same filters in the SQL query; query terms in
   more than `COMMON_TERM_FRACTION` of the captions, or in more than `COMMON_TERM_POSTINGS`, are dropped (they carry
   little BM25 weight, and BM25 scores every posting of every term: this bounds the work on a big memory);
4. fuse: reciprocal rank fusion (k = 60) of the two rankings ("hybrid"), or the vector ranking alone ("paper",
   the paper's ranking), or the keyword ranking alone ("lexical"); the best `shortlist` go to MMR (answer.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass

import numpy as np

from rlivs.runtime.errors import UserError

from .records import ClipRecord, from_blob

SIG_MIN = 2048  # the signature center is fixed when the memory first holds this many clips
EXACT_MAX = 4096  # at most this many clips inside the filters: score them all exactly
REFRESH_ROWS = 20000  # the column cache reads the clips table this many rows at a time
VECTOR_CANDIDATES = 1024  # else: this many Hamming-nearest, then exact re-rank
LEXICAL_CANDIDATES = 256  # keyword hits taken from FTS5
COMMON_TERM_FRACTION = 0.2  # a query term in more than this fraction of captions is dropped ...
COMMON_TERM_POSTINGS = 20000  # ... or in more than this many
LEXICAL_POSTINGS = 20000  # the kept terms hold at most this many postings together (rarest first): BM25's work
LEXICAL_SCORED = 2048  # BM25 scores at most this many matching captions: the newest (a posting budget)
DF_REFRESH = 0.1  # a cached document frequency is counted again once the memory grew by this fraction
RRF_K = 60.0
MODES = ("hybrid", "paper", "lexical")

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be been but by can could did do does doing for from had has have how i in into is it its "
    "me my of on or our so than that the their them then there these they this those to up was we were what when "
    "where which who whom why will with would you your ever last first time times many much often happen happened "
    "see seen show".split())


def signature_bits(vectors: np.ndarray, center: np.ndarray) -> np.ndarray:
    """(N, D) or (D,) vectors -> (N, ceil(D/8)) or (ceil(D/8),) uint8 packed sign bits of (vector - center)."""
    return np.packbits(np.asarray(vectors, dtype=np.float32) > center, axis=-1)


SIG_TAIL = 8  # bytes after the sign bits: |r| and r.center as little-endian float32


def signature(vector: np.ndarray, center: np.ndarray) -> bytes:
    """What a clip row stores for residual r = vector - center: the packed sign bits of r, then |r| and r.center
    as float32."""
    v = np.asarray(vector, dtype=np.float32)
    r = v.astype(np.float64) - center
    tail = np.array([np.linalg.norm(r), r @ center], dtype="<f4")
    return signature_bits(v, center).tobytes() + tail.tobytes()


def estimated_scores(query: np.ndarray, center: np.ndarray, bits: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """(D,) query q; (N, B) sign bits and (N, 2) [|r|, r.center] of N clips -> (N,) estimates of q.v - q.center
    (which ranks like the exact similarity q.v: q.center is the same for every clip). With q = center + r_q:
    q.r = r.center + r.r_q, and r.r_q ~ |r| |r_q| cos(pi * hamming(sign r, sign r_q) / D): the angle between two
    vectors is about pi times the fraction of (here: coordinate) hyperplanes that separate them."""
    rq = query.astype(np.float64) - center
    h = np.array(hamming(signature_bits(query, center), bits), dtype=np.float32)  # (N,), ours to change in place
    h *= np.float32(np.pi / len(center))
    np.cos(h, out=h)
    h *= tails[:, 0]
    h *= np.float32(np.linalg.norm(rq))
    h += tails[:, 1]
    return h  # float32: ranking a shortlist needs no more


def hamming(query_sig: np.ndarray, sigs: np.ndarray) -> np.ndarray:
    """(B,) uint8, (N, B) uint8 -> (N,) bit differences (numkong's SIMD kernel; numpy where it is missing)."""
    if len(sigs) == 0:
        return np.zeros(0, dtype=np.float32)
    try:
        import numkong
    except ImportError:  # pragma: no cover - numkong ships wheels for x86_64 and aarch64
        return np.bitwise_count(sigs ^ query_sig).sum(axis=1, dtype=np.int32).astype(np.float32)
    out = numkong.cdist(sigs, query_sig[None], metric="hamming", dtype="uint1", out_dtype="float32")  # (N, 1): the
    # faster order of the two (~15% at 1M rows)
    return np.asarray(out).reshape(-1)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest of (N,) scores, unordered (ties aside, what argpartition gives). A full
    argpartition of a million floats costs ~20 ms; a threshold from a strided sample first keeps only the few
    thousand above it, then those are partitioned (the full partition again if the sample misjudged)."""
    n = len(scores)
    if n <= k:
        return np.arange(n)
    if n > 64 * k:
        sample = scores[:: n // 16384 or 1]
        keep = np.flatnonzero(scores >= np.quantile(sample, 1.0 - 4.0 * k / n))  # ~4k expected above
        if k <= len(keep) <= 64 * k:
            return keep[np.argpartition(scores[keep], len(keep) - k)[len(keep) - k:]]
    return np.argpartition(scores, n - k)[n - k:]


class _Grow:
    """An append-only numpy column with doubling capacity (appends are amortised O(rows added))."""

    def __init__(self, dtype, width: int | None = None):
        self.n = 0
        shape = (1024,) if width is None else (1024, width)
        self.buf = np.empty(shape, dtype=dtype)

    def reserve(self, extra: int) -> None:
        """Room for `extra` more rows in one allocation (a load of a million rows then copies nothing)."""
        need = self.n + extra
        if need > len(self.buf):
            grown = np.empty((need, *self.buf.shape[1:]), dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown

    def append(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self.buf):
            cap = max(need, 2 * len(self.buf))
            grown = np.empty((cap, *self.buf.shape[1:]), dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n:need] = rows
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.buf[: self.n]


class ColumnCache:
    """Per-process columns of the clips table for filtering and the signature scan; caught up on every search.

    The ids and signatures are always kept; the filter columns (stream codes, wall-clock spans, stream-time ends)
    are read the first time a question filters by them, then kept in step: the first question without a filter
    reads two columns of every clip, not six (the column reads are most of what a cold question costs)."""

    GROUPS = {"stream": ("stream",), "wall": ("wall_start", "wall_end"), "t_end": ("t_end",)}

    def __init__(self):
        self.generation: str | None = None
        self.last_id = 0
        self.sig_bytes: int | None = None
        self.codes: dict[str, int] = {}  # stream name -> code
        self.loaded: list[str] = []  # filter column groups read so far

    def _reset(self, generation: str, sig_bytes: int | None) -> None:
        self.generation, self.sig_bytes, self.last_id, self.codes, self.loaded = generation, sig_bytes, 0, {}, []
        self.ids = _Grow(np.int64)
        self.stream = _Grow(np.int32)
        self.wall = _Grow(np.float64, 2)  # (N, 2) wall_start, wall_end (NaN: no clock)
        self.t_end = _Grow(np.float64)  # (N,) stream-time end
        self.has_sig = _Grow(np.bool_)
        self.sigs = _Grow(np.uint8, max(1, (sig_bytes or SIG_TAIL + 1) - SIG_TAIL))  # (N, B) sign bits
        self.tails = _Grow(np.float32, 2)  # (N, 2) |r|, r.center
        self.all_signed = True  # every row has a signature
        self.df: dict[str, tuple[int, int, int]] = {}  # query word -> (documents holding it, cache rows, count limit)

    @staticmethod
    def needs(streams: list[str] | None, wall_from: float | None, wall_to: float | None,
              stream_until: float | None) -> tuple[str, ...]:
        """The filter column groups a question's filters read."""
        return tuple(g for g, used in (("stream", streams is not None),
                                       ("wall", wall_from is not None or wall_to is not None),
                                       ("t_end", stream_until is not None)) if used)

    def refresh(self, conn: sqlite3.Connection, generation: str, sig_bytes: int | None,
                need: tuple[str, ...] = ()) -> None:
        """Read the rows committed since the last refresh (all of them after a generation change), and the filter
        columns in `need` of the rows already held (inside the caller's read transaction: one snapshot)."""
        if generation != self.generation or sig_bytes != self.sig_bytes:
            self._reset(generation, sig_bytes)
        for group in need:
            if group not in self.loaded and not self._backfill(conn, group):
                self._reset(generation, sig_bytes)  # the rows changed under us (cannot happen within a generation)
                self.loaded = list(need)
                break
        cols = ["id", "sig", *(c for g in self.loaded for c in self.GROUPS[g])]
        if self.last_id == 0:  # a first load: a count over the smallest index (~0.1 s at 1M), every column sized once
            new_rows = conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
        else:  # rows added since (ids only grow within a generation): an upper bound from the primary key
            new_rows = (conn.execute("SELECT MAX(id) FROM clips").fetchone()[0] or 0) - self.last_id
        if new_rows > REFRESH_ROWS:
            for col in self._columns(self.loaded):
                col.reserve(new_rows)
        cur = conn.execute(f"SELECT {', '.join(cols)} FROM clips WHERE id > ? ORDER BY id", (self.last_id,))
        while rows := cur.fetchmany(REFRESH_ROWS):  # a chunk at a time: the Python rows never all exist at once
            self._append(rows, cols)

    def _columns(self, groups: list[str]) -> list[_Grow]:
        named = {"stream": [self.stream], "wall": [self.wall], "t_end": [self.t_end]}
        return [self.ids, self.has_sig, self.sigs, self.tails, *(c for g in groups for c in named[g])]

    def _backfill(self, conn: sqlite3.Connection, group: str) -> bool:
        """Read one filter column group for the rows held (ids up to last_id); False if they are not the same rows."""
        cols = ["id", *self.GROUPS[group]]
        col = {"stream": self.stream, "wall": self.wall, "t_end": self.t_end}[group]
        col.__init__(col.buf.dtype, None if col.buf.ndim == 1 else col.buf.shape[1])
        col.reserve(self.ids.n)
        cur = conn.execute(f"SELECT {', '.join(cols)} FROM clips WHERE id <= ? ORDER BY id", (self.last_id,))
        while rows := cur.fetchmany(REFRESH_ROWS):
            self._append_group(group, list(zip(*rows))[1:])
        if col.n != self.ids.n:
            return False
        self.loaded.append(group)
        return True

    def _append_group(self, group: str, values: list[tuple]) -> None:
        if group == "stream":
            (streams,) = values
            codes = self.codes
            for name in set(streams) - codes.keys():
                codes[name] = len(codes)
            self.stream.append(np.fromiter(map(codes.__getitem__, streams), dtype=np.int32, count=len(streams)))
        elif group == "wall":
            w0, w1 = values
            wall = np.empty((len(w0), 2), dtype=np.float64)
            wall[:, 0] = np.array(w0, dtype=np.float64)  # None -> NaN (no clock)
            wall[:, 1] = np.array(w1, dtype=np.float64)
            self.wall.append(wall)
        else:
            self.t_end.append(np.array(values[0], dtype=np.float64))

    def _append(self, rows: list[tuple], cols: list[str]) -> None:
        """One chunk of rows (the columns `cols`: id, sig, then the loaded groups') -> the columns, with as little
        per-row Python as possible (the first question of a process loads a million rows through here)."""
        values = list(zip(*rows))
        ids, sigs = values[0], values[1]
        width = self.sigs.buf.shape[1]
        full = width + SIG_TAIL
        try:  # the usual case: every row signed (a signature is `full` bytes or NULL within a generation)
            joined = b"".join(sigs)
        except TypeError:  # a NULL among them
            joined = b""
        if len(joined) == full * len(rows):
            has = np.ones(len(rows), dtype=bool)
            packed = np.frombuffer(joined, dtype=np.uint8).reshape(-1, full)
        else:
            sig_len = np.fromiter((0 if s is None else len(s) for s in sigs), dtype=np.int64, count=len(rows))
            has = sig_len == full
            packed = np.zeros((len(rows), full), dtype=np.uint8)
        if not has.all() and has.any():
            packed[has] = np.frombuffer(b"".join(s for s, h in zip(sigs, has) if h), dtype=np.uint8).reshape(-1, full)
        self.ids.append(np.array(ids, dtype=np.int64))
        self.has_sig.append(has)
        self.all_signed = self.all_signed and bool(has.all())
        self.sigs.append(packed[:, :width])
        self.tails.append(np.ascontiguousarray(packed[:, width:]).view("<f4").reshape(-1, 2))
        at = 2
        for group in self.loaded:
            k = len(self.GROUPS[group])
            self._append_group(group, values[at:at + k])
            at += k
        self.last_id = int(ids[-1])

    def select(self, streams: list[str] | None, wall_from: float | None, wall_to: float | None,
               stream_until: float | None = None) -> np.ndarray | slice:
        """Row positions inside the filters (a slice when there is none): one of the streams, a wall-clock span
        overlapping the window, and (for a causal view) a stream-time end at or before `stream_until`. The groups
        `needs` names for these filters must have been refreshed."""
        if streams is None and wall_from is None and wall_to is None and stream_until is None:
            return slice(0, self.ids.n)  # every row: a view, no copy
        missing = [g for g in self.needs(streams, wall_from, wall_to, stream_until) if g not in self.loaded]
        if missing:
            raise RuntimeError(f"column cache: refresh with need={tuple(missing)} before select")
        keep = np.ones(self.ids.n, dtype=bool)
        if stream_until is not None:
            keep &= self.t_end.view <= stream_until
        if streams is not None:
            codes = [self.codes[s] for s in streams if s in self.codes]
            keep &= np.isin(self.stream.view, codes)
        if wall_to is not None or wall_from is not None:
            wall = self.wall.view
            if wall_to is not None:
                keep &= wall[:, 0] < wall_to  # half-open window; NaN (no clock) compares False: outside
            if wall_from is not None:
                keep &= (wall[:, 1] > wall_from) | (wall[:, 0] >= wall_from)
        return np.flatnonzero(keep)


@dataclass
class Shortlist:
    """The best clips for a question, best first, with their vectors (for MMR) and scores."""

    records: list[ClipRecord]
    vectors: np.ndarray  # (S, D) float32
    similarity: np.ndarray  # (S,) mean pairwise token cosine to the question
    relevance: np.ndarray  # (S,) what ranked them: similarity ("paper"), or the fused score on its scale
    considered: int  # clips inside the filters
    lexical_hits: int  # keyword candidates found
    mode: str


def document_frequency(conn: sqlite3.Connection, word: str, limit: int, cache: ColumnCache | None = None) -> int:
    """How many captions hold `word` (its stemmed form: the index is asked, fts5vocab only lists stems), counted up
    to limit + 1. Cached in the column cache per generation while the memory grew by less than DF_REFRESH since."""
    n = 0 if cache is None else cache.ids.n
    if cache is not None:
        hit = cache.df.get(word)
        if hit is not None and n <= hit[1] * (1 + DF_REFRESH) and (hit[0] <= hit[2] or hit[2] >= limit):  # exact, or capped at a limit >= this one
            return hit[0]
    df = conn.execute("SELECT COUNT(*) FROM (SELECT rowid FROM clips_fts WHERE clips_fts MATCH ? LIMIT ?)",
                      (f'"{word}"', int(limit) + 1)).fetchone()[0]
    if cache is not None:
        cache.df[word] = (df, n, int(limit))
    return df


def fts_query(conn: sqlite3.Connection, text: str, n_clips: int, cache: ColumnCache | None = None) -> str | None:
    """An FTS5 OR-query of the question's informative words, or None when nothing informative is left. Dropped:
    stop words, terms in more than COMMON_TERM_FRACTION of the captions (or COMMON_TERM_POSTINGS), and past the
    posting budget: the terms are taken rarest first while their postings together stay within LEXICAL_POSTINGS
    (the rarest always), because BM25 scores every posting of every term it is given and a common term adds little
    to a score (its idf is low)."""
    words = informative_terms(text)
    if not words:
        return None
    limit = int(max(50, min(COMMON_TERM_FRACTION * n_clips, COMMON_TERM_POSTINGS)))
    df = {w: document_frequency(conn, w, limit, cache) for w in words}
    chosen, total = set(), 0
    for w in sorted((w for w in words if 0 < df[w] <= limit), key=lambda w: (df[w], w)):
        if chosen and total + df[w] > LEXICAL_POSTINGS:
            break
        chosen.add(w)
        total += df[w]
    return " OR ".join(f'"{w}"' for w in words if w in chosen) or None


def filter_sql(col: str = "", streams: list[str] | None = None, wall_from: float | None = None,
               wall_to: float | None = None, stream_until: float | None = None) -> tuple[list[str], list]:
    """SQL conditions (and their arguments) for the filters every query shares; `col` prefixes the column names
    (e.g. "c."). A clip overlaps the half-open window [wall_from, wall_to) when it starts before its end and ends
    after its start (or starts at it)."""
    where, args = [], []
    if stream_until is not None:
        where.append(f"{col}t_end <= ?")
        args.append(float(stream_until))
    if streams is not None:
        where.append(f"{col}stream IN ({', '.join('?' * len(streams))})")
        args += list(streams)
    if wall_to is not None:
        where.append(f"{col}wall_start < ?")
        args.append(float(wall_to))
    if wall_from is not None:
        where.append(f"({col}wall_end > ? OR {col}wall_start >= ?)")
        args += [float(wall_from), float(wall_from)]
    return where, args


def lexical(conn: sqlite3.Connection, query: str, streams: list[str] | None, wall_from: float | None,
            wall_to: float | None, limit: int, stream_until: float | None = None,
            id_range: tuple[int, int] | None = None, scored: int | None = None) -> list[int]:
    """Clip ids matching the FTS5 query inside the filters, best BM25 first. `id_range` (the lowest and highest id
    inside the filters, from the column cache) lets FTS5 skip the postings outside it before any is scored;
    `scored` bounds BM25's work: only the newest `scored` matches (by id, inside the range) are ranked — finding
    where they start walks the matches' ids without scoring them (well under a millisecond at 1M captions)."""
    where, args = filter_sql("c.", streams, wall_from, wall_to, stream_until)
    lo, hi = id_range if id_range is not None else (None, None)
    if scored is not None:
        bound = ["clips_fts MATCH ?"] + (["rowid >= ?", "rowid <= ?"] if id_range is not None else [])
        row = conn.execute(f"SELECT rowid FROM clips_fts WHERE {' AND '.join(bound)} ORDER BY rowid DESC "
                           f"LIMIT 1 OFFSET ?", (query, *([lo, hi] if id_range is not None else []),
                                                 int(scored) - 1)).fetchone()
        if row is not None:  # more than `scored` matches: rank the newest
            lo = row[0]
    rng, rng_args = [], []
    if lo is not None:
        rng, rng_args = ["clips_fts.rowid >= ?"], [int(lo)]
    if hi is not None:
        rng, rng_args = [*rng, "clips_fts.rowid <= ?"], [*rng_args, int(hi)]
    if not where:  # no filter: the keyword index alone, no lookup of each match in the clips table
        sql = (f"SELECT rowid FROM clips_fts WHERE {' AND '.join(['clips_fts MATCH ?', *rng])} "
               f"ORDER BY bm25(clips_fts) LIMIT ?")
        return [r[0] for r in conn.execute(sql, (query, *rng_args, limit))]
    where, args = ["clips_fts MATCH ?", *rng, *where], [query, *rng_args, *args]
    sql = (f"SELECT c.id FROM clips_fts JOIN clips c ON c.id = clips_fts.rowid WHERE {' AND '.join(where)} "
           f"ORDER BY bm25(clips_fts) LIMIT ?")
    return [r[0] for r in conn.execute(sql, (*args, limit))]


# a clip row joined with its arrays (what a ClipRecord holds)
RECORD_SQL = ("SELECT c.id, c.stream, c.idx, c.t_start, c.t_end, c.caption, c.n_tokens, a.vector, a.dim, a.dtype, "
              "c.committed_at, c.wall_start, c.wall_end, a.kept FROM clips c JOIN clip_arrays a ON a.id = c.id")


def record_from_row(r: tuple) -> ClipRecord:
    (_, stream, idx, t0, t1, caption, n_tokens, vec, dim, dtype, committed, w0, w1, kept) = r[:14]
    return ClipRecord(stream, idx, t0, t1, caption, n_tokens, from_blob(vec, dtype, (dim,)), committed, w0, w1,
                      None if kept is None else np.frombuffer(kept, dtype="<i2").astype(np.int16))


def fetch(conn: sqlite3.Connection, ids: list[int]) -> dict[int, ClipRecord]:
    """Records (vectors included) of the given clip ids."""
    if not ids:
        return {}
    rows = conn.execute(f"{RECORD_SQL} WHERE c.id IN (SELECT value FROM json_each(?))",
                        (json.dumps([int(i) for i in ids]),)).fetchall()
    return {r[0]: record_from_row(r) for r in rows}


def fetch_vectors(conn: sqlite3.Connection, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) clip ids -> (ids in the order read (C,) int64, their vectors (C, D) float32), without building records."""
    rows = conn.execute("SELECT id, vector, dtype, dim FROM clip_arrays WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps(np.asarray(ids).tolist()),)).fetchall()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    out_ids = np.array([r[0] for r in rows], dtype=np.int64)
    if all(r[2] == "float32" and r[3] == rows[0][3] for r in rows):  # the usual case: one buffer, one view
        return out_ids, np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1).astype(
            np.float32)
    return out_ids, np.stack([from_blob(r[1], r[2], (r[3],)).astype(np.float32) for r in rows])


def rank_fusion(*rankings: list[int], k: float = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion: id -> sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for r, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + r)
    return fused


def search(conn: sqlite3.Connection, cache: ColumnCache, center: np.ndarray | None, query_vector: np.ndarray,
           query_text: str | None, streams: list[str] | None, wall_from: float | None, wall_to: float | None,
           mode: str, shortlist: int, stream_until: float | None = None) -> Shortlist:
    if mode not in MODES:
        raise UserError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
    if shortlist < 1:
        raise UserError(f"shortlist must be >= 1, got {shortlist}")
    q = np.asarray(query_vector, dtype=np.float32)  # (D,)
    # 1. filter
    rows = inside = cache.select(streams, wall_from, wall_to, stream_until)  # (M,) positions, or a slice of all
    considered = cache.ids.n if isinstance(rows, slice) else len(rows)
    # 2. vector candidates: Hamming shortlist, exact re-rank
    vec_rank: list[int] = []
    if mode != "lexical" and considered:
        signed = cache.all_signed or cache.has_sig.view[rows].all()
        if considered > EXACT_MAX and center is not None and signed:  # (slice: start 0)
            est = estimated_scores(q, center, cache.sigs.view[rows], cache.tails.view[rows])  # (M,)
            best = top_k(est, VECTOR_CANDIDATES)
            rows = best if isinstance(rows, slice) else rows[best]
        ids, vectors = fetch_vectors(conn, cache.ids.view[rows])  # (C,), (C, D)
        sims = vectors.astype(np.float64) @ q.astype(np.float64)  # (C,) exact
        vec_rank = ids[np.lexsort((ids, -sims))].tolist()
    # 3. keyword candidates
    lex_rank: list[int] = []
    if mode != "paper" and query_text and considered:
        fq = fts_query(conn, query_text, cache.ids.n, cache)
        if fq is not None:
            id_range = None
            if not isinstance(inside, slice):
                in_ids = cache.ids.view[inside]  # ascending (the cache is in id order)
                id_range = (int(in_ids[0]), int(in_ids[-1]))
            lex_rank = lexical(conn, fq, streams, wall_from, wall_to, LEXICAL_CANDIDATES, stream_until, id_range,
                               LEXICAL_SCORED)
    # 4. fuse and cut
    if mode == "paper":
        order = vec_rank
    elif mode == "lexical":
        order = lex_rank
    else:
        fused = rank_fusion(vec_rank, lex_rank)
        order = sorted(fused, key=lambda i: (-fused[i], i))
    order = order[:shortlist]
    records = fetch(conn, order)  # only the shortlist is read whole
    recs = [records[i] for i in order]
    dim = len(q)
    vectors = np.stack([r.vector for r in recs]).astype(np.float32) if recs else np.zeros((0, dim), np.float32)
    similarity = vectors.astype(np.float64) @ q.astype(np.float64)  # (S,)
    if mode == "paper" or not len(order):
        relevance = similarity
    else:  # the fused rank as a relevance on the similarity's scale, so MMR's lambda trades it off as before
        ranks = np.arange(1, len(order) + 1, dtype=np.float64)
        span = (similarity.max() - similarity.min()) if len(order) > 1 else 0.0
        relevance = similarity.max() - span * (ranks - 1) / max(len(order) - 1, 1)
    return Shortlist(recs, vectors, similarity, relevance, considered, len(lex_rank), mode)


def informative_terms(text: str) -> list[str]:
    """The question's words that can match a caption: lower-cased, stop words and single letters dropped."""
    words: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w not in _STOP and len(w) > 1 and w not in words:
            words.append(w)
    return words


def keyword_matches(conn: sqlite3.Connection, text: str, streams: list[str] | None, wall_from: float | None,
                    wall_to: float | None, stream_until: float | None = None) -> tuple[int, int | None, int | None]:
    """Clips inside the filters whose caption holds every informative word of `text` (stemmed):
    (how many, id of the earliest, id of the latest) by wall-clock time, then stream time."""
    terms = informative_terms(text)
    if not terms:
        return 0, None, None
    where, args = filter_sql("c.", streams, wall_from, wall_to, stream_until)
    where, args = ["clips_fts MATCH ?", *where], [" AND ".join(f'"{w}"' for w in terms), *args]
    base = f"FROM clips_fts JOIN clips c ON c.id = clips_fts.rowid WHERE {' AND '.join(where)}"
    n = conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
    if not n:
        return 0, None, None
    first = conn.execute(f"SELECT c.id {base} ORDER BY c.wall_start, c.t_start LIMIT 1", args).fetchone()[0]
    last = conn.execute(f"SELECT c.id {base} ORDER BY c.wall_start DESC, c.t_start DESC LIMIT 1", args).fetchone()[0]
    return n, first, last
