"""Live video sources: V4L2 cameras, RTSP/HTTP streams and files replayed at real speed, all through PyAV.

A live source never builds a backlog. One reader thread decodes the stream and puts each decoded frame into a
one-slot buffer (the newest frame replaces the previous one); a sampler hands out one frame per 1/fps seconds of
stream time, blocking on a Condition until a frame at or after its next target exists. When the consumer (the
captioning loop) is slower than the stream, the sampler hands out the newest frame and counts the sample times it
skipped as dropped frames; nothing queues up.

    LiveSource(SourceSpec or "[name=]URL", SourceConfig) -> iterator of Frame   image (H, W, 3) uint8 RGB, t seconds

Time: `t` is seconds of stream time. Within one connection it is the frame's PTS relative to the first frame of that
connection (or the wall clock since that frame when the stream has no PTS). After a reconnect, or when a replayed file
loops, the new connection's frames continue the timeline: they start at the later of (the last frame's time + one
frame interval) and (the wall-clock time elapsed since the source's first frame, times the replay speed), so a
dropped camera shows a gap of the length of the outage and `t` never goes backwards. `SourceConfig.start_time`
shifts the whole timeline (a resumed stream continues after its last stored clip).

Reconnects: a failed open, a read error, a stalled read (read timeout) or the end of a live stream closes the
connection and reopens it after an exponential, jittered, bounded backoff. A file that disappears is retried the
same way until it is back. Every failure, decode error and reconnect is counted in `SourceStats`.

No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

import av
import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.frames import Frame
from rlivs.runtime.sources._shared import TIME_EPS, frame_interval
from rlivs.runtime.sources.spec import SourceSpec, parse_source

log = logging.getLogger("rlivs.sources")


# ---------------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ReconnectConfig:
    initial_s: float = 0.5  # delay before the first retry after a drop or a failed open, seconds
    max_s: float = 30.0  # the delay doubles per consecutive failure up to this bound, seconds
    factor: float = 2.0  # growth of the delay per consecutive failure
    jitter: float = 0.25  # each delay is multiplied by a uniform random factor in [1 - jitter, 1 + jitter]
    max_attempts: int | None = None  # give up (state "failed") after this many consecutive failures; None = never

    def __post_init__(self):
        if not (self.initial_s > 0 and self.max_s >= self.initial_s):
            raise UserError(f"reconnect delays must satisfy 0 < initial_s <= max_s, got {self.initial_s}, "
                            f"{self.max_s}; e.g. initial_s=0.5, max_s=30")
        if self.factor < 1:
            raise UserError(f"reconnect factor must be >= 1, got {self.factor}; e.g. 2.0")
        if not 0 <= self.jitter < 1:
            raise UserError(f"reconnect jitter must be in [0, 1), got {self.jitter}; e.g. 0.25")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise UserError(f"max_attempts must be >= 1 or None (retry forever), got {self.max_attempts}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based): initial * factor**(attempt-1), capped, jittered."""
        base = min(self.max_s, self.initial_s * self.factor ** max(0, min(attempt - 1, 64)))
        r = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.max_s * (1 + self.jitter), base * r)


@dataclass
class SourceConfig:
    fps: float = 1.0  # frames handed out per second of stream time (the clip sampling rate)
    replay_speed: float = 1.0  # a replayed file is paced at this multiple of real time (2.0 = twice as fast)
    loop: bool = False  # a replayed file restarts at its end (the timeline continues) instead of ending the stream
    start_time: float = 0.0  # stream time of the first frame, seconds (a resumed stream continues its timeline)
    open_timeout_s: float = 10.0  # give up opening a source after this many seconds (then back off and retry)
    read_timeout_s: float = 10.0  # a source that delivers no data for this long is treated as dropped
    max_decode_errors_in_a_row: int = 50  # after this many undecodable packets in a row the source reconnects
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)  # backoff between reconnect attempts

    def __post_init__(self):
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"fps must be a finite number > 0, got {self.fps!r}; use e.g. --fps 1")
        if not (math.isfinite(self.replay_speed) and self.replay_speed > 0):
            raise UserError(f"replay_speed must be > 0, got {self.replay_speed}; 1.0 replays at real speed")
        if not (math.isfinite(self.start_time) and self.start_time >= 0):
            raise UserError(f"start_time must be a finite number of seconds >= 0, got {self.start_time}")
        if self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise UserError(f"timeouts must be > 0 seconds, got open {self.open_timeout_s}, "
                            f"read {self.read_timeout_s}")
        if self.max_decode_errors_in_a_row < 1:
            raise UserError(f"max_decode_errors_in_a_row must be >= 1, got {self.max_decode_errors_in_a_row}")


