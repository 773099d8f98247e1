"""What `rlivs serve` runs: ingest workers (one thread per source), questions, watches, events, thumbnails, metrics.

One model serves everything: the engine's backend is wrapped in a `SharedBackend`; ingest calls it at INGEST
priority, questions at QUESTION priority inside a reservation, so a question gets the model at the next decoder-step
boundary of whatever caption is being generated (runtime/scheduler.py). Questions are answered from what the memory
has committed (a read-only connection per request; SQLite WAL lets it read while ingest writes).

Every committed caption goes through `publish_clip`: thumbnail stored, metrics updated, a `caption` event published,
the caption scored against every watch (the retrieval relevance `retrieval.similarity` between the watch query's
vector and the caption's stored vector; a match when relevance >= the watch's threshold), each match stored,
published as a `watch` event and, when the watch has a webhook, POSTed to it from a background thread.
"""

from __future__ import annotations

import io
import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
from PIL import Image

from rlivs.runtime.frames import Clip, iter_clips
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.pipeline import ClipResult, Engine, StreamIngestor, answer, format_time
from rlivs.runtime.retrieval import similarity
from rlivs.runtime.scheduler import INGEST, PRIORITY_NAMES, QUESTION, SharedBackend
from rlivs.runtime.sources.live import LiveSource, SourceConfig
from rlivs.runtime.sources.spec import SourceSpec

from .edge_store import EdgeStore, Match, Watch, edge_db_path
from .events import EventHub
from .metrics import Metrics
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.serve")

STAGES = ("encode", "prefill", "decode", "select", "store")  # ClipResult.timings keys


class NotFound(LookupError):
    """Maps to HTTP 404."""


class NotReady(RuntimeError):
    """Maps to HTTP 409: the request is valid but the service has nothing to answer it with yet."""


@dataclass
class ServiceConfig:
    replay_files: bool = True  # a file source is replayed at real speed as a live camera; False = at full speed
    source: SourceConfig = field(default_factory=SourceConfig)  # live-source settings (fps is set from the clip fps)
    thumbnail_width: int = 160  # thumbnail width in pixels (height keeps the aspect ratio)
    thumbnail_quality: int = 70  # JPEG quality, 1-95
    default_watch_ratio: float = 0.5  # a watch without a threshold matches at this fraction of its self-relevance
    webhook_timeout_s: float = 5.0  # per webhook POST
    webhook_queue: int = 100  # webhook deliveries waiting; when full, new ones are dropped (counted, logged)
    event_keep: int = 256  # recent events kept for SSE clients that reconnect with Last-Event-ID
    event_queue: int = 256  # events buffered per SSE client; a slower client loses its oldest (counted)

    def __post_init__(self):
        if not 16 <= self.thumbnail_width <= 1024:
            raise UserError(f"thumbnail_width must be in 16..1024 pixels, got {self.thumbnail_width}")
        if not 1 <= self.thumbnail_quality <= 95:
            raise UserError(f"thumbnail_quality must be in 1..95, got {self.thumbnail_quality}")
        if not 0 < self.default_watch_ratio <= 1:
            raise UserError(f"default_watch_ratio must be in (0, 1], got {self.default_watch_ratio}")


