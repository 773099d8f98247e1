"""Robot recordings as frame sources: ROS 1 bags, ROS 2 bags (sqlite3 and MCAP storage) and plain MCAP files.

    is_recording(path)                         -> bool                 .bag, .db3, .mcap or a rosbag2 folder
    list_image_topics(path)                    -> [ImageTopic]         topic, message type, count, rate
    BagSource(path, topic, fps)                -> iterator of Frame    image (H, W, 3) uint8 RGB, t seconds

Readers: ROS 1 bags, `.db3` files and rosbag2 folders through rosbags (pure Python); `.mcap` files through the `mcap`
library, whose streaming reader still reads a file cut off mid-write. Messages: `sensor_msgs/Image` (rgb8, bgr8,
rgba8, bgra8, mono8, mono16, yuv422 = UYVY, yuv422_yuy2 = YUYV), `sensor_msgs/CompressedImage` (JPEG, PNG, anything
PIL decodes), and in plain MCAP also `foxglove.RawImage` / `foxglove.CompressedImage` (protobuf or JSON encoded). ROS
messages in an MCAP file are decoded with the type definitions the file carries (rosbags' typesys).

Time: a frame's time is its message's header stamp (the message's log time when the stamp is unset, zero).
`clock_origin` is the UTC unix time (s) of the topic's first message, stream time 0: t = stamp - clock_origin, so
clips carry the robot's clock. Sampling follows the package's rule: sample k is the first message at or after
start_time + k / fps, messages read in recording order.

Damaged input: a message that cannot be decoded (an unknown encoding, a corrupt JPEG, a short buffer) is skipped and
counted in `decode_errors`; the others are read. A topic whose messages are all undecodable, a topic without images
and a recording that cannot be opened are refused with a `UserError` naming the topic and what was found. An MCAP
file that ends mid-record (truncated) yields every message before the cut, then raises a `UserError`.

No torch and no transformers here: this module runs on the device. rosbags and mcap are imported when a recording
is opened (the `robotics` extra).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.frames import Frame
from rlivs.runtime.sources._shared import TIME_EPS, check_fps, check_start_time, with_start_time

log = logging.getLogger("rlivs.sources.bag")

RECORDING_SUFFIXES = (".bag", ".db3", ".mcap")
# image message types -> compressed?
IMAGE_TYPES = {
    "sensor_msgs/msg/Image": False, "sensor_msgs/msg/CompressedImage": True,
    "sensor_msgs/Image": False, "sensor_msgs/CompressedImage": True,
    "foxglove.RawImage": False, "foxglove.CompressedImage": True,
}
RAW_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8uc1", "mono16", "16uc1", "yuv422", "uyvy",
                 "yuv422_yuy2", "yuyv")
# How far before a resume target (in log time) reading starts: header stamps and log times may differ by this much.
_SEEK_MARGIN_NS = 10 * 10**9
_INSTALL = "install the robotics extra: pip install 'rlivs[robotics]'"


def is_recording(path: str | Path) -> bool:
    """A ROS 1 bag, a ROS 2 .db3, an .mcap file, or a rosbag2 folder (one with metadata.yaml)."""
    p = Path(str(path).removeprefix("file://"))
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.suffix.lower() in RECORDING_SUFFIXES


@dataclass(frozen=True)
class ImageTopic:
    """One image topic of a recording."""

    topic: str
    msgtype: str  # e.g. sensor_msgs/msg/CompressedImage
    count: int  # messages on the topic
    rate_hz: float | None  # messages per second over the topic's own span (None: fewer than 2 messages)

    def describe(self) -> str:
        rate = f", {self.rate_hz:.1f} Hz" if self.rate_hz else ""
        return f"{self.topic} ({self.msgtype}, {self.count} messages{rate})"


@dataclass
class _ImageMsg:
    """An image message, whatever its schema, in one shape."""

    stamp_ns: int  # header stamp (log time when unset), ns since the unix epoch
    compressed: bool
    encoding: str  # raw: pixel encoding (rgb8 ...); compressed: the format string (jpeg, "bgr8; jpeg compressed bgr8")
    width: int = 0
    height: int = 0
    step: int = 0  # bytes per row (raw)
    bigendian: bool = False
    data: bytes | np.ndarray = b""


# ---------------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------------


def _rows(m: _ImageMsg, bytes_per_pixel: int) -> np.ndarray:
    """The message's pixel bytes as (H, W * bytes_per_pixel) uint8, row padding (step) removed."""
    buf = np.frombuffer(m.data, np.uint8) if isinstance(m.data, (bytes, bytearray)) else np.asarray(m.data, np.uint8)
    step = m.step or m.width * bytes_per_pixel
    need = m.width * bytes_per_pixel
    if m.width < 1 or m.height < 1 or step < need or buf.size < step * (m.height - 1) + need:
        raise ValueError(f"{m.width}x{m.height} {m.encoding} with step {step} needs {step * m.height} bytes, "
                         f"the message has {buf.size}")
    buf = buf[: step * m.height] if buf.size >= step * m.height else np.pad(buf, (0, step * m.height - buf.size))
    return buf.reshape(m.height, step)[:, :need]


