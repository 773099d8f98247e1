"""Synthetic cameras with scripted events, for the activity gate's tests and benchmark (bench/cameras.py).

A camera watches a still room: a textured background with furniture, sensor noise on every frame and a slow
brightness drift (none of which is an event). Events are scripted:
  - "walk":  a person-sized box crosses the frame between t0 and t1;
  - "door":  a door-like rectangle opens at t0 (its panel turns dark) and closes again at t1;
  - "place": an object appears at t0 and stays until t1 (then it is taken away).
Each event has the instants at which the picture changes (`Event.changes`): a walk changes it all along, a door
and a placed object when they open/appear and close/disappear. A clip *shows* an event when one of those instants
falls inside it; a gate misses an event when it captions none of the clips that show it.

`scripted_camera` makes a camera with events spread over `seconds` so that about `1 - idle_fraction` of its
clips show one; `frames` draws its frames (numpy, no video codec); `write_video` writes them to an .mp4.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Event:
    kind: str  # walk | door | place
    t0: float  # seconds: start (walk), opens (door), appears (place)
    t1: float  # seconds: end (walk), closes (door), is taken away (place)
    y: int = 0  # where (pixels, top-left) and how big
    x: int = 0
    h: int = 0
    w: int = 0

    def changes(self, fps: float) -> list[float]:
        """The sample times (multiples of 1 / fps) whose picture differs from the sample before because of this
        event: every sample of a walk and the first after it; the first sample of an open door or a placed object
        and the first after it closes or is taken away."""
        first, last = math.ceil(self.t0 * fps - 1e-9), math.ceil(self.t1 * fps - 1e-9)
        steps = range(first, last + 1) if self.kind == "walk" else (first, last)
        return [i / fps for i in steps]


@dataclass
class Camera:
    seconds: float
    size: tuple[int, int] = (160, 120)  # (width, height)
    seed: int = 0
    events: list[Event] = field(default_factory=list)
    noise: float = 3.0  # sensor noise, grey levels (std)
    drift: float = 0.08  # slow brightness drift: +-8 % over the run

    def shows(self, clip_start: float, clip_end: float, fps: float) -> list[int]:
        """Indices of the events whose changes fall in [clip_start, clip_end)."""
        return [i for i, e in enumerate(self.events) if any(clip_start <= t < clip_end for t in e.changes(fps))]


def scripted_camera(seconds: float, clip_seconds: float, idle_fraction: float = 0.8, size=(160, 120),
                    seed: int = 0) -> Camera:
    """A camera whose events show in about (1 - idle_fraction) of its clips: walks, doors and placed objects, each
    starting on a clip's second frame (so the clip that shows it is unambiguous), in random order and places."""
    rng = np.random.default_rng(seed)
    width, height = size
    n_clips = int(seconds // clip_seconds)
    n_events = max(1, int(round(n_clips * (1 - idle_fraction) / 2)))  # a door/object shows in 2 clips, a walk ~2
    slots = np.sort(rng.choice(np.arange(1, max(2, n_clips - 2)), size=min(n_events, max(1, n_clips - 3)),
                               replace=False))
    events = []
    for k, c in enumerate(slots):
        if events and c * clip_seconds <= events[-1].t1 + clip_seconds:  # keep events apart
            continue
        t0 = c * clip_seconds + clip_seconds / 8  # inside the clip, after its first frame
        kind = ("walk", "door", "place")[int(rng.integers(0, 3))]
        if kind == "walk":
            h, w = height // 2, width // 10
            events.append(Event("walk", t0, t0 + clip_seconds * 1.5, height // 3, 0, h, w))
        else:
            h, w = (height // 2, width // 6) if kind == "door" else (height // 6, width // 8)
            y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
            hold = clip_seconds * int(rng.integers(2, 6))  # open/present for a few clips
            events.append(Event(kind, t0, t0 + hold, y, x, h, w))
    return Camera(seconds, (width, height), seed, events)


def _background(cam: Camera) -> np.ndarray:
    width, height = cam.size
    rng = np.random.default_rng(cam.seed + 1000)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 70 + 60 * (xx / width)[..., None] + 20 * (yy / height)[..., None] + rng.normal(0, 10, (height, width, 1))
    img = np.repeat(img, 3, axis=2) * np.array([1.0, 0.95, 0.85], np.float32)
    for _ in range(4):  # furniture
        h, w = int(rng.integers(height // 8, height // 3)), int(rng.integers(width // 8, width // 3))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        img[y:y + h, x:x + w] = rng.uniform(30, 220, 3)
    return img.astype(np.float32)


def frames(cam: Camera, fps: float):
    """Yield (t, (H, W, 3) uint8) at `fps` for the camera's whole run."""
    width, height = cam.size
    bg = _background(cam)
    rng = np.random.default_rng(cam.seed + 2000)
    for i in range(int(round(cam.seconds * fps))):
        t = i / fps
        img = bg.copy()
        for e in cam.events:
            if e.kind == "walk" and e.t0 <= t < e.t1:
                x = int((t - e.t0) / (e.t1 - e.t0) * (width - e.w))
                img[e.y:e.y + e.h, x:x + e.w] = (200, 60, 40)
            elif e.kind == "door" and e.t0 <= t < e.t1:
                img[e.y:e.y + e.h, e.x:e.x + e.w] = (15, 15, 20)
            elif e.kind == "place" and e.t0 <= t < e.t1:
                img[e.y:e.y + e.h, e.x:e.x + e.w] = (40, 200, 230)
        img *= 1.0 + cam.drift * math.sin(2 * math.pi * t / max(cam.seconds, 1e-9))
        img += rng.normal(0, cam.noise, img.shape).astype(np.float32)
        yield t, np.clip(img, 0, 255).astype(np.uint8)


def write_video(path: str | os.PathLike, cam: Camera, fps: int) -> Path:
    """The camera's frames as an H.264 (or MPEG-4) .mp4 at `fps` (a whole number), constant quantiser."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = cam.size[0], cam.size[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "qp": "18", "threads": "1"}
        else:
            stream.bit_rate = 2_000_000
        for i, (_, img) in enumerate(frames(cam, fps)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
