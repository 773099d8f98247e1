"""The packed copy of the search columns (runtime/memory/packs.py, schema version 4): written in the transaction of
every change to the clips (commit, import, forget, reindex, migration), read by a process's first question instead of
every clip row, and always equal to the rows (`check_packs`). Real SQLite files; packs of 16 clips."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rlivs.runtime.memory import ClipRecord, Memory, packs
from rlivs.runtime.memory import index as index_mod
from rlivs.runtime.memory import search as search_mod
from tests.helpers.cli import run_cli
from tests.unit.test_memory_index import T0, cos64, exhaustive, records

ROWS, SIG_MIN = 16, 20


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(packs, "PACK_ROWS", ROWS)
    monkeypatch.setattr(index_mod, "SIG_MIN", SIG_MIN)
    monkeypatch.setattr(search_mod, "EXACT_MAX", 8)  # the signature scan decides the candidates
    monkeypatch.setattr(search_mod, "VECTOR_CANDIDATES", 24)


def pack_ranges(db) -> list[tuple[int, int, int]]:
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT first_id, last_id, n FROM clip_packs ORDER BY first_id").fetchall()
    finally:
        c.close()


def commit_all(m: Memory, recs: list[ClipRecord]) -> None:
    for r in recs:
        if r.stream not in {s["name"] for s in m.streams()}:
            m.open_stream(r.stream, "src", "m", "h")
        m.commit_clip(r, None)


def cache_columns(m: Memory) -> dict:
    """What a fresh process's first filtered question loads: every column of the cache, streams by name."""
    m._cache = type(m._cache)()
    m.search(np.ones(32, np.float32), streams=["a", "b"], wall_from=T0, wall_to=T0 + 1e9, stream_until=1e9,
             mode="paper")
    c = m._cache
    names = {code: name for name, code in c.codes.items()}
    return dict(ids=c.ids.view.copy(), sigs=c.sigs.view.copy(), norms=c.norms.view.copy(),
                dots=c.dots.view.copy(),
                has=c.has_sig.view.copy(), wall=c.wall.view.copy(), t_end=c.t_end.view.copy(),
                stream=[names[i] for i in c.stream.view])


def unpacked(db, copy) -> Memory:
    """The same memory without its packs (read row by row), opened read-only."""
    shutil.copy(db, copy)
    c = sqlite3.connect(copy)
    c.execute("DELETE FROM clip_packs")
    c.commit()
    c.close()
    return Memory(copy, readonly=True)


def same_columns(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] if k == "stream" else np.array_equal(a[k], b[k], equal_nan=k == "wall") for k in a)


def test_commits_pack_every_16_clips_and_a_first_question_reads_the_packs_as_the_rows(small, db_pair):
    db, copy = db_pair
    with Memory(db) as m:
        recs = records(40, "a", seed=1) + records(27, "b", seed=2, clock=False)
        commit_all(m, recs)  # signed from clip 19 on (SIG_MIN): the first pack is written then, by the rebuild
        assert pack_ranges(db) == [(1, 16, 16), (17, 32, 16), (33, 48, 16), (49, 64, 16)]  # tail: ids 65-67
        assert m.check_packs() == []
        packed = cache_columns(m)
        assert len(packed["ids"]) == 67 and packed["has"].all() and packed["stream"] == ["a"] * 40 + ["b"] * 27
        q = recs[30].vector
        got = [(r.stream, r.index) for r in m.search(q, mode="paper", shortlist=5).records]
    with unpacked(db, copy) as m:
        assert same_columns(cache_columns(m), packed)
        assert [(r.stream, r.index) for r in m.search(q, mode="paper", shortlist=5).records] == got
        assert got[0] == exhaustive(m, q, 1)[0]


@pytest.fixture
def db_pair(tmp_path):
    return tmp_path / "memory.db", tmp_path / "copy.db"


