"""Video in, model-ready pixels out: decode (PyAV), sample at a fixed rate, group into clips, preprocess (PIL).

Shapes use: T frames, H x W the decoded frame size, h x w the size the vision tower expects.

    VideoFileSource(path, fps)        -> Frame            image (H, W, 3) uint8 RGB, t seconds
    iter_clips(frames, n, fps)        -> Clip             frames (T, H, W, 3) uint8, times (T,) float64
    FramePreprocessor(...)(frames)    -> pixels           (T, 3, h, w) float32

Times are seconds of stream time measured from the stream's first frame, taken from each frame's PTS.
No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np
from PIL import Image
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.frames")

# A frame whose time is within this many seconds below a target still counts as "at" the target, so that
# float round-off in `start_time` (e.g. 16 / 3) cannot drop a frame whose PTS is exactly on the target.
_TIME_EPS = 1e-6
# A file whose last decodable frame is this many seconds (plus two frame intervals) before the end of the video it
# declares is reported as truncated.
_TRUNCATION_SLACK_S = 1.0


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


@dataclass
class Clip:
    """Consecutive sampled frames processed together (one captioning step). The last clip of a stream may be short."""

    index: int  # 0-based clip index in the stream
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, 1 <= T <= frames_per_clip
    times: np.ndarray  # (T,) float64 seconds, each frame's own time
    fps: float  # sampling rate the frames were taken at

    @property
    def t_start(self) -> float:
        """Time of the first frame, seconds."""
        return float(self.times[0])

    @property
    def t_end(self) -> float:
        """Time of the last frame plus one sampling interval, seconds."""
        return float(self.times[-1]) + 1.0 / self.fps

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def clip_start_time(index: int, frames_per_clip: int, fps: float) -> float:
    """Stream time (seconds) of clip `index`'s first sample; pass it as VideoFileSource(start_time=...) to resume."""
    return index * frames_per_clip / fps


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
        )

    for frame in source:
        buffer.append(frame)
        if len(buffer) == frames_per_clip:
            yield make_clip()
            index += 1
            buffer = []
    if buffer:
        yield make_clip()


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


class VideoFileSource:
    """Frames of a video file's first video stream, sampled at `fps`.

    Sample k targets stream time start_time + k / fps (seconds after the stream's first frame); it is the first
    decoded frame whose time is >= the target. A frame that is the first at or after several targets (sampling
    faster than the video's own rate) is yielded once per target, so sample k always belongs to target k and a
    stream resumed at clip_start_time(i, ...) gives the same frames as reading it straight through.
    With start_time > 0 the file is seeked to the keyframe before the target instead of decoded from the start.

    Damaged files: packets are decoded one by one; a packet the decoder rejects is skipped and counted
    (`decode_errors`; `decode_error_times` holds the stream time of the last good frame before each) and decoding
    goes on with the next one, so a file corrupt in the middle yields every frame that can still be decoded. A
    container that cannot be read further (a demuxer error) or a file that ends well before the video it declares
    (truncated, or still being written) raises ValueError *after* the last good frame, so a clip grouper stops
    before its partial last clip (a resumed run on the complete file continues at that clip).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 1.0, start_time: float = 0.0):
        self.path = Path(path)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise UserError(f"fps must be a finite number > 0, got {fps!r}; use e.g. fps=1.0")
        if not (isinstance(start_time, (int, float)) and math.isfinite(start_time) and start_time >= 0):
            raise UserError(f"start_time must be a finite number of seconds >= 0, got {start_time!r}")
        self.fps = float(fps)
        self.start_time = float(start_time)
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

    @property
    def duration(self) -> float | None:
        """Length in seconds from the container/stream metadata, or None when the file does not say."""
        return self._duration

    def __iter__(self) -> Iterator[Frame]:
        with self._open() as container:
            seeked = yield from self._iter_from(container, seek=self.start_time > 0)
        if seeked is False:  # the seek landed after the target: decode from the start instead
            with self._open() as container:
                yield from self._iter_from(container, seek=False)

    def __repr__(self) -> str:
        return f"VideoFileSource({str(self.path)!r}, fps={self.fps}, start_time={self.start_time})"

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
        fallback_dt = _frame_interval(stream)
        origin_pts: int | None = None  # PTS of the stream's first frame (time 0)

        if seek:
            first = next(self._decode(container, stream), None)
            if first is None:
                raise self._unreadable("no frames could be decoded")
            origin_pts = first.pts
            if origin_pts is None or time_base is None:
                return False  # no timestamps to seek by
            seek_seconds = Fraction(self.start_time) - Fraction(_TIME_EPS)
            target_pts = origin_pts + math.floor(seek_seconds / time_base)
            try:
                container.seek(max(target_pts, origin_pts), stream=stream, backward=True, any_frame=False)
            except av.FFmpegError:
                return False

        k = 0  # index of the next target
        target = self.start_time
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
            if seek and n_decoded == 1 and t > target + _TIME_EPS:
                return False  # landed after the target; an earlier frame may have been the right one
            prev_t = self._last_good_t = t
            if t < target - _TIME_EPS:
                continue
            image = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
            while t >= target - _TIME_EPS:
                yield Frame(image=image, t=t)
                k += 1
                target = self.start_time + k / self.fps
        if n_decoded == 0 and not seek:
            raise self._unreadable("no frames could be decoded" + self._errors_note())
        declared = self._declared_end
        if declared is not None and prev_t is not None:
            slack = _TRUNCATION_SLACK_S + 2 * _frame_interval(stream)
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


def _frame_interval(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(1 / rate) if rate else 1 / 30
