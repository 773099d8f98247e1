"""The per-process column cache of the clips table and the binary signatures its scan estimates similarity from
(the vector side of search.py; the format of a clip's `sig` column is defined here)."""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import packs
from .column_types import ID32_MAX, Grow, WallSpans

SIG_MIN = 2048  # the signature center is fixed when the memory first holds this many clips
REFRESH_ROWS = 20000  # the column cache reads the clips table this many rows at a time


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


SCAN_THREADS = max(1, min(4, os.cpu_count() or 1))  # threads of a big signature scan (numkong and numpy let go
# of the GIL): on an idle second core a million-row scan takes about half the time
SCAN_SPLIT_MIN = 262144  # rows: a smaller scan runs in the calling thread
_pool: ThreadPoolExecutor | None = None


def scan(query: np.ndarray, center: np.ndarray, bits: np.ndarray, norms: np.ndarray, dots: np.ndarray,
         rows: np.ndarray | slice, inv_len: np.ndarray | None = None) -> np.ndarray:
    """`estimated_scores` of the cache rows at `rows` (a slice of every row, or positions); with `inv_len` (the
    rows' 1/|v|, `ColumnCache.inverse_lengths`) the cosine's. A big scan is split in
    SCAN_THREADS contiguous parts run at once; positions covering more than a quarter of the rows are scored by
    scanning every row and taking theirs (gathering a quarter of the signatures costs more than scanning the rest)."""
    global _pool
    if not isinstance(rows, slice) and len(rows) * 4 <= len(bits):
        return estimated_scores(query, center, bits[rows], norms[rows], dots[rows],
                                inv_len=None if inv_len is None else inv_len[rows])
    n = len(bits)
    if SCAN_THREADS == 1 or n < SCAN_SPLIT_MIN:
        est = estimated_scores(query, center, bits, norms, dots, inv_len=inv_len)
    else:
        if _pool is None:
            _pool = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="rlivs-scan")
        edges = np.linspace(0, n, SCAN_THREADS + 1).astype(int)
        est = np.empty(n, dtype=np.float32)  # each part writes its own slice: no concatenated copy (16 MB at 4M)
        parts = [_pool.submit(estimated_scores, query, center, bits[a:b], norms[a:b], dots[a:b], est[a:b],
                              None if inv_len is None else inv_len[a:b])
                 for a, b in zip(edges[:-1], edges[1:])]
        for p in parts:
            p.result()
    return est if isinstance(rows, slice) else est[rows]


def estimated_scores(query: np.ndarray, center: np.ndarray, bits: np.ndarray, norms: np.ndarray,
                     dots: np.ndarray, out: np.ndarray | None = None,
                     inv_len: np.ndarray | None = None) -> np.ndarray:
    """(D,) query q; (N, B) sign bits, (N,) |r| and (N,) r.center of N clips -> (N,) estimates of q.v - q.center
    (which ranks like the dot product q.v: q.center is the same for every clip); with `inv_len`, the (N,) 1/|v| of
    the clips, estimates of q.v / |v| (which ranks like the cosine: |q| is the same for every clip). With
    v = center + r and q = center + r_q: q.v = q.center + r.center + r.r_q, and
    r.r_q ~ |r| |r_q| cos(pi * hamming(sign r, sign r_q) / D): the angle between two vectors is about pi times the
    fraction of (here: coordinate) hyperplanes that separate them."""
    rq = query.astype(np.float64) - center
    h = hamming(signature_bits(query, center), bits, out)  # (N,) float32: `out`, or a new array; ours to change
    if h.dtype != np.float32 or not h.flags.writeable:
        h = h.astype(np.float32)
    h *= np.float32(np.pi / len(center))
    np.cos(h, out=h)
    h *= norms  # contiguous columns: ~25% faster than the columns of an (N, 2) array
    h *= np.float32(np.linalg.norm(rq))
    h += dots
    if inv_len is not None:
        h += np.float32(query.astype(np.float64) @ center)  # q.v, no longer a constant offset once divided
        h *= inv_len
    return h  # float32: ranking a shortlist needs no more


