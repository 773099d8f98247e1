"""Questions take turns on the one model (`QuestionGate`): one is answered at a time, at most `waiting` wait (more
get `Busy`, HTTP 429 with Retry-After), and while ingest runs, a question that held the model for d seconds keeps the
next one off it for d * share / (1 - share) seconds, so ingest keeps at least `share` of the model under a flood.
A question whose caller goes away (`Question.cancel`) is dropped if its turn has not begun, and stopped at the next
piece of generated text if it has (`QuestionCancelled`)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager


class Busy(RuntimeError):
    """Maps to HTTP 429 with Retry-After: too many questions are waiting."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuestionCancelled(Exception):
    """The caller of a question went away: `stage` is "dropped" (before its turn began: nothing was generated) or
    "stopped" (while its answer was generated). Never an HTTP answer: nobody is left to read one."""

    def __init__(self, stage: str):
        super().__init__(f"the question was {stage}: its client went away")
        self.stage = stage


# ---------------------------------------------------------------------------------------------------------------------
# Questions take turns
# ---------------------------------------------------------------------------------------------------------------------


class Place:
    """One admitted question: its place at the gate, and whether its caller is still there."""

    __slots__ = ("cancelled", "started")

    def __init__(self):
        self.cancelled = False  # set by QuestionGate.cancel (the client went away)
        self.started = False  # its turn on the model has begun


class QuestionGate:
    """One question on the model at a time, at most `waiting` more admitted (beyond: `Busy`), and while `ingesting()`
    says ingest runs, a pause of d * share / (1 - share) after a question that held the model d seconds.

    `admit()` takes a place in line without blocking (what an HTTP handler calls on the event loop); the question's
    thread then waits in `turn(place)` and gives it back with `release(place)`. A place is held from
    admission to release, so at most 1 + `waiting` questions exist at once, whatever runs them. `turn()` without a
    place admits and releases by itself."""

    def __init__(self, waiting: int, share: float, ingesting):
        self.max_waiting, self.share, self.ingesting = waiting, share, ingesting
        self._cond = threading.Condition()
        self._busy = False
        self._line: deque = deque()  # admitted places whose turn has not begun, in arrival order
        self._held: set = set()  # every admitted place not yet released (in line, on the model, finishing)
        self._free_at = 0.0  # monotonic time the next question may start (the ingest share)
        self._mean_s = 1.0  # running mean of a question's turn, seconds (for Retry-After)
        self.rejected = 0

    @property
    def capacity(self) -> int:
        """Questions admitted at once at most: the one on the model and those waiting."""
        return 1 + self.max_waiting

    def admit(self) -> Place:
        """A place in line, or `Busy` (never blocks)."""
        with self._cond:
            if len(self._held) >= self.capacity:
                self.rejected += 1
                n = len(self._line)
                retry = max(1, math.ceil((n + 1) * self._mean_s))
                raise Busy(f"{n} questions are already waiting for the model (at most {self.max_waiting}): ask "
                           f"again in {retry} s", retry)
            place = Place()
            self._held.add(place)
            self._line.append(place)
            return place

    def release(self, place: Place) -> None:
        """Give the place back (idempotent)."""
        with self._cond:
            self._held.discard(place)
            if place in self._line:
                self._line.remove(place)
            self._cond.notify_all()

    def cancel(self, place: Place) -> None:
        """The caller went away: a waiting `turn` raises QuestionCancelled("dropped"); after the turn began, the
        question's own code checks `place.cancelled` (see EdgeService.ask)."""
        with self._cond:
            place.cancelled = True
            self._cond.notify_all()

    def places(self) -> list[Place]:
        """The admitted questions (a snapshot)."""
        with self._cond:
            return list(self._held)

    @contextmanager
    def turn(self, place: Place | None = None):
        """First come, first served: a waiter goes when it is first in line, the model is free and the pause is over.
        A place cancelled before that leaves the line with QuestionCancelled("dropped")."""
        own = place is None
        if own:
            place = self.admit()
        try:
            with self._cond:
                if place not in self._line:
                    raise RuntimeError("turn() with a place that is not in line (released, or its turn taken)")
                try:
                    while True:
                        if place.cancelled:
                            raise QuestionCancelled("dropped")
                        first = bool(self._line) and self._line[0] is place
                        if first and not self._busy and time.monotonic() >= self._free_at:
                            break
                        self._cond.wait(None if self._busy or not first
                                        else max(0.01, self._free_at - time.monotonic()))
                finally:
                    if place in self._line:
                        self._line.remove(place)
                    self._cond.notify_all()
                self._busy = True
                place.started = True
            t0 = time.monotonic()
            try:
                yield place
            finally:
                held = time.monotonic() - t0
                with self._cond:
                    self._busy = False
                    self._mean_s = 0.8 * self._mean_s + 0.2 * held
                    if self.share > 0 and self.ingesting():
                        self._free_at = time.monotonic() + held * self.share / (1 - self.share)
                    self._cond.notify_all()
        finally:
            if own:
                self.release(place)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)


class Question:
    """A question submitted to the service (`EdgeService.submit_question`): `future` gives the answer JSON or raises
    what `ask` raised; `cancel()` says its caller went away."""

    def __init__(self, gate: QuestionGate, place: Place, future: Future):
        self._gate, self.place, self.future = gate, place, future

    def cancel(self) -> None:
        if not self.future.done():
            self._gate.cancel(self.place)
