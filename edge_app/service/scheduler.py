"""Model turns for ingest: the one place where the cameras' ready clips meet the model (`ModelTurns`).

Each ingest worker, with a clip ready and the activity gate's decision made (cheap: no model), asks for a turn and
waits; one clip is on the model at a time, and when the model frees the next turn goes to

    1. an *active* clip (the gate saw a change, the stream's first clip, or the camera has no gate), oldest ready
       first, then
    2. a *forced* clip (no change seen, but the longest idle time was reached), oldest first.

A forced clip that has waited `max_lag_s` is not captioned: its turn ends at once and the worker records it as idle
(the scene it shows is the last caption's, as the gate said), counted in rlivs_clips_skipped_total{reason="lag"}.
Active clips always wait their turn. Each worker asks for one turn at a time and reads its source again only after
it, so at most one clip per camera waits here; a live source meanwhile keeps only its newest frame (the sample times
it could not hand out are counted as dropped), so nothing queues up behind a slow model: a camera's lag, from its
clip's end to the commit, stays within the captioning time of the clips ahead of it (at most one per camera).

Batching: `_pick` chooses the clip that gets the model; a batched clip step would take the first k of the same order
here and run them together (the workers still commit their own clips).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

ACTIVE, FORCED = 0, 1  # turn classes, first served first


@dataclass(eq=False)
class Request:
    stream: str
    cls: int  # ACTIVE | FORCED
    ready_at: float  # clock time the clip was ready (its last frame handed out)
    seq: int  # arrival order (ties)
    granted: bool = False
    expired: bool = False  # waited past the lag bound (forced only): not captioned
    waited_s: float = field(default=0.0)  # from ready to the decision (granted or expired), clock seconds

    def __bool__(self) -> bool:
        return self.granted


class Closed(RuntimeError):
    """The service is stopping: no more turns."""


class ModelTurns:
    def __init__(self, max_lag_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.max_lag_s, self.clock = max_lag_s, clock
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._busy: Request | None = None
        self._seq = 0
        self._closed = False
        self.granted: dict[str, int] = {}  # stream -> turns granted
        self.expired: dict[str, int] = {}  # stream -> forced clips that waited past the bound
        self.most_waiting = 0  # the longest the waiting line has been
        # the last grants: (stream, class, active clips left waiting, forced clips left waiting, seconds the clip
        # waited); bounded
        self.log: deque[tuple[str, int, int, int, float]] = deque(maxlen=1024)

    def _pick(self) -> Request | None:
        """The request the model goes to next (caller holds the lock)."""
        return min(self._waiting, key=lambda r: (r.cls, r.ready_at, r.seq), default=None)

    def _expire(self, now: float) -> None:
        """Forced requests past the lag bound leave the line (caller holds the lock)."""
        for r in list(self._waiting):
            if r.cls == FORCED and now - r.ready_at >= self.max_lag_s:
                r.expired, r.waited_s = True, now - r.ready_at
                self._waiting.remove(r)
                self.expired[r.stream] = self.expired.get(r.stream, 0) + 1
                self._cond.notify_all()

    @contextmanager
    def turn(self, stream: str, active: bool, ready_at: float | None = None):
        """Wait for the model; yields the request: true while this clip holds the model, false when a forced clip
        waited past the lag bound (it must not use the model; `waited_s` says how long it waited). Raises Closed
        when the service stops while it waits."""
        with self._cond:
            if self._closed:
                raise Closed("the service is stopping")
            self._seq += 1
            r = Request(stream, ACTIVE if active else FORCED, self.clock() if ready_at is None else ready_at,
                        self._seq)
            self._waiting.append(r)
            self.most_waiting = max(self.most_waiting, len(self._waiting))
            while True:
                now = self.clock()
                self._expire(now)
                if r.expired:
                    break
                if self._closed:
                    self._waiting.remove(r)
                    self._cond.notify_all()
                    raise Closed("the service is stopping")
                if self._busy is None and self._pick() is r:
                    self._waiting.remove(r)
                    self._busy, r.granted, r.waited_s = r, True, now - r.ready_at
                    self.granted[stream] = self.granted.get(stream, 0) + 1
                    active = sum(w.cls == ACTIVE for w in self._waiting)
                    self.log.append((stream, r.cls, active, len(self._waiting) - active, now - r.ready_at))
                    break
                wait = None
                if r.cls == FORCED:
                    wait = max(0.01, self.max_lag_s - (now - r.ready_at))
                self._cond.wait(wait)
        try:
            yield r
        finally:
            if r.granted:
                with self._cond:
                    self._busy = None
                    self._expire(self.clock())  # decided now, when the model frees, whoever runs next
                    self._cond.notify_all()

    @property
    def waiting(self) -> dict[str, int]:
        """stream -> clips waiting for the model now (0 or 1 each)."""
        with self._cond:
            out: dict[str, int] = {}
            for r in self._waiting:
                out[r.stream] = out.get(r.stream, 0) + 1
            return out

    def close(self) -> None:
        """No more turns: waiters get Closed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