def test_a_reader_catches_up_across_new_packs_and_backfills_filters_from_them(small, db_pair):
    db, _ = db_pair
    with Memory(db) as w:
        commit_all(w, records(25, "a", seed=1))
        with Memory(db, readonly=True) as r:
            q = w.clips()[3].vector
            assert r.search(q, mode="paper").considered == 25 and r._cache.loaded == []
            commit_all(w, records(30, "a", seed=1, start=25))  # packs written past what the reader holds
            assert len(pack_ranges(db)) == 3
            got = r.search(q, wall_from=T0 + 16 * 10, wall_to=T0 + 16 * 50, mode="paper", shortlist=64)
            assert r._cache.ids.n == 55 and r._cache.wall.n == 55  # caught up, then wall read from packs + tail
            assert got.considered == 40  # clips 10-49
            assert got.records[0].index == max(range(10, 50), key=lambda i: float(cos64(w.clips()[i].vector, q)))
            assert np.array_equal(r._cache.ids.view, np.arange(1, 56))


def test_forget_rewrites_the_packs_it_touches_and_new_clips_pack_after_them(small, db_pair):
    db, copy = db_pair
    with Memory(db) as m:
        commit_all(m, [x for i in range(40) for x in (records(1, "a", 1, start=i)[0], records(1, "b", 2, start=i)[0])])
        before = pack_ranges(db)
        assert len(before) == 5
        assert m.forget(before=T0 + 16 * 10) == 18  # clips 0-8 of a and b: ids 1-18, packs 1 and 2 (in part)
        assert pack_ranges(db) == [(19, 32, 14), *before[2:]] and m.check_packs() == []
        assert m.forget("b") == 31  # one of every two ids, in every pack and the tail
        assert m.check_packs() == []
        assert [n for _, _, n in pack_ranges(db)] == [7, 8, 8, 8]
        m._conn.execute("PRAGMA wal_checkpoint")
        with unpacked(db, copy) as rows:
            assert same_columns(cache_columns(m), cache_columns(rows))
        commit_all(m, records(40, "a", seed=3, start=40))  # new ids above the last pack
        assert m.check_packs() == [] and pack_ranges(db)[-3:] == [(65, 79, 8), (80, 95, 16), (96, 111, 16)]
        assert m.search(np.ones(32, np.float32), streams=["a"], mode="paper").considered == 71
        assert m.forget(before=T0 + 16 * 1000) == 71 and pack_ranges(db) == [] and m.check_packs() == []


def test_import_packs_in_its_one_transaction_and_a_refused_import_leaves_the_packs(small, db_pair):
    db, _ = db_pair
    with Memory(db) as m:
        m.import_clips(records(50, "a"), batch=10)
        assert [n for _, _, n in pack_ranges(db)] == [16, 16, 16] and m.check_packs() == []
        bad = records(40, "b") + [records(1, "a", start=3)[0]]  # clip 3 of a is already stored: all refused
        with pytest.raises(ValueError, match="does not continue it"):
            m.import_clips(bad)
        assert len(pack_ranges(db)) == 3 and m.count_clips() == 50
        m.import_clips(records(40, "b"))
        assert len(pack_ranges(db)) == 5 and m.check_packs() == []


def test_reindex_rebuilds_the_packs_with_the_new_signatures(small, db_pair):
    db, _ = db_pair
    with Memory(db) as m:
        m.import_clips(records(60, "a"))
        old = sqlite3.connect(db).execute("SELECT sigs FROM clip_packs ORDER BY first_id").fetchall()
        m.commit_clip(records(1, "a", seed=9, start=60)[0], None)  # (no stream row needed: import made it)
        m.reindex()  # the center is now the mean of 61 clips, not of the first 20
        new = sqlite3.connect(db).execute("SELECT sigs FROM clip_packs ORDER BY first_id").fetchall()
        assert len(new) == len(old) and new != old and m.check_packs() == []


def test_check_packs_finds_a_pack_that_disagrees_with_the_rows_and_reindex_repairs_it(small, db_pair):
    db, _ = db_pair
    with Memory(db) as m:
        m.import_clips(records(50, "a"))
    c = sqlite3.connect(db)
    c.execute("UPDATE clip_packs SET sigs = zeroblob(length(sigs)) WHERE first_id = 17")
    c.execute("DELETE FROM clip_packs WHERE first_id = 1")
    c.commit()
    c.close()
    with Memory(db) as m:
        problems = m.check_packs()
    assert any("[17, 32]: its signatures differ" in p for p in problems)
    assert any("the packs hold 32 clips, the clips table 48" in p for p in problems)
    r = run_cli("memory", "check", "--db", str(db))
    assert r.exit_code == 2 and "disagree with the clips" in r.output and "rlivs reindex" in r.output
    assert run_cli("reindex", "--db", str(db)).exit_code == 0
    r = run_cli("memory", "check", "--db", str(db))
    assert r.exit_code == 0 and "agree with its 50 clips" in r.output


