"""One model for ingest and questions (runtime/backends/shared.py): a question gets the model at the next decoder-step
boundary of a caption being generated, and its answer runs to the end before the caption continues."""

import threading
import time
from dataclasses import replace

import numpy as np

from rlivs.runtime.backends.base import Backend
from rlivs.runtime.config import AnswerConfig, CaptionConfig, ClipConfig, PipelineConfig
from rlivs.runtime.frames import iter_clips
from rlivs.runtime.sources.file import VideoFileSource
from rlivs.runtime.memory import Memory
from rlivs.runtime.answer import answer
from rlivs.runtime.ingest import StreamIngestor
from rlivs.runtime.backends.shared import INGEST, QUESTION, PriorityLock, SharedBackend
from tests.helpers.serve_helpers import wait_for


def test_priority_lock_serves_questions_first_and_fifo_within_a_priority():
    lock = PriorityLock()
    order = []
    lock.acquire(INGEST)  # a caption step in progress

    def take(name, prio):
        lock.acquire(prio)
        order.append(name)
        lock.release()

    threads = []
    for name, prio in (("ingest-a", INGEST), ("ingest-b", INGEST), ("question", QUESTION)):
        t = threading.Thread(target=take, args=(name, prio))
        t.start()
        threads.append(t)
        wait_for(lambda n=len(threads): lock.waiting == n, 2, f"{name} waiting")
    lock.release()
    for t in threads:
        t.join(2)
    assert order == ["question", "ingest-a", "ingest-b"]
    assert lock.stats.calls[QUESTION] == 1 and lock.stats.calls[INGEST] == 3


def test_reservation_keeps_ingest_off_the_model_until_it_ends():
    lock = PriorityLock()
    got = threading.Event()
    with lock.reserve():
        t = threading.Thread(target=lambda: (lock.acquire(INGEST), got.set(), lock.release()))
        t.start()
        with lock.hold(QUESTION):  # the reservation's own calls go through
            pass
        assert not got.wait(0.2)  # ingest waits although the lock is free
    assert got.wait(2)
    t.join(2)


class SlowRecordingBackend(Backend):
    """Wraps a real backend: each step takes >= `delay` s and is logged as a caption step (probe rows asked) or an
    answer step; EOS is suppressed in caption steps so a caption runs to its length bound."""

    def __init__(self, inner: Backend, eos_ids, delay: float = 0.006):
        self.inner, self.eos, self.delay = inner, list(eos_ids), delay
        self.name, self.info = inner.name, inner.info
        self.log: list[tuple[str, float]] = []

    def encode_frames(self, pixels):
        return self.inner.encode_frames(pixels)

    def image_newline(self):
        return self.inner.image_newline()

    def embed_tokens(self, ids):
        return self.inner.embed_tokens(ids)

    def new_state(self):
        return self.inner.new_state()

    def step(self, embeds, state, probe_rows=1):
        out = self.inner.step(embeds, state, probe_rows)
        time.sleep(self.delay)
        if probe_rows:
            out.logits[self.eos] = -np.inf
        self.log.append(("caption" if probe_rows else "answer", time.monotonic()))
        return out


def test_question_is_answered_at_the_next_step_boundary_not_after_the_clip(tmp_path, sample_video):
    from tests.helpers.serve_helpers import tiny_engine

    base = tiny_engine()
    slow = SlowRecordingBackend(base.backend, base.text.eos_ids)
    shared = SharedBackend(slow, INGEST)
    cfg = PipelineConfig(clip=ClipConfig(fps=2.0, frames_per_clip=4), caption=CaptionConfig(max_new_tokens=200),
                         answer=AnswerConfig(max_new_tokens=6))
    ingest_engine = replace(base, backend=shared, config=cfg)
    question_backend = shared.with_priority(QUESTION)
    question_engine = replace(base, backend=question_backend, config=cfg)

    db = tmp_path / "m.db"
    done, first_committed = {}, threading.Event()

    def ingest():  # the ingest thread owns its memory connection, as the service's workers do
        with Memory(db, model_fingerprint=base.model_fingerprint) as mem:
            ing = StreamIngestor(ingest_engine, mem, stream="cam", source=str(sample_video))
            clips = iter_clips(VideoFileSource(sample_video, fps=2.0), 4, 2.0)
            ing.step(next(clips))  # one committed caption to answer from
            long_clip = next(clips)
            slow.log.clear()
            first_committed.set()
            ing.step(long_clip)  # 200 caption steps
            done["caption"] = time.monotonic()

    t = threading.Thread(target=ingest)
    t.start()
    assert first_committed.wait(60)
    wait_for(lambda: sum(1 for k, _ in slow.log if k == "caption") >= 20, 20, "the caption to be under way")
    with Memory(db, readonly=True) as ro, question_backend.reserve():
        asked = time.monotonic()  # the question claims the model here (opening the memory may take a step or two)
        a = answer(question_engine, ro, "what moved across the scene?")
    answered = time.monotonic()
    t.join(60)

    assert a.text and [r.index for r, _ in a.used] == [0]  # answered from what was committed
    assert answered < done["caption"], "the question waited for the whole caption"
    log = slow.log
    answer_steps = [ts for k, ts in log if k == "answer"]
    caption_steps = [ts for k, ts in log if k == "caption"]
    first, last = answer_steps[0], answer_steps[-1]
    # the model went to the question at the next step boundary: at most the one caption step in flight ran after
    # the question was asked and before its first step, and none while the answer was being generated
    assert sum(1 for ts in caption_steps if asked <= ts < first) <= 1
    assert not any(first < ts < last for ts in caption_steps)
    # and the caption went on afterwards: most of its 200 steps ran after the answer
    assert sum(1 for ts in caption_steps if ts > last) > 50
    assert question_backend.lock.stats.calls[QUESTION] >= len(answer_steps)