# ---------------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    """Counters and state of one live source (a snapshot; `LiveSource.stats()` copies it under its lock)."""

    state: str = "starting"  # starting | connecting | live | reconnecting | ended | failed | stopped
    frames_decoded: int = 0  # frames the decoder produced
    frames_sampled: int = 0  # frames handed out at the sampling rate
    frames_dropped: int = 0  # sample times skipped because the consumer was busy when they came (never queued)
    decode_errors: int = 0  # packets the decoder rejected (each counted, logged; decoding goes on)
    open_failures: int = 0  # attempts to open the source that failed
    disconnects: int = 0  # connections that ended by error, stall or end of a live stream
    reconnects: int = 0  # successful opens after the first one (reconnects, and loops of a replayed file)
    pts_resets: int = 0  # times the PTS jumped backwards within a connection (the timeline was rebased, not reversed)
    connections: int = 0  # successful opens in all
    last_error: str | None = None  # the most recent error, with its time in `last_error_at`
    last_error_at: float | None = None  # unix time of last_error
    last_frame_t: float | None = None  # stream time of the newest decoded frame, seconds
    last_frame_at: float | None = None  # unix time the newest frame was decoded
    sample_lag_s: float | None = None  # at the last hand-out: seconds between decoding that frame and handing it out

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["last_frame_age_s"] = None if self.last_frame_at is None else max(0.0, time.time() - self.last_frame_at)
        return d


# ---------------------------------------------------------------------------------------------------------------------
# The one-slot buffer
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    frame: object  # av.VideoFrame, converted to RGB only if it is handed out
    t: float  # stream time, seconds
    wall: float  # unix time it was decoded
    segment: int  # connection number (a reconnect or a loop starts a new segment)
    seq: int = 0  # set by the slot: increases with every put


class LatestFrameSlot:
    """Holds only the newest decoded frame. `put` replaces it; `take` blocks until a wanted frame is there."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: _Decoded | None = None
        self._seq = 0
        self._taken_seq = 0
        self._closed = False
        self.overwritten = 0  # frames replaced before anyone took them

    def put(self, item: _Decoded) -> None:
        with self._cond:
            if self._item is not None and self._item.seq > self._taken_seq:
                self.overwritten += 1
            self._seq += 1
            item.seq = self._seq
            self._item = item
            self._cond.notify_all()

    def close(self) -> None:
        """No more frames will come; a blocked `take` returns what it may still take, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self, accept) -> _Decoded | None:
        """Block until the newest untaken frame satisfies `accept(item)` (then take it) or the slot is closed (None)."""
        with self._cond:
            while True:
                item = self._item
                if item is not None and item.seq > self._taken_seq and accept(item):
                    self._taken_seq = item.seq
                    return item
                if self._closed:
                    return None
                self._cond.wait()


# ---------------------------------------------------------------------------------------------------------------------
# The live source
# ---------------------------------------------------------------------------------------------------------------------


