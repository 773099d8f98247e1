"""The activity gate: caption a clip only when its scene changed (a cheap measurement on its decoded frames).

A clip is reduced to up to GRID x GRID colour cells per frame (block means of a strided subsample, each of at least
8 x 8 pixels: no model, no PIL). Two such frames are compared after matching the second's brightness and contrast
to the first's, per colour channel (a gain and offset fitted on the cells), so a global lighting change, an
auto-exposure or white-balance step or a slow dusk is not a change; a cell "changed" when a channel differs by more
than `noise` levels (averaging 64 or more pixels shrinks sensor noise 8x and more, well below that). Colour, not
brightness alone: an object as bright as what it covers still changes the hue. A comparison scores the fraction of
cells that changed.

    motion  max over consecutive frames of the clip            (something moved while the clip was recorded)
    scene   max over the clip's frames against the reference   (the scene differs from what was last captioned)
    score   max(motion, scene); the clip is active when score >= threshold

The reference is the last frame of the last captioned clip (kept quantised to uint8, so a resumed stream, which
reads it back from the memory, decides exactly as an uninterrupted one). A clip is captioned when it is active,
when the stream has no reference yet (its first clip), or when its end is `max_idle_s` or more after the last
captioned clip's end (a slow change is never missed forever). Otherwise it is idle: the model does not run, the
FIFO does not change, and the memory records the idle clip against the captioned clip whose scene it still shows
(`Memory.commit_idle`).

numpy only: this module runs on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError

MODES = ("auto", "on", "off")  # --gate: auto = on for live sources, off for files


@dataclass
class GateConfig:
    """How the activity gate decides (docs/architecture.md, "The activity gate")."""

    enabled: bool = False  # False: every clip is captioned (the paper's protocol)
    threshold: float = 0.005  # fraction of the cells (of the image) that must change for a clip to be active
    noise: float = 10.0  # levels (0-255) a cell's channel must change by to count (sensor noise, compression)
    max_idle_s: float = 600.0  # a clip ending this long after the last captioned clip's end is captioned anyway
    grid: int = 64  # cells per side of the measurement (fewer for small frames: `cell_grid`)

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1):
            raise UserError(f"the gate threshold must be a fraction of the image in (0, 1], got {self.threshold!r}: "
                            f"e.g. --gate-threshold 0.005 (half a percent of it changes)")
        if not (isinstance(self.noise, (int, float)) and 0 <= self.noise < 255):
            raise UserError(f"the gate noise floor must be in [0, 255) levels, got {self.noise!r}")
        if not (isinstance(self.max_idle_s, (int, float)) and self.max_idle_s > 0 and math.isfinite(self.max_idle_s)):
            raise UserError(f"the longest idle time must be > 0 seconds, got {self.max_idle_s!r}: e.g. "
                            f"--gate-max-idle 600 (a caption at least every 10 minutes)")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or not 4 <= self.grid <= 256:
            raise UserError(f"the gate grid must be an integer in 4..256, got {self.grid!r}")
        self.threshold, self.noise, self.max_idle_s = float(self.threshold), float(self.noise), float(self.max_idle_s)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one clip."""

    caption: bool  # run the model on it
    reason: str  # off | first | active | max_idle | idle
    score: float  # max(motion, scene): the fraction of cells that changed (0 when not measured)
    motion: float = 0.0  # within the clip
    scene: float = 0.0  # against the reference


@dataclass(frozen=True)
class SceneRef:
    """The reference of a stream's gate: the last frame of its last captioned clip, as colour cells."""

    index: int  # the captioned clip
    t_end: float  # its stream-time end (seconds)
    cells: np.ndarray  # (rows, cols, 3) uint8 (`cell_grid` of the stream's frame size)


CELL_SAMPLES = 8  # a cell averages at least about CELL_SAMPLES x CELL_SAMPLES pixel samples (noise / 8)


