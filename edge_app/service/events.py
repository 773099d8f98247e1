"""Fan-out of service events (new captions, watch matches) from worker threads to server-sent-event clients.

Publishers are plain threads; subscribers are asyncio tasks (one per open `GET /v1/events`). Each subscriber has a
bounded queue: a client that does not read fast enough loses its oldest events (counted), it never slows ingest.
The last `keep` events stay in a ring so a reconnecting client (`Last-Event-ID`) gets what it missed.
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
        """The event in text/event-stream framing."""
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


_CLOSED = object()  # sentinel that ends a subscriber's stream
log = logging.getLogger("rlivs.serve")


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
    def __init__(self, keep: int = 256, queue_size: int = 256):
        self._lock = threading.Lock()
        self._ring: deque[Event] = deque(maxlen=keep)
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
            self._ring.append(ev)
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
        """A new subscription plus the kept events after `last_id` (none when last_id is None)."""
        sub = Subscription(self, loop, self._queue_size)
        with self._lock:
            backlog = [e for e in self._ring if last_id is not None and e.id > last_id]
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
            evs = [e for e in self._ring if kind is None or e.kind == kind]
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
