"""End to end on a generated video with the tiny model: ingest, resume, interruption, answers."""

import numpy as np
import pytest

pytest.importorskip("torch")

from rlivs.runtime.memory import Memory  # noqa: E402
from rlivs.runtime.answer import answer, build_answer_prompt  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import run_stream  # noqa: E402

FPC = 4  # frames per clip: a 20 s video at 1 fps gives 5 clips


def _config(fifo=2):
    return small_config(frames_per_clip=FPC, caption_tokens=12, fifo_clips=fifo, fps=1.0)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return load_engine("tiny", config=_config())


def _ingest(engine, db, video, max_clips=None):
    return run_stream(engine, db, video, max_clips=max_clips, after=lambda engine, mem, ing: ing.fifo.entries())


def test_end_to_end_clips_captions_fifo_answer(engine, sample_video, tmp_path):
    db = tmp_path / "m.db"
    results, fifo = _ingest(engine, db, sample_video)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    n_clip_tokens = FPC * engine.backend.info.tokens_per_frame  # 100
    n_keep = engine.config.selection.n_keep(n_clip_tokens)  # 6.25% -> 6
    assert all(len(r.kept) == n_keep for r in results)
    # context grows with the FIFO until it is full (2 clips), then stays
    ctx = [r.context_tokens for r in results]
    assert ctx[1] - ctx[0] == n_keep and ctx[2] - ctx[1] == n_keep and ctx[3] == ctx[2] == ctx[4]
    assert [i for i, _ in fifo] == [3, 4] and all(t.shape == (n_keep, engine.backend.info.hidden_size) for _, t in fifo)
    with Memory(db) as mem:
        rows = mem.clips("cam")
        assert [r.caption for r in rows] == [r.caption for r in results]
        assert [(r.t_start, r.t_end) for r in rows] == [(4.0 * i, 4.0 * i + 4) for i in range(5)]
        assert all(r.caption for r in rows)
        a = answer(engine, mem, "what moved left?")
    assert a.text and 1 <= len(a.used) <= 5
    assert [r.t_start for r, _ in a.used] == sorted(r.t_start for r, _ in a.used)  # time order in the prompt


def test_resume_equals_uninterrupted_run(engine, sample_video, tmp_path):
    full, fifo_full = _ingest(engine, tmp_path / "a.db", sample_video)
    part1, _ = _ingest(engine, tmp_path / "b.db", sample_video, max_clips=2)
    part2, fifo_resumed = _ingest(engine, tmp_path / "b.db", sample_video)  # a new process would do the same
    assert [r.index for r in part2] == [2, 3, 4]  # no duplicate, no gap
    assert [r.caption for r in part1 + part2] == [r.caption for r in full]
    for a, b in zip(part1 + part2, full):
        np.testing.assert_array_equal(a.kept, b.kept)
    assert [i for i, _ in fifo_resumed] == [i for i, _ in fifo_full]
    for (_, a), (_, b) in zip(fifo_resumed, fifo_full):
        np.testing.assert_array_equal(a, b)


def test_clip_interrupted_before_commit_leaves_previous_clip(engine, sample_video, tmp_path, monkeypatch):
    db = tmp_path / "c.db"
    _ingest(engine, db, sample_video, max_clips=2)
    real_commit = Memory.commit_clip

    def crash(self, record, *a, **kw):
        if record.index == 2:
            raise KeyboardInterrupt("power cut while clip 2 was being captioned")
        return real_commit(self, record, *a, **kw)

    monkeypatch.setattr(Memory, "commit_clip", crash)
    with pytest.raises(KeyboardInterrupt):
        _ingest(engine, db, sample_video)
    monkeypatch.undo()
    with Memory(db) as mem:
        state = mem.open_stream("cam", str(sample_video), engine.backend.info.model_id,
                                engine.config.ingest_fingerprint())
        assert state.next_index == 2 and [i for i, _ in state.fifo] == [0, 1]
    resumed, _ = _ingest(engine, db, sample_video)
    assert [r.index for r in resumed] == [2, 3, 4]


def test_resume_with_other_settings_is_refused(engine, sample_video, tmp_path, tiny_dir):
    db = tmp_path / "d.db"
    _ingest(engine, db, sample_video, max_clips=1)
    other = load_engine(tiny_dir, config=_config(fifo=3))
    with pytest.raises(ValueError, match="other settings|different settings|settings"):
        _ingest(other, db, sample_video)
    with Memory(db) as mem:
        assert len(mem.clips()) == 1  # nothing lost


def test_answer_prompt_lists_captions_with_timestamps(engine):
    from rlivs.runtime.memory import ClipRecord

    recs = [ClipRecord("cam", 0, 0.0, 16.0, "a red square moves left", 5, np.zeros(4, np.float32)),
            ClipRecord("cam", 1, 3600.0, 3616.0, "a door opens", 3, np.zeros(4, np.float32))]
    text = engine.text.decode(build_answer_prompt(engine, "what opened?", recs))
    assert "[00:00:00-00:00:16] a red square moves left" in text
    assert "[01:00:00-01:00:16] a door opens" in text and "Question: what opened?" in text


def test_empty_question_and_empty_memory_are_clear(engine, tmp_path):
    with Memory(tmp_path / "e.db") as mem:
        with pytest.raises(ValueError, match="question is empty"):
            answer(engine, mem, "   ")
        with pytest.raises(ValueError, match="no captions yet"):
            answer(engine, mem, "anything?")