def cell_grid(height: int, width: int, grid: int) -> tuple[int, int]:
    """(rows, cols) of cells for frames of height x width: `grid` per side, fewer for frames too small to give
    each cell CELL_SAMPLES x CELL_SAMPLES pixels."""
    return max(1, min(grid, height // CELL_SAMPLES)), max(1, min(grid, width // CELL_SAMPLES))


def colour_cells(frames: np.ndarray, grid: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, rows, cols, 3) float32 block means (`cell_grid`). The frames are subsampled with
    a stride first (about CELL_SAMPLES samples per cell per side), so the cost stops growing with the resolution
    there (docs/architecture.md gives the measured cost)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise UserError(f"the gate measures uint8 RGB frames of shape (T, H, W, 3), got {frames.dtype} "
                        f"{frames.shape}")
    _, h, w, _ = frames.shape
    gh, gw = cell_grid(h, w, grid)
    sy, sx = max(1, h // (gh * CELL_SAMPLES)), max(1, w // (gw * CELL_SAMPLES))
    small = frames[:, ::sy, ::sx]  # (T, h', w', 3) uint8, a view
    rows = np.linspace(0, small.shape[1], gh + 1).astype(int)[:-1]  # block starts; blocks differ by <= 1 sample
    cols = np.linspace(0, small.shape[2], gw + 1).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(small, rows, axis=1, dtype=np.uint32), cols, axis=2, dtype=np.uint32)
    counts = np.outer(np.diff(np.append(rows, small.shape[1])), np.diff(np.append(cols, small.shape[2])))
    return (sums / counts[None, :, :, None]).astype(np.float32)  # (T, gh, gw, 3)


def _affine(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and channel of (B, n, C) `a` and `b`, cell weights `w` (B, n, 1) of 0/1: (gain, offset), (B, 1, C)
    each, of the weighted least-squares fit b ~ gain * a + offset; the gain clamped to [0.5, 2] (an exposure change,
    not a different picture), 1 where `a` is flat (offset only)."""
    n = np.maximum(w.sum(axis=1, keepdims=True), 1.0)
    ma, mb = (w * a).sum(axis=1, keepdims=True) / n, (w * b).sum(axis=1, keepdims=True) / n
    va = (w * (a - ma) ** 2).sum(axis=1, keepdims=True) / n
    cov = (w * (a - ma) * (b - mb)).sum(axis=1, keepdims=True) / n
    gain = np.where(va > 4.0, cov / np.maximum(va, 1e-6), 1.0).clip(0.5, 2.0)
    return gain, mb - gain * ma


def changed_fractions(a: np.ndarray, b: np.ndarray, noise: float) -> np.ndarray:
    """For each pair of frames of cells a[i], b[i] ((B, rows, cols, C) arrays, or (rows, cols, C) broadcast against
    them): the fraction of cells of b[i] with a channel that differs from a[i]'s by more than `noise` levels once
    b[i]'s brightness and contrast are matched to a[i]'s, per channel. The match is a gain and offset fitted twice:
    on all cells, then on the 80 % that fit best, so an object that entered (a minority of cells) does not bend
    it. -> (B,)"""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))
    shape = a.shape
    a, b = a.reshape(-1, shape[-3] * shape[-2], shape[-1]), b.reshape(-1, shape[-3] * shape[-2], shape[-1])
    w = np.ones(a.shape[:2] + (1,), np.float32)  # (B, n, 1)
    gain, offset = _affine(a, b, w)
    resid = np.abs(b - gain * a - offset).max(axis=2, keepdims=True)  # (B, n, 1): the worst channel
    w = (resid <= np.percentile(resid, 80, axis=1, keepdims=True)).astype(np.float32)
    gain, offset = _affine(a, b, w)
    diff = np.abs((b - offset) / gain - a).max(axis=2)  # (B, n) in a's levels, the worst channel
    return np.mean(diff > noise, axis=1)


def changed_fraction(a: np.ndarray, b: np.ndarray, noise: float) -> float:
    """`changed_fractions` of one pair of frames of cells: (rows, cols, C), or (rows, cols) for one channel."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    return float(changed_fractions(a[None], b[None], noise)[0])


class ActivityGate:
    """One stream's gate: `decide(frames, t_end)` for each clip in order; when a clip is captioned, its
    `reference(...)` becomes `ref`. State: the reference alone (saved with each captioned clip)."""

    def __init__(self, config: GateConfig, ref: SceneRef | None = None):
        self.config = config
        self.ref = ref
        self.last_cells: np.ndarray | None = None  # (rows, cols, 3) uint8: the last frame of the clip just decided

    def decide(self, frames: np.ndarray, t_end: float) -> GateDecision:
        c = self.config
        if not c.enabled:
            self.last_cells = None
            return GateDecision(True, "off", 0.0)
        cells = np.clip(np.round(colour_cells(frames, c.grid)), 0, 255)  # (T, rows, cols, 3), quantised like the ref
        self.last_cells = cells[-1].astype(np.uint8)
        motion = float(changed_fractions(cells[:-1], cells[1:], c.noise).max()) if len(cells) > 1 else 0.0
        if self.ref is None or self.ref.cells.shape != cells.shape[1:]:  # first clip, or the frame size changed
            return GateDecision(True, "first", 1.0, motion, 1.0)
        ref = self.ref.cells.astype(np.float32)
        scene = float(changed_fractions(ref, cells, c.noise).max())
        score = max(motion, scene)
        if score >= c.threshold:
            return GateDecision(True, "active", score, motion, scene)
        if t_end - self.ref.t_end >= c.max_idle_s:
            return GateDecision(True, "max_idle", score, motion, scene)
        return GateDecision(False, "idle", score, motion, scene)

    def reference(self, index: int, t_end: float) -> SceneRef | None:
        """The reference the clip just decided becomes once it is captioned (the caller stores it with the clip, then
        sets `self.ref` to it): its last frame's cells."""
        return None if self.last_cells is None else SceneRef(int(index), float(t_end), self.last_cells)

