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

Matching is exactly once across crashes: a clip's matches, their webhook deliveries and the stream's "matched up to
clip N" mark are written in one transaction of the service database (`EdgeStore.record_clip`). Clips committed to
the memory but not yet matched (a crash or a failed write in between) are matched from the memory when the service
starts and before the stream's next clip (`catch_up`); deliveries that were due are sent after a restart
(webhooks.py). A watch matches the clips of each stream after the mark that stream had when the watch was created.

Questions take turns (`QuestionGate`): one is answered at a time, at most `question_queue` wait (more get 429 with
Retry-After), and while ingest runs, a question that held the model for d seconds keeps the next one off it for
d * ingest_share / (1 - ingest_share) seconds, so ingest keeps at least `ingest_share` of the model under a flood.
Every entry point submits its question through `submit_question`: admitted at once or refused (`Busy`), then run on
the service's own thread pool, sized to the gate (one thread per admitted question, so no second, hidden queue). A
question whose caller goes away (`Question.cancel`) is dropped if its turn has not begun, and stopped at the next piece
of generated text if it has (`QuestionCancelled`; counted in rlivs_questions_total as `dropped` / `stopped`).
"""

from __future__ import annotations

import io
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from rlivs.runtime.activity import GateConfig
from rlivs.runtime.backends.shared import INGEST, QUESTION, PriorityLock, SharedBackend
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.answer import answer, answer_json, clip_json, clip_label, span_label, wall_iso
from rlivs.runtime.engine import Engine
from rlivs.runtime.ingest import ClipResult
from rlivs.runtime.retrieval import similarity
from rlivs.runtime.sources.live import SourceConfig
from rlivs.runtime.sources.spec import SourceSpec

from . import telemetry
from .events import EventHub
from .metrics import Metrics
from .mqtt import MqttConfig
from .store import Delivery, EdgeStore, Match, NewMatch, Watch, edge_db_path
from .webhooks import SenderConfig, WebhookPolicy, WebhookSender, parse_networks
from .workers import StreamWorker
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.serve")

STAGES = ("encode", "prefill", "decode", "select", "store")  # ClipResult.timings keys


class NotFound(LookupError):
    """Maps to HTTP 404."""


class NotReady(RuntimeError):
    """Maps to HTTP 409: the request is valid but the service has nothing to answer it with yet."""


class LimitReached(RuntimeError):
    """Maps to HTTP 409: a configured cap (watches) is reached; the message names the cap and the fix."""


class Busy(RuntimeError):
    """Maps to HTTP 429 with Retry-After: too many questions are waiting."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuestionCancelled(Exception):
    """The caller of a question went away: `stage` is "dropped" (before its turn began: nothing was generated) or
    "stopped" (while its answer was generated). Never an HTTP answer: nobody is left to read one."""

    def __init__(self, stage: str):
        super().__init__(f"the question was {stage}: its client went away")
        self.stage = stage