def test_a_version_3_file_is_packed_by_its_migration_and_a_kill_during_it_leaves_version_3(small, db_pair):
    db, _ = db_pair
    with Memory(db) as m:
        m.import_clips(records(50, "a"))
    c = sqlite3.connect(db)  # the version-3 file an older rlivs wrote
    c.execute("DROP TABLE clip_packs")
    c.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    c.commit()
    c.close()
    script = textwrap.dedent(f"""
        import os, signal
        from rlivs.runtime.memory import Memory, packs
        packs.PACK_ROWS = {ROWS}
        Memory._migration_pause = staticmethod(lambda s: os.kill(os.getpid(), signal.SIGKILL))
        Memory({str(db)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    c = sqlite3.connect(db)
    assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert "clip_packs" not in {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    c.close()
    with Memory(db, readonly=True) as m:  # the next open migrates it (a reader through a short-lived writer)
        assert m.check_packs() == [] and m.search(np.ones(32, np.float32), mode="paper").considered == 50
    assert [n for _, _, n in pack_ranges(db)] == [16, 16, 16]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from rlivs.runtime.memory import Memory, packs, index
    from tests.unit.test_memory_index import records
    packs.PACK_ROWS, index.SIG_MIN = 16, 8
    m = Memory(sys.argv[1])
    m.open_stream("a", "src", "m", "h")
    for r in records(15, "a"):
        m.commit_clip(r, None)
    assert m._conn.execute("SELECT COUNT(*) FROM clip_packs").fetchone()[0] == 0
    m._after_clip_insert = lambda: os.kill(os.getpid(), signal.SIGKILL)  # after clip 15's pack, before COMMIT
    m.commit_clip(records(1, "a", start=15)[0], None)
""")


def test_a_kill_inside_the_commit_that_writes_a_pack_loses_neither_and_resumes(small, db_pair):
    db, _ = db_pair
    proc = subprocess.run([sys.executable, "-c", CHILD, str(db)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Memory(db) as m:
        assert m.count_clips() == 15 and pack_ranges(db) == [] and m.check_packs() == []
        assert m.open_stream("a", "src", "m", "h").next_index == 15
        m.commit_clip(records(1, "a", start=15)[0], None)
        assert pack_ranges(db) == [(1, 16, 16)] and m.check_packs() == []
        q = m.clips()[15].vector
        assert [(r.stream, r.index) for r in m.search(q, mode="paper", shortlist=1).records] == exhaustive(m, q, 1)


@pytest.mark.parametrize("threads", [1, 3])
def test_the_signature_scan_in_parts_equals_one_pass(monkeypatch, threads):
    from rlivs.runtime.memory import columns
    monkeypatch.setattr(columns, "SCAN_THREADS", threads)
    monkeypatch.setattr(columns, "SCAN_SPLIT_MIN", 100)
    rng = np.random.default_rng(3)
    center = rng.standard_normal(64).astype(np.float32)
    vecs = (rng.standard_normal((1000, 64)) + center).astype(np.float32)
    sigs = np.frombuffer(b"".join(columns.signature(v, center) for v in vecs), np.uint8).reshape(1000, -1)
    bits, tails = np.ascontiguousarray(sigs[:, :8]), np.ascontiguousarray(sigs[:, 8:]).view("<f4")
    cols = (np.ascontiguousarray(tails[:, 0]), np.ascontiguousarray(tails[:, 1]))
    q = vecs[7] + 0.1
    whole = columns.estimated_scores(q, center, bits, *cols)
    assert np.allclose(columns.scan(q, center, bits, *cols, slice(0, 1000)), whole, rtol=1e-6, atol=1e-6)
    for rows in (np.arange(0, 1000, 2), np.arange(0, 1000, 7)):  # half of the rows (scanned whole), a seventh (gathered)
        assert np.allclose(columns.scan(q, center, bits, *cols, rows), whole[rows], rtol=1e-6, atol=1e-6)
