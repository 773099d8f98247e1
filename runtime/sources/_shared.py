"""What the frame sources of this package share: the time tolerance, argument checks, the PyAV frame interval, and
the sampling rule of indexed sources (frame folders, .npy arrays). Private to `rlivs.runtime.sources`.

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


class IndexedFrameSource:
    """A source whose frame i is at i / frames_fps seconds, sampled at `fps` from `start_time`: sample k is the first
    frame at or after start_time + k / fps (VideoFileSource's rule); it stops before `end_time` or the last frame.
    Subclasses set `n_frames` and give `_get(i) -> (H, W, 3) uint8`."""

    decode_errors = 0  # frames are read whole or refused: nothing is ever skipped
    n_frames: int  # frames in the source (set by the subclass)

    def __init__(self, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 frames_fps: float = 1.0):
        self.fps, self.start_time = check_fps(fps), check_start_time(start_time)
        self.end_time, self.frames_fps = end_time, frames_fps
        self.clock_origin: float | None = None  # UTC unix seconds of frame 0 (set by the caller: --start-time)
        self.clock_kind: str | None = None

    def _get(self, i: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def duration(self) -> float:
        return self.n_frames / self.frames_fps

    def starting_at(self, start_time: float):
        """The same frames read from `start_time` (nothing is opened again)."""
        return with_start_time(self, start_time)

    def __iter__(self) -> Iterator[Frame]:
        n, k = self.n_frames, 0
        while True:
            target = self.start_time + k / self.fps
            if self.end_time is not None and target >= self.end_time - TIME_EPS:
                return
            i = max(0, math.ceil((target - TIME_EPS) * self.frames_fps))
            if i >= n:
                return
            t = i / self.frames_fps
            yield Frame(image=self._get(i), t=t, wall=None if self.clock_origin is None else self.clock_origin + t)
            k += 1
