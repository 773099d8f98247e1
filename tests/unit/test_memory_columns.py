"""The column cache's narrow encodings (columns.py): clip ids as uint32 until one passes 2**32 - 1, wall-clock spans
as float32 offsets from a float64 base. Filters must select exactly what float64 comparisons of the stored values
select, at the edges of float32 precision included (the rows near a window edge are decided on the exact values)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from rlivs.runtime.memory import packs
from rlivs.runtime.memory.columns import ID32_MAX, ColumnCache


def clips_db(path, rows: list[tuple]) -> sqlite3.Connection:
    """A file with the clips columns the cache reads (id, stream, wall_start, wall_end, t_end, sig) and no packs."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("CREATE TABLE clips (id INTEGER PRIMARY KEY, stream TEXT, wall_start REAL, wall_end REAL, t_end REAL, "
              "sig BLOB)")
    c.execute(packs.TABLE)
    add(c, rows)
    return c


def add(c: sqlite3.Connection, rows: list[tuple]) -> None:
    with c:  # one transaction
        c.execute("BEGIN")
        c.executemany("INSERT INTO clips VALUES (?, 'a', ?, ?, 0.0, NULL)", rows)


def selected(c: sqlite3.Connection, cache: ColumnCache, wall_from, wall_to) -> np.ndarray:
    c.execute("BEGIN")
    try:
        cache.refresh(c, "1", None, ("wall",))
        return cache.ids.view[cache.select(None, wall_from, wall_to, conn=c)].astype(np.int64)
    finally:
        c.execute("ROLLBACK")


def expected(c: sqlite3.Connection, wall_from, wall_to) -> np.ndarray:
    """The filter in float64 over the stored values (NULL: no clock, outside any window)."""
    ids, w0, w1 = (np.array(x, dtype=float) for x in zip(*c.execute(
        "SELECT id, wall_start, wall_end FROM clips ORDER BY id")))
    keep = np.ones(len(ids), bool)
    if wall_to is not None:
        keep &= w0 < wall_to
    if wall_from is not None:
        keep &= (w1 > wall_from) | (w0 >= wall_from)
    return ids[keep].astype(np.int64)


@pytest.fixture
def season(tmp_path):
    """90 days of 16-s clips at fractional seconds (what time.time() gives): offsets past 2**22 s, where float32
    steps by 0.5 s; some without a clock; a few with exactly the same start."""
    rng = np.random.default_rng(3)
    t0 = 1.7e9 + 0.123456789
    starts = np.sort(t0 + rng.uniform(0, 90 * 86400, 3000))
    starts[100:104] = starts[100]
    rows = [(i + 1, float(s), float(s + 16.0 + rng.uniform(-1e-3, 1e-3))) for i, s in enumerate(starts)]
    for i in (5, 6, 2000):
        rows[i] = (i + 1, None, None)
    return clips_db(tmp_path / "m.db", rows), starts


def edges(values: np.ndarray) -> list[float]:
    """Thresholds at stored values and one float64 step either side of them."""
    out = []
    for v in values:
        out += [float(v), float(np.nextafter(v, np.inf)), float(np.nextafter(v, -np.inf))]
    return out


def test_float32_wall_offsets_select_exactly_what_float64_selects_at_every_edge(season):
    c, starts = season
    cache = ColumnCache()
    picks = starts[[0, 100, 1500, 2998, 2999]]
    ends = [float(e) for (e,) in c.execute("SELECT wall_end FROM clips WHERE id IN (1, 1500, 3000)")]
    probes = edges(picks) + edges(np.array(ends)) + [float(starts[1500] + 0.25), float(starts[1500] - 0.25)]
    checked = 0
    for a in probes:
        for b in (a, a + 6 * 3600, a + 1e-7, float(np.nextafter(a, np.inf))):
            got = selected(c, cache, a, b)
            assert np.array_equal(got, expected(c, a, b)), (a, b)
            checked += 1
        assert np.array_equal(selected(c, cache, a, None), expected(c, a, None))
        assert np.array_equal(selected(c, cache, None, a), expected(c, None, a))
    assert cache.wall.dtype == np.float32 and cache.wall.err > 0.01  # offsets really are inexact here
    for a, b in ((-np.inf, np.inf), (None, np.inf), (-np.inf, None), (0.0, 1.0), (np.nan, None)):
        assert np.array_equal(selected(c, cache, a, b), expected(c, a, b)), (a, b)
    assert checked == 4 * len(probes)


def test_a_clock_far_from_the_rest_widens_the_offsets_and_filters_stay_exact(season):
    c, starts = season
    cache = ColumnCache()
    a = float(starts[700])
    assert np.array_equal(selected(c, cache, a, a + 3600), expected(c, a, a + 3600))
    assert cache.wall.dtype == np.float32
    add(c, [(3001, 5.0, 21.0), (3002, 1e12 + 0.5, 1e12 + 16.5)])  # a camera whose clock was never set; one far ahead
    for lo, hi in ((a, a + 3600), (0.0, 16.0), (5.0, np.nextafter(5.0, np.inf)), (1e12 + 16.5, None),
                   (None, 1e12 + 0.5), (float(np.nextafter(a, -np.inf)), a)):
        assert np.array_equal(selected(c, cache, lo, hi), expected(c, lo, hi)), (lo, hi)
    assert cache.wall.dtype == np.float64 and cache.wall.n == 3002


def test_clip_ids_are_uint32_until_one_passes_the_limit_then_int64_with_the_same_values(tmp_path):
    top = ID32_MAX
    c = clips_db(tmp_path / "m.db", [(i, 1.7e9 + i, 1.7e9 + i + 16) for i in (1, 2, top - 1, top)])
    cache = ColumnCache()
    assert selected(c, cache, None, 1.7e9 + 2.5).tolist() == [1, 2]
    assert cache.ids.view.dtype == np.uint32 and cache.ids.view.tolist() == [1, 2, top - 1, top]
    add(c, [(top + 1, 1.7e9 + 1, 1.7e9 + 17), (2**40, None, None)])
    got = selected(c, cache, 1.7e9 + 16.5, None)
    assert cache.ids.view.dtype == np.int64 and cache.ids.view.tolist() == [1, 2, top - 1, top, top + 1, 2**40]
    assert got.tolist() == expected(c, 1.7e9 + 16.5, None).tolist() == [1, 2, top - 1, top, top + 1]
