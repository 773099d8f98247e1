"""A stream's ingest: the activity gate (optional), the clip step (`Engine.caption_clip`), then the FIFO plan, one
SQLite transaction, FIFO apply.

The stream's FIFO lives in memory and in the database; a restart resumes both at the next clip. With the gate on
(runtime/activity.py) a clip whose scene did not change is not captioned: one transaction records it as idle
(`Memory.commit_idle`) and the FIFO does not change; the gate's reference is stored with each captioned clip, so a
restart resumes the gate too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .activity import ActivityGate, GateConfig, GateDecision
from .engine import ClipInput, ClipOutput, Engine
from .errors import UserError
from .fifo import TokenFifo
from .frames import Clip, iter_clips
from .sources import FrameSource, open_spec, resume_time
from .memory import ClipRecord, Memory

log = logging.getLogger("rlivs.ingest")


@dataclass
class ClipResult:
    index: int
    t_start: float
    t_end: float
    caption: str
    kept: np.ndarray | None  # (N,) flat indices of the kept clip tokens (None for pooled strategies)
    context_tokens: int  # S: length of the captioning context
    fifo_tokens: int  # F after this clip entered
    timings: dict[str, float]  # seconds: encode, prefill, decode, select, store (gated clips: gate, store)
    record: ClipRecord | None = None  # the row committed to the memory (committed_at set); None for an idle clip
    gate: GateDecision | None = None  # what the activity gate decided (None: no gate)
    scores: np.ndarray | None = None  # (N_V,) the selection scores of the clip's tokens (ClipOutput.scores)

    @property
    def gated(self) -> bool:
        """The clip was idle: watched, recorded as idle, not captioned."""
        return self.gate is not None and not self.gate.caption


class StreamIngestor:
    """Owns one stream's FIFO and position in memory; `step` processes one clip."""

    def __init__(self, engine: Engine, memory: Memory, stream: str = "default", source: str = "",
                 gate: GateConfig | None = None):
        self.engine, self.memory, self.stream = engine, memory, stream
        cfg = engine.config
        state = memory.open_stream(stream, source, engine.backend.info.model_id, cfg.ingest_fingerprint())
        self.next_index = state.next_index  # the clip the stream resumes at
        self.source: FrameSource | None = None  # the source being read (set by clips): its decode_errors count
        self.fifo = TokenFifo(cfg.fifo, engine.backend.info.hidden_size)
        kept = {}
        if getattr(engine, "backbone", None) is not None and engine.backbone.mrope:  # positions need the indices
            records = (memory.clip(stream, i) for i, _ in state.fifo)
            kept = {r.index: r.kept for r in records if r is not None and r.kept is not None}
        self.fifo.restore(state.fifo, kept)
        self.gate = None if gate is None or not gate.enabled else ActivityGate(gate, memory.scene(stream))
        self.captioned = self.gated = 0  # clips of this run, by what the gate decided
        self._gate_s = 0.0  # seconds the gate's last decision took
        if self.next_index:
            log.info("stream %r resumes at clip %d with %d FIFO clips", stream, self.next_index, len(self.fifo))
            if state.model_id != engine.backend.info.model_id:
                log.warning("stream %r was ingested with model %s; resuming it with %s",
                            stream, state.model_id, engine.backend.info.model_id)
            if source and state.source and source != state.source:
                log.warning("stream %r was ingested from %s; resuming it from %s at clip %d",
                            stream, state.source, source, self.next_index)

    def decide(self, clip: Clip) -> GateDecision | None:
        """The activity gate's decision for `clip` (None without a gate): cheap, no model. A scheduler may look at it
        before the clip gets the model, then pass it (or an idle decision instead) to `step`."""
        if self.gate is None:
            return None
        t0 = time.perf_counter()
        decision = self.gate.decide(clip.frames, clip.t_end)
        self._gate_s = time.perf_counter() - t0
        return decision

    def step(self, clip: Clip, decision: GateDecision | None = None) -> ClipResult:
        """Process the stream's next clip: an idle record, or caption + commit. `decision`: what `decide(clip)`
        returned (made here when not given); an idle decision records the clip as idle whatever the gate saw.
        = `caption_input`, `Engine.caption_clip`, `commit` (a scheduler may caption several streams' inputs in one
        `Engine.caption_clips` call between the two and commit each with its own ingestor)."""
        self._check_index(clip)
        if self.gate is not None:  # 0. the activity gate: nothing new since the last caption -> an idle record
            if decision is None:
                decision = self.decide(clip)
            if not decision.caption:
                return self._idle(clip, decision, self._gate_s)
        else:
            decision = None
        # 1-3. the clip step: encode, caption + score, select (pure)
        c = self.caption_input(clip)
        out = self.engine.caption_clip(c.frames, c.fifo_tokens, c.index, preprocessed=c.preprocessed,
                                       fifo_clips=c.fifo_clips)
        return self.commit(clip, out, decision)

    def _check_index(self, clip: Clip) -> None:
        if clip.index != self.next_index:
            raise UserError(f"clip {clip.index} given but stream {self.stream!r} is at clip {self.next_index}")

    def caption_input(self, clip: Clip) -> ClipInput:
        """What the model needs to caption `clip` after this stream's FIFO (for `Engine.caption_clip(s)`); pure."""
        self._check_index(clip)
        return ClipInput(clip.frames, self.fifo.tokens(), clip.index, fifo_clips=self.fifo.clips())

    def commit(self, clip: Clip, out: ClipOutput, decision: GateDecision | None = None) -> ClipResult:
        """Remember a captioned clip (`out`: the model's output for `caption_input(clip)`): caption, its vector and
        the FIFO change in one transaction, then the in-memory FIFO and the gate's reference. `decision`: the
        gate's (None without a gate)."""
        self._check_index(clip)
        gate_s = {"gate": self._gate_s} if self.gate is not None else {}
        if self.gate is None:
            decision = None
        t0 = time.perf_counter()
        tokens = out.selection.tokens  # (N, D)
        kept = out.selection.indices
        record = ClipRecord(self.stream, clip.index, float(clip.t_start), float(clip.t_end), out.caption,
                            len(out.caption_ids), out.vector, wall_start=clip.wall_start, wall_end=clip.wall_end,
                            kept=None if kept is None else np.asarray(kept, dtype=np.int16))
        fifo_rows = tokens if self.fifo.admits(len(tokens)) else None
        scene = None
        if self.gate is not None:  # the new reference, committed with the clip (applied after the commit)
            scene = self.gate.reference(clip.index, clip.t_end)
        self.memory.commit_clip(record, fifo_rows, evict=self.fifo.evictions(len(tokens)), scene=scene)
        self.fifo.push(clip.index, tokens, kept, deepstack=getattr(out, "deepstack", None))
        if scene is not None:
            self.gate.ref = scene
        self.next_index = clip.index + 1
        self.captioned += 1
        timings = {**gate_s, **out.timings, "store": time.perf_counter() - t0}
        return ClipResult(clip.index, record.t_start, record.t_end, out.caption, out.selection.indices,
                          out.context_tokens, self.fifo.n_tokens, timings, record, decision,
                          scores=out.scores)

    def _idle(self, clip: Clip, decision: GateDecision, gate_s: float) -> ClipResult:
        """Record an idle clip (one transaction); the FIFO and the gate's reference stay as they are."""
        t0 = time.perf_counter()
        ref = self.gate.ref
        self.memory.commit_idle(self.stream, clip.index, float(clip.t_start), float(clip.t_end),
                                (clip.wall_start, clip.wall_end), None if ref is None else ref.index, decision.score)
        self.next_index = clip.index + 1
        self.gated += 1
        return ClipResult(clip.index, float(clip.t_start), float(clip.t_end), "", None, 0, self.fifo.n_tokens,
                          {"gate": gate_s, "store": time.perf_counter() - t0}, None, decision)

    def run(self, clips: Iterable[Clip], on_clip: Callable[[ClipResult], None] | None = None,
            max_clips: int | None = None) -> list[ClipResult]:
        results = []
        for clip in clips:
            if max_clips is not None and len(results) >= max_clips:
                break
            results.append(self.step(clip))
            if on_clip:
                on_clip(results[-1])
        return results

    def clips(self, source: FrameSource) -> Iterator[Clip]:
        """The clips of `source` (sampled at the clip fps) from where this stream left off: it is read from
        resume_time(next_index) without being opened again; `self.source` is the one read."""
        c = self.engine.config.clip
        if source.fps != c.fps:
            raise UserError(f"the source samples {source.fps:g} frames per second but the pipeline's clips are "
                            f"{c.fps:g} fps; open the source with fps={c.fps:g}")
        if hasattr(source, "starting_at"):  # a recorded source: read from the next clip's first sample
            self.source = source.starting_at(resume_time(self.next_index, c.frames_per_clip, c.fps))
        else:  # a live source: it goes on from now (open it at the stream's end time to continue its timeline)
            self.source = source
        clock = getattr(source, "stream_clock", None)  # a robot recording: its time basis and log-time offset
        if clock is not None:
            self.memory.set_stream_clock(self.stream, clock)
        return iter_clips(self.source, c.frames_per_clip, c.fps, first_index=self.next_index)

    def stream_end(self) -> float:
        """Stream time (s) the stream's last clip ended (0 for a new stream): where a live source continues it."""
        row = next((s for s in self.memory.streams() if s["name"] == self.stream), None)
        return float(row["t_end"]) if row and row["t_end"] is not None else 0.0

    def clips_from_file(self, path: str | Path) -> Iterator[Clip]:
        """The clips of a video file from where this stream left off (the file is opened once)."""
        from .sources.file import VideoFileSource  # PyAV: imported only when a file is read

        return self.clips(VideoFileSource(path, fps=self.engine.config.clip.fps))


def open_clips(ing: StreamIngestor, spec, source: FrameSource | None = None, **how) -> Iterator[Clip]:
    """The one route from a source to a stream's clips, for `rlivs ingest` and `rlivs serve`'s workers alike: the
    source `spec` (a `SourceSpec`) opened by `sources.open_spec(spec, clip fps, **how)` (its clock decided there:
    `clock_origin=`, `live=`, `live_config=`, `stop=`), or the one already opened (`source`: refusals before the model
    loaded), read from where the stream left off: a recorded source from its next clip's first sample, a live one
    continuing the stream's timeline. `ing.source` is then the source being read."""
    if source is None:
        live = how.get("live", spec.live)
        source = open_spec(spec, ing.engine.config.clip.fps, start_time=ing.stream_end() if live else 0.0, **how)
    return ing.clips(source)
