"""The clip bus of `rlivs serve`: every clip a worker finished (captioned and committed, gated as idle, or skipped)
goes out on it once, to every listener in order, in the worker's thread; watch matches go out on it too.

    worker ──ClipEvent──▶ ClipBus ──▶ Thumbnails ─▶ ClipMetrics ─▶ ServerEvents ─▶ MqttOut ─▶ WatchMatcher ─▶ Webhooks
                              ▲                                                                 │         ─▶ Retention
                              └───────────────────────── MatchEvent ────────────────────────────┘
                                        (on_match: ClipMetrics, ServerEvents, MqttOut, Webhooks)

A listener is anything with the small interface of `Listener` (every method optional): `on_clip(ClipEvent)`,
`on_match(MatchEvent)`, `start()`, `stop()`. Listeners run in the order they were added, so one may read what an
earlier one noted on the event (the thumbnail listener sets `ClipEvent.thumbnail`; the watch matcher sets
`ClipEvent.matches`). A listener that raises is logged and counted (`ClipBus.failures`); the next one still runs and
ingest goes on. Nothing here imports the service (`core.py`): the bus knows listeners, not who wires them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("rlivs.serve")

OUTCOMES = ("captioned", "gated", "skipped")


@dataclass
class ClipEvent:
    """One clip of one stream, finished: `captioned` (a caption committed: `record` and `result` set), `gated` (the
    activity gate found nothing new: recorded as idle, `result.gate` says why) or `skipped` (never captioned, `reason`
    says why, e.g. "lag": a forced caption that waited past the lag bound was recorded as idle instead)."""

    stream: str
    index: int
    t_start: float  # stream time, seconds
    t_end: float
    outcome: str  # captioned | gated | skipped
    record: Any = None  # ClipRecord: the committed row (captioned only)
    result: Any = None  # ClipResult: timings, the gate's decision
    middle_frame: np.ndarray | None = None  # (H, W, 3) uint8: the clip's middle frame (for its thumbnail)
    lag_s: float | None = None  # seconds from the clip's end (its last frame handed out) to its commit
    behind_live_s: float | None = None  # live sources: seconds from its last frame's capture to its commit
    reason: str | None = None  # why it was gated or skipped (the gate's reason, "lag", ...)
    thumbnail: bool = False  # set by the thumbnail listener when it stored one
    matches: list = field(default_factory=list)  # set by the watch matcher: the MatchEvents this clip made


@dataclass
class MatchEvent:
    """A watch matched a committed caption: `match` (store.Match), its watch (store.Watch), the clip's wall-clock
    span (UTC unix seconds or None) and its API JSON (`payload`, what SSE, MQTT and webhooks carry)."""

    match: Any
    watch: Any
    wall: tuple[float | None, float | None]
    payload: dict


class Listener:
    """What a bus listener may implement; the defaults do nothing."""

    name = "listener"

    def on_clip(self, clip: ClipEvent) -> None:
        pass

    def on_match(self, match: MatchEvent) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ClipBus:
    def __init__(self):
        self._listeners: list = []
        self._lock = threading.Lock()
        self.failures: dict[str, int] = {}  # listener name -> calls that raised
        self.clips: dict[str, int] = dict.fromkeys(OUTCOMES, 0)  # clips published, by outcome

    def add(self, listener) -> Any:
        """Add a listener (after those already added); returns it."""
        with self._lock:
            self._listeners = [*self._listeners, listener]
        return listener

    @property
    def listeners(self) -> list:
        return list(self._listeners)

    def _call(self, listener, method: str, event) -> None:
        fn = getattr(listener, method, None)
        if fn is None:
            return
        try:
            fn(event)
        except Exception:  # noqa: BLE001 - one listener's failure must not stop ingest or the others
            name = getattr(listener, "name", type(listener).__name__)
            with self._lock:
                self.failures[name] = self.failures.get(name, 0) + 1
            log.exception("bus listener %s failed on %s", name, type(event).__name__)

    def publish(self, clip: ClipEvent) -> ClipEvent:
        """Hand a finished clip to every listener, in order. Returns it (with what the listeners noted)."""
        if clip.outcome not in OUTCOMES:
            raise ValueError(f"unknown clip outcome {clip.outcome!r}")
        with self._lock:
            self.clips[clip.outcome] += 1
        for listener in self._listeners:
            self._call(listener, "on_clip", clip)
        return clip

    def publish_match(self, match: MatchEvent) -> None:
        for listener in self._listeners:
            self._call(listener, "on_match", match)

    def start(self) -> None:
        for listener in self._listeners:
            fn = getattr(listener, "start", None)
            if fn is not None:
                fn()

    def stop(self) -> None:
        for listener in reversed(self._listeners):
            fn = getattr(listener, "stop", None)
            if fn is None:
                continue
            try:
                fn()
            except Exception:  # noqa: BLE001 - stop the others
                log.exception("bus listener %s failed to stop", getattr(listener, "name", listener))