def decode_image(m: _ImageMsg) -> np.ndarray:
    """An image message -> (H, W, 3) uint8 RGB. Raises ValueError when it cannot be decoded."""
    if m.compressed:
        fmt = m.encoding.lower()
        if "compresseddepth" in fmt:
            raise ValueError(f"format {m.encoding!r} is a depth image, not a camera image")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(m.data))) as img:
                return np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"format {m.encoding!r}: {e}") from None
    enc = m.encoding.lower()
    if enc in ("rgb8", "bgr8"):
        img = _rows(m, 3).reshape(m.height, m.width, 3)
        return np.ascontiguousarray(img if enc == "rgb8" else img[..., ::-1])
    if enc in ("rgba8", "bgra8"):
        img = _rows(m, 4).reshape(m.height, m.width, 4)[..., :3]
        return np.ascontiguousarray(img if enc == "rgba8" else img[..., ::-1])
    if enc in ("mono8", "8uc1"):
        return np.repeat(_rows(m, 1)[..., None], 3, axis=2)
    if enc in ("mono16", "16uc1"):
        px = _rows(m, 2).copy().view(">u2" if m.bigendian else "<u2")  # (H, W)
        return np.repeat((px >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if enc in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        import av

        if m.width % 2:
            raise ValueError(f"{m.encoding} needs an even width, got {m.width}")
        px = _rows(m, 2).reshape(m.height, m.width, 2)
        if enc in ("yuv422", "uyvy"):  # ROS's yuv422 is UYVY: swap each byte pair into YUYV
            px = px[..., ::-1]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(px), format="yuyv422")
        return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    raise ValueError(f"encoding {m.encoding!r} is not supported (supported: {', '.join(RAW_ENCODINGS)})")


def _ns(sec, nsec) -> int:
    return int(sec) * 10**9 + int(nsec)


def _image_msg(obj, compressed: bool, log_ns: int) -> _ImageMsg:
    """A deserialized message (rosbags object, foxglove protobuf message or JSON dict) -> _ImageMsg."""
    if isinstance(obj, dict):  # foxglove JSON: timestamp {sec, nsec}, data base64
        ts = obj.get("timestamp") or {}
        stamp = _ns(ts.get("sec", 0), ts.get("nsec", 0))
        data = base64.b64decode(obj.get("data", ""))
        get = obj.get
    else:
        if hasattr(obj, "header"):  # sensor_msgs: header.stamp (sec, nanosec)
            st = obj.header.stamp
            stamp = _ns(st.sec, st.nanosec)
        else:  # foxglove protobuf: timestamp (seconds, nanos)
            stamp = _ns(obj.timestamp.seconds, obj.timestamp.nanos)
        data = obj.data
        get = lambda k, d=None: getattr(obj, k, d)  # noqa: E731
    if compressed:
        return _ImageMsg(stamp or log_ns, True, str(get("format", "")), data=data)
    return _ImageMsg(stamp or log_ns, False, str(get("encoding", "")), int(get("width", 0)), int(get("height", 0)),
                     int(get("step", 0)), bool(get("is_bigendian", False)), data)


# ---------------------------------------------------------------------------------------------------------------------
# Readers: one interface over rosbags (.bag, .db3, rosbag2 folders) and mcap (.mcap)
# ---------------------------------------------------------------------------------------------------------------------


class _Truncated(Exception):
    """The recording ends mid-record; what came before was read."""


class _RosbagsRecording:
    """A ROS 1 bag, a ROS 2 .db3 or a rosbag2 folder, read with rosbags' AnyReader."""

    def __init__(self, path: Path):
        try:
            from rosbags.highlevel import AnyReader, AnyReaderError
            from rosbags.typesys import Stores, get_typestore
        except ImportError:
            raise UserError(f"reading {path} needs rosbags: {_INSTALL}") from None
        self._errors = (AnyReaderError,)
        try:
            self.reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self.reader.open()
        except (AnyReaderError, OSError) as e:
            hint = ("rebuild its index with `rosbag reindex` (ROS 1)" if path.suffix == ".bag" else
                    "check that the recording finished; a rosbag2 .db3 cut off mid-write may be recovered with "
                    "`sqlite3 FILE .recover`")
            raise UserError(f"{path} cannot be read as a ROS bag ({e}): it is damaged, truncated or not a bag; "
                            f"{hint}") from None

    def close(self) -> None:
        self.reader.close()

    def topics(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for c in self.reader.connections:
            _, n = out.get(c.topic, (c.msgtype, 0))
            out[c.topic] = (c.msgtype, n + c.msgcount)
        return out

    def span_ns(self) -> tuple[int, int]:
        return self.reader.start_time, self.reader.end_time

    def log_times(self, topic: str) -> Iterator[int]:
        """The log times (ns) of a topic's messages, nothing decoded."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        for _, log_ns, _ in self.reader.messages(connections=conns):
            yield log_ns

    def messages(self, topic: str, start_ns: int | None = None) -> Iterator[tuple[int, str, object]]:
        """(log time ns, msgtype, deserialized message or the exception that stopped it) in recording order."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        for c, log_ns, raw in self.reader.messages(connections=conns, start=start_ns):
            try:
                yield log_ns, c.msgtype, self.reader.deserialize(raw, c.msgtype)
            except (*self._errors, ValueError, IndexError, KeyError) as e:
                yield log_ns, c.msgtype, e


class _McapRecording:
    """An .mcap file read with the `mcap` library: ROS 1/2 messages through rosbags' typesys (with the definitions
    the file carries), foxglove protobuf messages through mcap-protobuf-support, JSON ones through json."""

    def __init__(self, path: Path):
        try:
            import mcap.reader  # noqa: F401
        except ImportError:
            raise UserError(f"reading {path} needs the mcap package: {_INSTALL}") from None
        self.path = path
        self._file = open(path, "rb")
        self._decoders: dict[int, object] = {}  # schema id -> bytes -> message
        self._typestore = None
        self.summary = None
        from mcap.exceptions import McapError
        from mcap.reader import SeekingReader

        try:
            self.summary = SeekingReader(self._file).get_summary()
        except (McapError, OSError, ValueError, StopIteration):
            self.summary = None  # no readable summary (truncated, or written without one): read it as a stream
        if self.summary is None:
            self._file.seek(0)
            magic = self._file.read(8)
            if magic[:5] != b"\x89MCAP":
                self._file.close()
                raise UserError(f"{path} is not an MCAP file (it does not start with the MCAP magic); give a ROS 1 "
                                f".bag, a ROS 2 .db3 or .mcap, or a rosbag2 folder")

    def close(self) -> None:
        self._file.close()

    def _stream(self, start_ns: int | None = None, topic: str | None = None):
        """(schema, channel, message) in log-time order; raises _Truncated where a stream without summary breaks."""
        from mcap.exceptions import McapError
        from mcap.reader import NonSeekingReader, SeekingReader

        self._file.seek(0)
        if self.summary is not None:
            yield from SeekingReader(self._file).iter_messages(topics=[topic] if topic else None, start_time=start_ns)
            return
        it = NonSeekingReader(self._file).iter_messages(topics=[topic] if topic else None, start_time=start_ns,
                                                       log_time_order=False)  # as written: nothing held back
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except (McapError, EOFError, OSError, ValueError, KeyError) as e:
                raise _Truncated(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
            yield item

    def topics(self) -> dict[str, tuple[str, int]]:
        if self.summary is not None:
            counts = self.summary.statistics.channel_message_counts if self.summary.statistics else {}
            return {ch.topic: (self.summary.schemas[ch.schema_id].name if ch.schema_id else "", counts.get(cid, 0))
                    for cid, ch in self.summary.channels.items()}
        out: dict[str, tuple[str, int]] = {}
        try:
            for schema, ch, _ in self._stream():
                _, n = out.get(ch.topic, ("", 0))
                out[ch.topic] = (schema.name if schema else "", n + 1)
        except _Truncated:
            pass
        return out

    def log_times(self, topic: str) -> Iterator[int]:
        """The log times (ns) of a topic's messages, nothing decoded (up to the cut of a truncated file)."""
        try:
            for _, _, m in self._stream(topic=topic):
                yield m.log_time
        except _Truncated:
            return

    def span_ns(self) -> tuple[int, int]:
        st = self.summary.statistics if self.summary is not None else None
        if st is not None:
            return st.message_start_time, st.message_end_time
        first = last = None
        try:
            for _, _, m in self._stream():
                first = m.log_time if first is None else first
                last = m.log_time
        except _Truncated:
            pass
        return first or 0, last or 0

    def _decoder(self, schema, channel):
        key = schema.id if schema is not None else -channel.id
        if key in self._decoders:
            return self._decoders[key]
        enc = channel.message_encoding
        if enc == "json":
            dec = json.loads
        elif enc == "protobuf":
            from mcap_protobuf.decoder import DecoderFactory

            dec = DecoderFactory().decoder_for(enc, schema)
        elif enc in ("cdr", "ros1") and schema is not None:
            from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
            from rosbags.typesys.msg import normalize_msgtype

            if self._typestore is None:
                self._typestore = get_typestore(Stores.ROS2_HUMBLE if enc == "cdr" else Stores.ROS1_NOETIC)
            text = schema.data.decode()
            name = normalize_msgtype(schema.name)
            if text.strip():
                types = get_types_from_idl(text) if schema.encoding == "ros2idl" else get_types_from_msg(text, name)
                self._typestore.register(types)
            ts = self._typestore
            dec = (lambda b: ts.deserialize_cdr(b, name)) if enc == "cdr" else (lambda b: ts.deserialize_ros1(b, name))
        else:
            dec = None
        self._decoders[key] = dec
        return dec

    def messages(self, topic: str, start_ns: int | None = None) -> Iterator[tuple[int, str, object]]:
        for schema, channel, m in self._stream(start_ns, topic):
            name = schema.name if schema else ""
            try:
                dec = self._decoder(schema, channel)
                if dec is None:
                    raise ValueError(f"message encoding {channel.message_encoding!r} is not supported")
                yield m.log_time, name, dec(m.data)
            except Exception as e:  # noqa: BLE001 - any decoder failure is this message's, counted by the caller
                yield m.log_time, name, e


def _open(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"recording not found: {path}; check the path")
    return _McapRecording(path) if path.suffix.lower() == ".mcap" else _RosbagsRecording(path)


# ---------------------------------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------------------------------


def _rate(rec, topic: str) -> float | None:
    """Messages per second over the topic's own span (its first to its last message); reads the topic once."""
    first = last = None
    n = 0
    for t in rec.log_times(topic):
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
        n += 1
    return (n - 1) / ((last - first) / 1e9) if n > 1 and last > first else None


def _image_topics(rec) -> list[ImageTopic]:
    return [ImageTopic(t, ty, n, _rate(rec, t)) for t, (ty, n) in sorted(rec.topics().items()) if ty in IMAGE_TYPES]


def list_image_topics(path: str | Path) -> list[ImageTopic]:
    """The image topics of a recording with their message counts and average rates (over each topic's own span,
    which reads the topics once), by topic name."""
    rec = _open(Path(path))
    try:
        return _image_topics(rec)
    finally:
        rec.close()


def _pick_topic(path: Path, rec, topic: str | None) -> tuple[str, bool]:
    """(the topic to read, whether its messages are compressed); refuses with the image topics listed."""
    topics = rec.topics()
    names = [t for t, (ty, _) in sorted(topics.items()) if ty in IMAGE_TYPES]
    if topic is None and len(names) == 1:
        return names[0], IMAGE_TYPES[topics[names[0]][0]]
    if topic in names and topics[topic][1] > 0:
        return topic, IMAGE_TYPES[topics[topic][0]]
    images = _image_topics(rec)  # refused: list the image topics with counts and rates (reads them once)
    listing = "; ".join(t.describe() for t in images)
    if topic is None:
        if not images:
            others = ", ".join(f"{t} ({ty})" for t, (ty, _) in sorted(topics.items())) or "no topics at all"
            raise UserError(f"{path} holds no image topics (sensor_msgs/Image, sensor_msgs/CompressedImage, "
                            f"foxglove.RawImage or foxglove.CompressedImage); found {others}")
        raise UserError(f"{path} holds {len(images)} image topics: {listing}. Pick one or more with --topic, "
                        f"e.g. --topic {images[0].topic}")
    if topic not in topics:
        raise UserError(f"{path} has no topic {topic!r}; its image topics are: {listing or 'none'}")
    ty = topics[topic][0]
    if ty not in IMAGE_TYPES:
        raise UserError(f"topic {topic!r} in {path} carries {ty or 'messages without a schema'}, not images; its "
                        f"image topics are: {listing or 'none'}")
    raise UserError(f"topic {topic!r} in {path} holds no messages; its image topics are: {listing}")


def topic_stream_name(topic: str) -> str:
    """A stream name from a topic: /cam_front/image_raw/compressed -> cam_front.image_raw.compressed."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", topic.strip("/").replace("/", ".")).strip("-.")[:64]
    return name or "topic"


# ---------------------------------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------------------------------


class BagSource:
    """The frames of one image topic of a recording, sampled at `fps` (the package's rule), timed by header stamps.

    `clock_origin` (UTC unix seconds) is the stamp of the topic's first message: stream time 0. With `replay_speed`
    set, frames are handed out paced at that multiple of the recorded speed (a robot replayed as a live camera);
    `stop` (a threading.Event) ends a paced replay at once. Without it, frames come as fast as they decode.
    """

    def __init__(self, path: str | Path, topic: str | None = None, fps: float = 1.0, start_time: float = 0.0,
                 end_time: float | None = None, replay_speed: float | None = None,
                 stop: threading.Event | None = None):
        self.path = Path(str(path).removeprefix("file://"))
        self.fps, self.start_time = check_fps(fps), check_start_time(start_time)
        self.end_time = end_time  # stream time (s) the source ends before; None = the end of the recording
        if replay_speed is not None and not (math.isfinite(replay_speed) and replay_speed > 0):
            raise UserError(f"replay_speed must be > 0, got {replay_speed}; 1.0 replays at the recorded speed")
        self.replay_speed, self.stop = replay_speed, stop
        self.decode_errors = 0  # messages of the current (last) pass that could not be decoded, their frames skipped
        self.decode_error_times: list[float] = []  # stream time of each (the time of the last good frame before it)
        self._last_log = -math.inf
        rec = _open(self.path)
        try:
            self.topic, self.compressed = _pick_topic(self.path, rec, topic)
            self._first_log_ns, self._origin_ns = self._probe(rec)
            self._end_ns = rec.span_ns()[1]
        finally:
            rec.close()
        self.clock_origin: float | None = self._origin_ns / 1e9  # UTC unix time of stream time 0
        self.clock_kind: str | None = "header stamps"

    @property
    def duration(self) -> float | None:
        """Seconds from the topic's first message to the end of the recording (log time)."""
        return max(0.0, (self._end_ns - self._first_log_ns) / 1e9)

    def starting_at(self, start_time: float) -> BagSource:
        """The same topic read from `start_time` (the recording is not probed again)."""
        return with_start_time(self, start_time)

    def __repr__(self) -> str:
        return f"BagSource({str(self.path)!r}, topic={self.topic!r}, fps={self.fps}, start_time={self.start_time})"

    def _probe(self, rec) -> tuple[int, int]:
        """(log time, stamp) of the topic's first message, checked by decoding messages until one decodes: a topic
        none of whose messages decode is refused here, naming what was found."""
        first: tuple[int, int] | None = None
        seen, found, reason = 0, set(), ""
        try:
            for log_ns, _, obj in rec.messages(self.topic):
                seen += 1
                try:
                    if isinstance(obj, Exception):
                        raise ValueError(str(obj))
                    m = _image_msg(obj, self.compressed, log_ns)
                    if first is None:
                        first = (log_ns, m.stamp_ns)
                    found.add(m.encoding)
                    decode_image(m)
                    return first
                except (ValueError, TypeError, AttributeError) as e:
                    reason = reason or str(e)
        except _Truncated as e:
            reason = reason or f"the file ends mid-record ({e})"
        what = f"encodings/formats {sorted(found)}" if found else "no readable image message"
        raise UserError(f"topic {self.topic!r} in {self.path}: none of its {seen} messages could be decoded "
                        f"({what}; first problem: {reason or 'none read'}); supported raw encodings: "
                        f"{', '.join(RAW_ENCODINGS)}; compressed: jpeg, png")

    def _skip(self, t_last: float | None, e: Exception) -> None:
        self.decode_errors += 1
        self.decode_error_times.append(t_last if t_last is not None else 0.0)
        now = time.monotonic()
        if now - self._last_log >= 5.0:  # each one is counted; the log says so at most every 5 s
            self._last_log = now
            log.warning("%s %s: undecodable message after %.1f s skipped (%s); %d so far", self.path, self.topic,
                        t_last or 0.0, e, self.decode_errors)

    def _pace(self, t: float, clock: list) -> bool:
        """Wait until frame time t is due at the replay speed; False when stopped."""
        if self.replay_speed is None:
            return True
        if not clock:
            clock[:] = [time.monotonic(), t]
        delay = clock[0] + (t - clock[1]) / self.replay_speed - time.monotonic()
        if self.stop is not None:
            return not self.stop.wait(max(0.0, delay))
        if delay > 0:
            time.sleep(delay)
        return True

    def __iter__(self) -> Iterator[Frame]:
        self.decode_errors, self.decode_error_times = 0, []
        start_ns = None
        if self.start_time > 0:
            start_ns = max(self._first_log_ns, self._first_log_ns + int(self.start_time * 1e9) - _SEEK_MARGIN_NS)
        k, target = 0, self.start_time
        t_last: float | None = None
        clock: list = []
        rec = _open(self.path)
        try:
            for log_ns, _, obj in rec.messages(self.topic, start_ns):
                if isinstance(obj, Exception):
                    self._skip(t_last, obj)
                    continue
                try:
                    m = _image_msg(obj, self.compressed, log_ns)
                except (ValueError, TypeError, AttributeError) as e:
                    self._skip(t_last, e)
                    continue
                t = (m.stamp_ns - self._origin_ns) / 1e9
                if t < target - TIME_EPS:
                    continue
                if self.end_time is not None and t >= self.end_time - TIME_EPS:
                    return
                try:
                    image = decode_image(m)  # (H, W, 3) uint8
                except ValueError as e:
                    self._skip(t_last, e)
                    continue
                t_last = t
                if not self._pace(t, clock):
                    return
                while t >= target - TIME_EPS:
                    yield Frame(image=image, t=t, wall=None if self.clock_origin is None else self.clock_origin + t)
                    k += 1
                    target = self.start_time + k / self.fps
        except _Truncated as e:
            where = f"after {t_last:.1f} s" if t_last is not None else "before the first frame"
            raise UserError(f"{self.path} ends mid-record {where} ({e}): it is truncated (or was still being "
                            f"written); the frames before were read; record or copy it again, then run again (a "
                            f"stream resumes at its next clip)") from None
        finally:
            rec.close()