@dataclass
class ServiceConfig:
    replay_files: bool = True  # a file source is replayed at real speed as a live camera; False = at full speed
    source: SourceConfig = field(default_factory=SourceConfig)  # live-source settings (fps is set from the clip fps)
    thumbnail_width: int = 160  # thumbnail width in pixels (height keeps the aspect ratio)
    thumbnail_quality: int = 70  # JPEG quality, 1-95
    default_watch_ratio: float = 0.5  # a watch without a threshold matches at this fraction of its self-relevance
    webhook_timeout_s: float = 5.0  # total deadline of one webhook POST (connect to last byte)
    webhook_queue: int = 1000  # webhook deliveries waiting; beyond it the oldest are dropped (counted, logged)
    webhook_in_flight: int = 256  # destinations sent to at once, one delivery each (each has a sender of its own)
    webhook_allow: tuple[str, ...] = ()  # non-public networks webhooks may reach (--webhook-allow), e.g. 10.0.0.0/24
    event_keep: int = 256  # recent events of each kind kept for SSE clients that reconnect with Last-Event-ID
    event_queue: int = 256  # events buffered per SSE client; a slower client loses its oldest (counted)
    max_subscribers: int = 32  # open GET /v1/events streams; more get 503
    max_watches: int = 100  # standing queries; POST /v1/watches beyond it gets 409
    keep_matches: int = 200  # newest matches kept per watch (older ones are pruned)
    question_queue: int = 8  # questions waiting for the model; more get 429 with Retry-After
    ingest_share: float = 0.5  # least share of the model kept for ingest while questions flood it (0 = none)
    max_question_tokens: int = 256  # a question longer than this in the model's tokens is refused (400)
    retry_s: tuple[float, float] = (5.0, 60.0)  # a failed ingest worker retries after 5, 10, 20 ... 60 s
    start_time: float | None = None  # UTC unix seconds of a file source's first frame (--start-time)
    retain_days: float | None = None  # captions whose clip ended longer ago are forgotten (--retain-days)
    retain_every_s: float = 600.0  # how often retention runs while ingesting
    mqtt: MqttConfig | None = None  # publish captions and watch matches to this MQTT broker (mqtt.py); None: don't
    gate: dict[str, GateConfig] = field(default_factory=dict)  # the activity gate per stream (none: no gate)

    def __post_init__(self):
        if not 16 <= self.thumbnail_width <= 1024:
            raise UserError(f"thumbnail_width must be in 16..1024 pixels, got {self.thumbnail_width}")
        if not 1 <= self.thumbnail_quality <= 95:
            raise UserError(f"thumbnail_quality must be in 1..95, got {self.thumbnail_quality}")
        if not 0 < self.default_watch_ratio <= 1:
            raise UserError(f"default_watch_ratio must be in (0, 1], got {self.default_watch_ratio}")
        if not 0 <= self.ingest_share < 1:
            raise UserError(f"ingest_share must be in [0, 1), got {self.ingest_share}: e.g. 0.5")
        for name in ("max_watches", "keep_matches", "max_subscribers", "webhook_queue", "webhook_in_flight"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.question_queue < 0:
            raise UserError(f"question_queue must be >= 0, got {self.question_queue}")
        if self.retain_days is not None and not self.retain_days > 0:
            raise UserError(f"--retain-days must be > 0, got {self.retain_days}: e.g. --retain-days 30")
        self.webhook_policy = WebhookPolicy(parse_networks(self.webhook_allow))


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
    """A clip in the API: stream and wall-clock times (ISO 8601 with the device's offset, null without a clock),
    `time` as people read it (local wall-clock time, else stream time), the caption and its thumbnail."""
    return {**clip_json(r), "time": clip_label(r), "committed_at": r.committed_at,
            "thumbnail": thumbnail_url(r.stream, r.index) if has_thumbnail else None}


# ---------------------------------------------------------------------------------------------------------------------
# Questions take turns
# ---------------------------------------------------------------------------------------------------------------------


class Place:
    """One admitted question: its place at the gate, and whether its caller is still there."""

    __slots__ = ("cancelled", "started")

    def __init__(self):
        self.cancelled = False  # set by QuestionGate.cancel (the client went away)
        self.started = False  # its turn on the model has begun


class QuestionGate:
    """One question on the model at a time, at most `waiting` more admitted (beyond: `Busy`), and while `ingesting()`
    says ingest runs, a pause of d * share / (1 - share) after a question that held the model d seconds.

    `admit()` takes a place in line without blocking (what an HTTP handler calls on the event loop); the question's
    thread then waits in `turn(place)` and gives it back with `release(place)`. A place is held from
    admission to release, so at most 1 + `waiting` questions exist at once, whatever runs them. `turn()` without a
    place admits and releases by itself."""

    def __init__(self, waiting: int, share: float, ingesting):
        self.max_waiting, self.share, self.ingesting = waiting, share, ingesting
        self._cond = threading.Condition()
        self._busy = False
        self._line: deque = deque()  # admitted places whose turn has not begun, in arrival order
        self._held: set = set()  # every admitted place not yet released (in line, on the model, finishing)
        self._free_at = 0.0  # monotonic time the next question may start (the ingest share)
        self._mean_s = 1.0  # running mean of a question's turn, seconds (for Retry-After)
        self.rejected = 0

    @property
    def capacity(self) -> int:
        """Questions admitted at once at most: the one on the model and those waiting."""
        return 1 + self.max_waiting

    def admit(self) -> Place:
        """A place in line, or `Busy` (never blocks)."""
        with self._cond:
            if len(self._held) >= self.capacity:
                self.rejected += 1
                n = len(self._line)
                retry = max(1, math.ceil((n + 1) * self._mean_s))
                raise Busy(f"{n} questions are already waiting for the model (at most {self.max_waiting}): ask "
                           f"again in {retry} s", retry)
            place = Place()
            self._held.add(place)
            self._line.append(place)
            return place

    def release(self, place: Place) -> None:
        """Give the place back (idempotent)."""
        with self._cond:
            self._held.discard(place)
            if place in self._line:
                self._line.remove(place)
            self._cond.notify_all()

    def cancel(self, place: Place) -> None:
        """The caller went away: a waiting `turn` raises QuestionCancelled("dropped"); after the turn began, the
        question's own code checks `place.cancelled` (see EdgeService.ask)."""
        with self._cond:
            place.cancelled = True
            self._cond.notify_all()

    def places(self) -> list[Place]:
        """The admitted questions (a snapshot)."""
        with self._cond:
            return list(self._held)

    @contextmanager
    def turn(self, place: Place | None = None):
        """First come, first served: a waiter goes when it is first in line, the model is free and the pause is over.
        A place cancelled before that leaves the line with QuestionCancelled("dropped")."""
        own = place is None
        if own:
            place = self.admit()
        try:
            with self._cond:
                if place not in self._line:
                    raise RuntimeError("turn() with a place that is not in line (released, or its turn taken)")
                try:
                    while True:
                        if place.cancelled:
                            raise QuestionCancelled("dropped")
                        first = bool(self._line) and self._line[0] is place
                        if first and not self._busy and time.monotonic() >= self._free_at:
                            break
                        self._cond.wait(None if self._busy or not first
                                        else max(0.01, self._free_at - time.monotonic()))
                finally:
                    if place in self._line:
                        self._line.remove(place)
                    self._cond.notify_all()
                self._busy = True
                place.started = True
            t0 = time.monotonic()
            try:
                yield place
            finally:
                held = time.monotonic() - t0
                with self._cond:
                    self._busy = False
                    self._mean_s = 0.8 * self._mean_s + 0.2 * held
                    if self.share > 0 and self.ingesting():
                        self._free_at = time.monotonic() + held * self.share / (1 - self.share)
                    self._cond.notify_all()
        finally:
            if own:
                self.release(place)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)


