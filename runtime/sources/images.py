"""A folder of frames (jpg/png/...) as a frame source: natural filename order, frame i at i / frames_fps seconds.

No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.sources._shared import IndexedFrameSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def list_images(folder: Path) -> list[Path]:
    """The frame files of a folder, in natural filename order (frame2 before frame10)."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=_natural_key)


class ImageFolderSource(IndexedFrameSource):
    """A folder of frames (jpg/png/...), natural filename order, frame i at i / frames_fps seconds."""

    def __init__(self, folder: Path, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 frames_fps: float = 1.0, clock_origin: float | None = None):
        super().__init__(fps, start_time, end_time, frames_fps, clock_origin)
        self.folder = Path(folder)
        self.files = list_images(self.folder)
        self.n_frames = len(self.files)
        if not self.files:
            raise UserError(f"{folder} holds no frames ({', '.join(IMAGE_EXTENSIONS)}); give a video file, a folder "
                            f"of frames or a .npy array")

    def _get(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                return np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
        except OSError as e:
            raise UserError(f"{self.files[i]} is not a readable image ({e}); replace or remove it") from None
