"""What `rlivs serve` runs, wired together: the ingest workers (workers.py) make clips and hand each finished one to
the clip bus (bus.py), whose listeners do the rest: thumbnails, metrics, server-sent events, MQTT, the watch matcher
(watches.py: watches, marks, catch-up; its matches go back on the bus to webhooks, events and MQTT) and retention
(listeners.py). The model turns of ingest (scheduler.py) put active cameras first and bound each camera's lag.

One model serves everything: the service owns one `PriorityLock` and wraps the engine's backend in two `SharedBackend`
views of it; ingest calls the model at INGEST priority, questions at QUESTION priority inside a reservation, so a
question gets the model at the next decoder-step boundary of whatever caption is being generated
(runtime/backends/shared.py). Questions are answered from what the memory has committed (a read-only connection per
request; SQLite WAL lets it read while ingest writes).

Questions take turns (questions.py `QuestionGate`): every entry point submits its question through
`submit_question`: admitted at once or refused (`Busy`), then run on the service's own thread pool, sized to the gate
(one thread per admitted question, so no second, hidden queue). Cancelled questions are counted in
rlivs_questions_total as `dropped` / `stopped`.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rlivs.runtime.activity import GateConfig
from rlivs.runtime.backends.shared import INGEST, QUESTION, PriorityLock, SharedBackend
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.answer import answer, answer_json
from rlivs.runtime.engine import Engine
from rlivs.runtime.errors import UserError
from rlivs.runtime.ingest import ClipResult
from rlivs.runtime.sources.live import SourceConfig
from rlivs.runtime.sources.spec import SourceSpec

from . import telemetry
from .bus import ClipBus, ClipEvent
from .events import EventHub
from .listeners import STAGES, ClipMetrics, Retention, ServerEvents, Thumbnails, Webhooks  # noqa: F401 (STAGES)
from .metrics import Metrics
from .mqtt import MqttConfig
from .payloads import caption_json, make_thumbnail, thumbnail_url  # noqa: F401 (the names they had here)
from .questions import Busy, Place, Question, QuestionCancelled, QuestionGate  # noqa: F401
from .scheduler import ModelTurns
from .store import Delivery, EdgeStore, Match, edge_db_path
from .watches import LimitReached, MatcherConfig, NotFound, WatchMatcher  # noqa: F401
from .webhooks import SenderConfig, WebhookPolicy, WebhookSender, parse_networks
from .workers import IngestSetup, StreamWorker

log = logging.getLogger("rlivs.serve")


class NotReady(RuntimeError):
    """Maps to HTTP 409: the request is valid but the service has nothing to answer it with yet."""


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
    max_lag_s: float = 60.0  # a forced caption (no change seen) waiting longer for the model is recorded idle instead
    batch: int = 1  # cameras' ready clips captioned in one model call at most (--batch; 1: one clip per turn)

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
        if not (isinstance(self.max_lag_s, (int, float)) and math.isfinite(self.max_lag_s) and self.max_lag_s > 0):
            raise UserError(f"--max-lag must be > 0 seconds, got {self.max_lag_s!r}: e.g. --max-lag 60")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise UserError(f"--batch must be an integer >= 1, got {self.batch!r}: e.g. --batch 4 (1 = one clip "
                            "per model turn)")
        if self.retain_days is not None and not self.retain_days > 0:
            raise UserError(f"--retain-days must be > 0, got {self.retain_days}: e.g. --retain-days 30")
        self.webhook_policy = WebhookPolicy(parse_networks(self.webhook_allow))


# ---------------------------------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------------------------------


class EdgeService:
    """The wiring: one model shared by ingest and questions, the ingest workers, the clip bus and its listeners, the
    question gate; and the queries the API answers."""

    def __init__(self, engine: Engine, db: str | Path, sources: list[SourceSpec] = (),
                 config: ServiceConfig | None = None):
        self.engine = engine
        self.db = Path(db)
        self.config = c = config or ServiceConfig()
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
        self.events = EventHub(c.event_keep, c.event_queue, c.max_subscribers)
        self.metrics = Metrics()
        telemetry.declare(self.metrics)
        self.webhooks = WebhookSender(self.store, self.metrics,
                                      SenderConfig(deadline_s=c.webhook_timeout_s, max_in_flight=c.webhook_in_flight,
                                                   policy=c.webhook_policy), self._delivery_payload)
        # the clip bus: every finished clip goes to these listeners, in this order (bus.py)
        self.bus = ClipBus()
        self.bus.add(Thumbnails(self.store, c.thumbnail_width, c.thumbnail_quality))
        self.bus.add(ClipMetrics(self.metrics))
        self.bus.add(ServerEvents(self.events))
        self.mqtt = None  # MQTT out: every caption and watch match, published from the thread that made it
        if c.mqtt is not None:
            from .mqtt import MqttPublisher

            self.mqtt = self.bus.add(MqttPublisher(c.mqtt, self.metrics, [s.name for s in self.specs],
                                                   self.store.thumbnail))
        self.watcher = self.bus.add(WatchMatcher(
            self.store, self.metrics, MatcherConfig(c.default_watch_ratio, c.max_watches, c.keep_matches), self._read,
            self._query_vector, self.bus.publish_match, lambda: {s.name for s in self.specs}))
        self.bus.add(Webhooks(self.store, self.metrics, self.webhooks, c.webhook_queue))
        self.retention = self.bus.add(Retention(self.store, self.metrics, c.retain_days, c.retain_every_s,
                                                lambda: Memory(self.db, model_fingerprint=engine.model_fingerprint)))
        self.turns = ModelTurns(c.max_lag_s, batch=c.batch)  # where ready clips meet the model
        setup = IngestSetup(self.db, self.ingest_engine, engine.model_fingerprint, c.source, c.replay_files,
                            c.start_time, c.retry_s, c.gate)
        self.workers = [StreamWorker(setup, s, self.bus.publish, self.turns) for s in self.specs]
        self.questions = QuestionGate(c.question_queue, c.ingest_share,
                                      lambda: any(w.state == "running" for w in self.workers))
        # the threads questions run on: one per place at the gate, so an admitted question never waits for a thread
        self.question_pool = ThreadPoolExecutor(self.questions.capacity, thread_name_prefix="rlivs-question")
        self.started_at = time.time()
        self._stopped = False

    # -- lifetime -----------------------------------------------------------------------------------------------------

    def start(self) -> EdgeService:
        """Start the listeners (the matcher catches up on what was committed but not matched; webhooks and MQTT
        connect), then ingest."""
        self.bus.start()
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
        self.turns.close()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.bus.stop()
        for t in self.questions.places():  # questions still waiting or answering: nobody will read them
            self.questions.cancel(t)
        self.question_pool.shutdown(wait=False)

    # -- what the bus carries (the workers publish; tests and tools may too) --------------------------------------

    def publish_clip(self, record: ClipRecord, result: ClipResult | None = None, middle_frame: np.ndarray | None = None,
                     behind_live_s: float | None = None) -> list[Match]:
        """Put a committed caption on the bus. Returns the watch matches it made."""
        ev = self.bus.publish(ClipEvent(record.stream, record.index, record.t_start, record.t_end, "captioned",
                                        record, result, middle_frame, behind_live_s=behind_live_s))
        return ev.matches

    def score_watches(self, record: ClipRecord) -> list[Match]:
        return self.watcher.score(record)

    def catch_up(self) -> int:
        return self.watcher.catch_up()

    def retain(self, mem: Memory, now: float | None = None) -> int:
        """Forget the captions older than `retain_days` (at most once every `retain_every_s`; listeners.Retention)."""
        return self.retention.run(mem, now)

    def _delivery_payload(self, d: Delivery) -> dict | None:
        m = self.store.match(d.match_id)
        if m is None:
            return None
        w = self.watcher.watch_of(m)
        return None if w is None else {"event": "watch", **self.watcher.match_json(m, w)}

    def match_json(self, m: Match, w=None, wall=None) -> dict:
        return self.watcher.match_json(m, w, wall)

    # -- watches --------------------------------------------------------------------------------------------------

    def _query_vector(self, text: str) -> np.ndarray:
        e = self.question_engine
        with self.question_backend.reserve():
            return e.vector(e.text.encode(text))  # (D,) as a question's vector is made

    def add_watch(self, query: str, threshold: float | None = None, stream: str | None = None,
                  webhook: str | None = None) -> dict:
        return self.watcher.add(query, threshold, stream, webhook, self.config.webhook_policy.check_url)

    def watches(self) -> list[dict]:
        return self.watcher.list()

    def watch(self, watch_id: int) -> dict:
        return self.watcher.get(watch_id)

    def delete_watch(self, watch_id: int) -> None:
        self.watcher.delete(watch_id)

    def matches(self, watch_id: int | None = None, limit: int = 50, before: int | None = None) -> list[dict]:
        return self.watcher.matches(watch_id, limit, before)

    # -- questions and captions -----------------------------------------------------------------------------------

    def _read(self) -> Memory:
        return Memory(self.db, readonly=True)

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
        """Which of a clip's visual tokens selection kept: flat indices into its groups x tokens_per_frame tokens (a
        group is a frame for LLaVA-OV, a temporal patch of `temporal_patch` frames for Qwen2.5-VL: group =
        i // tokens_per_frame, then row-major on the group's rows x cols `grid`)."""
        with self._read() as mem:
            r = mem.clip(stream, clip)
        if r is None or r.kept is None:
            raise NotFound(f"no kept tokens for clip {clip} of stream {stream!r}: they are stored for clips "
                           f"captioned by this release (GET /v1/captions lists the clips)")
        info = self.engine.backend.info
        p = info.tokens_per_frame
        side = math.isqrt(p)
        grid = list(info.grid) if info.grid else ([side, side] if side * side == p else None)
        frames = round((r.t_end - r.t_start) * self.engine.config.clip.fps)
        return {"stream": stream, "clip": clip, "tokens_per_frame": p, "grid": grid, "frames": frames,
                "temporal_patch": self.engine.backbone.temporal_patch, "groups": self.engine.backbone.groups(frames),
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
        extra = telemetry.scrape(self.workers, self.model_lock.stats, self.events, len(self.watcher), self.started_at,
                                 self.questions.waiting, self.turns)
        return self.metrics.render(extra)
