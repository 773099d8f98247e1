"""The background threads of `rlivs serve`: one ingest worker per source, and the webhook sender.

A `StreamWorker` ingests its source into its stream (a live source paced in real time, or a file at full speed) on the
service's ingest-priority engine, and hands every committed clip to `EdgeService.publish_clip`. A failure is recorded
in its status (shown by /v1/streams and /healthz); the service keeps serving. `WebhookSender` POSTs watch matches
from its own thread so that a slow receiver never holds up ingest.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from rlivs.runtime.frames import Clip, iter_clips
from rlivs.runtime.memory import Memory
from rlivs.runtime.ingest import StreamIngestor
from rlivs.runtime.sources.bag import BagSource
from rlivs.runtime.sources.live import LiveSource
from rlivs.runtime.sources.spec import SourceSpec

from .metrics import Metrics

if TYPE_CHECKING:
    from .core import EdgeService

log = logging.getLogger("rlivs.serve")


# ---------------------------------------------------------------------------------------------------------------------
# Webhooks
# ---------------------------------------------------------------------------------------------------------------------


class WebhookSender:
    """POSTs JSON to webhook URLs from one background thread, so a slow receiver never holds up ingest."""

    def __init__(self, metrics: Metrics, timeout_s: float, size: int):
        self.metrics, self.timeout_s = metrics, timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._thread = threading.Thread(target=self._run, name="rlivs-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict) -> None:
        try:
            self._queue.put_nowait((url, payload))
        except queue.Full:
            self.metrics.inc("rlivs_webhook_deliveries_total", outcome="dropped")
            log.warning("webhook queue full: dropped a delivery to %s", url)

    def _run(self) -> None:
        while True:
            item = self._queue.get()  # blocks
            if item is None:
                return
            url, payload = item
            body = json.dumps(payload).encode()
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "rlivs"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read(1024)
                self.metrics.inc("rlivs_webhook_deliveries_total", outcome="ok")
            except (urllib.error.URLError, OSError, ValueError) as e:
                self.metrics.inc("rlivs_webhook_deliveries_total", outcome="failed")
                log.warning("webhook POST to %s failed: %s", url, e)

    def stop(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)


# ---------------------------------------------------------------------------------------------------------------------
# Ingest workers
# ---------------------------------------------------------------------------------------------------------------------


class StreamWorker:
    """Ingests one source into its stream, in a background thread."""

    def __init__(self, service: EdgeService, spec: SourceSpec):
        self.service, self.spec = service, spec
        self.live = spec.live or service.config.replay_files  # paced as a live source (vs a file at full speed)
        self.state = "starting"  # starting | running | finished | stopped | failed
        self.error: str | None = None  # why it failed
        self.source: LiveSource | None = None
        self.clips = 0  # clips committed by this run
        self.frames = 0  # frames that went into those clips
        self.behind_live_s: float | None = None  # last clip: seconds from its last frame's capture to its commit
        self.last_clip_at: float | None = None  # unix time of the last commit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rlivs-ingest-{spec.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.stop(timeout=0)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _clips(self, ing: StreamIngestor, mem: Memory) -> Iterator[Clip]:
        svc, spec = self.service, self.spec
        cc = svc.engine.config.clip
        if spec.topic is not None:  # a robot recording: replayed at its recorded speed, or read as fast as it decodes
            speed = svc.config.source.replay_speed if self.live else None
            return ing.clips(BagSource(spec.url, spec.topic, cc.fps, replay_speed=speed, stop=self._stop))
        if not self.live:
            return ing.clips_from_file(spec.url.removeprefix("file://"))  # resumes at the next clip's time
        prev = next((s for s in mem.streams() if s["name"] == spec.name), None)
        start = float(prev["t_end"]) if prev and prev["t_end"] is not None else 0.0  # continue the timeline
        self.source = LiveSource(spec, replace(svc.config.source, fps=cc.fps, start_time=start))
        if self._stop.is_set():
            self.source.stop(timeout=0)
        return iter_clips(self.source, cc.frames_per_clip, cc.fps, first_index=ing.next_index)

    def _run(self) -> None:
        svc, spec = self.service, self.spec
        try:
            with Memory(svc.db, model_fingerprint=svc.engine.model_fingerprint) as mem:
                ing = StreamIngestor(svc.ingest_engine, mem, stream=spec.name, source=spec.url)
                self.state = "running"
                for clip in self._clips(ing, mem):
                    if self._stop.is_set():
                        break  # a partial clip handed out at shutdown is not captioned
                    result = ing.step(clip)
                    record = result.record  # the row just committed (no read-back)
                    behind = None
                    if self.source is not None and self.source.last_wall is not None:
                        behind = max(0.0, time.time() - self.source.last_wall)
                    self.clips += 1
                    self.frames += len(clip)
                    self.behind_live_s, self.last_clip_at = behind, time.time()
                    svc.publish_clip(record, result, middle_frame=clip.frames[len(clip) // 2], behind_live_s=behind)
            self.state = "stopped" if self._stop.is_set() else "finished"
            log.info("stream %s: %s after %d clips", spec.name, self.state, self.clips)
        except Exception as e:  # recorded and shown in /v1/streams and /healthz; the service keeps serving
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("stream %s: ingest failed", spec.name)
        finally:
            if self.source is not None:
                self.source.stop(timeout=1.0)

    def status(self) -> dict:
        st = self.source.stats().as_dict() if self.source is not None else None
        state = self.state
        if state == "running" and st is not None and st["state"] in ("connecting", "reconnecting", "failed"):
            state = st["state"]
        return {"worker": self.state, "state": state, "kind": self.spec.kind, "live": self.live, "url": self.spec.url,
                "error": self.error, "clips_this_run": self.clips, "frames_this_run": self.frames,
                "seconds_behind_live": self.behind_live_s, "last_clip_at": self.last_clip_at, "source_stats": st}
