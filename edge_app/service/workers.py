"""The ingest threads of `rlivs serve`: one worker per source (the webhook senders are in webhooks.py).

A `StreamWorker` ingests its source into its stream (a live source paced in real time, or a file at full speed) on the
service's ingest-priority engine, and hands every committed clip to `EdgeService.publish_clip`. A failure is recorded
in its status (shown by /v1/streams and /healthz); the service keeps serving, and the worker tries again after 5 s,
then 10, 20, 40, 60, 60 ... s (a full disk that gets space back resumes ingest; the memory resumes at the next clip).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from rlivs.runtime.frames import Clip, iter_clips
from rlivs.runtime.memory import Memory
from rlivs.runtime.ingest import StreamIngestor
from rlivs.runtime.sources.file import VideoFileSource
from rlivs.runtime.sources.bag import BagSource
from rlivs.runtime.sources.live import LiveSource
from rlivs.runtime.sources.spec import SourceSpec


if TYPE_CHECKING:
    from .core import EdgeService

log = logging.getLogger("rlivs.serve")


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
        self.gated = 0  # clips of this run the activity gate recorded as idle (not captioned)
        self.gate = service.config.gate.get(spec.name)  # the activity gate (None or disabled: every clip captioned)
        self.frames = 0  # frames that went into those clips
        self.behind_live_s: float | None = None  # last clip: seconds from its last frame's capture to its commit
        self.last_clip_at: float | None = None  # unix time of the last commit
        self.retry_at: float | None = None  # after a failure: unix time of the next attempt
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
        origin = svc.config.start_time if spec.kind == "file" else None  # --start-time: a file's first frame
        if not self.live:
            source = VideoFileSource(spec.url.removeprefix("file://"), fps=cc.fps)
            if origin is not None:
                source.clock_origin, source.clock_kind = origin, "--start-time"
            return ing.clips(source)  # resumes at the next clip's time
        prev = next((s for s in mem.streams() if s["name"] == spec.name), None)
        start = float(prev["t_end"]) if prev and prev["t_end"] is not None else 0.0  # continue the timeline
        self.source = LiveSource(spec, replace(svc.config.source, fps=cc.fps, start_time=start))
        self.source.clock_origin = origin
        if self._stop.is_set():
            self.source.stop(timeout=0)
        return iter_clips(self.source, cc.frames_per_clip, cc.fps, first_index=ing.next_index)

    def _run(self) -> None:
        """Ingest; after a failure (e.g. a full disk) wait with backoff (`ServiceConfig.retry_s`) and resume."""
        first, most = self.service.config.retry_s
        wait = first
        while not self._stop.is_set():
            if self._ingest():
                return
            self.retry_at = time.time() + wait
            log.warning("stream %s: retrying in %g s", self.spec.name, wait)
            if self._stop.wait(wait):
                return
            self.retry_at = None
            wait = min(most, wait * 2)

    def _ingest(self) -> bool:
        """One run until the source ends or stop; False when it failed (recorded in state and error)."""
        svc, spec = self.service, self.spec
        try:
            with Memory(svc.db, model_fingerprint=svc.engine.model_fingerprint) as mem:
                ing = StreamIngestor(svc.ingest_engine, mem, stream=spec.name, source=spec.url, gate=self.gate)
                self.state, self.error = "running", None
                for clip in self._clips(ing, mem):
                    if self._stop.is_set():
                        break  # a partial clip handed out at shutdown is not captioned
                    result = ing.step(clip)
                    record = result.record  # the row just committed (no read-back)
                    behind = None
                    if self.source is not None and self.source.last_wall is not None:
                        behind = max(0.0, time.time() - self.source.last_wall)
                    if result.gated:  # idle: recorded as watched; no caption, so nothing to publish
                        self.gated += 1
                        self.frames += len(clip)
                        self.behind_live_s = behind
                        svc.metrics.inc("rlivs_clips_gated_total", stream=spec.name)
                        svc.metrics.set("rlivs_stream_time_seconds", result.t_end, stream=spec.name)
                        svc.retain(mem)
                        continue
                    self.clips += 1
                    self.frames += len(clip)
                    self.behind_live_s, self.last_clip_at = behind, time.time()
                    svc.publish_clip(record, result, middle_frame=clip.frames[len(clip) // 2], behind_live_s=behind)
                    svc.retain(mem)
            self.state = "stopped" if self._stop.is_set() else "finished"
            why = getattr(ing.source, "truncated", None)  # a recording that could not be read to its end
            if why:
                log.warning("stream %s: %s %s; every frame before it was captioned and committed", spec.name,
                            spec.url, why)
            log.info("stream %s: %s after %d clips", spec.name, self.state, self.clips)
            return True
        except Exception as e:  # recorded and shown in /v1/streams and /healthz; the service keeps serving
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("stream %s: ingest failed", spec.name)
            return False
        finally:
            if self.source is not None:
                self.source.stop(timeout=1.0)

    def status(self) -> dict:
        st = self.source.stats().as_dict() if self.source is not None else None
        state = self.state
        if state == "running" and st is not None and st["state"] in ("connecting", "reconnecting", "failed"):
            state = st["state"]
        return {"worker": self.state, "state": state, "kind": self.spec.kind, "live": self.live, "url": self.spec.url,
                "error": self.error, "clips_this_run": self.clips, "gated_this_run": self.gated,
                "gate": bool(self.gate and self.gate.enabled), "frames_this_run": self.frames,
                "seconds_behind_live": self.behind_live_s, "last_clip_at": self.last_clip_at, "retry_at": self.retry_at,
                "source_stats": st}
