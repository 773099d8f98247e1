"""What `GET /metrics` of `rlivs serve` shows: the families the service updates as it goes (declared once at start)
and those read at scrape time from the ingest workers, the model's priority lock and the event hub."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rlivs.runtime.backends.shared import PRIORITY_NAMES, LockStats

from .events import EventHub
from .metrics import Metrics

if TYPE_CHECKING:
    from .scheduler import ModelTurns
    from .workers import StreamWorker

# updated by the service: name -> (kind, help)
UPDATED = {
    "rlivs_clips_total": ("counter", "Clips captioned and committed to the memory."),
    "rlivs_clips_gated_total": ("counter", "Clips the activity gate left uncaptioned (idle: recorded as watched)."),
    "rlivs_clips_forgotten_total": ("counter", "Clips forgotten by retention (--retain-days)."),
    "rlivs_clip_stage_seconds": ("histogram", "Per-clip latency by stage (encode, prefill, decode, select, store, "
                                              "total)."),
    "rlivs_clip_lag_seconds": ("histogram", "Per stream: seconds from a clip's end (its last frame handed out) to its "
                                            "commit (captioned, gated or skipped)."),
    "rlivs_clip_lag_last_seconds": ("gauge", "Per stream: the lag of its last clip (clip end -> commit), seconds."),
    "rlivs_clips_skipped_total": ("counter", "Clips not captioned for want of the model, by stream and reason (lag: a "
                                             "forced caption that waited past --max-lag was recorded idle)."),
    "rlivs_seconds_behind_live": ("gauge", "Last clip: seconds from its last frame's capture to its commit."),
    "rlivs_stream_time_seconds": ("gauge", "Stream time of the end of the last committed clip."),
    "rlivs_questions_total": ("counter", "Questions by outcome (answered, rejected, failed, dropped: the client left before it started, stopped: the client left mid-answer)."),
    "rlivs_question_seconds": ("histogram", "Question latency (retrieval + answer), seconds."),
    "rlivs_watch_matches_total": ("counter", "Watch matches by watch id."),
    "rlivs_webhook_deliveries_total": ("counter", "Webhook deliveries by outcome (ok; retried; failed after the last "
                                                  "attempt; refused by the address policy; dropped when the queue "
                                                  "was full)."),
    "rlivs_watch_match_errors_total": ("counter", "Clips whose matching failed to be stored (retried with the next "
                                                  "clip and at start)."),
    "rlivs_http_rejected_total": ("counter", "Connections or requests refused by a limit (reason: connections, "
                                             "header_timeout, body_timeout, reserve, evicted, client_streams, host, "
                                             "subscribers, questions)."),
}

# read from each worker's source statistics at scrape time: name -> (kind, help, SourceStats attribute)
PER_SOURCE = {
    "rlivs_frames_decoded_total": ("counter", "Frames decoded from the source.", "frames_decoded"),
    "rlivs_frames_sampled_total": ("counter", "Frames handed to ingest at the sampling rate.", "frames_sampled"),
    "rlivs_frames_dropped_total": ("counter", "Sample times skipped because ingest was busy (never queued).",
                                   "frames_dropped"),
    "rlivs_decode_errors_total": ("counter", "Packets the decoder rejected.", "decode_errors"),
    "rlivs_source_reconnects_total": ("counter", "Successful reopens of a source (reconnects, loops).", "reconnects"),
    "rlivs_source_open_failures_total": ("counter", "Failed attempts to open a source.", "open_failures"),
    "rlivs_source_disconnects_total": ("counter", "Connections lost (error, stall, end of a live stream).",
                                       "disconnects"),
}

# read from the model's LockStats at scrape time, by priority: name -> (LockStats attribute, help)
MODEL_LOCK = {
    "rlivs_model_calls_total": ("calls", "Backend calls granted, by priority."),
    "rlivs_model_wait_seconds_total": ("wait_s", "Seconds callers waited for the model."),
    "rlivs_model_busy_seconds_total": ("busy_s", "Seconds the model ran, by priority."),
}


LAG_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def declare(metrics: Metrics) -> None:
    for name, (kind, help_) in UPDATED.items():
        if name == "rlivs_clip_lag_seconds":
            metrics.declare(name, kind, help_, LAG_BUCKETS)
        else:
            metrics.declare(name, kind, help_)


def scrape(workers: list[StreamWorker], lock: LockStats, events: EventHub, watches: int,
           started_at: float, questions_waiting: int = 0,
           turns: ModelTurns | None = None) -> list[tuple[str, str, str, list[tuple[dict, float]]]]:
    """The families read now, as `Metrics.render(extra)` takes them."""
    extra: list = []
    samples: dict[str, list] = {k: [] for k in PER_SOURCE}
    up, lag = [], []
    for w in workers:
        st = w.source.stats() if w.source is not None else None
        lab = {"stream": w.spec.name}
        for name, (_, _, attr) in PER_SOURCE.items():
            value = getattr(st, attr) if st else (w.frames if attr == "frames_sampled" else 0)
            samples[name].append((lab, value))
        state = w.status()["state"]
        up.append((lab, 1.0 if state in ("running", "live") else 0.0))
        if st is not None and st.last_frame_at is not None:
            lag.append((lab, max(0.0, time.time() - st.last_frame_at)))
    for name, (kind, help_, _) in PER_SOURCE.items():
        extra.append((name, kind, help_, samples[name]))
    extra.append(("rlivs_source_up", "gauge", "1 while a source delivers frames (or a file is being ingested).", up))
    extra.append(("rlivs_source_last_frame_age_seconds", "gauge", "Seconds since the source's newest frame.", lag))
    for name, (attr, help_) in MODEL_LOCK.items():
        extra.append((name, "counter", help_,
                      [({"priority": PRIORITY_NAMES[p]}, v) for p, v in sorted(getattr(lock, attr).items())]))
    extra.append(("rlivs_events_published_total", "counter", "Events published (captions and watch matches).",
                  [({}, events.published)]))
    extra.append(("rlivs_events_dropped_total", "counter", "Events a slow SSE client lost.", [({}, events.dropped)]))
    extra.append(("rlivs_event_subscribers", "gauge", "Open /v1/events streams.", [({}, events.subscribers)]))
    extra.append(("rlivs_watches", "gauge", "Standing queries.", [({}, watches)]))
    extra.append(("rlivs_questions_waiting", "gauge", "Questions queued for the model.", [({}, questions_waiting)]))
    if turns is not None:
        waiting = turns.waiting
        extra.append(("rlivs_clips_waiting_for_model", "gauge", "Per stream: clips ready and waiting for the model "
                      "(at most one per camera).", [({"stream": w.spec.name}, waiting.get(w.spec.name, 0))
                                                    for w in workers]))
        extra.append(("rlivs_model_batches_total", "counter", "Model calls of the cameras' clips (serve --batch), by "
                      "clips captioned in the call.",
                      [({"clips": n}, v) for n, v in sorted(turns.batch_sizes.items())]))
    extra.append(("rlivs_uptime_seconds", "gauge", "Seconds since the service started.",
                  [({}, time.time() - started_at)]))
    return extra