class Question:
    """A question submitted to the service (`EdgeService.submit_question`): `future` gives the answer JSON or raises
    what `ask` raised; `cancel()` says its caller went away."""

    def __init__(self, gate: QuestionGate, place: Place, future: Future):
        self._gate, self.place, self.future = gate, place, future

    def cancel(self) -> None:
        if not self.future.done():
            self._gate.cancel(self.place)


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
    starts: dict[str, int] = field(default_factory=dict)  # stream -> last clip index it ignores (none: -1)

    def wants(self, stream: str, clip: int) -> bool:
        return self.watch.stream in (None, stream) and clip > self.starts.get(stream, -1)


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
        self.events = EventHub(self.config.event_keep, self.config.event_queue, self.config.max_subscribers)
        self.metrics = Metrics()
        telemetry.declare(self.metrics)
        c = self.config
        self.webhooks = WebhookSender(self.store, self.metrics,
                                      SenderConfig(deadline_s=c.webhook_timeout_s, max_in_flight=c.webhook_in_flight,
                                                   policy=c.webhook_policy), self._delivery_payload)
        self.mqtt = None  # MQTT out: every caption and watch event, published from the thread that made it
        if self.config.mqtt is not None:
            from .mqtt import MqttPublisher

            self.mqtt = MqttPublisher(self.config.mqtt, self.metrics, [s.name for s in self.specs],
                                      self.store.thumbnail)
            self.events.add_listener(self.mqtt.on_event)
        self._watch_lock = threading.Lock()  # guards _watches
        self._match_lock = threading.Lock()  # one clip matched at a time; guards _marks
        self._watches: dict[int, _WatchEntry] = {}
        starts = self.store.watch_starts()
        for w in self.store.watches():
            self._watches[w.id] = replace(self._entry(w), starts=starts.get(w.id, {}))
        if self.store.upgraded:  # schema 1 kept no marks: its watches matched live up to now, never again
            with self._read() as mem:
                self.store.finish_upgrade({s["name"]: s["n_clips"] - 1 for s in mem.streams()})
        self._marks = self.store.marks()  # stream -> last clip matched against every watch
        self.workers = [StreamWorker(self, s) for s in self.specs]
        self.questions = QuestionGate(c.question_queue, c.ingest_share,
                                      lambda: any(w.state == "running" for w in self.workers))
        # the threads questions run on: one per place at the gate, so an admitted question never waits for a thread
        self.question_pool = ThreadPoolExecutor(self.questions.capacity, thread_name_prefix="rlivs-question")
        self.started_at = time.time()
        self._stopped = False
        self._retained_at = 0.0  # when retention last ran
        self._retain_lock = threading.Lock()

    # -- lifetime -----------------------------------------------------------------------------------------------------

    def start(self) -> EdgeService:
        """Match what was committed but not matched (a crash, a failed write), then start ingest and webhooks."""
        self.catch_up()
        self.webhooks.start()
        if self.mqtt is not None:
            self.mqtt.start()
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
        if self.mqtt is not None:
            self.mqtt.stop()
        for t in self.questions.places():  # questions still waiting or answering: nobody will read them
            self.questions.cancel(t)
        self.question_pool.shutdown(wait=False)

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
        try:
            return self.score_watches(record)
        except (sqlite3.Error, UserError) as e:  # e.g. a full disk: the mark stays; the next clip or a restart
            # catches up (UserError: the memory's own storage errors while reading clips back)
            self.metrics.inc("rlivs_watch_match_errors_total")
            log.warning("matching clip %d of %s against the watches failed (%s): retried with the next clip",
                        record.index, record.stream, e)
            return []

    def score_watches(self, record: ClipRecord) -> list[Match]:
        """Match one committed caption against every watch, after any earlier clip of its stream still unmatched;
        store, publish and queue the deliveries of the matches. Returns this caption's matches."""
        with self._match_lock:
            mark = self._marks.get(record.stream, -1)
            if record.index <= mark:
                return []  # matched before
            if record.index > mark + 1:
                self._catch_up_stream(record.stream, record.index - 1)
            return self._match(record)

    def catch_up(self) -> int:
        """Match every committed clip not yet matched, stream by stream. Returns the clips matched."""
        done = 0
        with self._match_lock, self._read() as mem:
            streams = [(s["name"], s["n_clips"] - 1) for s in mem.streams()]
        for name, last in streams:
            with self._match_lock:
                done += self._catch_up_stream(name, last)
        return done

    def _catch_up_stream(self, stream: str, up_to: int, page: int = 256) -> int:
        """Match clips (mark, up_to] of `stream` from the memory. Caller holds _match_lock."""
        mark = self._marks.get(stream, -1)
        with self._watch_lock:
            lo = min((e.starts.get(stream, -1) for e in self._watches.values() if e.watch.stream in (None, stream)),
                     default=up_to)
        if lo >= up_to:  # no watch wants any of these clips: just move the mark
            if up_to > mark:
                self.store.set_marks({stream: up_to})
                self._marks[stream] = up_to
            return 0
        done = 0
        offset = max(mark, lo) + 1  # clip indices are 0.. without gaps: index == position in the stream
        with self._read() as mem:
            while offset <= up_to:
                rows = mem.clips(stream, limit=min(page, up_to - offset + 1), offset=offset)
                if not rows:
                    break
                for r in rows:
                    self._match(r)
                    done += 1
                offset += len(rows)
        if done:
            log.info("stream %s: matched %d committed clips the watches had not seen", stream, done)
        return done

    def _match(self, record: ClipRecord) -> list[Match]:
        """Score, store (one transaction with the mark) and publish one clip's matches. Caller holds _match_lock."""
        with self._watch_lock:
            entries = [e for e in self._watches.values() if e.wants(record.stream, record.index)]
        new = []
        if entries:
            matrix = np.stack([e.vector for e in entries])  # (W, D)
            scores = similarity(record.vector.astype(np.float32), matrix)  # (W,) mean pairwise token cosine
            for e, score in zip(entries, scores.tolist()):
                e.last_score, e.max_score = score, max(e.max_score, score)
                if score >= e.watch.threshold:
                    new.append((e, NewMatch(e.watch.id, score, e.watch.webhook)))
        stored = self.store.record_clip(record.stream, record.index, record.t_start, record.t_end, record.caption,
                                        [n for _, n in new], self.config.keep_matches)
        self._marks[record.stream] = max(self._marks.get(record.stream, -1), record.index)
        by_id = {e.watch.id: e for e, _ in new}
        hooks = False
        for match in stored:
            w = by_id[match.watch_id].watch
            self.metrics.inc("rlivs_watch_matches_total", watch=str(w.id))
            self.events.publish("watch", self.match_json(match, w, (record.wall_start, record.wall_end)))
            hooks = hooks or bool(w.webhook)
        if hooks:
            dropped = self.store.drop_deliveries_over(self.config.webhook_queue)
            if dropped:
                self.metrics.inc("rlivs_webhook_deliveries_total", dropped, outcome="dropped")
                log.warning("webhook queue full (%d waiting): dropped the %d oldest deliveries",
                            self.config.webhook_queue, dropped)
            self.webhooks.wake()
        return stored

    def _delivery_payload(self, d: Delivery) -> dict | None:
        m = self.store.match(d.match_id)
        if m is None:
            return None
        with self._watch_lock:
            e = self._watches.get(m.watch_id)
        return None if e is None else {"event": "watch", **self.match_json(m, e.watch)}

    def _walls(self, matches: list[Match]) -> dict[tuple[str, int], tuple[float | None, float | None]]:
        """(stream, clip) -> the clip's wall-clock span (UTC unix seconds, None without a clock), from the memory."""
        out = {}
        if matches:
            with self._read() as mem:
                for m in matches:
                    if (m.stream, m.clip) not in out:
                        r = mem.clip(m.stream, m.clip)
                        out[(m.stream, m.clip)] = (None, None) if r is None else (r.wall_start, r.wall_end)
        return out

    def match_json(self, m: Match, w: Watch | None = None,
                   wall: tuple[float | None, float | None] | None = None) -> dict:
        """A watch match in the API, its times as a caption's (`span_label`): `wall` is its clip's wall-clock span
        (read from the memory when not given)."""
        ws, we = wall if wall is not None else self._walls([m]).get((m.stream, m.clip), (None, None))
        d = m.as_dict()
        d["time"] = span_label(m.t_start, m.t_end, ws, we)
        d["wall_start"], d["wall_end"] = wall_iso(ws), wall_iso(we)
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
        if webhook is not None:
            self.config.webhook_policy.check_url(webhook)
        if stream is not None:
            with self._read() as mem:
                known = {s["name"] for s in mem.streams()}
            if stream not in known and stream not in {s.name for s in self.specs}:
                raise NotFound(f"no stream {stream!r}: GET /v1/streams lists them (or leave stream out for all)")
        self._check_watch_cap()
        probe = self._entry(Watch(0, query, 0.0, stream, webhook, 0.0))
        if threshold is None:
            threshold = round(self.config.default_watch_ratio * probe.self_score, 6)
        with self._match_lock:  # no clip is matched meanwhile: the watch starts after each stream's mark
            self._check_watch_cap()
            with self._read() as mem:
                starts = {s["name"]: self._marks.get(s["name"], s["n_clips"] - 1) for s in mem.streams()}
            w = self.store.add_watch(query, threshold, stream, webhook, starts)
            entry = replace(probe, watch=w, starts=starts)
            with self._watch_lock:
                self._watches[w.id] = entry
        return self._watch_json(entry, 0)

    def _check_watch_cap(self) -> None:
        with self._watch_lock:
            n = len(self._watches)
        if n >= self.config.max_watches:
            raise LimitReached(f"{n} watches exist, the most this service keeps: delete one (DELETE "
                               f"/v1/watches/ID) or start rlivs serve with a larger --max-watches")

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
        rows = self.store.matches(watch_id, limit, before)
        walls = self._walls(rows)
        return [self.match_json(m, by_id.get(m.watch_id), walls[(m.stream, m.clip)]) for m in rows]

    # -- questions and captions -----------------------------------------------------------------------------------

    def _read(self) -> Memory:
        return Memory(self.db, readonly=True)

    def retain(self, mem: Memory, now: float | None = None) -> int:
        """Forget the captions older than `retain_days` (at most once every `retain_every_s`); their thumbnails go
        too. Called by the ingest workers with their writable memory. Returns the number of clips forgotten."""
        days = self.config.retain_days
        now = time.time() if now is None else now
        if days is None or not self._retain_lock.acquire(blocking=False):
            return 0
        try:
            if now - self._retained_at < self.config.retain_every_s:
                return 0
            self._retained_at = now
            n = mem.forget(before=now - days * 86400.0)
            if n:
                for s in mem.info()["streams"]:
                    first = mem.clips(s["name"], limit=1)
                    self.store.drop_thumbnails_before(s["name"], first[0].index if first else s["next_idx"])
                log.info("retention: forgot %d clips that ended more than %g days ago", n, days)
                self.metrics.inc("rlivs_clips_forgotten_total", n)
            return n
        finally:
            self._retain_lock.release()

    def submit_question(self, question: str, stream: str | None = None, from_: str | None = None,
                        to: str | None = None, on_token=None) -> Question:
        """Admit a question at the gate now (or raise `Busy`, counted as rejected) and answer it on the service's
        question pool: what every HTTP entry point calls (never blocks). See `ask` for the arguments."""
        try:
            place = self.questions.admit()
        except Busy:
            self.metrics.inc("rlivs_questions_total", outcome="rejected")
            raise

        def run():
            try:
                return self.ask(question, stream, from_, to, on_token=on_token, place=place)
            finally:
                self.questions.release(place)

        try:
            future = self.question_pool.submit(run)
        except RuntimeError:  # the pool is shut down: the service is stopping
            self.questions.release(place)
            raise
        future.add_done_callback(lambda f: f.cancelled() and self.questions.release(place))
        return Question(self.questions, place, future)

    def ask(self, question: str, stream: str | None = None, from_: str | None = None, to: str | None = None,
            on_token=None, place: Place | None = None) -> dict:
        """The answer JSON of POST /v1/ask; `from_`/`to` restrict it to a wall-clock window (ISO 8601 or -2h, ...).
        `on_token(text)` receives the answer as it is generated (POST /v1/ask/stream). `place`: the place at the
        gate `submit_question` admitted it with (without one, it waits for its own turn, or raises `Busy`); once it
        is cancelled, the question raises QuestionCancelled: "dropped" before its turn, "stopped" during it."""
        t0 = time.perf_counter()
        own = place is None
        if own:
            try:
                place = self.questions.admit()
            except Busy:
                self.metrics.inc("rlivs_questions_total", outcome="rejected")
                raise

        def relay(text: str) -> None:  # called by the generation loop with each piece of the answer
            if place.cancelled:
                raise QuestionCancelled("stopped")
            if on_token is not None:
                on_token(text)

        try:
            if place.cancelled:
                raise QuestionCancelled("dropped")
            from datetime import datetime, timezone

            from rlivs.runtime.timeq import window_from_args

            window = window_from_args(from_, to, datetime.now(timezone.utc), None, names=("from", "to"))
            n = len(self.engine.text.encode(question))
            if n > self.config.max_question_tokens:
                raise UserError(f"the question is {n} tokens for this model, at most {self.config.max_question_tokens}"
                                f": shorten it")
            with self._read() as mem:
                if stream is not None and stream not in {s["name"] for s in mem.streams()}:
                    raise NotFound(f"no stream {stream!r}: GET /v1/streams lists them (or leave stream out for all)")
                if not mem.clips(stream, limit=1):
                    where = f"stream {stream!r}" if stream else "the memory"
                    raise NotReady(f"{where} holds no captions yet: ingest commits the first one after "
                                   f"{self.engine.config.clip.clip_seconds:g} s of video; wait for a caption "
                                   f"event on GET /v1/events and ask again")
                given = " ".join(f"{k}={v}" for k, v in (("from", from_), ("to", to)) if v is not None)  # as sent
                span = {} if window is None else dict(window=window.as_unix(), window_text=f"{given}: "
                                                      f"{window.describe(None, datetime.now(timezone.utc))}")
                with self.questions.turn(place), self.question_backend.reserve():  # ingest waits at its next step
                    a = answer(self.question_engine, mem, question, stream=stream, on_token=relay, **span)
        except QuestionCancelled as e:
            self.metrics.inc("rlivs_questions_total", outcome=e.stage)
            raise
        except (NotFound, NotReady, UserError, Busy):
            self.metrics.inc("rlivs_questions_total", outcome="rejected")
            raise
        except Exception:
            self.metrics.inc("rlivs_questions_total", outcome="failed")
            raise
        finally:
            if own:
                self.questions.release(place)
        self.metrics.inc("rlivs_questions_total", outcome="answered")
        self.metrics.observe("rlivs_question_seconds", time.perf_counter() - t0)
        thumbs = {}
        for r, _ in a.used:
            thumbs.setdefault(r.stream, []).append(r.index)
        have = {s: self.store.thumbnail_clips(s, idx) for s, idx in thumbs.items()}
        return {**answer_json(a), "prompt_tokens": a.prompt_tokens,
                "captions": [{**caption_json(r, r.index in have.get(r.stream, ())), "relevance": s}
                             for r, s in a.used]}

    def captions(self, stream: str | None = None, t_from: float | None = None, t_to: float | None = None,
                 limit: int = 50, offset: int = 0, clip: int | None = None) -> dict:
        """Captions in time order, paged; with `clip` (and `stream`), that clip alone (none when it holds no caption:
        gated, forgotten or not yet ingested; positions are not clip indices once a stream has such gaps)."""
        with self._read() as mem:
            if stream is not None and stream not in {s["name"] for s in mem.streams()}:
                raise NotFound(f"no stream {stream!r}: GET /v1/streams lists them")
            if clip is not None:
                r = mem.clip(stream, clip)
                rows = [] if r is None or (t_from is not None and r.t_end < t_from) or \
                    (t_to is not None and r.t_start > t_to) else [r]
            else:
                rows = mem.clips(stream, t_from, t_to, limit=limit, offset=offset)
        by_stream: dict[str, list[int]] = {}
        for r in rows:
            by_stream.setdefault(r.stream, []).append(r.index)
        have = {s: self.store.thumbnail_clips(s, idx) for s, idx in by_stream.items()}
        return {"captions": [caption_json(r, r.index in have[r.stream]) for r in rows], "limit": limit,
                "offset": offset, "next_offset": offset + len(rows) if len(rows) == limit else None}

    def kept(self, stream: str, clip: int) -> dict:
        """Which of a clip's visual tokens selection kept: flat indices into its frames x tokens_per_frame grid
        (frame = i // tokens_per_frame, patch = i % tokens_per_frame, row-major on a side x side grid)."""
        with self._read() as mem:
            r = mem.clip(stream, clip)
        if r is None or r.kept is None:
            raise NotFound(f"no kept tokens for clip {clip} of stream {stream!r}: they are stored for clips "
                           f"captioned by this release (GET /v1/captions lists the clips)")
        p = self.engine.backend.info.tokens_per_frame
        side = math.isqrt(p)
        return {"stream": stream, "clip": clip, "tokens_per_frame": p,
                "grid": [side, side] if side * side == p else None,
                "frames": round((r.t_end - r.t_start) * self.engine.config.clip.fps),
                "kept": r.kept.tolist()}

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
                 "clips_gated": r["n_idle"], "t_end": r["t_end"], "created_at": r["created_at"], "ingesting": w is not None}
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
        extra = telemetry.scrape(self.workers, self.model_lock.stats, self.events, len(self._watches), self.started_at,
                                 self.questions.waiting)
        return self.metrics.render(extra)