def make_thumbnail(image: np.ndarray, width: int = 160, quality: int = 70) -> tuple[bytes, int, int]:
    """(H, W, 3) uint8 RGB -> (JPEG bytes, width, height), scaled to `width` with the aspect ratio kept."""
    img = Image.fromarray(np.ascontiguousarray(image))
    w = min(width, img.width)
    h = max(1, round(img.height * w / img.width))
    if (w, h) != img.size:
        img = img.resize((w, h), resample=Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue(), w, h


def thumbnail_url(stream: str, clip: int) -> str:
    return f"/v1/thumbnails/{quote(stream, safe='')}/{int(clip)}.jpg"


def caption_json(r: ClipRecord, has_thumbnail: bool) -> dict:
    return {"stream": r.stream, "clip": r.index, "t_start": r.t_start, "t_end": r.t_end,
            "time": f"{format_time(r.t_start)}-{format_time(r.t_end)}", "caption": r.caption,
            "committed_at": r.committed_at, "thumbnail": thumbnail_url(r.stream, r.index) if has_thumbnail else None}


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
                    record = mem.clips(spec.name, limit=1, offset=result.index)[0]  # indices are 0..n-1 per stream
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


# ---------------------------------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _WatchEntry:
    watch: Watch
    vector: np.ndarray  # (D,) the query's retrieval vector
    self_score: float  # relevance of the query to itself (what a caption made of exactly its words would score)
    max_score: float = -math.inf  # best relevance seen since the service started (to help choose a threshold)
    last_score: float | None = None  # relevance of the latest caption scored


class EdgeService:
    def __init__(self, engine: Engine, db: str | Path, sources: list[SourceSpec] = (),
                 config: ServiceConfig | None = None):
        self.engine = engine
        self.db = Path(db)
        self.config = config or ServiceConfig()
        self.specs = list(sources)
        shared = SharedBackend(engine.backend, INGEST)
        self.shared = shared
        self.ingest_engine = replace(engine, backend=shared)  # same text codec, preprocessing and settings
        self.question_backend = shared.with_priority(QUESTION)
        self.question_engine = replace(engine, backend=self.question_backend)
        info = engine.backend.info
        # Create/check the memory and every stream now, so a wrong model or changed settings fail before serving.
        with Memory(self.db, model_fingerprint=engine.model_fingerprint) as mem:
            for spec in self.specs:
                mem.open_stream(spec.name, spec.url, info.model_id, engine.config.ingest_fingerprint())
        self.store = EdgeStore(edge_db_path(self.db))
        self.events = EventHub(self.config.event_keep, self.config.event_queue)
        self.metrics = Metrics()
        self._declare_metrics()
        self.webhooks = WebhookSender(self.metrics, self.config.webhook_timeout_s, self.config.webhook_queue)
        self._watch_lock = threading.Lock()
        self._watches: dict[int, _WatchEntry] = {}
        for w in self.store.watches():
            self._watches[w.id] = self._entry(w)
        self.workers = [StreamWorker(self, s) for s in self.specs]
        self.started_at = time.time()
        self._stopped = False

    # -- lifetime -----------------------------------------------------------------------------------------------------

    def start(self) -> EdgeService:
        for w in self.workers:
            w.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ingest (the clip being captioned finishes), end event streams, flush webhooks. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.events.close()
        for w in self.workers:
            w.stop()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.webhooks.stop()

    # -- the path of every committed caption ----------------------------------------------------------------------

    def publish_clip(self, record: ClipRecord, result: ClipResult | None = None, middle_frame: np.ndarray | None = None,
                     behind_live_s: float | None = None) -> list[Match]:
        """Thumbnail, metrics, `caption` event, then watch scoring. Returns the watch matches this caption made."""
        has_thumb = False
        if middle_frame is not None:
            jpeg, w, h = make_thumbnail(middle_frame, self.config.thumbnail_width, self.config.thumbnail_quality)
            self.store.put_thumbnail(record.stream, record.index, jpeg, w, h)
            has_thumb = True
        m = self.metrics
        m.inc("rlivs_clips_total", stream=record.stream)
        m.set("rlivs_stream_time_seconds", record.t_end, stream=record.stream)
        if result is not None:
            for stage in STAGES:
                if stage in result.timings:
                    m.observe("rlivs_clip_stage_seconds", result.timings[stage], stream=record.stream, stage=stage)
            m.observe("rlivs_clip_stage_seconds", sum(result.timings.values()), stream=record.stream, stage="total")
        if behind_live_s is not None:
            m.set("rlivs_seconds_behind_live", behind_live_s, stream=record.stream)
        self.events.publish("caption", caption_json(record, has_thumb))
        return self.score_watches(record)

    def score_watches(self, record: ClipRecord) -> list[Match]:
        """Score one committed caption against every watch; store, publish and deliver the matches."""
        with self._watch_lock:
            entries = [e for e in self._watches.values() if e.watch.stream in (None, record.stream)]
        if not entries:
            return []
        matrix = np.stack([e.vector for e in entries])  # (W, D)
        scores = similarity(record.vector.astype(np.float32), matrix)  # (W,) mean pairwise token cosine
        out = []
        for e, score in zip(entries, scores.tolist()):
            e.last_score, e.max_score = score, max(e.max_score, score)
            if score < e.watch.threshold:
                continue
            match = self.store.add_match(e.watch.id, record.stream, record.index, record.t_start, record.t_end,
                                         record.caption, score)
            if match is None:
                continue  # already matched (or deleted meanwhile)
            out.append(match)
            self.metrics.inc("rlivs_watch_matches_total", watch=str(e.watch.id))
            payload = self.match_json(match, e.watch)
            self.events.publish("watch", payload)
            if e.watch.webhook:
                self.webhooks.send(e.watch.webhook, {"event": "watch", **payload})
        return out

    def match_json(self, m: Match, w: Watch | None = None) -> dict:
        d = m.as_dict()
        d["time"] = f"{format_time(m.t_start)}-{format_time(m.t_end)}"
        d["thumbnail"] = thumbnail_url(m.stream, m.clip) if self.store.thumbnail_clips(m.stream, [m.clip]) else None
        if w is not None:
            d["query"] = w.query
            d["threshold"] = w.threshold
        return d

    # -- watches --------------------------------------------------------------------------------------------------

    def _query_vector(self, text: str) -> np.ndarray:
        e = self.question_engine
        with self.question_backend.reserve():
            return e.vector(e.text.encode(text))  # (D,) as a question's vector is made

    def _entry(self, w: Watch) -> _WatchEntry:
        v = self._query_vector(w.query)
        return _WatchEntry(w, v, float(similarity(v, v[None])[0]))

    def add_watch(self, query: str, threshold: float | None = None, stream: str | None = None,
                  webhook: str | None = None) -> dict:
        query = query.strip()
        if not query:
            raise UserError("the watch query is empty: describe what to watch for, e.g. 'a person at the door'")
        probe = self._entry(Watch(0, query, 0.0, stream, webhook, 0.0))
        if threshold is None:
            threshold = round(self.config.default_watch_ratio * probe.self_score, 6)
        w = self.store.add_watch(query, threshold, stream, webhook)
        entry = replace(probe, watch=w)
        with self._watch_lock:
            self._watches[w.id] = entry
        return self._watch_json(entry, 0)

    def _watch_json(self, e: _WatchEntry, n_matches: int) -> dict:
        return {**e.watch.as_dict(), "self_score": e.self_score, "matches": n_matches,
                "max_score": None if e.max_score == -math.inf else e.max_score, "last_score": e.last_score}

    def watches(self) -> list[dict]:
        counts = self.store.match_counts()
        with self._watch_lock:
            entries = sorted(self._watches.values(), key=lambda e: e.watch.id)
        return [self._watch_json(e, counts.get(e.watch.id, 0)) for e in entries]

    def watch(self, watch_id: int) -> dict:
        with self._watch_lock:
            e = self._watches.get(watch_id)
        if e is None:
            raise NotFound(f"no watch {watch_id}: list them with GET /v1/watches")
        return self._watch_json(e, self.store.match_counts().get(watch_id, 0))

    def delete_watch(self, watch_id: int) -> None:
        with self._watch_lock:
            self._watches.pop(watch_id, None)
        if not self.store.delete_watch(watch_id):
            raise NotFound(f"no watch {watch_id}: list them with GET /v1/watches")

    def matches(self, watch_id: int | None = None, limit: int = 50, before: int | None = None) -> list[dict]:
        if watch_id is not None:
            self.watch(watch_id)  # 404 for an unknown watch
        with self._watch_lock:
            by_id = {i: e.watch for i, e in self._watches.items()}
        return [self.match_json(m, by_id.get(m.watch_id)) for m in self.store.matches(watch_id, limit, before)]

    # -- questions and captions -----------------------------------------------------------------------------------

    def _read(self) -> Memory:
        return Memory(self.db, readonly=True)

    def ask(self, question: str, stream: str | None = None) -> dict:
        t0 = time.perf_counter()
        try:
            with self._read() as mem:
                if stream is not None and stream not in {s["name"] for s in mem.streams()}:
                    raise NotFound(f"no stream {stream!r}: GET /v1/streams lists them (or leave stream out for all)")
                if not mem.clips(stream, limit=1):
                    where = f"stream {stream!r}" if stream else "the memory"
                    raise NotReady(f"{where} holds no captions yet: ingest commits the first one after "
                                   f"{self.engine.config.clip.clip_seconds:g} s of video; wait for a caption "
                                   f"event on GET /v1/events and ask again")
                with self.question_backend.reserve():  # ingest waits at its next step boundary until we are done
                    a = answer(self.question_engine, mem, question, stream=stream)
        except (NotFound, NotReady, UserError):
            self.metrics.inc("rlivs_questions_total", outcome="rejected")
            raise
        except Exception:
            self.metrics.inc("rlivs_questions_total", outcome="failed")
            raise
        self.metrics.inc("rlivs_questions_total", outcome="answered")
        self.metrics.observe("rlivs_question_seconds", time.perf_counter() - t0)
        thumbs = {}
        for r, _ in a.used:
            thumbs.setdefault(r.stream, []).append(r.index)
        have = {s: self.store.thumbnail_clips(s, idx) for s, idx in thumbs.items()}
        return {"question": a.question, "answer": a.text, "latency_s": a.latency_s, "prompt_tokens": a.prompt_tokens,
                "captions": [{**caption_json(r, r.index in have.get(r.stream, ())), "relevance": s}
                            for r, s in a.used]}

    def captions(self, stream: str | None = None, t_from: float | None = None, t_to: float | None = None,
                 limit: int = 50, offset: int = 0) -> dict:
        with self._read() as mem:
            if stream is not None and stream not in {s["name"] for s in mem.streams()}:
                raise NotFound(f"no stream {stream!r}: GET /v1/streams lists them")
            rows = mem.clips(stream, t_from, t_to, limit=limit, offset=offset)
        by_stream: dict[str, list[int]] = {}
        for r in rows:
            by_stream.setdefault(r.stream, []).append(r.index)
        have = {s: self.store.thumbnail_clips(s, idx) for s, idx in by_stream.items()}
        return {"captions": [caption_json(r, r.index in have[r.stream]) for r in rows], "limit": limit,
                "offset": offset, "next_offset": offset + len(rows) if len(rows) == limit else None}

    def thumbnail(self, stream: str, clip: int) -> bytes:
        jpeg = self.store.thumbnail(stream, clip)
        if jpeg is None:
            raise NotFound(f"no thumbnail for clip {clip} of stream {stream!r}: thumbnails exist for clips "
                           f"ingested by `rlivs serve`")
        return jpeg

    # -- health and metrics ---------------------------------------------------------------------------------------

    def streams(self) -> list[dict]:
        with self._read() as mem:
            rows = mem.streams()
        workers = {w.spec.name: w for w in self.workers}
        out = []
        for r in rows:
            w = workers.get(r["name"])
            d = {"name": r["name"], "source": r["source"], "model_id": r["model_id"], "clips": r["n_clips"],
                 "t_end": r["t_end"], "created_at": r["created_at"], "ingesting": w is not None}
            if w is not None:
                d.update(w.status())
            else:
                d["state"] = "stored"
            out.append(d)
        return out

    def health(self) -> dict:
        """What /healthz shows (no stream names or URLs: it needs no token)."""
        states = [w.status()["state"] for w in self.workers]
        bad = [s for s in states if s in ("failed", "reconnecting", "connecting")]
        return {"status": "degraded" if bad else "ok", "uptime_s": round(time.time() - self.started_at, 3),
                "sources": len(states), "sources_ok": len(states) - len(bad),
                "backend": self.engine.backend.name}

    def _declare_metrics(self) -> None:
        m = self.metrics
        m.declare("rlivs_clips_total", "counter", "Clips captioned and committed to the memory.")
        m.declare("rlivs_clip_stage_seconds", "histogram", "Per-clip latency by stage (encode, prefill, decode, "
                  "select, store, total).")
        m.declare("rlivs_seconds_behind_live", "gauge", "Last clip: seconds from its last frame's capture to its "
                  "commit.")
        m.declare("rlivs_stream_time_seconds", "gauge", "Stream time of the end of the last committed clip.")
        m.declare("rlivs_questions_total", "counter", "Questions by outcome (answered, rejected, failed).")
        m.declare("rlivs_question_seconds", "histogram", "Question latency (retrieval + answer), seconds.")
        m.declare("rlivs_watch_matches_total", "counter", "Watch matches by watch id.")
        m.declare("rlivs_webhook_deliveries_total", "counter", "Webhook POSTs by outcome (ok, failed, dropped).")

    def render_metrics(self) -> str:
        per_source = {
            "rlivs_frames_decoded_total": ("counter", "Frames decoded from the source.", "frames_decoded"),
            "rlivs_frames_sampled_total": ("counter", "Frames handed to ingest at the sampling rate.",
                                           "frames_sampled"),
            "rlivs_frames_dropped_total": ("counter", "Sample times skipped because ingest was busy (never queued).",
                                           "frames_dropped"),
            "rlivs_decode_errors_total": ("counter", "Packets the decoder rejected.", "decode_errors"),
            "rlivs_source_reconnects_total": ("counter", "Successful reopens of a source (reconnects, loops).",
                                              "reconnects"),
            "rlivs_source_open_failures_total": ("counter", "Failed attempts to open a source.", "open_failures"),
            "rlivs_source_disconnects_total": ("counter", "Connections lost (error, stall, end of a live stream).",
                                               "disconnects"),
        }
        extra: list = []
        samples: dict[str, list] = {k: [] for k in per_source}
        up, lag = [], []
        for w in self.workers:
            st = w.source.stats() if w.source is not None else None
            lab = {"stream": w.spec.name}
            for name, (_, _, attr) in per_source.items():
                value = getattr(st, attr) if st else (w.frames if attr == "frames_sampled" else 0)
                samples[name].append((lab, value))
            state = w.status()["state"]
            up.append((lab, 1.0 if state in ("running", "live") else 0.0))
            if st is not None and st.last_frame_at is not None:
                lag.append((lab, max(0.0, time.time() - st.last_frame_at)))
        for name, (kind, help_, _) in per_source.items():
            extra.append((name, kind, help_, samples[name]))
        extra.append(("rlivs_source_up", "gauge", "1 while a source delivers frames (or a file is being ingested).",
                      up))
        extra.append(("rlivs_source_last_frame_age_seconds", "gauge", "Seconds since the source's newest frame.", lag))
        stats = self.shared.lock.stats
        for name, attr, help_ in (("rlivs_model_calls_total", "calls", "Backend calls granted, by priority."),
                                  ("rlivs_model_wait_seconds_total", "wait_s", "Seconds callers waited for the model."),
                                  ("rlivs_model_busy_seconds_total", "busy_s", "Seconds the model ran, by priority.")):
            extra.append((name, "counter", help_,
                          [({"priority": PRIORITY_NAMES[p]}, v) for p, v in sorted(getattr(stats, attr).items())]))
        extra.append(("rlivs_events_published_total", "counter", "Events published (captions and watch matches).",
                      [({}, self.events.published)]))
        extra.append(("rlivs_events_dropped_total", "counter", "Events a slow SSE client lost.",
                      [({}, self.events.dropped)]))
        extra.append(("rlivs_event_subscribers", "gauge", "Open /v1/events streams.", [({}, self.events.subscribers)]))
        extra.append(("rlivs_watches", "gauge", "Standing queries.", [({}, len(self._watches))]))
        extra.append(("rlivs_uptime_seconds", "gauge", "Seconds since the service started.",
                      [({}, time.time() - self.started_at)]))
        return self.metrics.render(extra)
