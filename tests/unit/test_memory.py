"""memory.db: round trip, crash safety (in-process and SIGKILL), refusals, queries, size bound."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rlivs.runtime.memory import ClipRecord, Memory, StreamState

D = 8  # retrieval vector width in the small tests
TD = 6  # FIFO token width in the small tests


def vec(i: int, dim: int = D, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(1000 + i).standard_normal(dim).astype(dtype)  # (dim,)


def toks(i: int, n: int = 3, dim: int = TD, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((n, dim)).astype(dtype)  # (n, dim)


def rec(i: int, stream: str = "cam", dim: int = D, seconds: float = 2.0) -> ClipRecord:
    return ClipRecord(stream, i, i * seconds, (i + 1) * seconds, f"clip {i} of {stream}", 4 + i, vec(i, dim))


def file_digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def snapshot(m: Memory, stream: str = "cam"):
    """Everything observable about a stream (for 'nothing changed' checks)."""
    st = m.open_stream(stream, "src.mp4", "m", "h1") if not m.readonly else None
    return (m.streams(), m.clips(), st)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "memory.db"


def fill(m: Memory, n: int, stream: str = "cam", capacity: int = 2) -> list[ClipRecord]:
    """Commit n clips with FIFO tokens, evicting beyond `capacity` clips."""
    m.open_stream(stream, "src.mp4", "m", "h1")
    out = []
    for i in range(n):
        r = rec(i, stream)
        m.commit_clip(r, toks(i), evict=[i - capacity] if i >= capacity else [])
        out.append(r)
    return out


# --------------------------------------------------------------------------- round trip


def test_round_trip_and_resume(db):
    with Memory(db, model_fingerprint={"hidden_size": 896}) as m:
        st = m.open_stream("cam", "src.mp4", "m", "h1")
        assert st == StreamState("cam", "src.mp4", "m", "h1", 0, [])
        committed = fill(m, 3)  # clip 2 evicts clip 0
        assert all(r.committed_at > 0 for r in committed)

    with Memory(db, model_fingerprint={"hidden_size": 896}) as m:
        st = m.open_stream("cam", "other-src.mp4", "m", "h1")
        assert st.next_index == 3
        assert st.source == "src.mp4"  # the stored source, not the argument
        assert [i for i, _ in st.fifo] == [1, 2]
        for (i, t) in st.fifo:
            assert t.dtype == np.float32 and t.shape == (3, TD)
            assert t.tobytes() == toks(i).tobytes()
        got = m.clips()
        assert got == committed
        for g, c in zip(got, committed):
            assert g.vector.dtype == np.float32 and g.vector.tobytes() == c.vector.tobytes()
        assert m.model_fingerprint() == {"hidden_size": 896}
        # resume continues after the last committed clip
        m.commit_clip(rec(3), toks(3), evict=[1])
        assert [i for i, _ in m.open_stream("cam", "src.mp4", "m", "h1").fifo] == [2, 3]


def test_bit_exact_special_values_and_float16(db):
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, -1.5, 0.1], dtype=np.float32)
    special_nan = special.view(np.uint32).copy()
    special_nan[0] = 0x7FC00123  # a NaN with a payload
    special = special_nan.view(np.float32)
    half_tokens = toks(7, n=5, dtype=np.float16)
    with Memory(db) as m:
        m.open_stream("cam", "s", "m", "h1")
        m.commit_clip(ClipRecord("cam", 0, 0.0, 1.0, "x", 1, special), half_tokens)
        m.commit_clip(ClipRecord("cam", 1, 1.0, 2.0, "y", 1, vec(1, dtype=np.float16)), None)
    with Memory(db, readonly=True) as m:
        a, b = m.clips()
        assert a.vector.dtype == np.float32 and a.vector.tobytes() == special.tobytes()
        assert b.vector.dtype == np.float16 and b.vector.tobytes() == vec(1, dtype=np.float16).tobytes()
        (i, t), = m.open_stream("cam", "s", "m", "h1").fifo
        assert i == 0 and t.dtype == np.float16 and t.tobytes() == half_tokens.tobytes()
        found = m.search(vec(1), mode="paper")  # a float16 vector is scored as float32
        assert found.vectors.dtype == np.float32 and found.vectors.shape == (2, D)


def test_big_endian_input_is_stored_little_endian(db):
    v = vec(0).astype(">f4")
    with Memory(db) as m:
        m.open_stream("cam", "s", "m", "h1")
        m.commit_clip(ClipRecord("cam", 0, 0.0, 1.0, "x", 1, v), toks(0).astype(">f4"))
        got = m.clips()[0].vector
        assert got.dtype == np.float32 and np.array_equal(got, vec(0))
        raw = m._conn.execute("SELECT vector FROM clip_arrays").fetchone()[0]
        assert raw == vec(0).astype("<f4").tobytes()


# --------------------------------------------------------------------------- transactions and crashes


def test_commit_clip_is_exactly_one_transaction(db):
    with Memory(db) as m:
        fill(m, 2)
        seen: list[str] = []
        m._conn.set_trace_callback(seen.append)
        m.commit_clip(rec(2), toks(2), evict=[0])
        m._conn.set_trace_callback(None)
    stmts = [s.strip().split()[0].upper() for s in seen]
    assert seen[0].strip().upper() == "BEGIN IMMEDIATE"
    assert stmts[-1] == "COMMIT"
    assert stmts.count("BEGIN") == 1 and stmts.count("COMMIT") == 1 and "ROLLBACK" not in stmts
    assert "END" not in stmts


def test_exception_mid_commit_rolls_back_everything(db):
    m = Memory(db)
    fill(m, 2)
    before = snapshot(m)

    def boom():  # after the clip insert, before the FIFO insert/evictions
        assert m._conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0] == 3  # the row is in, uncommitted
        raise RuntimeError("crash mid-commit")

    m._after_clip_insert = boom
    with pytest.raises(RuntimeError, match="crash mid-commit"):
        m.commit_clip(rec(2), toks(2), evict=[0])
    assert not m._conn.in_transaction
    m._after_clip_insert = None
    assert snapshot(m) == before
    st = m.open_stream("cam", "src.mp4", "m", "h1")
    assert st.next_index == 2 and [i for i, _ in st.fifo] == [0, 1]
    # another connection sees the same (nothing leaked into the file)
    with Memory(db, readonly=True) as r:
        assert len(r.clips()) == 2
    # a following correct commit works
    r2 = rec(2)
    m.commit_clip(r2, toks(2), evict=[0])
    m.close()
    with Memory(db) as m:
        st = m.open_stream("cam", "src.mp4", "m", "h1")
        assert st.next_index == 3 and [i for i, _ in st.fifo] == [1, 2]
        assert m.clips()[-1] == r2


def test_fifo_insert_failure_rolls_back_clip_insert(db):
    """The other seam: the FIFO insert itself fails (a conflicting row planted via the hook)."""
    m = Memory(db)
    fill(m, 1)
    before = snapshot(m)

    def plant_conflict():
        m._conn.execute("INSERT INTO fifo VALUES ('cam', 1, 1, 1, 'float32', x'00000000')")

    m._after_clip_insert = plant_conflict
    with pytest.raises(sqlite3.IntegrityError):
        m.commit_clip(rec(1), toks(1))
    m._after_clip_insert = None
    assert snapshot(m) == before
    m.commit_clip(rec(1), toks(1))
    assert m.open_stream("cam", "src.mp4", "m", "h1").next_index == 2
    m.close()


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from rlivs.runtime.memory import ClipRecord, Memory

    db, marker = sys.argv[1], sys.argv[2]
    def toks(i):
        return np.random.default_rng(i).standard_normal((3, 6)).astype(np.float32)
    def vec(i):
        return np.random.default_rng(1000 + i).standard_normal(8).astype(np.float32)
    m = Memory(db, model_fingerprint={"hidden_size": 6})
    m.open_stream("cam", "src.mp4", "m", "h1")
    for i in range(2):
        m.commit_clip(ClipRecord("cam", i, 2.0 * i, 2.0 * i + 2, f"clip {i}", 4, vec(i)), toks(i))
    def die():
        assert m._conn.in_transaction
        open(marker, "w").write("in transaction")
        os.kill(os.getpid(), signal.SIGKILL)
    m._after_clip_insert = die
    m.commit_clip(ClipRecord("cam", 2, 4.0, 6.0, "clip 2", 4, vec(2)), toks(2), evict=[0])
    print("not reached")
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_inside_transaction_resumes_at_last_commit(db, tmp_path):
    marker = tmp_path / "marker"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), str(marker)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert marker.read_text() == "in transaction" and "not reached" not in proc.stdout
    with Memory(db, model_fingerprint={"hidden_size": 6}) as m:
        assert m._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [c.index for c in m.clips()] == [0, 1]
        st = m.open_stream("cam", "src.mp4", "m", "h1")
        assert st.next_index == 2
        assert [i for i, _ in st.fifo] == [0, 1]  # clip 1's state: clip 0 not evicted, clip 2 absent
        assert all(t.tobytes() == toks(i).tobytes() for i, t in st.fifo)
        m.commit_clip(rec(2), toks(2), evict=[0])  # the resume works
        assert [i for i, _ in m.open_stream("cam", "src.mp4", "m", "h1").fifo] == [1, 2]


# --------------------------------------------------------------------------- refusals


def test_refusals_write_nothing(db):
    m = Memory(db)
    fill(m, 2)
    before = snapshot(m)
    cases = [
        (rec(1), toks(1), [], "already committed"),  # duplicate
        (rec(0), toks(0), [], "already committed"),
        (rec(3), toks(3), [], "gap"),
        (rec(2, stream="nope"), toks(2), [], "unknown stream"),
        (rec(2, dim=D + 1), toks(2), [], "dim"),
        (rec(2), toks(2)[0], [], "2-D"),  # 1-D tokens
        (rec(2), toks(2)[None], [], "2-D"),  # 3-D tokens
        (rec(2), toks(2, dim=TD + 1), [], "FIFO"),  # token width differs from the FIFO
        (rec(2), toks(2), [0, 7], "not in its FIFO"),  # evicting what is not stored
        (rec(2), toks(2).astype(np.float64), [], "float32"),
        (ClipRecord("cam", 2, 5.0, 4.0, "x", 1, vec(2)), None, [], "t_start <= t_end"),
        (ClipRecord("cam", 2, 0.0, 1.0, "x", 1, vec(2).astype(np.float64)), None, [], "float32"),
        (ClipRecord("cam", 2, 0.0, 1.0, "x", 1, vec(2)[None]), None, [], "1-D"),
    ]
    for r, t, ev, msg in cases:
        with pytest.raises(ValueError, match=msg):
            m.commit_clip(r, t, evict=ev)
        assert not m._conn.in_transaction
        assert snapshot(m) == before, msg
        assert r.committed_at == 0.0
    m.close()


def test_model_fingerprint_mismatch_leaves_file_untouched(db):
    with Memory(db, model_fingerprint={"hidden_size": 896, "vocab_size": 151936}) as m:
        fill(m, 2)
    digest = file_digest(db)
    listing = sorted(os.listdir(db.parent))
    with pytest.raises(ValueError, match=r"was written by a model with .*896.*this model has .*1536.*new --db"):
        Memory(db, model_fingerprint={"hidden_size": 1536, "vocab_size": 151936})
    assert file_digest(db) == digest
    assert sorted(os.listdir(db.parent)) == listing
    # None means: do not check; the same fingerprint (any key order) opens
    with Memory(db) as m:
        assert m.model_fingerprint() == {"hidden_size": 896, "vocab_size": 151936}
    with Memory(db, model_fingerprint={"vocab_size": 151936, "hidden_size": 896}) as m:
        assert len(m.clips()) == 2


def test_fingerprint_stored_on_first_open_with_one(db):
    with Memory(db) as m:
        assert m.model_fingerprint() is None
    with Memory(db, model_fingerprint={"hidden_size": 4}) as m:
        assert m.model_fingerprint() == {"hidden_size": 4}
    with pytest.raises(ValueError, match="was written by a model"):
        Memory(db, model_fingerprint={"hidden_size": 5})


def test_config_hash_mismatch(db):
    with Memory(db) as m:
        fill(m, 2)
        with pytest.raises(ValueError, match="other settings.*same settings.*new stream name"):
            m.open_stream("cam", "src.mp4", "m", "h2")
        st = m.open_stream("cam", "src.mp4", "m", "h1")
        assert st.config_hash == "h1" and st.next_index == 2
        assert m.open_stream("cam2", "src.mp4", "m", "h2").next_index == 0


def test_not_a_sqlite_file(db):
    db.write_text("hello, this is a caption dump, not a database\n" * 10)
    digest = file_digest(db)
    for ro in (False, True):
        with pytest.raises(ValueError, match="is not an rlivs memory database"):
            Memory(db, readonly=ro)
        assert file_digest(db) == digest
    assert sorted(os.listdir(db.parent)) == ["memory.db"]


def test_foreign_sqlite_database_and_newer_schema(db, tmp_path):
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE songs (title TEXT)")
    c.commit()
    c.close()
    digest = file_digest(other)
    with pytest.raises(ValueError, match="is not an rlivs memory database.*songs"):
        Memory(other)
    assert file_digest(other) == digest

    with Memory(db) as m:
        fill(m, 1)
    c = sqlite3.connect(db)
    c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(Memory.SCHEMA_VERSION + 1),))
    c.commit()
    c.close()
    digest = file_digest(db)
    with pytest.raises(ValueError, match=f"schema version {Memory.SCHEMA_VERSION + 1}, newer.*upgrade rlivs"):
        Memory(db)
    assert file_digest(db) == digest


def test_readonly(db, tmp_path):
    with pytest.raises(ValueError, match="no memory database"):
        Memory(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()

    writer = Memory(db)
    fill(writer, 2)
    reader = Memory(db, readonly=True)  # while the writer is open (ask during ingest)
    assert [c.index for c in reader.clips()] == [0, 1]
    st = reader.open_stream("cam", "src.mp4", "m", "h1")
    assert st.next_index == 2 and [i for i, _ in st.fifo] == [0, 1]
    with pytest.raises(ValueError, match="read-only"):
        reader.commit_clip(rec(2), toks(2))
    with pytest.raises(ValueError, match="read-only"):
        reader.open_stream("new", "s", "m", "h1")
    with Memory(db, readonly=True, model_fingerprint={"a": 1}) as other:
        with pytest.raises(ValueError, match="read-only"):
            other._write(lambda: None)
    # SQLite itself refuses too, whatever the Python layer does
    with pytest.raises(sqlite3.OperationalError):
        reader._conn.execute("DELETE FROM clips")
    writer.commit_clip(rec(2), toks(2), evict=[0])
    assert [c.index for c in reader.clips()] == [0, 1, 2]  # sees new commits
    assert [s["name"] for s in reader.streams()] == ["cam"]
    reader.close()
    writer.close()


def test_closed_memory_raises(db):
    m = Memory(db)
    m.close()
    m.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        m.clips()


# --------------------------------------------------------------------------- queries


def test_clips_time_filter_and_paging(db):
    with Memory(db) as m:
        fill(m, 10)  # clip i covers [2i, 2i+2)
        idx = lambda rs: [r.index for r in rs]  # noqa: E731
        assert idx(m.clips()) == list(range(10))
        assert idx(m.clips(t_from=3, t_to=7)) == [1, 2, 3]
        assert idx(m.clips(t_from=4, t_to=4)) == [2]  # boundary instant: the clip starting there
        assert idx(m.clips(t_from=4.5, t_to=5)) == [2]
        assert idx(m.clips(t_from=17)) == [8, 9]
        assert idx(m.clips(t_to=1)) == [0]
        assert idx(m.clips(t_from=100)) == []
        assert idx(m.clips(limit=3, offset=2)) == [2, 3, 4]
        assert idx(m.clips(offset=8)) == [8, 9]
        assert idx(m.clips(limit=0)) == []
        assert idx(m.clips(t_from=3, t_to=15, limit=2, offset=1)) == [2, 3]
        assert m.clips(stream="none") == []
        with pytest.raises(ValueError, match="t_from <= t_to"):
            m.clips(t_from=5, t_to=1)
        with pytest.raises(ValueError, match="offset"):
            m.clips(offset=-1)


def test_two_streams_are_independent_and_listed(db):
    with Memory(db) as m:
        b = fill(m, 3, stream="b", capacity=1)
        a = fill(m, 5, stream="a", capacity=2)
        sa = m.open_stream("a", "src.mp4", "m", "h1")
        sb = m.open_stream("b", "src.mp4", "m", "h1")
        assert sa.next_index == 5 and [i for i, _ in sa.fifo] == [3, 4]
        assert sb.next_index == 3 and [i for i, _ in sb.fifo] == [2]
        with pytest.raises(ValueError, match="next clip to commit is 3"):
            m.commit_clip(rec(5, stream="b"), None)

        records = m.clips()
        assert [(r.stream, r.index) for r in records] == [("a", i) for i in range(5)] + [("b", i) for i in range(3)]
        assert records == a + b
        assert m.clips("b") == b
        assert m.clips("none") == [] and m.search(vec(0), streams=["none"]).records == []

        info = {s["name"]: s for s in m.streams()}
        listed = m.streams()
        assert {s["name"] for s in listed} == {"a", "b"}
        assert [s["created_at"] for s in listed] == sorted(s["created_at"] for s in listed)  # creation order
        assert info["a"]["n_clips"] == 5 and info["a"]["t_end"] == 10.0
        assert info["b"]["n_clips"] == 3 and info["b"]["t_end"] == 6.0
        assert set(info["a"]) == {"name", "source", "model_id", "config_hash", "n_clips", "n_idle", "t_end",
                                  "created_at", "next_idx"}
        assert m.count_clips() == 8 and m.count_clips("a") == 5 and m.count_clips("a", stream_until=4.0) == 2
        m.open_stream("empty", "s", "m", "h1")
        assert {s["name"]: s for s in m.streams()}["empty"]["n_clips"] == 0
        assert {s["name"]: s for s in m.streams()}["empty"]["t_end"] is None
    with Memory(db.parent / "sub" / "fresh.db") as m:  # parent folders are created
        assert m.clips() == [] and m.search(vec(0)).records == []


# --------------------------------------------------------------------------- size


def test_size_stays_bounded(db):
    n_clips, dim, cap, n_tok, tdim = 200, 896, 16, 196, 896
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n_tok, tdim)).astype(np.float32)  # (196, 896) reused (content is irrelevant)
    with Memory(db) as m:
        m.open_stream("cam", "src.mp4", "m", "h1")
        for i in range(n_clips):
            v = rng.standard_normal(dim).astype(np.float32)  # (896,)
            r = ClipRecord("cam", i, 16.0 * i, 16.0 * (i + 1), "a person walks a dog " * 3, 15, v)
            m.commit_clip(r, tokens, evict=[i - cap] if i >= cap else [])
        assert m._conn.execute("SELECT COUNT(*) FROM fifo").fetchone()[0] == cap
        assert m._conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0] == n_clips
    with Memory(db) as m:
        st = m.open_stream("cam", "src.mp4", "m", "h1")
        assert st.next_index == n_clips and [i for i, _ in st.fifo] == list(range(n_clips - cap, n_clips))
        m._conn.execute("VACUUM")
    bound = n_clips * dim * 4 * 1.5 + cap * n_tok * tdim * 4 * 1.5
    size = os.path.getsize(db)
    assert size < bound, (size, bound)
    assert size > cap * n_tok * tdim * 4  # the FIFO really is in there
