"""The ingest threads of `rlivs serve`: one worker per source (the webhook senders are in webhooks.py).

A `StreamWorker` ingests its source into its stream (a live source paced in real time, or a file at full speed): for
each clip, the activity gate decides (no model); an idle clip is recorded at once, a clip to caption waits for its
turn on the model (`ModelTurns`, scheduler.py: active cameras first; a forced caption that waited past the lag bound
is recorded idle instead), is captioned (with up to --batch - 1 other cameras' waiting clips in one
`Engine.caption_clips` call) and committed by its own worker. Every finished clip goes out on the clip bus (`publish`, a
`bus.ClipEvent`) with its lag (clip ready -> committed). A failure is recorded in its status (shown by /v1/streams
and /healthz); the service keeps serving, and the worker tries again after 5 s, then 10, 20, 40, 60, 60 ... s (a
full disk that gets space back resumes ingest; the memory resumes at the next clip). Workers know the bus and the
turns, not the service.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rlivs.runtime.activity import GateConfig, GateDecision
from rlivs.runtime.engine import ClipInput, ClipOutput, Engine
from rlivs.runtime.frames import Clip
from rlivs.runtime.memory import Memory
from rlivs.runtime.ingest import StreamIngestor, open_clips
from rlivs.runtime.sources.live import LiveSource, SourceConfig
from rlivs.runtime.sources.spec import SourceSpec

from .bus import ClipEvent
from .scheduler import Closed, ModelTurns

log = logging.getLogger("rlivs.serve")


@dataclass
class IngestSetup:
    """What every worker of a service shares."""

    db: Path  # the memory
    engine: Engine  # the ingest-priority engine (its backend a SharedBackend view of the one model)
    fingerprint: str  # the model's fingerprint (the memory checks it)
    source: SourceConfig = field(default_factory=SourceConfig)  # live-source settings (fps: the clip fps)
    replay_files: bool = True  # a file source is replayed at real speed as a live camera; False = at full speed
    start_time: float | None = None  # UTC unix seconds of a file source's first frame (--start-time)
    retry_s: tuple[float, float] = (5.0, 60.0)  # a failed worker retries after 5, 10, 20 ... 60 s
    gate: dict[str, GateConfig] = field(default_factory=dict)  # the activity gate per stream


# ---------------------------------------------------------------------------------------------------------------------
# Ingest workers
# ---------------------------------------------------------------------------------------------------------------------


class StreamWorker:
    """Ingests one source into its stream, in a background thread."""

    def __init__(self, setup: IngestSetup, spec: SourceSpec, publish: Callable[[ClipEvent], object],
                 turns: ModelTurns | None = None, clock: Callable[[], float] = time.monotonic):
        self.setup, self.spec, self.publish = setup, spec, publish
        self.turns = turns or ModelTurns()
        self.clock = clock
        self.live = spec.live or setup.replay_files  # paced as a live source (vs a file at full speed)
        self.state = "starting"  # starting | running | finished | stopped | failed
        self.error: str | None = None  # why it failed
        self.source: LiveSource | None = None
        self.clips = 0  # clips committed by this run
        self.gated = 0  # clips of this run the activity gate recorded as idle (not captioned)
        self.skipped = 0  # clips of this run recorded idle because a forced caption waited past the lag bound
        self.gate = setup.gate.get(spec.name)  # the activity gate (None or disabled: every clip captioned)
        self.frames = 0  # frames that went into those clips
        self.behind_live_s: float | None = None  # last clip: seconds from its last frame's capture to its commit
        self.lag_s: float | None = None  # last clip: seconds from the clip ready (its last frame) to its commit
        self.max_lag_s: float | None = None  # the most of those this run
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

    def _clips(self, ing: StreamIngestor) -> Iterator[Clip]:
        """The source's clips from where the stream left off (runtime.ingest.open_clips: the route `rlivs ingest`
        takes too): a camera or a replayed file paced in real time, a recording replayed at its recorded speed, or
        a file read as fast as it decodes; --start-time is a file's clock, given when it is opened."""
        st, spec = self.setup, self.spec
        origin = st.start_time if spec.kind == "file" else None  # --start-time: a file's first frame
        clips = open_clips(ing, spec, clock_origin=origin, live=self.live, live_config=st.source, stop=self._stop)
        if isinstance(ing.source, LiveSource):  # its statistics, lag and stop() are the worker's to read and call
            self.source = ing.source
            if self._stop.is_set():
                self.source.stop(timeout=0)
        return clips

    def _run(self) -> None:
        """Ingest; after a failure (e.g. a full disk) wait with backoff (`ServiceConfig.retry_s`) and resume."""
        first, most = self.setup.retry_s
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
        st, spec = self.setup, self.spec
        try:
            with Memory(st.db, model_fingerprint=st.fingerprint) as mem:
                ing = StreamIngestor(st.engine, mem, stream=spec.name, source=spec.url, gate=self.gate)
                self.state, self.error = "running", None
                for clip in self._clips(ing):
                    if self._stop.is_set():
                        break  # a partial clip handed out at shutdown is not captioned
                    if not self._one(ing, clip, self.clock()):
                        break
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

    def _one(self, ing: StreamIngestor, clip: Clip, ready_at: float) -> bool:
        """Gate, wait for the model's turn, caption and commit one clip, and publish it; False when stopping."""
        decision = ing.decide(clip)
        reason = None
        if decision is None or decision.caption:  # the model is needed: wait for a turn
            active = decision is None or decision.reason != "max_idle"  # a change, or nothing known yet
            try:  # (batched with other cameras' ready clips when --batch > 1; this worker commits its own)
                turn = self.turns.caption(self.spec.name, active, ing.caption_input(clip), self._caption, ready_at)
            except Closed:
                return False
            if turn.granted:
                result = ing.commit(clip, turn.result, decision)
            else:  # a forced caption that waited past the lag bound: recorded as idle
                reason = "lag"
                decision = GateDecision(False, "lag", decision.score, decision.motion, decision.scene)
                result = ing.step(clip, decision)
        else:
            result = ing.step(clip, decision)
        self._published(clip, result, ready_at, reason)
        return True

    def _caption(self, inputs: list[ClipInput]) -> list[ClipOutput]:
        """The model's turn: one clip alone (`caption_clip`, as without batching) or several cameras' clips in one
        `caption_clips` call (each output what it would be alone)."""
        eng = self.setup.engine
        if len(inputs) == 1:
            c = inputs[0]
            return [eng.caption_clip(c.frames, c.fifo_tokens, c.index, preprocessed=c.preprocessed,
                                     fifo_clips=c.fifo_clips)]
        return eng.caption_clips(inputs)

    def _published(self, clip: Clip, result, ready_at: float, skipped: str | None) -> None:
        lag = max(0.0, self.clock() - ready_at)
        behind = None
        if self.source is not None and self.source.last_wall is not None:
            behind = max(0.0, time.time() - self.source.last_wall)
        self.frames += len(clip)
        self.behind_live_s, self.lag_s = behind, lag
        self.max_lag_s = lag if self.max_lag_s is None else max(self.max_lag_s, lag)
        if result.gated:  # idle: recorded as watched; no caption
            if skipped:
                self.skipped += 1
            else:
                self.gated += 1
            outcome = "skipped" if skipped else "gated"
            self.publish(ClipEvent(self.spec.name, clip.index, result.t_start, result.t_end, outcome, None, result,
                                   lag_s=lag, behind_live_s=behind,
                                   reason=skipped or (result.gate.reason if result.gate else None)))
            return
        self.clips += 1
        self.last_clip_at = time.time()
        self.publish(ClipEvent(self.spec.name, clip.index, result.t_start, result.t_end, "captioned", result.record,
                               result, clip.frames[len(clip) // 2], lag_s=lag, behind_live_s=behind))

    def status(self) -> dict:
        st = self.source.stats().as_dict() if self.source is not None else None
        state = self.state
        if state == "running" and st is not None and st["state"] in ("connecting", "reconnecting", "failed"):
            state = st["state"]
        return {"worker": self.state, "state": state, "kind": self.spec.kind, "live": self.live, "url": self.spec.url,
                "error": self.error, "clips_this_run": self.clips, "gated_this_run": self.gated,
                "skipped_this_run": self.skipped, "lag_s": self.lag_s, "max_lag_s": self.max_lag_s,
                "gate": bool(self.gate and self.gate.enabled), "frames_this_run": self.frames,
                "seconds_behind_live": self.behind_live_s, "last_clip_at": self.last_clip_at, "retry_at": self.retry_at,
                "source_stats": st}
