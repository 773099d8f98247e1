"""A .npy (N, H, W, 3) uint8 frame array as a frame source (memory-mapped), frame i at i / frames_fps seconds.

No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.sources._shared import IndexedFrameSource


class NpyFrameSource(IndexedFrameSource):
    """A .npy (N, H, W, 3) uint8 frame array (memory-mapped), frame i at i / frames_fps seconds."""

    def __init__(self, path: Path, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 frames_fps: float = 1.0, clock_origin: float | None = None):
        super().__init__(fps, start_time, end_time, frames_fps, clock_origin)
        self.path = Path(path)
        try:
            self.array = np.load(self.path, mmap_mode="r")  # (N, H, W, 3) uint8
        except (ValueError, OSError) as e:
            raise UserError(f"{path} is not a readable .npy array ({e}); save frames with np.save") from None
        a = self.array
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or len(a) == 0:
            raise UserError(f"{path} holds an array of shape {a.shape} dtype {a.dtype}; expected (N, H, W, 3) uint8 "
                            f"RGB frames with N >= 1")
        self.n_frames = len(a)

    def _get(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[i])  # (H, W, 3) uint8
