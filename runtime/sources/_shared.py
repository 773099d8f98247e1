"""What the frame sources of this package share: the time tolerance, argument checks, the PyAV frame interval, the
sampling rule of recorded sources (`Sampler`: video files, robot recordings, frame folders, .npy arrays; a live
source hands out the newest frame instead, live.py) and the indexed sources. Private to `rlivs.runtime.sources`.

No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import copy
import math
from typing import Iterator

import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.frames import Frame

# A frame whose time is within this many seconds below a sample target still counts as "at" the target, so that
# float round-off in a start time (e.g. 16 / 3) cannot drop a frame whose time is exactly on the target.
TIME_EPS = 1e-6


def check_fps(fps) -> float:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise UserError(f"fps must be a finite number > 0, got {fps!r}; use e.g. fps=1.0")
    return float(fps)


def check_start_time(start_time) -> float:
    if not (isinstance(start_time, (int, float)) and math.isfinite(start_time) and start_time >= 0):
        raise UserError(f"start_time must be a finite number of seconds >= 0, got {start_time!r}")
    return float(start_time)


def with_start_time(source, start_time: float):
    """A shallow copy of `source` that reads from `start_time`: what was opened or probed is shared, not redone."""
    other = copy.copy(source)
    other.start_time = check_start_time(start_time)
    return other


def frame_interval(stream) -> float:
    """Nominal seconds between two frames of a PyAV video stream (1/30 when it declares no rate)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(1 / rate) if rate else 1 / 30


class Sampler:
    """The sampling rule of every recorded source, written once: sample k is the first frame whose time is at or after
    start_time + k / fps (within TIME_EPS); a frame that is the first at or after several targets (sampling faster
    than the recording's own rate) is yielded once per target, so sample k always belongs to target k and a stream
    resumed at resume_time(i, ...) gives the same frames as reading it straight through; the source ends before the
    first target or frame at or after `end_time`. Each frame's `wall` is clock_origin + t (None without a clock).

    A source feeds it frame times in order: `skip(t)` says a frame is before the next target (not a sample: do not
    even decode it), `ended(t)` that the source ends at it, and `take(image, t)` yields the samples that frame serves."""

    def __init__(self, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 clock_origin: float | None = None):
        self.fps, self.start_time, self.end_time, self.clock_origin = fps, start_time, end_time, clock_origin
        self.k = 0  # index of the next sample
        self.target = start_time  # stream time of the next sample

    def skip(self, t: float) -> bool:
        return t < self.target - TIME_EPS

    def ended(self, t: float) -> bool:
        return self.end_time is not None and t >= self.end_time - TIME_EPS

    def take(self, image: np.ndarray, t: float) -> Iterator[Frame]:
        wall = None if self.clock_origin is None else self.clock_origin + t
        while t >= self.target - TIME_EPS and not self.ended(self.target):
            yield Frame(image=image, t=t, wall=wall)
            self.k += 1
            self.target = self.start_time + self.k / self.fps


class IndexedFrameSource:
    """A source whose frame i is at i / frames_fps seconds, sampled at `fps` from `start_time`: sample k is the first
    frame at or after start_time + k / fps (VideoFileSource's rule); it stops before `end_time` or the last frame.
    Subclasses set `n_frames` and give `_get(i) -> (H, W, 3) uint8`."""

    decode_errors = 0  # frames are read whole or refused: nothing is ever skipped
    n_frames: int  # frames in the source (set by the subclass)

    def __init__(self, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 frames_fps: float = 1.0, clock_origin: float | None = None, clock_kind: str | None = "--start-time"):
        self.fps, self.start_time = check_fps(fps), check_start_time(start_time)
        self.end_time, self.frames_fps = end_time, frames_fps
        self.clock_origin: float | None = clock_origin  # UTC unix seconds of frame 0 (the caller's: --start-time)
        self.clock_kind: str | None = clock_kind if clock_origin is not None else None

    def _get(self, i: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def duration(self) -> float:
        return self.n_frames / self.frames_fps

    def starting_at(self, start_time: float):
        """The same frames read from `start_time` (nothing is opened again)."""
        return with_start_time(self, start_time)

    def __iter__(self) -> Iterator[Frame]:
        sampler = Sampler(self.fps, self.start_time, self.end_time, self.clock_origin)
        while not sampler.ended(sampler.target):
            i = max(0, math.ceil((sampler.target - TIME_EPS) * self.frames_fps))  # the first frame at the target
            if i >= self.n_frames:
                return
            yield from sampler.take(self._get(i), i / self.frames_fps)