def hamming(query_sig: np.ndarray, sigs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(B,) uint8, (N, B) uint8 -> (N,) float32 bit differences (numkong's SIMD kernel; numpy where it is missing),
    written into `out` ((N,) contiguous float32) when given."""
    if len(sigs) == 0:
        return np.zeros(0, dtype=np.float32) if out is None else out
    try:
        import numkong
    except ImportError:  # numkong ships wheels for x86_64 and aarch64; this is for any other machine
        h = numpy_hamming(query_sig, sigs)
        if out is None:
            return h
        out[:] = h
        return out
    if out is not None and out.dtype == np.float32 and out.flags.c_contiguous:
        numkong.cdist(sigs, query_sig[None], metric="hamming", dtype="uint1", out=out.reshape(-1, 1))
        return out
    got = numkong.cdist(sigs, query_sig[None], metric="hamming", dtype="uint1", out_dtype="float32")  # (N, 1): the
    # faster order of the two (~15% at 1M rows)
    h = np.asarray(got).reshape(-1)
    if out is None:
        return h
    out[:] = h
    return out


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # bits set per byte value


def numpy_hamming(query_sig: np.ndarray, sigs: np.ndarray) -> np.ndarray:
    """`hamming` in numpy alone: np.bitwise_count where numpy has it (>= 2.0), else a byte lookup table (numpy 1.26,
    what NVIDIA's onnxruntime-gpu build on a Jetson needs)."""
    diff = sigs ^ query_sig  # (N, B) uint8
    counts = np.bitwise_count(diff) if hasattr(np, "bitwise_count") else _POPCOUNT[diff]
    return counts.sum(axis=1, dtype=np.int32).astype(np.float32)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest of (N,) scores, unordered (ties aside, what argpartition gives). A full
    argpartition of a million floats costs ~20 ms; a threshold from a strided sample first keeps only the few
    thousand above it, then those are partitioned (if the sample misjudged: the k-th highest value by a full
    partition, then the rows above it and as many at it as fit, lowest positions first)."""
    n = len(scores)
    if n <= k:
        return np.arange(n)
    if n > 64 * k:
        sample = scores[:: n // 16384 or 1]
        keep = np.flatnonzero(scores >= np.quantile(sample, 1.0 - 4.0 * k / n))  # ~4k expected above
        if k <= len(keep) <= 64 * k:
            return keep[np.argpartition(scores[keep], len(keep) - k)[len(keep) - k:]]
    kth = np.partition(scores, n - k)[n - k]  # the k-th highest: one float32 copy (argpartition's int64 positions
    # of every row would add 32 MB at 4M rows to the peak)
    above = np.flatnonzero(scores > kth)
    return np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])


class ColumnCache:
    """Per-process columns of the clips table for filtering and the signature scan; caught up on every search.

    The ids and signatures are always kept; the filter columns (stream codes, wall-clock spans, stream-time ends)
    are read the first time a question filters by them, then kept in step: the first question without a filter
    reads two columns of every clip, not six (the column reads are most of what a cold question costs)."""

    def __init__(self):
        self.generation: str | None = None
        self.last_id = 0
        self.sig_bytes: int | None = None
        self.codes: dict[str, int] = {}  # stream name -> code
        self.loaded: list[str] = []  # filter column groups read so far

    def _reset(self, generation: str, sig_bytes: int | None) -> None:
        self.generation, self.sig_bytes, self.last_id, self.codes, self.loaded = generation, sig_bytes, 0, {}, []
        self.ids = Grow(np.uint32)  # int64 once an id passes ID32_MAX
        self.stream = Grow(np.int32)
        self.wall = WallSpans()  # (N, 2) wall_start, wall_end (NaN: no clock), float32 offsets
        self.t_end = Grow(np.float64)  # (N,) stream-time end
        self.has_sig = Grow(np.bool_)
        self.sigs = Grow(np.uint8, max(1, (sig_bytes or SIG_TAIL + 1) - SIG_TAIL))  # (N, B) sign bits
        self.norms = Grow(np.float32)  # (N,) |r|
        self.dots = Grow(np.float32)  # (N,) r.center
        self.inv_len = Grow(np.float32)  # (N,) 1/|v| (from |r|, r.center, |center|): `inverse_lengths`
        self.inv_len_center: float | None = None  # the |center|^2 they were computed with
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
        """Read the clips committed since the last refresh (all of them after a generation change), and the filter
        columns in `need` of the clips already held (inside the caller's read transaction: one snapshot). Packed
        clips come from their packs (packs.py: a few BLOBs per PACK_ROWS clips), the tail from the clips table."""
        if generation != self.generation or sig_bytes != self.sig_bytes:
            self._reset(generation, sig_bytes)
        for group in need:
            if group not in self.loaded and not self._backfill(conn, group):
                self._reset(generation, sig_bytes)  # the rows changed under us (cannot happen within a generation)
                self.loaded = list(need)
                break
        top = packs.packed_to(conn)
        tail = conn.execute("SELECT COUNT(*) FROM clips WHERE id > ?", (max(top, self.last_id),)).fetchone()[0]
        if self.last_id == 0:  # a first load: every column sized once (the packs' counts, the tail's rows)
            new_rows = conn.execute("SELECT COALESCE(SUM(n), 0) FROM clip_packs").fetchone()[0] + tail
        else:  # rows added since (ids only grow within a generation): an upper bound from the primary key's span
            new_rows = max(top - self.last_id, 0) + tail
        if new_rows > REFRESH_ROWS:
            for col in self._columns(self.loaded):
                col.reserve(new_rows)
        for chunk in self._chunks(conn, self.last_id, None, (*self.loaded, "sig"), top):
            self._append(chunk)

    def _chunks(self, conn: sqlite3.Connection, after: int, upto: int | None, groups: tuple[str, ...], top: int):
        """The clips with after < id <= upto (None: no bound), in id order, as dicts of arrays (packs.read's form):
        first from the packs (ids up to `top`, the highest packed id), then from the clips table."""
        if after < top:
            yield from packs.read(conn, after, upto, groups)
        lo = max(after, top)
        if upto is not None and upto <= lo:
            return
        bound = "" if upto is None else " AND id <= ?"
        cur = conn.execute(f"SELECT {', '.join(packs.ROW_COLS)} FROM clips WHERE id > ?{bound} ORDER BY id",
                           (lo,) if upto is None else (lo, upto))
        full = (self.sig_bytes or 0)
        while rows := cur.fetchmany(REFRESH_ROWS):  # a chunk at a time: the Python rows never all exist at once
            a = packs.arrays_from_rows(rows)
            if "sig" in groups:
                if a["sigs"] is not None and full and len(a["sigs"]) == full * len(rows):
                    a["sigs"] = np.frombuffer(a["sigs"], dtype=np.uint8).reshape(-1, full)
                else:  # NULL signatures among them (a memory below SIG_MIN clips)
                    sig_list = [r[-1] for r in rows]
                    has = np.array([s is not None and len(s) == full for s in sig_list], dtype=bool)
                    width = self.sigs.buf.shape[1] + SIG_TAIL
                    packed = np.zeros((len(rows), width), dtype=np.uint8)
                    if has.any():
                        packed[has] = np.frombuffer(b"".join(s for s, h in zip(sig_list, has) if h),
                                                    dtype=np.uint8).reshape(-1, width)
                    a["sigs"], a["has"] = packed, has
            yield a

    def _columns(self, groups: list[str]) -> list[Grow]:
        named = {"stream": [self.stream], "wall": [self.wall], "t_end": [self.t_end]}
        return [self.ids, self.has_sig, self.sigs, self.norms, self.dots, *(c for g in groups for c in named[g])]

    def _backfill(self, conn: sqlite3.Connection, group: str) -> bool:
        """Read one filter column group for the rows held (ids up to last_id); False if they are not the same rows."""
        if group == "wall":
            col = self.wall = WallSpans()
        else:
            col = {"stream": self.stream, "t_end": self.t_end}[group]
            col.__init__(col.buf.dtype)
        col.reserve(self.ids.n)
        for chunk in self._chunks(conn, 0, self.last_id, (group,), packs.packed_to(conn)):
            self._append_group(group, chunk)
        if col.n != self.ids.n:
            return False
        self.loaded.append(group)
        return True

    def _append_group(self, group: str, chunk: dict) -> None:
        if group == "stream":
            codes = self.codes
            lut = np.array([codes.setdefault(name, len(codes)) for name in chunk["names"]], dtype=np.int32)
            self.stream.append(lut[chunk["codes"]] if len(lut) else np.zeros(0, np.int32))
        elif group == "wall":
            self.wall.append(chunk["wall"])
        else:
            self.t_end.append(chunk["t_end"])

    def _append(self, chunk: dict) -> None:
        """One chunk of clips (ids, signatures, the loaded groups' columns) -> the columns, without per-row Python
        (the first question of a process loads every clip through here)."""
        ids = chunk["ids"]
        if len(ids) == 0:
            return
        width = self.sigs.buf.shape[1]
        sigs = chunk["sigs"]
        has = chunk.get("has")
        if sigs.shape[1] != width + SIG_TAIL:  # signatures of another width than the center's (not this generation)
            sigs, has = np.zeros((len(ids), width + SIG_TAIL), np.uint8), np.zeros(len(ids), bool)
        if has is None:
            has = np.ones(len(ids), dtype=bool)
        if self.ids.buf.dtype != np.int64 and (ids[-1] > ID32_MAX or ids[0] < 0):  # (ids ascend)
            self.ids.widen(np.int64)
        self.ids.append(ids)
        self.has_sig.append(has)
        self.all_signed = self.all_signed and bool(has.all())
        self.sigs.append(sigs[:, :width])
        tails = np.ascontiguousarray(sigs[:, width:]).view("<f4").reshape(-1, 2)
        self.norms.append(tails[:, 0])
        self.dots.append(tails[:, 1])
        for group in self.loaded:
            self._append_group(group, chunk)
        self.last_id = int(ids[-1])

    def inverse_lengths(self, center: np.ndarray) -> np.ndarray:
        """(N,) float32 1/|v| of the rows, for the cosine (0 for a zero vector, or a row without a signature), from
        what each signature stores: |v|^2 = |center + r|^2 = |center|^2 + 2 r.center + |r|^2. Computed for the rows
        added since the last call (4 bytes a clip; a million rows: a few ms once), all again if the center changed
        (it changes only with the generation, which reloads the cache anyway)."""
        c2 = float(np.asarray(center, np.float64) @ np.asarray(center, np.float64))
        if self.inv_len_center != c2:
            self.inv_len, self.inv_len_center = Grow(np.float32), c2
        if self.inv_len.n < self.ids.n:
            self.inv_len.reserve(self.ids.n - self.inv_len.n)
            for a in range(self.inv_len.n, self.ids.n, 1 << 20):  # in parts: no full-size float64 temporaries
                b = min(a + (1 << 20), self.ids.n)
                r = self.norms.view[a:b].astype(np.float64)
                v2 = c2 + 2.0 * self.dots.view[a:b] + r * r
                inv = np.where(v2 > 1e-24, 1.0 / np.sqrt(np.maximum(v2, 1e-24)), 0.0)
                inv[~self.has_sig.view[a:b]] = 0.0
                self.inv_len.append(inv.astype(np.float32))
        return self.inv_len.view

    def select(self, streams: list[str] | None, wall_from: float | None, wall_to: float | None,
               stream_until: float | None = None, conn: sqlite3.Connection | None = None) -> np.ndarray | slice:
        """Row positions inside the filters (a slice when there is none): one of the streams, a wall-clock span
        overlapping the window, and (for a causal view) a stream-time end at or before `stream_until`. The groups
        `needs` names for these filters must have been refreshed. `conn` (in the refresh's read transaction) reads
        the exact wall-clock span of the rows their float32 offsets leave undecided (a few at each window edge)."""
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
        if wall_to is not None or wall_from is not None:  # half-open window; NaN (no clock): outside
            self.wall.window(wall_from, wall_to, conn, self.ids.view, keep)
        return np.flatnonzero(keep)

