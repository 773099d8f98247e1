"""The bus listeners of `rlivs serve` that need nothing but what they are given (bus.py says the interface): thumbnails,
metrics, server-sent events, webhooks and retention. The watch matcher is in watches.py, MQTT in mqtt.py.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .bus import ClipEvent, Listener, MatchEvent
from .events import EventHub
from .metrics import Metrics
from .payloads import caption_json, make_thumbnail
from .store import EdgeStore

log = logging.getLogger("rlivs.serve")

STAGES = ("encode", "prefill", "decode", "select", "store")  # ClipResult.timings keys


class Thumbnails(Listener):
    """Stores a captioned clip's middle frame as a JPEG (and notes `ClipEvent.thumbnail` for later listeners)."""

    name = "thumbnails"

    def __init__(self, store: EdgeStore, width: int = 160, quality: int = 70):
        self.store, self.width, self.quality = store, width, quality

    def on_clip(self, clip: ClipEvent) -> None:
        if clip.outcome != "captioned" or clip.middle_frame is None:
            return
        jpeg, w, h = make_thumbnail(clip.middle_frame, self.width, self.quality)
        self.store.put_thumbnail(clip.stream, clip.index, jpeg, w, h)
        clip.thumbnail = True


class ClipMetrics(Listener):
    """Per stream: clips captioned, gated and skipped (with the reason), stage latencies, the lag from a clip's end
    to its commit, the stream time reached; matches per watch."""

    name = "metrics"

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def on_clip(self, clip: ClipEvent) -> None:
        m, s = self.metrics, clip.stream
        m.set("rlivs_stream_time_seconds", clip.t_end, stream=s)
        if clip.lag_s is not None:
            m.observe("rlivs_clip_lag_seconds", clip.lag_s, stream=s)
            m.set("rlivs_clip_lag_last_seconds", clip.lag_s, stream=s)
        if clip.behind_live_s is not None:
            m.set("rlivs_seconds_behind_live", clip.behind_live_s, stream=s)
        if clip.outcome == "gated":
            m.inc("rlivs_clips_gated_total", stream=s)
            return
        if clip.outcome == "skipped":
            m.inc("rlivs_clips_skipped_total", stream=s, reason=clip.reason or "unknown")
            return
        m.inc("rlivs_clips_total", stream=s)
        timings = getattr(clip.result, "timings", None)
        if timings:
            for stage in STAGES:
                if stage in timings:
                    m.observe("rlivs_clip_stage_seconds", timings[stage], stream=s, stage=stage)
            m.observe("rlivs_clip_stage_seconds", sum(timings.values()), stream=s, stage="total")

    def on_match(self, match: MatchEvent) -> None:
        self.metrics.inc("rlivs_watch_matches_total", watch=str(match.watch.id))


class ServerEvents(Listener):
    """Publishes `caption` and `watch` events to the server-sent-event hub (GET /v1/events)."""

    name = "events"

    def __init__(self, hub: EventHub):
        self.hub = hub

    def on_clip(self, clip: ClipEvent) -> None:
        if clip.outcome == "captioned":
            self.hub.publish("caption", caption_json(clip.record, clip.thumbnail))

    def on_match(self, match: MatchEvent) -> None:
        self.hub.publish("watch", match.payload)

    def stop(self) -> None:
        self.hub.close()


class Webhooks(Listener):
    """Wakes the webhook sender when a match queued a delivery (queued by the matcher in the match's own
    transaction); beyond `queue` waiting deliveries the oldest are dropped (counted, logged)."""

    name = "webhooks"

    def __init__(self, store: EdgeStore, metrics: Metrics, sender, queue: int):
        self.store, self.metrics, self.sender, self.queue = store, metrics, sender, queue

    def on_match(self, match: MatchEvent) -> None:
        if not match.watch.webhook:
            return
        dropped = self.store.drop_deliveries_over(self.queue)
        if dropped:
            self.metrics.inc("rlivs_webhook_deliveries_total", dropped, outcome="dropped")
            log.warning("webhook queue full (%d waiting): dropped the %d oldest deliveries", self.queue, dropped)
        self.sender.wake()

    def start(self) -> None:
        self.sender.start()

    def stop(self) -> None:
        self.sender.stop()


class Retention(Listener):
    """Forgets the captions whose clip ended more than `days` ago, at most once every `every_s` seconds, as clips
    go by (any outcome); their thumbnails go too. `open_memory()` opens the memory writable."""

    name = "retention"

    def __init__(self, store: EdgeStore, metrics: Metrics, days: float | None, every_s: float,
                 open_memory: Callable, clock: Callable[[], float] = time.time):
        self.store, self.metrics, self.days, self.every_s = store, metrics, days, every_s
        self.open_memory, self.clock = open_memory, clock
        self._ran_at = 0.0  # when retention last ran
        self._lock = threading.Lock()

    def due(self, now: float) -> bool:
        return self.days is not None and now - self._ran_at >= self.every_s

    def on_clip(self, clip: ClipEvent) -> None:
        now = self.clock()
        if self.due(now):
            with self.open_memory() as mem:
                self.run(mem, now)

    def run(self, mem, now: float | None = None) -> int:
        """Forget what is older than `days` in `mem` (when due). Returns the number of clips forgotten."""
        now = self.clock() if now is None else now
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            if not self.due(now):
                return 0
            self._ran_at = now
            n = mem.forget(before=now - self.days * 86400.0)
            if n:
                for name, first in mem.first_clips().items():  # one index lookup per stream, no count of every clip
                    self.store.drop_thumbnails_before(name, first)  # (no clip left: first = its next index)
                log.info("retention: forgot %d clips that ended more than %g days ago", n, self.days)
                self.metrics.inc("rlivs_clips_forgotten_total", n)
            return n
        finally:
            self._lock.release()
