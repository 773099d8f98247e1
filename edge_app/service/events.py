"""Fan-out of service events (new captions, watch matches) from worker threads to server-sent-event clients.

Publishers are plain threads; subscribers are asyncio tasks (one per open `GET /v1/events`). Each subscriber has a
bounded queue: a client that does not read fast enough loses its oldest events (counted), it never slows ingest.
The last `keep` events of each kind stay in a ring of their own (so a burst of watch matches never evicts a caption)
and a reconnecting client (`Last-Event-ID`) gets what it missed; when some of what it missed was evicted, it gets a
`gap` event first, naming the kinds and the oldest event id still kept. At most `max_subscribers` streams are open at
once (`subscribe` raises `TooManySubscribers` beyond).
Listeners (`add_listener`, e.g. MQTT out) get every event in the publisher's thread; one that raises is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    id: int  # increasing from 1 for the life of the service
    kind: str  # SSE event name: "caption" | "watch"
    data: dict  # JSON payload

    def sse(self) -> str:
        """The event in text/event-stream framing (id 0: no id line, so the client's Last-Event-ID stays)."""
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


_CLOSED = object()  # sentinel that ends a subscriber's stream
log = logging.getLogger("rlivs.serve")


class TooManySubscribers(RuntimeError):
    """Maps to HTTP 503: the cap on open event streams is reached."""


class Subscription:
    def __init__(self, hub: EventHub, loop: asyncio.AbstractEventLoop, size: int):
        self.hub, self.loop = hub, loop
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=size)

    def offer(self, item) -> None:
        """Runs on the subscriber's loop."""
        if item is not _CLOSED and self.queue.full():
            self.queue.get_nowait()  # drop the oldest
            self.hub.count_dropped()
        if item is _CLOSED and self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    async def next(self, timeout: float) -> Event | None:
        """The next event; None on timeout. Raises EOFError when the hub closed."""
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if item is _CLOSED:
            raise EOFError
        return item

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    def __init__(self, keep: int = 256, queue_size: int = 256, max_subscribers: int = 32):
        self._lock = threading.Lock()
        self._keep = keep
        self._rings: dict[str, deque[Event]] = {}  # kind -> its newest `keep` events
        self._evicted: dict[str, int] = {}  # kind -> id of its newest evicted event
        self.max_subscribers = max_subscribers
        self._subs: list[Subscription] = []
        self._next_id = 1
        self._queue_size = queue_size
        self._closed = False
        self.dropped = 0  # events a slow subscriber lost
        self.published = 0  # events published
        self._listeners: list = []  # callables (Event) -> None, called in the publisher's thread

    def count_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def publish(self, kind: str, data: dict) -> Event:
        with self._lock:
            ev = Event(self._next_id, kind, data)
            self._next_id += 1
            self.published += 1
            ring = self._rings.setdefault(kind, deque(maxlen=self._keep))
            if len(ring) == ring.maxlen:
                self._evicted[kind] = ring[0].id
            ring.append(ev)
            subs = list(self._subs)
        for s in subs:
            self._send(s, ev)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception:  # noqa: BLE001 - a listener's failure must not stop ingest
                log.exception("event listener %r failed on event %d", fn, ev.id)
        return ev

    def add_listener(self, fn) -> None:
        """Call `fn(event)` for every event published from now on (in the publisher's thread: keep it quick)."""
        with self._lock:
            self._listeners = [*self._listeners, fn]

    def _send(self, sub: Subscription, item) -> None:
        try:
            sub.loop.call_soon_threadsafe(sub.offer, item)
        except RuntimeError:  # the subscriber's loop is closed: it is gone
            self.unsubscribe(sub)

    def subscribe(self, loop: asyncio.AbstractEventLoop,
                  last_id: int | None = None) -> tuple[Subscription, list[Event]]:
        """A new subscription plus the kept events after `last_id` (none when last_id is None), preceded by a `gap`
        event when some events after `last_id` were evicted. Raises TooManySubscribers at the cap."""
        sub = Subscription(self, loop, self._queue_size)
        with self._lock:
            if not self._closed and len(self._subs) >= self.max_subscribers:
                raise TooManySubscribers(f"{len(self._subs)} event streams are open, the most this service serves: "
                                         f"close one (or start rlivs serve with a larger --max-subscribers)")
            backlog = []
            if last_id is not None:
                backlog = sorted((e for r in self._rings.values() for e in r if e.id > last_id), key=lambda e: e.id)
                lost = sorted(k for k, i in self._evicted.items() if i > last_id)
                if lost:
                    oldest = min(r[0].id for k, r in self._rings.items() if k in lost)
                    backlog.insert(0, Event(0, "gap", {
                        "kinds": lost, "after": last_id, "oldest_kept": oldest,
                        "detail": f"events of kind {', '.join(lost)} after id {last_id} were dropped from the replay "
                                  f"ring: reload them from GET /v1/captions or GET /v1/matches"}))
            if self._closed:
                sub.queue.put_nowait(_CLOSED)
            else:
                self._subs.append(sub)
        return sub, backlog

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def recent(self, kind: str | None = None, limit: int = 50) -> list[Event]:
        with self._lock:
            evs = sorted((e for k, r in self._rings.items() if kind in (None, k) for e in r), key=lambda e: e.id)
        return evs[-limit:]

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        """End every open stream (at shutdown, so the HTTP server can finish its connections)."""
        with self._lock:
            self._closed = True
            subs, self._subs = list(self._subs), []
        for s in subs:
            self._send(s, _CLOSED)
