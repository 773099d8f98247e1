"""Frames in, model-ready pixels out: sampled frames, clips of them, preprocessing (PIL).

Shapes use: T frames, H x W the decoded frame size, h x w the size the vision tower expects.

    a frame source (rlivs.runtime.sources) -> Frame   image (H, W, 3) uint8 RGB, t seconds
    iter_clips(frames, n, fps)        -> Clip             frames (T, H, W, 3) uint8, times (T,) float64
    FramePreprocessor(...)(frames)    -> pixels           (T, 3, h, w) float32

Times are seconds of stream time measured from the stream's first frame, taken from each frame's PTS.
No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from rlivs.runtime.errors import UserError


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FramePreprocessor:
    """uint8 RGB frames -> normalised float32 pixels, as the HF PIL image processor makes its base (whole-image) patch.

    Steps, in order: PIL resize of the uint8 frame to (height, width), multiply by rescale_factor (computed in
    float64, stored as float32), then (x - mean) / std in float32, channels first.
    """

    height: int  # h: output rows (the vision tower's input height)
    width: int  # w: output columns (the vision tower's input width)
    image_mean: tuple[float, float, float]  # per-channel mean (R, G, B), in rescaled units
    image_std: tuple[float, float, float]  # per-channel std (R, G, B), in rescaled units
    rescale_factor: float = 1 / 255  # uint8 -> [0, 1]
    resample: int = 3  # PIL resampling filter code (3 = BICUBIC, 2 = BILINEAR, 0 = NEAREST)
    do_resize: bool = True  # resize to (height, width); if False, frames must already be height x width
    do_rescale: bool = True  # multiply by rescale_factor
    do_normalize: bool = True  # subtract image_mean, divide by image_std

    def __post_init__(self):
        if int(self.height) < 1 or int(self.width) < 1:
            raise UserError(f"height and width must be >= 1, got {self.height}x{self.width}")
        self.height, self.width = int(self.height), int(self.width)
        self.image_mean = _three_floats(self.image_mean, "image_mean")
        self.image_std = _three_floats(self.image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise UserError(f"image_std must be non-zero in every channel, got {self.image_std}")
        try:
            Image.Resampling(int(self.resample))
        except ValueError:
            raise UserError(
                f"resample={self.resample!r} is not a PIL resampling code; use 3 (BICUBIC), 2 (BILINEAR) or 0 (NEAREST)"
            ) from None
        self.resample = int(self.resample)

    @classmethod
    def from_dict(cls, cfg: dict) -> FramePreprocessor:
        """Build from a Hugging Face `preprocessor_config.json` dict.

        `size` may be {"height": h, "width": w} or {"shortest_edge": n} (read as n x n, as the LLaVA-OneVision
        processor does for its base patch). Missing flags default to True, a missing rescale_factor to 1/255 and a
        missing resample to 3 (BICUBIC); size, image_mean and image_std are required.
        """
        if not isinstance(cfg, dict):
            raise UserError(f"expected a preprocessor config dict, got {type(cfg).__name__}")
        size = cfg.get("size")
        if isinstance(size, dict) and "height" in size and "width" in size:
            height, width = int(size["height"]), int(size["width"])
        elif isinstance(size, dict) and "shortest_edge" in size:
            height = width = int(size["shortest_edge"])
        elif isinstance(size, int):
            height = width = int(size)
        else:
            raise UserError(
                f"preprocessor config has size={size!r}; expected {{'height': h, 'width': w}} or "
                f"{{'shortest_edge': n}} (for LLaVA-OneVision 0.5B: {{'height': 384, 'width': 384}})"
            )
        for key in ("image_mean", "image_std"):
            if cfg.get(key) is None:
                raise UserError(f"preprocessor config has no {key!r}; add it (LLaVA-OneVision uses [0.5, 0.5, 0.5])")
        return cls(
            height=height,
            width=width,
            image_mean=tuple(cfg["image_mean"]),
            image_std=tuple(cfg["image_std"]),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            resample=int(cfg.get("resample", 3)),
            do_resize=bool(cfg.get("do_resize", True)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            do_normalize=bool(cfg.get("do_normalize", True)),
        )

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike) -> FramePreprocessor:
        """Read `path/preprocessor_config.json` (a downloaded model snapshot)."""
        cfg_path = Path(path) / "preprocessor_config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(
                f"{cfg_path} not found; pass the model snapshot directory that holds preprocessor_config.json "
                f"(e.g. the Hugging Face cache folder of llava-hf/llava-onevision-qwen2-0.5b-ov-hf)"
            )
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_path} is not valid JSON ({e}); re-download the model snapshot") from None
        model_cfg = Path(path) / "config.json"
        if model_cfg.is_file():  # a backbone that fixes its own frame size (Qwen-VL: no fixed size in its processor)
            from .backbones import backbone_for_config

            config = json.loads(model_cfg.read_text())
            if config.get("model_type") not in (None, "llava_onevision"):
                h, w = backbone_for_config(config).frame_size(config, cfg)
                cfg = {**cfg, "size": {"height": h, "width": w}}
        return cls.from_dict(cfg)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) or (H, W, 3) uint8 RGB -> (T, 3, height, width) float32."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]  # (1, H, W, 3)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UserError(
                f"expected uint8 RGB frames of shape (T, H, W, 3) or (H, W, 3), got dtype {frames.dtype} shape "
                f"{frames.shape}; decode with VideoFileSource or convert with np.asarray(img.convert('RGB'))"
            )
        if frames.shape[1] < 1 or frames.shape[2] < 1:
            raise UserError(f"frames have an empty spatial size {frames.shape[1:3]}; expected (T, H, W, 3), H, W >= 1")
        if not self.do_resize and frames.shape[1:3] != (self.height, self.width):
            raise UserError(
                f"do_resize is False but frames are {frames.shape[1]}x{frames.shape[2]}, not "
                f"{self.height}x{self.width}; resize them first or set do_resize=True"
            )

        out = np.empty((frames.shape[0], 3, self.height, self.width), dtype=np.float32)  # (T, 3, h, w)
        mean = np.asarray(self.image_mean, dtype=np.float32)  # (3,)
        std = np.asarray(self.image_std, dtype=np.float32)  # (3,)
        for i, frame in enumerate(frames):  # frame: (H, W, 3) uint8
            if self.do_resize:
                img = Image.fromarray(np.ascontiguousarray(frame))  # uint8 (H, W, 3) -> mode "RGB"
                frame = np.asarray(img.resize((self.width, self.height), resample=self.resample))  # (h, w, 3) uint8
            if self.do_rescale:
                x = (frame.astype(np.float64) * self.rescale_factor).astype(np.float32)  # (h, w, 3) float32
            else:
                x = frame.astype(np.float32)  # (h, w, 3) float32
            if self.do_normalize:
                x = (x - mean) / std  # (h, w, 3) float32
            out[i] = x.transpose(2, 0, 1)  # (3, h, w)
        return out


def _three_floats(values, name: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = (values,) * 3
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise UserError(f"{name} must have 3 values (R, G, B), got {values}")
    return values


# ---------------------------------------------------------------------------------------------------------------------
# Frames and clips
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One sampled frame."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    t: float  # seconds from stream start (from PTS; the stream's first frame is 0)
    wall: float | None = None  # UTC unix seconds when it was recorded, when the source has a clock


@dataclass
class Clip:
    """Consecutive sampled frames processed together (one captioning step). The last clip of a stream may be short."""

    index: int  # 0-based clip index in the stream
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, 1 <= T <= frames_per_clip
    times: np.ndarray  # (T,) float64 seconds, each frame's own time
    fps: float  # sampling rate the frames were taken at
    walls: np.ndarray | None = None  # (T,) float64 UTC unix seconds of each frame (None: the source has no clock)

    @property
    def t_start(self) -> float:
        """Time of the first frame, seconds."""
        return float(self.times[0])

    @property
    def t_end(self) -> float:
        """Time of the last frame plus one sampling interval, seconds."""
        return float(self.times[-1]) + 1.0 / self.fps

    @property
    def wall_start(self) -> float | None:
        """Wall-clock time of the first frame (UTC unix seconds), or None."""
        return None if self.walls is None else float(self.walls[0])

    @property
    def wall_end(self) -> float | None:
        """Wall-clock time of the last frame plus one sampling interval, or None."""
        return None if self.walls is None else float(self.walls[-1]) + 1.0 / self.fps

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def iter_clips(source: Iterable[Frame], frames_per_clip: int, fps: float, first_index: int = 0) -> Iterator[Clip]:
    """Group frames into clips of `frames_per_clip`; a final partial clip (>= 1 frame) is yielded as is, unpadded."""
    if frames_per_clip < 1:
        raise UserError(f"frames_per_clip must be >= 1, got {frames_per_clip}; use e.g. --frames-per-clip 16")
    if not fps > 0:
        raise UserError(f"fps must be > 0, got {fps}; use e.g. --fps 1")
    index = first_index
    buffer: list[Frame] = []

    def make_clip() -> Clip:
        return Clip(
            index=index,
            frames=np.stack([f.image for f in buffer]),  # (T, H, W, 3) uint8
            times=np.array([f.t for f in buffer], dtype=np.float64),  # (T,)
            fps=fps,
            walls=(np.array([f.wall for f in buffer], dtype=np.float64)  # (T,)
                   if all(f.wall is not None for f in buffer) else None),
        )

    for frame in source:
        buffer.append(frame)
        if len(buffer) == frames_per_clip:
            yield make_clip()
            index += 1
            buffer = []
    if buffer:
        yield make_clip()
