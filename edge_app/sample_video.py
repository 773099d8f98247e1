"""A small synthetic video for demos and tests: coloured shapes that move, and a scene that changes halfway.

Contents over time (all positions depend on `seed`):
  - a slowly drifting background gradient with a faint fixed texture,
  - a red square moving right (wrapping around),
  - a blue circle bouncing off the walls,
  - a green bar that appears in the second half and grows,
  - a white progress bar along the bottom edge (its length = time elapsed).

Drawn with numpy, encoded with PyAV (H.264 via libx264 when the PyAV build has it, else MPEG-4 Part 2), yuv420p.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from rlivs.runtime.errors import UserError


def make_sample_video(
    path: str | os.PathLike,
    seconds: float = 40.0,
    fps: int = 8,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> Path:
    """Write the sample video to `path` (an .mp4) and return it. `size` is (width, height), both even."""
    path = Path(path)
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise UserError(f"size must be (width, height), both even and >= 16 (yuv420p), got {size}; e.g. (320, 240)")
    if not (isinstance(fps, int) and fps >= 1):
        raise UserError(f"fps must be a whole number >= 1, got {fps!r}; e.g. fps=8")
    n_frames = int(round(seconds * fps))
    if n_frames < 1:
        raise UserError(f"seconds={seconds} at fps={fps} gives no frames; use seconds >= 1 / fps")
    path.parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    texture = rng.integers(-6, 7, size=(height, width, 1)).astype(np.float32)  # (H, W, 1) fixed grain
    hue_phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)  # (3,) background colour phases
    sq = max(8, height // 6)  # red square side
    sq_y = int(rng.integers(0, height - sq - height // 8))  # its row
    sq_x0 = float(rng.uniform(0, width))  # its starting column
    sq_speed = width / 8.0  # pixels per second: crosses the frame in 8 s
    radius = max(5, height // 10)  # blue circle radius
    pos = rng.uniform([radius, radius], [width - radius, height - radius])  # (2,) x, y
    angle = rng.uniform(0, 2 * np.pi)
    vel = np.array([np.cos(angle), np.sin(angle)]) * (width / 5.0)  # (2,) pixels per second
    bar_x = int(rng.integers(width // 8, width // 2))  # green bar's left edge

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = 2 * fps  # a keyframe every 2 s, so seeking has something to do
        stream.codec_context.thread_count = 1  # one encoder thread: the same bytes on every run
        if codec == "libx264":
            # Constant quantiser, not CRF: CRF's macroblock-tree rate control (with B-frames) gave different
            # bitstreams for the same input within one process in this PyAV build; a fixed qp is reproducible.
            stream.options = {"preset": "veryfast", "qp": "20", "threads": "1"}
        else:
            stream.bit_rate = 1_500_000

        for i in range(n_frames):
            t = i / fps
            img = _draw(i, t, n_frames, fps, xx, yy, texture, hue_phase, sq, sq_y, sq_x0, sq_speed, radius,
                        pos, vel, bar_x, seconds)  # (H, W, 3) uint8
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder
    return path


def _draw(i, t, n_frames, fps, xx, yy, texture, hue_phase, sq, sq_y, sq_x0, sq_speed, radius, pos, vel, bar_x,
          seconds) -> np.ndarray:
    height, width = xx.shape
    # Background: a gradient whose colours drift with time.  (H, W, 3) float32
    base = 0.5 + 0.5 * np.sin(hue_phase + 0.15 * t)  # (3,)
    ramp = (xx / width)[..., None]  # (H, W, 1)
    img = 40.0 + 120.0 * base * (0.6 + 0.4 * ramp) + texture

    # Red square moving right, wrapping around.
    x0 = int(sq_x0 + sq_speed * t) % width
    cols = (np.arange(sq) + x0) % width
    img[sq_y : sq_y + sq, cols] = (230.0, 30.0, 30.0)

    # Blue circle bouncing off the walls (closed form: reflect the free path into the box).
    lo = np.array([radius, radius], dtype=np.float64)
    span = np.array([width, height], dtype=np.float64) - 2 * radius
    p = np.abs(((pos - lo + vel * t) % (2 * span)))
    p = np.where(p > span, 2 * span - p, p) + lo  # (2,) x, y
    circle = (xx - p[0]) ** 2 + (yy - p[1]) ** 2 <= radius**2  # (H, W) bool
    img[circle] = (30.0, 60.0, 230.0)

    # Green bar: appears in the second half and grows.
    if t >= seconds / 2:
        frac = min(1.0, (t - seconds / 2) / max(seconds / 2, 1e-9))
        bar_h = max(4, int(height * (0.2 + 0.6 * frac)))
        img[height - bar_h - height // 16 : height - height // 16, bar_x : bar_x + max(6, width // 12)] = (40.0, 210.0, 60.0)

    # Progress bar along the bottom edge.
    img[height - 4 :, : int(width * (i + 1) / n_frames)] = 255.0
    return np.clip(img, 0, 255).astype(np.uint8)
