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

Batching (`batch` > 1, serve's --batch): a worker hands its prepared clip to `caption`; when the model frees, the clip
`_pick` chooses takes up to `batch` - 1 more waiting clips in the same order (`_pick`'s: active first, oldest first)
and its thread runs them in one call (`Engine.caption_clips`); each worker gets its own clip's output back and
commits it itself. With `batch` 1 every turn holds one clip, as `turn` does.
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
    item: object = None  # the clip's model input (`caption`); None for a plain `turn` (never batched)
    leader: Request | None = None  # the request whose thread runs the batch this one was granted in
    batch: list[Request] = field(default_factory=list)  # a leader's batch (itself first)
    done: bool = False  # the batch ran: result or error is set
    result: object = None  # this clip's output
    error: BaseException | None = None  # the batch failed
    expired: bool = False  # waited past the lag bound (forced only): not captioned
    waited_s: float = field(default=0.0)  # from ready to the decision (granted or expired), clock seconds

    def __bool__(self) -> bool:
        return self.granted


class Closed(RuntimeError):
    """The service is stopping: no more turns."""


class ModelTurns:
    def __init__(self, max_lag_s: float = 60.0, clock: Callable[[], float] = time.monotonic, batch: int = 1):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.max_lag_s, self.clock, self.batch = max_lag_s, clock, batch
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._busy: Request | None = None
        self._seq = 0
        self._closed = False
        self.granted: dict[str, int] = {}  # stream -> turns granted
        self.expired: dict[str, int] = {}  # stream -> forced clips that waited past the bound
        self.most_waiting = 0  # the longest the waiting line has been
        self.batches: dict[int, int] = {}  # batch size -> model calls of that size (`caption`)
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

    def _enter(self, stream: str, active: bool, ready_at: float | None, item: object = None) -> Request:
        """A request joins the line (caller holds the lock)."""
        if self._closed:
            raise Closed("the service is stopping")
        self._seq += 1
        r = Request(stream, ACTIVE if active else FORCED, self.clock() if ready_at is None else ready_at, self._seq,
                    item=item)
        self._waiting.append(r)
        self.most_waiting = max(self.most_waiting, len(self._waiting))
        return r

    def _grant(self, r: Request, leader: Request, now: float) -> None:
        """`r` leaves the line with the model (caller holds the lock)."""
        self._waiting.remove(r)
        r.granted, r.leader, r.waited_s = True, leader, now - r.ready_at
        self.granted[r.stream] = self.granted.get(r.stream, 0) + 1
        active = sum(w.cls == ACTIVE for w in self._waiting)
        self.log.append((r.stream, r.cls, active, len(self._waiting) - active, now - r.ready_at))

    def _wait(self, r: Request) -> Request:
        """Wait until `r` is granted (it holds the model, or a batch run by another request's thread took it) or
        expired (caller holds the lock). Raises Closed when the service stops before either."""
        while True:
            if r.granted:  # taken into another clip's batch
                return r
            now = self.clock()
            self._expire(now)
            if r.expired:
                return r
            if self._closed:
                self._waiting.remove(r)
                self._cond.notify_all()
                raise Closed("the service is stopping")
            if self._busy is None and self._pick() is r:
                self._busy = r
                self._grant(r, r, now)
                r.batch = [r]
                if r.item is not None:  # the next clips in the same order join its batch
                    for w in sorted(self._waiting, key=lambda w: (w.cls, w.ready_at, w.seq)):
                        if len(r.batch) >= self.batch or w.item is None:
                            break
                        self._grant(w, r, now)
                        r.batch.append(w)
                    self._cond.notify_all()
                return r
            wait = None
            if r.cls == FORCED:
                wait = max(0.01, self.max_lag_s - (now - r.ready_at))
            self._cond.wait(wait)

    def _free(self) -> None:
        """The model is free again (caller holds the lock)."""
        self._busy = None
        self._expire(self.clock())  # decided now, when the model frees, whoever runs next
        self._cond.notify_all()

    @contextmanager
    def turn(self, stream: str, active: bool, ready_at: float | None = None):
        """Wait for the model; yields the request: true while this clip holds the model, false when a forced clip
        waited past the lag bound (it must not use the model; `waited_s` says how long it waited). Raises Closed
        when the service stops while it waits."""
        with self._cond:
            r = self._wait(self._enter(stream, active, ready_at))
        try:
            yield r
        finally:
            if r.granted:
                with self._cond:
                    self._free()

    def caption(self, stream: str, active: bool, item: object, run: Callable[[list], list],
                ready_at: float | None = None) -> Request:
        """Wait for the model and caption `item` (a clip's model input) with `run` (list of inputs -> list of
        outputs, in order), together with up to `batch` - 1 other waiting clips. -> the request: granted with
        `result` its output, or expired (a forced clip past the lag bound; not captioned). Raises Closed when the
        service stops while it waits, and the batch's error if `run` failed."""
        with self._cond:
            r = self._wait(self._enter(stream, active, ready_at, item))
            if r.expired:
                return r
            if r.leader is not r:  # another thread runs the batch: wait for it
                while not r.done:
                    self._cond.wait()
                if r.error is not None:
                    raise r.error
                return r
            batch = r.batch
            self.batches[len(batch)] = self.batches.get(len(batch), 0) + 1
        outs, error = None, None
        try:
            outs = list(run([b.item for b in batch]))
            if len(outs) != len(batch):
                raise RuntimeError(f"the model returned {len(outs)} outputs for {len(batch)} clips")
        except BaseException as e:  # noqa: BLE001 - every clip of the batch gets it
            error = e
        with self._cond:
            for i, b in enumerate(batch):
                b.result, b.error, b.done = (None if error else outs[i]), error, True
            self._free()
        if error is not None:
            raise error
        return r

    @property
    def batch_sizes(self) -> dict[int, int]:
        """clips per model call -> calls of that size so far (`caption`; a copy)."""
        with self._cond:
            return dict(self.batches)

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
