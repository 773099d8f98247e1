"""The memory's idle records (the activity gate): runs of uncaptioned clips against the scene they showed, the gate's
reference, one transaction per clip, resume, forget, the version-2 -> 3 migration, and what answers read from them."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from rlivs.runtime.activity import SceneRef
from rlivs.runtime.answer import idle_notes, with_idle_scenes
from rlivs.runtime.errors import UserError
from rlivs.runtime.memory import ClipRecord, IdleSpan, Memory

D, TD = 8, 6
WALL0 = 1_790_000_000.0  # a UTC instant: clip i starts at WALL0 + 2 i


def rec(i: int, caption: str, stream: str = "cam") -> ClipRecord:
    v = np.random.default_rng(i).standard_normal(D).astype(np.float32)
    return ClipRecord(stream, i, 2.0 * i, 2.0 * (i + 1), caption, 3, v, wall_start=WALL0 + 2 * i,
                      wall_end=WALL0 + 2 * (i + 1))


def ref(i: int, value: int = 7) -> SceneRef:
    return SceneRef(i, 2.0 * (i + 1), np.full((3, 4, 3), value, np.uint8))


def idle(m: Memory, i: int, scene: int | None, score: float = 0.001, stream: str = "cam") -> IdleSpan:
    return m.commit_idle(stream, i, 2.0 * i, 2.0 * (i + 1), (WALL0 + 2 * i, WALL0 + 2 * (i + 1)), scene, score)


def script(m: Memory, stream: str = "cam") -> None:
    """Clips 0 (door closed), 1-3 idle, 4 (door open), 5-9 idle, 10 (door closed): the gate's record of a scene."""
    m.open_stream(stream, "src", "m", "h")
    m.commit_clip(rec(0, "the door is closed", stream), None, scene=ref(0))
    for i in (1, 2, 3):
        idle(m, i, 0, stream=stream)
    m.commit_clip(rec(4, "a person opens the door", stream), None, scene=ref(4, 9))
    for i in range(5, 10):
        idle(m, i, 4, score=0.001 * i, stream=stream)
    m.commit_clip(rec(10, "the door is closed", stream), None, scene=ref(10, 11))


def test_idle_clips_are_runs_against_their_scene_and_the_stream_moves_past_them(tmp_path):
    with Memory(tmp_path / "m.db") as m:
        script(m)
        spans = m.idle_spans("cam")
        assert [(s.first, s.last, s.scene_idx, s.clips) for s in spans] == [(1, 3, 0, 3), (5, 9, 4, 5)]
        assert (spans[1].t_start, spans[1].t_end) == (10.0, 20.0)
        assert (spans[1].wall_start, spans[1].wall_end) == (WALL0 + 10, WALL0 + 20)
        assert spans[1].score == pytest.approx(0.009)
        assert [c.index for c in m.clips("cam")] == [0, 4, 10]  # captions only: nothing is counted twice
        assert m.keyword_matches("door closed")[0] == 2
        row = m.streams()[0]
        assert (row["n_clips"], row["n_idle"], row["next_idx"], row["t_end"]) == (3, 8, 11, 22.0)
        assert m.open_stream("cam", "src", "m", "h").next_index == 11
        got = m.scene("cam")
        assert (got.index, got.t_end) == (10, 22.0) and np.array_equal(got.cells, ref(10, 11).cells)
        assert [s.first for s in m.idle_spans(wall_from=WALL0 + 12, wall_to=WALL0 + 14)] == [5]
        assert m.idle_spans("cam", scene_idx=0)[0].last == 3
        assert m.info()["streams"][0]["n_idle"] == 8


def test_a_stream_ending_idle_has_its_end_and_resume_point_there(tmp_path):
    with Memory(tmp_path / "m.db") as m:
        m.open_stream("cam", "src", "m", "h")
        m.commit_clip(rec(0, "an empty hall"), None, scene=ref(0))
        for i in (1, 2):
            idle(m, i, 0)
    with Memory(tmp_path / "m.db") as m:  # a restart
        row = m.streams()[0]
        assert (row["t_end"], row["next_idx"]) == (6.0, 3)
        assert m.open_stream("cam", "src", "m", "h").next_index == 3
        idle(m, 3, 0)  # continues the same run
        assert [(s.first, s.last) for s in m.idle_spans("cam")] == [(1, 3)]
        assert m.scene("cam").index == 0