class LiveSource:
    """A reader thread that decodes one source and keeps only its newest frame, and a blocking fps sampler over it.

    Iterate it (in one consumer thread) to get `Frame`s at `config.fps`; iteration ends when the source ends (a
    replayed file without `loop`), fails for good (`reconnect.max_attempts`) or `stop()` is called. Start the reader
    with `start()` (iteration starts it too) and always `stop()` it (or use `with`).
    """

    def __init__(self, source: SourceSpec | str, config: SourceConfig | None = None,
                 clock_origin: float | None = None):
        self.spec = source if isinstance(source, SourceSpec) else parse_source(source)
        self.config = config or SourceConfig()
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _stats
        self._stats = SourceStats()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._t0_wall: float | None = None  # monotonic time of the source's first frame
        self._last_t: float | None = None  # stream time of the last decoded frame
        self._segment = 0
        self.last_wall: float | None = None  # unix decode time of the last frame handed out (for lag measurements)
        self._error_log_at = 0.0
        # The frame clock: each frame's arrival time, unless the caller fixes stream time 0 (--start-time).
        self.clock_origin: float | None = clock_origin
        self.clock_kind: str | None = "arrival time" if clock_origin is None else "--start-time"

    @property
    def fps(self) -> float:
        """Samples per second (the FrameSource protocol)."""
        return self.config.fps

    @property
    def start_time(self) -> float:
        """Stream time of the first frame (a resumed stream continues its timeline)."""
        return self.config.start_time

    duration = None  # a live source does not know its length

    # -- lifetime -----------------------------------------------------------------------------------------------------

    def start(self) -> LiveSource:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"rlivs-source-{self.spec.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the reader and end iteration. The reader exits at its next packet (or when a blocked read times out)."""
        self._stop.set()
        self._slot.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            if self._stats.state not in ("ended", "failed"):
                self._stats.state = "stopped"

    def __enter__(self) -> LiveSource:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> SourceStats:
        with self._lock:
            s = replace(self._stats)
        return s

    def _count(self, **changes) -> None:
        with self._lock:
            if self._stop.is_set() and self._stats.state == "stopped":
                changes.pop("state", None)  # a reader still finishing after stop() does not revive the state
            for k, v in changes.items():
                if k in ("state", "last_error", "last_error_at", "last_frame_t", "last_frame_at", "sample_lag_s"):
                    setattr(self._stats, k, v)
                else:
                    setattr(self._stats, k, getattr(self._stats, k) + v)

    def _error(self, what: str, e: BaseException | str, **counts) -> None:
        msg = f"{what}: {e}"
        self._count(last_error=msg, last_error_at=time.time(), **counts)
        now = time.monotonic()
        if now - self._error_log_at > 5.0:  # every error is counted; the log gets at most one line per 5 s
            self._error_log_at = now
            log.warning("source %s (%s): %s", self.spec.name, self.spec.url, msg)

    # -- the sampler --------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        self.start()
        interval = 1.0 / self.config.fps
        target: float | None = None  # stream time of the next sample
        segment: int | None = None

        def accept(item: _Decoded) -> bool:
            return target is None or item.segment != segment or item.t >= target - TIME_EPS

        while not self._stop.is_set():
            item = self._slot.take(accept)  # blocks on a Condition; never spins
            if item is None:
                return
            if target is None or item.segment != segment:  # first frame, or a new connection: restart the schedule
                target, segment, missed = item.t, item.segment, 0
            else:  # every sample time in [target, item.t] is served by this one frame; all but one were missed
                missed = int(math.floor((item.t - target) * self.config.fps + TIME_EPS))
            target = target + (missed + 1) * interval
            image = np.ascontiguousarray(item.frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
            now = time.time()
            self.last_wall = item.wall
            self._count(frames_sampled=1, frames_dropped=missed, sample_lag_s=now - item.wall)
            wall = item.wall if self.clock_origin is None else self.clock_origin + item.t
            yield Frame(image=image, t=item.t, wall=wall)

    # -- the reader ---------------------------------------------------------------------------------------------------

    def _wait(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self._stop.wait(max(0.0, seconds))

    def _open(self):
        spec, c = self.spec, self.config
        options: dict[str, str] = {}
        fmt = None
        url = spec.url
        if spec.kind == "device":  # /dev/video0?video_size=640x480&framerate=30&input_format=mjpeg: v4l2 options
            fmt = "v4l2"
            url, _, query = url.removeprefix("v4l2://").partition("?")
            options.update(parse_qsl(query))
        elif spec.kind == "network":
            scheme = urlsplit(url).scheme.lower()
            if scheme.startswith("rtsp"):
                options["rtsp_transport"] = "tcp"  # interleaved over the control connection: no lost UDP packets
            options["fflags"] = "nobuffer"  # hand frames out as they arrive, no demuxer-side buffering
            options["analyzeduration"] = "1000000"  # probe at most 1 s of a live stream before the first frame
            options["probesize"] = "1000000"  # ... or 1 MB
        else:
            url = url.removeprefix("file://")
            if not Path(url).is_file():
                raise FileNotFoundError(f"video file not found: {url}")
        container = av.open(url, mode="r", format=fmt, options=options,
                            timeout=(c.open_timeout_s, c.read_timeout_s))
        if not container.streams.video:
            container.close()
            raise UserError(f"{spec.url} has no video stream")
        return container

    def _run(self) -> None:
        failures = 0  # consecutive failures (reset when a connection delivers a frame)
        c = self.config
        try:
            while not self._stop.is_set():
                with self._lock:
                    self._stats.state = "connecting" if self._stats.connections == 0 else "reconnecting"
                try:
                    container = self._open()
                except (av.FFmpegError, OSError, ValueError) as e:
                    failures += 1
                    self._error("open failed", e, open_failures=1)
                    if c.reconnect.max_attempts is not None and failures >= c.reconnect.max_attempts:
                        self._count(state="failed")
                        return
                    if self._wait(c.reconnect.delay(failures, self._rng)):
                        return
                    continue
                self._count(connections=1, reconnects=1 if self._stats.connections else 0)
                try:
                    how, delivered = self._read(container)
                finally:
                    container.close()
                if delivered:
                    failures = 0
                if self._stop.is_set():
                    return
                if how == "eof" and self.spec.kind == "file":
                    if not c.loop:
                        self._count(state="ended")
                        return
                    if delivered:
                        continue  # loop: reopen at once; the timeline continues
                self._count(disconnects=1)
                if how == "eof":
                    self._error("stream ended", f"{self.spec.url} closed the stream")
                failures += 1
                if c.reconnect.max_attempts is not None and failures >= c.reconnect.max_attempts:
                    self._count(state="failed")
                    return
                if self._wait(c.reconnect.delay(failures, self._rng)):
                    return
        except Exception as e:  # a bug must not leave the consumer blocked forever: record it and end the stream
            log.exception("source %s: reader crashed", self.spec.name)
            self._error("reader crashed", e)
            self._count(state="failed")
        finally:
            self._slot.close()

    def _decode_packet(self, packet) -> list:
        """Decode one packet (a seam for tests: raises av.FFmpegError on undecodable data)."""
        return packet.decode()

    def _read(self, container) -> tuple[str, bool]:
        """Decode one connection until it ends. -> ("eof" | "error" | "stop", whether any frame was decoded)."""
        c = self.config
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        replay = self.spec.kind == "file"
        speed = c.replay_speed if replay else 1.0
        self._segment += 1
        origin_pts: int | None = None
        prev_rel: float | None = None  # the previous frame's time relative to origin_pts
        seg_wall0: float | None = None  # monotonic time of this connection's first frame
        offset = c.start_time  # stream time of this connection's first frame
        delivered = False
        errors_in_a_row = 0
        packets = container.demux(stream)
        while True:
            if self._stop.is_set():
                return "stop", delivered
            try:
                packet = next(packets)
            except StopIteration:
                return "eof", delivered
            except (av.FFmpegError, OSError) as e:
                self._error("read failed", e)
                return "error", delivered
            try:
                frames = self._decode_packet(packet)
            except av.FFmpegError as e:
                errors_in_a_row += 1
                self._error("decode error", e, decode_errors=1)
                if errors_in_a_row >= c.max_decode_errors_in_a_row:
                    self._error("giving up on this connection", f"{errors_in_a_row} undecodable packets in a row")
                    return "error", delivered
                continue
            errors_in_a_row = 0
            for frame in frames:
                now_mono = time.monotonic()
                if seg_wall0 is None:  # first frame of this connection: place it on the timeline
                    seg_wall0 = now_mono
                    if self._t0_wall is None:
                        self._t0_wall = now_mono
                    elif self._last_t is not None:
                        gap = (now_mono - self._t0_wall) * speed + c.start_time
                        offset = max(self._last_t + frame_interval(stream), gap)
                    origin_pts = frame.pts
                if frame.pts is not None and origin_pts is not None and time_base is not None:
                    rel = float((frame.pts - origin_pts) * time_base)
                    if prev_rel is not None and rel < prev_rel - 0.5:  # PTS jumped back (a looped or spliced stream)
                        self._count(pts_resets=1)
                        offset += prev_rel + frame_interval(stream)
                        origin_pts, rel = frame.pts, 0.0
                        if replay:
                            seg_wall0 = now_mono
                else:
                    rel = (now_mono - seg_wall0) * speed  # no PTS: the wall clock
                prev_rel = rel
                if replay:  # pace a file at real speed (times replay_speed) by its PTS
                    if self._wait(seg_wall0 + rel / speed - time.monotonic()):
                        return "stop", delivered
                t = offset + rel
                if self._last_t is not None and t <= self._last_t:
                    t = self._last_t + 1e-3  # never backwards (PTS jumps, B-frame quirks)
                self._last_t = t
                wall = time.time()
                self._count(frames_decoded=1, last_frame_t=t, last_frame_at=wall, state="live")
                self._slot.put(_Decoded(frame, t, wall, self._segment))
                delivered = True

