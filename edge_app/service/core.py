"""What `rlivs serve` runs: ingest workers (one thread per source, workers.py), questions, watches, events,
thumbnails, metrics (telemetry.py).

One model serves everything: the service owns one `PriorityLock` and wraps the engine's backend in two `SharedBackend`
views of it; ingest calls the model at INGEST priority, questions at QUESTION priority inside a reservation, so a
question gets the model at the next decoder-step boundary of whatever caption is being generated
(runtime/backends/shared.py). Questions are answered from what the memory has committed (a read-only connection per
request; SQLite WAL lets it read while ingest writes).

Every committed caption goes through `publish_clip`: thumbnail stored, metrics updated, a `caption` event published,
the caption scored against every watch (the retrieval relevance `retrieval.similarity` between the watch query's
vector and the caption's stored vector; a match when relevance >= the watch's threshold), each match stored,
published as a `watch` event and, when the watch has a webhook, POSTed to it from a background thread.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from rlivs.runtime.backends.shared import INGEST, QUESTION, PriorityLock, SharedBackend
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.answer import answer, format_time
from rlivs.runtime.engine import Engine
from rlivs.runtime.ingest import ClipResult
from rlivs.runtime.retrieval import similarity
from rlivs.runtime.sources.live import SourceConfig
from rlivs.runtime.sources.spec import SourceSpec

from . import telemetry
from .events import EventHub
from .metrics import Metrics
from .store import EdgeStore, Match, Watch, edge_db_path
from .workers import StreamWorker, WebhookSender
from rlivs.runtime.errors import UserError

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
        self.model_lock = PriorityLock()  # the one model, handed out call by call to ingest and questions
        ingest_backend = SharedBackend(engine.backend, INGEST, self.model_lock)
        self.ingest_engine = replace(engine, backend=ingest_backend)  # same text codec, preprocessing and settings
        self.question_backend = SharedBackend(engine.backend, QUESTION, self.model_lock)
        self.question_engine = replace(engine, backend=self.question_backend)
        info = engine.backend.info
        # Create/check the memory and every stream now, so a wrong model or changed settings fail before serving.
        with Memory(self.db, model_fingerprint=engine.model_fingerprint) as mem:
            for spec in self.specs:
                mem.open_stream(spec.name, spec.url, info.model_id, engine.config.ingest_fingerprint())
        self.store = EdgeStore(edge_db_path(self.db))
        self.events = EventHub(self.config.event_keep, self.config.event_queue)
        self.metrics = Metrics()
        telemetry.declare(self.metrics)
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
                if d["worker"] in ("finished", "stopped", "failed"):  # the source has ended: nothing is ingesting,
                    d.update(ingesting=False, live=False, seconds_behind_live=None)  # live, or behind any more
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

    def render_metrics(self) -> str:
        extra = telemetry.scrape(self.workers, self.model_lock.stats, self.events, len(self._watches), self.started_at)
        return self.metrics.render(extra)