def test_a_reference_older_than_the_last_caption_is_not_used(tmp_path):
    """Captions committed with the gate off after a gated run: the stored reference is stale, so a gate turned on
    again starts afresh (its first clip is captioned) instead of tying idle clips to an old scene."""
    with Memory(tmp_path / "m.db") as m:
        script(m)
        assert m.scene("cam").index == 10
        m.commit_clip(rec(11, "a person walks in"), None)  # no gate: no new reference
        assert m.scene("cam") is None
        assert m.idle_spans(streams=[]) == []


def test_idle_commits_are_refused_out_of_order_and_leave_nothing(tmp_path):
    with Memory(tmp_path / "m.db") as m:
        script(m)
        before = (m.idle_spans(), m.streams())
        with pytest.raises(UserError, match="idle clip 12 of stream 'cam' is a gap: the next clip to commit is 11"):
            idle(m, 12, 10)
        with pytest.raises(UserError, match="idle clip 3 .* already committed"):
            idle(m, 3, 0)
        with pytest.raises(UserError, match="unknown stream 'nope'"):
            idle(m, 0, None, stream="nope")
        with pytest.raises(UserError, match="times"):
            m.commit_idle("cam", 11, 5.0, 1.0)
        assert (m.idle_spans(), m.streams()) == before


def test_an_idle_commit_is_one_transaction(tmp_path, monkeypatch):
    """A failure after the run's row changed rolls back the run and the stream's next index together."""
    with Memory(tmp_path / "m.db") as m:
        script(m)
        idle(m, 11, 10)
        before = (m.idle_spans(), m.streams())
        real = m._conn

        class Failing:  # the connection, failing at the statement that moves the stream's next index
            def __getattr__(self, name):
                return getattr(real, name)

            def execute(self, sql, *args):
                if sql.startswith("UPDATE streams SET next_idx"):
                    raise sqlite3.OperationalError("disk I/O error")
                return real.execute(sql, *args)

        monkeypatch.setattr(m, "_conn", Failing())
        with pytest.raises(UserError, match="disk reported an I/O error.*nothing of it was written"):
            idle(m, 12, 10)
        monkeypatch.setattr(m, "_conn", real)
        assert (m.idle_spans(), m.streams()) == before


def test_forget_drops_idle_runs_with_their_clips(tmp_path):
    with Memory(tmp_path / "m.db") as m:
        script(m)
        script(m, "hall")
        m.forget(before=WALL0 + 9)  # clips 0-3 and the run 1-3 ended before it
        assert [s.first for s in m.idle_spans("cam")] == [5]
        m.forget("hall")
        assert m.idle_spans("hall") == [] and m.scene("hall") is None
        assert m.scene("cam").index == 10


def test_a_version_2_file_is_migrated_without_touching_its_rows(tmp_path):
    db = tmp_path / "m.db"
    with Memory(db) as m:
        m.open_stream("cam", "src", "m", "h")
        m.commit_clip(rec(0, "an empty hall"), np.ones((2, TD), np.float32))
        clips = m.clips()
    c = sqlite3.connect(db)  # make it the version-2 file an older rlivs wrote
    c.execute("DROP TABLE idle")
    c.execute("DROP TABLE scenes")
    c.execute("DROP TABLE clip_packs")
    c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    c.commit()
    c.close()
    with Memory(db, readonly=True) as m:  # a reader migrates it through a short-lived writer
        assert m.clips() == clips and m.idle_spans() == [] and m.streams()[0]["n_idle"] == 0
    c = sqlite3.connect(db)
    assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(Memory.SCHEMA_VERSION)
    c.close()
    with Memory(db) as m:
        idle(m, 1, 0)
        assert m.open_stream("cam", "src", "m", "h").next_index == 2
        assert len(m.open_stream("cam", "src", "m", "h").fifo) == 1  # the FIFO is untouched by idle clips


def test_answers_see_the_scene_of_an_idle_window_and_how_long_it_lasted(tmp_path):
    with Memory(tmp_path / "m.db") as m:
        script(m)
        # a window inside the idle run 5-9: no caption in it, but the open door's caption describes it
        used = with_idle_scenes(m, [], None, WALL0 + 12, WALL0 + 16)
        assert [(r.index, r.caption) for r, _ in used] == [(4, "a person opens the door")]
        notes = idle_notes(m, [r for r, _ in used])
        assert list(notes) == [("cam", 4)]
        assert "no change seen until" in notes[("cam", 4)] and "5 clips watched, not captioned" in notes[("cam", 4)]
        assert ("cam", 10) not in idle_notes(m, m.clips("cam"))  # nothing idle followed the last clip
        # a window holding a caption already: nothing added twice
        have = [(m.clip("cam", 4), 1.0)]
        assert [r.index for r, _ in with_idle_scenes(m, have, ["cam"], WALL0 + 8, WALL0 + 16)] == [4]
