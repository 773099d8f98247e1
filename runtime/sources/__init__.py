"""Frame sources: where sampled frames come from.

    open_source(path, fps, start_time, end_time) -> FrameSource   a video file, a folder of frames, a .npy array, or
                                                                   a robot recording (ROS bag, MCAP) and its topic
    open_spec(SourceSpec, fps, clock_origin=, live=) -> FrameSource  what `--source` names, its clock decided once:
                                                                   a file, a recording, a camera or a stream
    iterating a FrameSource                        -> Frame         image (H, W, 3) uint8 RGB, t seconds
    LiveSource(SourceSpec or url, SourceConfig)    -> Frame         a camera, a network stream, a file replayed live

Modules: `file` (VideoFileSource, PyAV), `images` (ImageFolderSource), `npy` (NpyFrameSource), `bag` (BagSource: ROS 1
and ROS 2 bags and MCAP files, one image topic, header-stamp times, `clock_origin`; `list_image_topics`), `live` (LiveSource
and its settings, buffer and statistics), `spec` (SourceSpec: what a source is, from its URL). Every source samples
by one rule: sample k is the first frame at or after start_time + k / fps. Frames carry a wall-clock time (`wall`,
UTC unix seconds) when the source has a clock: a live connection's arrival clock, a file's creation-time tag or the
`clock_origin` the caller gives when opening it (`--start-time`; never set on a source afterwards). A stream resumes at
`resume_time(next_index, frames_per_clip, fps)`, the time of its next clip's first sample.

No torch and no transformers here: this package runs on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

from rlivs.runtime.errors import UserError
from rlivs.runtime.frames import Frame
from rlivs.runtime.sources.bag import BagSource, is_recording, name_note
from rlivs.runtime.sources.images import ImageFolderSource
from rlivs.runtime.sources.npy import NpyFrameSource


class FrameSource(Protocol):
    """Frames of one input sampled at `fps` from `start_time`; iterate it for `Frame`s in time order."""

    fps: float  # samples per second of stream time
    start_time: float  # stream time (s) of the first sample target
    decode_errors: int  # parts of the input that could not be decoded in the current (last) pass, their frames skipped
    clock_origin: float | None  # UTC unix seconds of stream time 0 (None: no clock; frames' `wall` follow from it)
    clock_kind: str | None  # where the clock comes from, in words ("container creation time", "--start-time", ...)

    @property
    def duration(self) -> float | None:
        """Length of the input in seconds, or None when it does not say."""

    def __iter__(self) -> Iterator[Frame]: ...

    def starting_at(self, start_time: float) -> FrameSource:
        """The same input read from `start_time`, without opening or probing it again."""


def resume_time(next_index: int, frames_per_clip: int, fps: float) -> float:
    """Stream time (seconds) of clip `next_index`'s first sample: a stream resumed at clip `next_index` starts its
    source there (`open_source(..., start_time=...)` or `source.starting_at(...)`)."""
    return next_index * frames_per_clip / fps


def open_source(path: str | Path, fps: float, start_time: float = 0.0, end_time: float | None = None,
                frames_fps: float = 1.0, topic: str | None = None, clock_origin: float | None = None) -> FrameSource:
    """The frame source of `path`, chosen by what it is (a file by its first bytes, not its name: `bag.name_note`
    says when they disagree): a robot recording (a ROS 1 bag, an MCAP file, a ROS 2 .db3 or a rosbag2 folder: the
    image topic `topic`, which may be left out when there is only one), a folder of frames, a .npy (N, H, W, 3)
    uint8 array (both with frame i at i / frames_fps s), else a video file. It yields `Frame`s with t < end_time
    (None: to the end)."""
    path = Path(path)
    if is_recording(path):
        return BagSource(path, topic, fps, start_time, end_time, clock_origin=clock_origin)
    note = name_note(path)  # named like a recording, but is not one
    if topic is not None:
        raise UserError(f"--topic {topic} given, but {path} is not a robot recording (a ROS 1 bag, an MCAP file, a "
                        f"ROS 2 .db3 or a rosbag2 folder{'; ' + note if note else ''}); leave --topic out for a video "
                        f"file")
    if path.is_dir():
        return ImageFolderSource(path, fps, start_time, end_time, frames_fps, clock_origin)
    if path.suffix.lower() == ".npy":
        return NpyFrameSource(path, fps, start_time, end_time, frames_fps, clock_origin)
    from rlivs.runtime.sources.file import VideoFileSource  # PyAV, imported only for a video file

    try:
        return VideoFileSource(path, fps=fps, start_time=start_time, end_time=end_time, clock_origin=clock_origin)
    except UserError as e:
        if note is None:
            raise
        raise UserError(f"{e} ({note}; it is neither a recording nor a video)") from None


def open_spec(spec, fps: float, *, clock_origin: float | None = None, live: bool | None = None,
              live_config=None, stop=None, start_time: float = 0.0) -> FrameSource:
    """The frames of one source as named on the command line (`SourceSpec`), its clock decided here, once: stream
    time 0 is at `clock_origin` (UTC unix seconds: `--start-time`) when given, else the source's own clock (a video's
    creation-time tag, a recording's header stamps, a live source's arrival time). `live` (default `spec.live`):
    paced as a camera: a device or network stream, or a file replayed in real time (`live_config`, a
    `live.SourceConfig`: its replay speed, reconnects, ...), its stream time starting at `start_time` (a resumed
    stream continues its timeline); otherwise read as fast as it decodes from stream time `start_time`. A robot
    recording (by its first bytes) gives the frames of `spec.topic` (None: its one image topic). `stop` (a
    threading.Event) ends a paced recording at once. Refusals (not a video, unreadable) come from here, before any
    model loads."""
    live = spec.live if live is None else live
    if spec.kind == "file":
        path = Path(spec.url.removeprefix("file://"))
        if spec.topic is not None or is_recording(path):
            speed = getattr(live_config, "replay_speed", 1.0) if live else None
            return BagSource(path, spec.topic, fps, start_time, replay_speed=speed, stop=stop,
                             clock_origin=clock_origin)
    if live:
        from dataclasses import replace

        from rlivs.runtime.sources.live import LiveSource, SourceConfig

        return LiveSource(spec, replace(live_config or SourceConfig(), fps=fps, start_time=start_time),
                          clock_origin=clock_origin)
    from rlivs.runtime.sources.file import VideoFileSource  # PyAV, imported only for a video file

    try:
        return VideoFileSource(path, fps=fps, start_time=start_time, clock_origin=clock_origin)
    except UserError as e:
        note = name_note(path)  # named like a recording, but is not one
        if note is None:
            raise
        raise UserError(f"{e} ({note}; it is neither a recording nor a video)") from None


def __getattr__(name: str):
    """`VideoFileSource` on first use: this package (and `runtime.ingest`) imports without PyAV, e.g. on a device
    image that only ingests synthetic or recorded frames."""
    if name == "VideoFileSource":
        from rlivs.runtime.sources.file import VideoFileSource

        return VideoFileSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
