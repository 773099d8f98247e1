"""One model, shared by ingest and questions: a backend proxy that hands the model out one call at a time.

Every `Backend` call (`encode_frames`, `embed_tokens`, `image_newline`, `step`) runs under one priority lock. A call
waits for the call in progress to end (a decoder step is the unit: `greedy` makes one `step` call per token), then
the lock goes to the waiting caller with the best priority, first come first served within a priority. A question
(priority QUESTION) that arrives while a caption is being generated therefore gets the model at the caption's next
step boundary, not after the clip.

`reserve()` holds that advantage for a whole answer: while a reservation is open no ingest call is granted, so the
answer's steps run back to back instead of alternating with the caption's (the caption continues afterwards from its
own KV state; separate `DecodeState`s are independent sequences).

    lock = PriorityLock()                           # owned by the caller: one per model
    shared = SharedBackend(backend, INGEST, lock)   # ingest's view
    questions = SharedBackend(backend, QUESTION, lock)  # the same model and lock, question priority
    with questions.reserve():
        answer(Engine(questions, ...), memory, "what moved?")

No torch here. Waiting blocks on a Condition; nothing spins.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .base import Backend, BatchState, DecodeState, StepOutput
from rlivs.runtime.errors import UserError

QUESTION = 0  # served first
INGEST = 1  # served when no question waits and no answer holds a reservation
PRIORITY_NAMES = {QUESTION: "question", INGEST: "ingest"}


@dataclass
class LockStats:
    """Per priority: calls granted, seconds spent waiting for the model, seconds holding it."""

    calls: dict[int, int] = field(default_factory=lambda: {QUESTION: 0, INGEST: 0})  # lock grants
    wait_s: dict[int, float] = field(default_factory=lambda: {QUESTION: 0.0, INGEST: 0.0})  # seconds spent waiting
    busy_s: dict[int, float] = field(default_factory=lambda: {QUESTION: 0.0, INGEST: 0.0})  # seconds holding it


class PriorityLock:
    """A non-reentrant lock granted to the waiter with the lowest (priority, arrival number)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._held = False
        self._queue: list[tuple[int, int]] = []  # heap of (priority, ticket) of waiting callers
        self._tickets = itertools.count()
        self._reservations = 0  # open reserve() blocks: while > 0 only priority QUESTION is granted
        self._holder_priority: int | None = None
        self._held_since = 0.0
        self.stats = LockStats()

    def acquire(self, priority: int) -> None:
        t0 = time.perf_counter()
        with self._cond:
            me = (priority, next(self._tickets))
            heapq.heappush(self._queue, me)
            try:
                while self._held or self._queue[0] != me or (self._reservations and priority > QUESTION):
                    self._cond.wait()
            except BaseException:
                self._queue.remove(me)
                heapq.heapify(self._queue)
                self._cond.notify_all()
                raise
            heapq.heappop(self._queue)
            self._held, self._holder_priority = True, priority
            self._held_since = time.perf_counter()
            self.stats.calls[priority] = self.stats.calls.get(priority, 0) + 1
            self.stats.wait_s[priority] = self.stats.wait_s.get(priority, 0.0) + self._held_since - t0

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("PriorityLock released while not held")
            p = self._holder_priority
            self.stats.busy_s[p] = self.stats.busy_s.get(p, 0.0) + time.perf_counter() - self._held_since
            self._held, self._holder_priority = False, None
            self._cond.notify_all()

    @contextmanager
    def hold(self, priority: int) -> Iterator[None]:
        self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """While open, callers below QUESTION priority are not granted the lock (the call in progress finishes)."""
        with self._cond:
            self._reservations += 1
        try:
            yield
        finally:
            with self._cond:
                self._reservations -= 1
                self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)


class SharedBackend(Backend):
    """A view of one backend whose calls go through `lock` at this view's priority.

    The caller owns the lock: every view of one model must be given the same PriorityLock (`with_priority` passes it
    on). Without one, the view gets a new lock of its own."""

    def __init__(self, inner: Backend, priority: int = INGEST, lock: PriorityLock | None = None):
        if isinstance(inner, SharedBackend):
            inner, lock = inner.inner, lock or inner.lock
        if priority not in PRIORITY_NAMES:
            raise UserError(f"priority must be QUESTION ({QUESTION}) or INGEST ({INGEST}), got {priority!r}")
        self.inner = inner  # the backend that runs the model
        self.lock = lock if lock is not None else PriorityLock()  # the caller's, shared by every view of `inner`
        self.priority = priority
        self.name = inner.name  # reports as the backend it wraps
        self.info = inner.info

    def with_priority(self, priority: int) -> SharedBackend:
        """Another view of the same model and lock."""
        return SharedBackend(self.inner, priority, self.lock)

    def reserve(self):
        """Context manager: keep ingest off the model until the block ends (use around a whole answer)."""
        return self.lock.reserve()

    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        with self.lock.hold(self.priority):
            return self.inner.encode_frames(pixels)

    def encode_video(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with self.lock.hold(self.priority):
            return self.inner.encode_video(pixels)

    def image_newline(self) -> np.ndarray:
        with self.lock.hold(self.priority):
            return self.inner.image_newline()

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        with self.lock.hold(self.priority):
            return self.inner.embed_tokens(ids)

    def new_state(self) -> DecodeState:
        return self.inner.new_state()  # allocates nothing on the model; no lock needed

    def step(self, embeds: np.ndarray, state: DecodeState, probe_rows: int = 1, **kw) -> StepOutput:
        with self.lock.hold(self.priority):
            return self.inner.step(embeds, state, probe_rows, **kw)  # kw: positions (M-RoPE backbones)

    def batch(self, states: list[DecodeState]) -> BatchState:
        with self.lock.hold(self.priority):  # may move caches on the model's device
            return self.inner.batch(states)

    def step_batch(self, embeds: list[np.ndarray], batch: BatchState, probe_rows: int = 1) -> list[StepOutput]:
        with self.lock.hold(self.priority):  # one batched step is the unit, like one step
            return self.inner.step_batch(embeds, batch, probe_rows)

    def close(self) -> None:
        with self.lock.hold(self.priority):
            self.inner.close()
