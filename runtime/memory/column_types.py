"""The column cache's column types (columns.py): an append-only numpy column, and the wall-clock spans kept as
float32 offsets whose filters are decided exactly (`WallSpans`)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np


class Grow:
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

    def widen(self, dtype) -> None:
        """The same values in a wider dtype (ids past 2**32 - 1)."""
        self.buf = self.buf[: self.n].astype(dtype)  # (room for more comes back with the next append)


ID32_MAX = 2**32 - 1  # clip ids up to this are held as uint32 (4 bytes a clip, not 8); past it, int64


def round32(x: float, up: bool) -> np.float32:
    """The float32 nearest x on the side asked: >= x (up) or <= x."""
    with np.errstate(over="ignore"):
        f = np.float32(x)
    if np.isfinite(f) and (float(f) < x if up else float(f) > x):
        f = np.nextafter(f, np.float32(np.inf if up else -np.inf))
    return f


class WallSpans:
    """(N, 2) wall-clock spans (start, end; NaN: no clock) as float32 offsets from one float64 `base` (8 bytes a clip,
    not 16: 32 MB at 4M clips), with `err` the largest |value - (base + offset)| of any row held. Exact filters all the
    same: a row is compared by its offset only when that decides (further than `slack` from the threshold); the few
    rows nearer the threshold (within about a second) are decided on their exact values, read back by the caller.
    A row whose offset would be off by more than TOLERANCE seconds (a clock far from the rest) turns the column into
    float64 offsets (exact from then on; the rows before keep their bound `err`)."""

    TOLERANCE = 1.0  # seconds

    def __init__(self):
        self.base: float | None = None
        self.err = 0.0
        self.span = 0.0  # largest |offset| held (bounds the float64 rounding of offsets and thresholds)
        self.cols = (Grow(np.float32), Grow(np.float32))  # start, end: contiguous (a filter reads one at a time)

    @property
    def n(self) -> int:
        return self.cols[0].n

    @property
    def dtype(self):
        return self.cols[0].buf.dtype

    def reserve(self, extra: int) -> None:
        for c in self.cols:
            c.reserve(extra)

    def _widen(self) -> None:
        for c in self.cols:
            c.widen(np.float64)

    def _add(self, offsets: np.ndarray) -> None:
        for i, c in enumerate(self.cols):
            c.append(offsets[:, i])

    def append(self, wall: np.ndarray) -> None:
        wall = np.asarray(wall, dtype=np.float64)
        finite = np.isfinite(wall)
        if self.base is None and finite.any():
            self.base = float(wall[finite][0])
        d = wall - (self.base or 0.0)  # NaN stays NaN
        if (~finite & ~np.isnan(wall)).any():  # +-inf: never from a clock; kept as is, in float64
            self._widen()
        if self.dtype == np.float32:
            with np.errstate(over="ignore", invalid="ignore"):
                o = d.astype(np.float32)
                e = np.abs(d - o.astype(np.float64))
            fin = np.isfinite(d)
            worst = float(e[fin].max()) if fin.any() else 0.0
            if np.isfinite(o[fin]).all() and worst <= self.TOLERANCE:
                self.err = max(self.err, worst)
                self._note_span(d[fin])
                self._add(o)
                return
            self._widen()
        self._note_span(d[np.isfinite(d)])
        self._add(d)

    def _note_span(self, d: np.ndarray) -> None:
        if len(d):
            self.span = max(self.span, float(np.abs(d).max()))

    @property
    def view(self) -> np.ndarray:
        """(N, 2) float64 base + offset (within `err` of the stored values)."""
        return (self.base or 0.0) + np.column_stack([c.view.astype(np.float64) for c in self.cols])

    def bounds(self, threshold: float) -> tuple:
        """(lo, hi) in the offsets' dtype around `threshold` - base: an offset below lo is surely (base + offset <
        threshold), above hi surely greater; between them (inclusive) it is undecided. Sound because every rounding
        involved (the offset's, within `err`; the float64 subtractions, within 2**-52 of the magnitudes) is inside
        `slack`. For +-inf and NaN thresholds, the threshold itself (no offset is near it; NaN compares with none)."""
        if not np.isfinite(threshold):
            return threshold, threshold
        base = self.base or 0.0
        t = float(threshold) - base
        slack = self.err + 1e-6 + 1e-12 * (abs(base) + abs(float(threshold)) + self.span)
        if self.dtype == np.float32:
            return round32(t - slack, up=False), round32(t + slack, up=True)
        return np.float64(t - slack), np.float64(t + slack)

    def window(self, wall_from: float | None, wall_to: float | None, conn: sqlite3.Connection | None,
               ids: np.ndarray, keep: np.ndarray) -> None:
        """keep &= the spans overlapping [wall_from, wall_to) (start < wall_to; end > wall_from or start >=
        wall_from; NaN: outside), exactly: the offsets decide all but the rows near an edge, whose exact values
        are read from the clips table (`conn`, by `ids`: the cache's ids)."""
        start, end = self.cols[0].view, self.cols[1].view
        if wall_to is not None:
            to_lo, to_hi = self.bounds(wall_to)
            keep &= start <= to_hi  # not surely >= wall_to (NaN: False)
        if wall_from is not None:
            from_lo, from_hi = self.bounds(wall_from)
            keep &= (end >= from_lo) | (start >= from_lo)  # not surely both before wall_from
        pos = np.flatnonzero(keep)  # inside the filters or undecided: a few thousand rows for a window
        if not len(pos):
            return
        s, e = start[pos], end[pos]
        undecided = np.zeros(len(pos), dtype=bool)
        if wall_to is not None:
            undecided |= s >= to_lo
        if wall_from is not None:
            undecided |= ~((e > from_hi) | (s > from_hi))
        pos = pos[undecided]
        if not len(pos):
            return
        if conn is None:
            raise RuntimeError("column cache: a wall-clock filter needs conn for the rows at its edges")
        w = exact_wall(conn, ids[pos])
        ok = np.ones(len(pos), dtype=bool)
        if wall_to is not None:
            ok &= w[:, 0] < wall_to
        if wall_from is not None:
            ok &= (w[:, 1] > wall_from) | (w[:, 0] >= wall_from)
        keep[pos] = ok


def exact_wall(conn: sqlite3.Connection, ids: np.ndarray) -> np.ndarray:
    """(K,) clip ids -> (K, 2) float64 wall_start, wall_end as the clips table holds them (NaN: no clock)."""
    got = dict((r[0], (r[1], r[2])) for r in conn.execute(
        "SELECT id, wall_start, wall_end FROM clips WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(np.asarray(ids).tolist()),)))
    return np.array([got[int(i)] for i in ids], dtype=np.float64).reshape(-1, 2)  # None -> NaN
