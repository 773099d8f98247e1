"""A video file as a frame source: decode its first video stream (PyAV), sample it at a fixed rate.

    VideoFileSource(path, fps)        -> Frame            image (H, W, 3) uint8 RGB, t seconds

Times are seconds of stream time measured from the stream's first frame, taken from each frame's PTS. The clock
(`clock_origin`, the UTC time of stream time 0) is the container's creation-time tag when it has a plausible one;
the caller may give it instead when opening the file (`clock_origin=`: `rlivs ingest --start-time`). Each frame's `wall` is then clock_origin + t.
No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import logging
import math
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.timeq import parse_iso
from rlivs.runtime.frames import Frame
from rlivs.runtime.sources._shared import (TIME_EPS, Sampler, check_fps, check_start_time, frame_interval,
                                           with_start_time)

log = logging.getLogger("rlivs.sources.file")

# A file whose last decodable frame is this many seconds (plus two frame intervals) before the end of the video it
# declares is reported as truncated.
_TRUNCATION_SLACK_S = 1.0



class VideoFileSource:
    """Frames of a video file's first video stream, sampled at `fps`.

    Sample k targets stream time start_time + k / fps (seconds after the stream's first frame); it is the first
    decoded frame whose time is >= the target. A frame that is the first at or after several targets (sampling
    faster than the video's own rate) is yielded once per target, so sample k always belongs to target k and a
    stream resumed at resume_time(i, ...) gives the same frames as reading it straight through.
    With start_time > 0 the file is seeked to the keyframe before the target instead of decoded from the start.
    With end_time, iteration ends at the first sampled frame whose time is >= end_time (it is not yielded).

    Damaged files: packets are decoded one by one; a packet the decoder rejects is skipped and counted
    (`decode_errors`; `decode_error_times` holds the stream time of the last good frame before each) and decoding
    goes on with the next one, so a file corrupt in the middle yields every frame that can still be decoded. A
    container that cannot be read further (a demuxer error) or a file that ends well before the video it declares
    (truncated, or still being written) raises ValueError *after* the last good frame, so a clip grouper stops
    before its partial last clip (a resumed run on the complete file continues at that clip).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 1.0, start_time: float = 0.0,
                 end_time: float | None = None, clock_origin: float | None = None,
                 clock_kind: str = "--start-time"):
        self.path = Path(path)
        self.fps = check_fps(fps)
        self.start_time = check_start_time(start_time)
        self.end_time = end_time  # stream time (s) the source ends before; None = the end of the file
        self.decode_errors = 0  # packets the decoder rejected in the current (last) pass; their frames are skipped
        self.decode_error_times: list[float] = []  # stream time of the last good frame before each rejected packet
        self._last_error_log = -math.inf
        self._last_good_t: float | None = None  # stream time of the last decoded frame (where an error is reported)
        if not self.path.exists():
            raise FileNotFoundError(f"video file not found: {self.path}; check the path")
        if not self.path.is_file():
            raise self._unreadable("it is not a regular file")
        # Probe once so that a bad file fails here, not halfway through a pipeline.
        with self._open() as container:
            video = container.streams.video[0]
            self._duration = _duration_of(container, video)
            self._declared_end = _declared_video_end(container, video)  # what the file says (None if nothing)
            tagged = creation_time(container)  # UTC unix seconds of stream time 0, or None
        if clock_origin is not None:  # the caller's clock (--start-time) wins over the file's tag
            self.clock_origin, self.clock_kind = clock_origin, clock_kind
        else:
            self.clock_origin = tagged
            self.clock_kind = None if tagged is None else "container creation time"

    @property
    def duration(self) -> float | None:
        """Length in seconds from the container/stream metadata, or None when the file does not say."""
        return self._duration

    def starting_at(self, start_time: float) -> VideoFileSource:
        """The same file read from `start_time` (the file is not probed again)."""
        return with_start_time(self, start_time)

    def __iter__(self) -> Iterator[Frame]:
        with self._open() as container:
            seeked = yield from self._iter_from(container, seek=self.start_time > 0)
        if seeked is False:  # the seek landed after the target: decode from the start instead
            with self._open() as container:
                yield from self._iter_from(container, seek=False)

    def __repr__(self) -> str:
        end = "" if self.end_time is None else f", end_time={self.end_time}"
        return f"VideoFileSource({str(self.path)!r}, fps={self.fps}, start_time={self.start_time}{end})"

    # -- internals ----------------------------------------------------------------------------------------------------

    def _unreadable(self, reason: str) -> UserError:
        return UserError(f"{self.path} is not a readable video: {reason}; check the file with ffprobe")

    def _open(self):
        try:
            container = av.open(str(self.path), mode="r")
        except av.FFmpegError as e:
            raise self._unreadable(f"FFmpeg could not open it ({_ffmpeg_reason(e)})") from None
        if not container.streams.video:
            container.close()
            raise self._unreadable("it has no video stream")
        return container

    def _iter_from(self, container, seek: bool):
        """Yield sampled frames; return False (yielding nothing) when a seek overshot the first target."""
        self.decode_errors, self.decode_error_times, self._last_good_t = 0, [], None
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; output is bit-identical to single-threaded decoding
        time_base = stream.time_base
        fallback_dt = frame_interval(stream)
        origin_pts: int | None = None  # PTS of the stream's first frame (time 0)

        if seek:
            first = next(self._decode(container, stream), None)
            if first is None:
                raise self._unreadable("no frames could be decoded")
            origin_pts = first.pts
            if origin_pts is None or time_base is None:
                return False  # no timestamps to seek by
            seek_seconds = Fraction(self.start_time) - Fraction(TIME_EPS)
            target_pts = origin_pts + math.floor(seek_seconds / time_base)
            try:
                container.seek(max(target_pts, origin_pts), stream=stream, backward=True, any_frame=False)
            except av.FFmpegError:
                return False

        sampler = Sampler(self.fps, self.start_time, self.end_time, self.clock_origin)
        prev_t: float | None = None
        n_decoded = 0
        for frame in self._decode(container, stream):
            n_decoded += 1
            if origin_pts is None:
                origin_pts = frame.pts if frame.pts is not None else 0
            if frame.pts is not None and time_base is not None:
                t = float((frame.pts - origin_pts) * time_base)
            elif prev_t is None:
                if seek:
                    return False  # a frame without PTS right after a seek cannot be placed in time
                t = 0.0
            else:
                t = prev_t + fallback_dt  # a frame without PTS: assume the nominal frame rate
            if seek and n_decoded == 1 and t > sampler.target + TIME_EPS:
                return False  # landed after the target; an earlier frame may have been the right one
            prev_t = self._last_good_t = t
            if sampler.skip(t):
                continue
            if sampler.ended(t):
                return True  # the first sample at or after the end: the source ends here
            yield from sampler.take(np.ascontiguousarray(frame.to_ndarray(format="rgb24")), t)  # (H, W, 3) uint8
        if n_decoded == 0 and not seek:
            raise self._unreadable("no frames could be decoded" + self._errors_note())
        declared = self._declared_end
        if declared is not None and prev_t is not None:
            slack = _TRUNCATION_SLACK_S + 2 * frame_interval(stream)
            if prev_t + slack < declared:
                raise UserError(
                    f"{self.path} ends at {prev_t:.1f} s but the file declares {declared:.1f} s of video: it is "
                    f"truncated (or was still being written){self._errors_note()}; the frames before {prev_t:.1f} s "
                    f"were read; copy or record the file again, or wait until it is complete, then run again "
                    f"(a stream resumes at its next clip)"
                )
        return True

    def _errors_note(self) -> str:
        if not self.decode_errors:
            return ""
        return f" ({self.decode_errors} undecodable packets skipped, first after {self.decode_error_times[0]:.1f} s)"

    def _decode(self, container, stream) -> Iterator[av.VideoFrame]:
        """Decode packet by packet: a packet the decoder rejects is counted and skipped; a demuxer error ends."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:
                last = self._last_good_t
                where = f"after {last:.1f} s" if last is not None else "before the first frame"
                raise self._unreadable(f"the container cannot be read {where} ({_ffmpeg_reason(e)}); it is damaged "
                                       f"or truncated{self._errors_note()}") from None
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                self.decode_errors += 1
                t = self._last_good_t if self._last_good_t is not None else 0.0
                self.decode_error_times.append(t)
                now = time.monotonic()
                if now - self._last_error_log >= 5.0:  # each one is counted; the log says so at most every 5 s
                    self._last_error_log = now
                    log.warning("%s: undecodable packet after %.1f s skipped (%s); %d so far", self.path, t,
                                _ffmpeg_reason(e), self.decode_errors)
                continue
            yield from frames


def _ffmpeg_reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _duration_of(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _declared_video_end(container, stream) -> float | None:
    """Seconds to the end of the video the file itself declares, or None when it declares none we can trust: the
    video stream's own duration (MP4/MOV), else a Matroska/WebM file's duration when video is its only stream.
    Estimates (MPEG-TS: from the bit rate) are not used."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if "matroska" in (container.format.name or "") and len(container.streams) == 1 and container.duration:
        return container.duration / av.time_base
    return None


_EARLIEST_CLOCK = 946684800.0  # 2000-01-01: muxers write 1904 or 1970 when they know no time


def creation_time(container) -> float | None:
    """The container's creation-time tag (ISO 8601, UTC unless it says otherwise) as UTC unix seconds; None when
    there is none, it cannot be read, or it is before 2000 (a muxer's zero date)."""
    from datetime import datetime, timezone

    tags = {k.lower(): v for k, v in (container.metadata or {}).items()}
    raw = tags.get("creation_time") or tags.get("date")
    if not raw:
        return None
    try:
        t = parse_iso(str(raw))
    except ValueError:
        log.info("ignoring the unreadable creation_time tag %r", raw)
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    unix = t.timestamp()
    return unix if unix >= _EARLIEST_CLOCK else None

