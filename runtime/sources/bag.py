"""Robot recordings as frame sources: ROS 1 bags, ROS 2 bags (sqlite3 and MCAP storage) and plain MCAP files.

    recording_format(path)                     -> "ros1" | "mcap" | "db3" | "rosbag2" | None (by the first bytes)
    is_recording(path)                         -> bool                 a ROS 1 bag, an MCAP file, a ROS 2 .db3, a
                                                                       rosbag2 folder (by content, not by name)
    name_note(path)                            -> str | None           what to say when the name disagrees
    list_image_topics(path)                    -> [ImageTopic]         topic, message type, count, rate
    BagSource(path, topic, fps)                -> iterator of Frame    image (H, W, 3) uint8 RGB, t seconds

Format: decided by the file's first bytes (`#ROSBAG V2.0`, the MCAP magic, the SQLite header; a folder with
metadata.yaml), not by its name; a name that says otherwise is named in `name_note`. A file that starts like none of
them is not a recording (the caller reads it as a video). Readers: ROS 1 bags, `.db3` files and rosbag2 folders
through rosbags (pure Python); MCAP files through the `mcap` library, whose streaming reader still reads a file cut
off mid-write. An MCAP file needs neither a Statistics record nor a summary: message counts come from the
statistics, else from the chunk indexes' message indexes, else from reading the file through.

Messages: `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8, mono16, yuv422 = UYVY, yuv422_yuy2 = YUYV),
`sensor_msgs/CompressedImage` (JPEG, PNG, anything PIL decodes), and in plain MCAP also `foxglove.RawImage` /
`foxglove.CompressedImage` (protobuf or JSON encoded). ROS messages in an MCAP file are decoded with the type
definitions the file carries (rosbags' typesys).

Time: a frame's time is its message's header stamp, or its log time when the topic's first decodable message has a
zero stamp (the whole topic then runs on log time; `clock_kind` says which and why). `clock_origin` is the UTC unix
time (s) of the topic's first message, stream time 0: t = stamp - clock_origin, so clips carry the robot's clock.
`log_offset_ns` is the topic's first log time minus its first stamp (0 on log time): where the stream's clips sit in
log time (Foxglove's default timeline). Sampling follows the package's rule: sample k is the first message at or
after start_time + k / fps, messages read in recording order.

Damaged input: a message that cannot be decoded (an unknown encoding, a corrupt JPEG, a short buffer) is skipped and
counted in `decode_errors`; the others are read. A topic whose messages are all undecodable, a topic without images
and a recording that cannot be opened are refused with a `UserError` naming the topic and what was found. A
recording that cannot be read past some point (an MCAP file cut off mid-write, a damaged chunk) yields every frame
before it, then ends, with `truncated` saying where and why (the caller commits what was read and says so). Nothing
a damaged file holds raises anything but `UserError`.

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
from rlivs.runtime.sources._shared import Sampler, check_fps, check_start_time, with_start_time

log = logging.getLogger("rlivs.sources.bag")

RECORDING_SUFFIXES = (".bag", ".db3", ".mcap")
# how each format starts, what a name says, and what the format is called in messages
_MAGIC = {"ros1": b"#ROSBAG V2.0", "mcap": b"\x89MCAP0\r\n", "db3": b"SQLite format 3\x00"}
_BY_SUFFIX = {".bag": "ros1", ".mcap": "mcap", ".db3": "db3"}
FORMAT_NAMES = {"ros1": "a ROS 1 bag", "mcap": "an MCAP file", "db3": "a ROS 2 .db3 (SQLite)",
                "rosbag2": "a rosbag2 folder"}
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


def _path(path: str | Path) -> Path:
    return Path(str(path).removeprefix("file://"))


def _head(p: Path) -> bytes | None:
    try:
        with open(p, "rb") as f:
            return f.read(16)
    except OSError:
        return None


def recording_format(path: str | Path) -> str | None:
    """"ros1", "mcap", "db3" or "rosbag2" by what the file starts with (a folder: its metadata.yaml), else None (not
    a recording: a video, or something else). A file shorter than a magic that its start matches (cut off inside
    the magic, or empty) and a path that cannot be read follow the name: the reader then says what is wrong."""
    p = _path(path)
    if p.is_dir():
        return "rosbag2" if (p / "metadata.yaml").is_file() else None
    by_name = _BY_SUFFIX.get(p.suffix.lower())
    head = _head(p)
    if head is None:
        return by_name
    for fmt, magic in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    if by_name and len(head) < len(_MAGIC[by_name]) and _MAGIC[by_name].startswith(head):
        return by_name
    return None


def is_recording(path: str | Path) -> bool:
    """A ROS 1 bag, an MCAP file, a ROS 2 .db3 or a rosbag2 folder (one with metadata.yaml), by content."""
    return recording_format(path) is not None


def name_note(path: str | Path) -> str | None:
    """A line saying how the file's name disagrees with its content (None when it does not)."""
    p = _path(path)
    if p.is_dir():
        return None
    fmt, by_name = recording_format(p), _BY_SUFFIX.get(p.suffix.lower())
    if fmt == by_name:
        return None
    if fmt is None:
        head = _head(p) or b""
        return (f"{p.name} is named like {FORMAT_NAMES[by_name]} but does not start like one (it starts with "
                f"{head[:12]!r}): reading it as a video file")
    if by_name is None:
        return f"{p.name} is {FORMAT_NAMES[fmt]} by its first bytes (not what its name says): reading it as one"
    return (f"{p.name} is named like {FORMAT_NAMES[by_name]} but its first bytes say it is {FORMAT_NAMES[fmt]}: "
            f"reading it as {FORMAT_NAMES[fmt]}; rename it to {p.stem}{_SUFFIX[fmt]} to stop this note")


_SUFFIX = {"ros1": ".bag", "mcap": ".mcap", "db3": ".db3"}


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

    stamp_ns: int  # header stamp, ns since the unix epoch (0: unset)
    compressed: bool
    encoding: str  # raw: pixel encoding (rgb8 ...); compressed: the format string (jpeg, "bgr8; jpeg compressed bgr8")
    width: int = 0
    height: int = 0
    step: int = 0  # bytes per row (raw)
    bigendian: bool = False
    data: bytes | np.ndarray = b""
    log_ns: int = 0  # the message's log time, ns since the unix epoch


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
        except Exception as e:  # noqa: BLE001 - Pillow on a damaged image (a decompression bomb, a bad header...)
            raise ValueError(f"format {m.encoding!r}: {type(e).__name__}: {e}") from None
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
        return _ImageMsg(stamp, True, str(get("format", "")), data=data, log_ns=log_ns)
    return _ImageMsg(stamp, False, str(get("encoding", "")), int(get("width", 0)), int(get("height", 0)),
                     int(get("step", 0)), bool(get("is_bigendian", False)), data, log_ns)


# ---------------------------------------------------------------------------------------------------------------------
# Readers: one interface over rosbags (.bag, .db3, rosbag2 folders) and mcap (.mcap)
# ---------------------------------------------------------------------------------------------------------------------


class _Truncated(Exception):
    """The recording cannot be read past this point (cut off mid-record, or damaged); what came before was read."""


# A reader library failing on a user's damaged file (struct.error, UnicodeDecodeError, KeyError, ...) is the file's
# fault, never a bug: the readers below catch Exception around the libraries' parsing and say so. That includes
# MemoryError: a damaged length field (a chunk's uncompressed size, a record's length) asks for gigabytes.
def _damage(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return ("MemoryError: a size in the file asks for more memory than this machine has (a damaged length, or a "
                "record too large for this device)")
    name = type(e).__name__
    if name.islower() and type(e).__module__ != "builtins":  # struct.error, zlib.error, sqlite3's ...
        name = f"{type(e).__module__}.{name}"
    return f"{name}: {e}" if str(e) else name


class _RosbagsRecording:
    """A ROS 1 bag, a ROS 2 .db3 or a rosbag2 folder, read with rosbags' AnyReader. rosbags picks its reader by the
    name (.bag: ROS 1, else ROS 2): a file whose name disagrees with its content is opened through a link named
    right."""

    def __init__(self, path: Path, fmt: str):
        try:
            from rosbags.highlevel import AnyReader, AnyReaderError
            from rosbags.typesys import Stores, get_typestore
        except ImportError:
            raise UserError(f"reading {path} needs rosbags: {_INSTALL}") from None
        self._errors = (AnyReaderError,)
        self.truncated: str | None = None
        self._tmp = None
        target = path
        if fmt in _SUFFIX and path.suffix.lower() != _SUFFIX[fmt]:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="rlivs-rec-")
            target = Path(self._tmp.name) / (path.stem + _SUFFIX[fmt])
            try:
                target.symlink_to(path.resolve())
            except OSError as e:
                self._tmp.cleanup()
                raise UserError(f"{path} is {FORMAT_NAMES[fmt]} but named otherwise, and no link named right could "
                                f"be made ({e}): rename it to {path.stem}{_SUFFIX[fmt]}") from None
        try:
            self.reader = AnyReader([target], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self.reader.open()
        except Exception as e:  # noqa: BLE001 - whatever rosbags raises on a damaged file is the file's fault
            self._cleanup()
            hint = ("rebuild its index with `rosbag reindex` (ROS 1)" if fmt == "ros1" else
                    "check that the recording finished; a rosbag2 .db3 cut off mid-write may be recovered with "
                    "`sqlite3 FILE .recover` (an SQLite file that is not a rosbag2 .db3 lacks its topics and "
                    "messages tables)")
            raise UserError(f"{path} cannot be read as {FORMAT_NAMES[fmt]} ({_damage(e)}): it is damaged, truncated "
                            f"or not a bag; {hint}") from None

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self._cleanup()

    def topics(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for c in self.reader.connections:
            _, n = out.get(c.topic, (c.msgtype, 0))
            out[c.topic] = (c.msgtype, n + c.msgcount)
        return out

    def span_ns(self) -> tuple[int, int]:
        return self.reader.start_time, self.reader.end_time

    def _raw(self, topic: str, start_ns: int | None = None):
        """(connection, log time, raw bytes) of a topic; raises _Truncated where the file cannot be read further."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        it = self.reader.messages(connections=conns, start=start_ns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a damaged chunk or page: the file's fault
                self.truncated = _damage(e)
                raise _Truncated(self.truncated) from None
            yield item

    def log_times(self, topic: str) -> Iterator[int]:
        """The log times (ns) of a topic's messages, nothing decoded (up to where the file cannot be read)."""
        try:
            for _, log_ns, _ in self._raw(topic):
                yield log_ns
        except _Truncated:
            return

    def messages(self, topic: str, start_ns: int | None = None) -> Iterator[tuple[int, str, object]]:
        """(log time ns, msgtype, deserialized message or the exception that stopped it) in recording order."""
        for c, log_ns, raw in self._raw(topic, start_ns):
            try:
                yield log_ns, c.msgtype, self.reader.deserialize(raw, c.msgtype)
            except Exception as e:  # noqa: BLE001 - this message's fault, counted by the caller
                yield log_ns, c.msgtype, e


class _McapRecording:
    """An MCAP file read with the `mcap` library: ROS 1/2 messages through rosbags' typesys (with the definitions
    the file carries), foxglove protobuf messages through mcap-protobuf-support, JSON ones through json.

    Its summary (when there is one and it is readable) is used when it lists the channels and indexes the chunks:
    messages are then read chunk by chunk through the index. Otherwise (no summary, a summary without channels or
    chunk indexes, a file cut off before its summary) the file is read front to back as written."""

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
        self.truncated: str | None = None  # why the file could not be read further (set when that happens)
        from mcap.reader import SeekingReader

        magic = self._file.read(8)
        if magic != _MAGIC["mcap"]:
            self._file.close()
            what = "is empty" if not magic else f"ends after {len(magic)} bytes" if len(magic) < 8 else \
                f"does not start with the MCAP magic (it starts with {magic!r})"
            raise UserError(f"{path} is not a readable MCAP file: it {what}; it is damaged or truncated, record or "
                            f"copy it again")
        try:
            self._file.seek(0)
            summary = SeekingReader(self._file).get_summary()
        except Exception:  # noqa: BLE001 - no readable summary (cut off, damaged): read it as written
            summary = None
        if summary is not None and summary.channels and summary.chunk_indexes:
            self.summary = summary  # indexed reads; counts from its statistics or message indexes
        self._any_summary = summary

    def close(self) -> None:
        self._file.close()

    def _stream(self, start_ns: int | None = None, topic: str | None = None):
        """(schema, channel, message), through the index in log-time order, or as written; raises _Truncated where
        the file cannot be read further (every message before was yielded)."""
        from mcap.reader import NonSeekingReader, SeekingReader

        self._file.seek(0)
        topics = [topic] if topic else None
        if self.summary is not None:
            it = SeekingReader(self._file).iter_messages(topics=topics, start_time=start_ns)
        else:
            it = NonSeekingReader(self._file).iter_messages(topics=topics, start_time=start_ns,
                                                           log_time_order=False)  # as written: nothing held back
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - struct.error, EndOfFile, a bad CRC...: the file's, not a bug
                self.truncated = _damage(e)
                raise _Truncated(self.truncated) from None
            yield item

    def _indexed_counts(self) -> dict[int, int] | None:
        """Messages per channel id from the chunk indexes' message indexes (None where they are missing or cannot
        be read: the caller counts by reading the messages)."""
        from mcap.records import MessageIndex
        from mcap.stream_reader import StreamReader

        counts: dict[int, int] = {}
        if not self._any_summary.chunk_indexes:
            return None
        try:
            for ci in self._any_summary.chunk_indexes:
                if not ci.message_index_offsets:
                    return None
                for cid, offset in ci.message_index_offsets.items():
                    self._file.seek(offset)
                    rec = next(StreamReader(self._file, skip_magic=True).records)
                    if not isinstance(rec, MessageIndex) or rec.channel_id != cid:
                        return None
                    counts[cid] = counts.get(cid, 0) + len(rec.records)
        except Exception:  # noqa: BLE001 - a damaged index: count by reading instead
            return None
        return counts

    def _scan(self) -> tuple[dict[str, tuple[str, int]], int | None, int | None]:
        """(topic -> (schema name, messages), first and last log time) by reading every message."""
        out: dict[str, tuple[str, int]] = {}
        first = last = None
        try:
            for schema, ch, m in self._stream():
                _, n = out.get(ch.topic, ("", 0))
                out[ch.topic] = (schema.name if schema else "", n + 1)
                first = m.log_time if first is None else min(first, m.log_time)
                last = m.log_time if last is None else max(last, m.log_time)
        except _Truncated:
            pass
        return out, first, last

    def topics(self) -> dict[str, tuple[str, int]]:
        """topic -> (schema name, messages): from the summary's channels and its Statistics record, else its message
        indexes (Statistics is optional in MCAP), else by reading every message."""
        summary = self._any_summary
        if summary is None or not summary.channels:
            return self._scan()[0]
        st = summary.statistics
        counts = (st.channel_message_counts if st is not None and (st.channel_message_counts or not st.message_count)
                  else self._indexed_counts())
        if counts is None:
            return self._scan()[0]
        out: dict[str, tuple[str, int]] = {}
        for cid, ch in summary.channels.items():
            schema = summary.schemas.get(ch.schema_id) if ch.schema_id else None
            _, n = out.get(ch.topic, ("", 0))
            out[ch.topic] = (schema.name if schema else "", n + counts.get(cid, 0))
        return out

    def log_times(self, topic: str) -> Iterator[int]:
        """The log times (ns) of a topic's messages, nothing decoded (up to the cut of a truncated file)."""
        try:
            for _, _, m in self._stream(topic=topic):
                yield m.log_time
        except _Truncated:
            return

    def span_ns(self) -> tuple[int, int]:
        summary = self._any_summary
        st = summary.statistics if summary is not None else None
        if st is not None and st.message_count:
            return st.message_start_time, st.message_end_time
        if summary is not None and summary.chunk_indexes:
            cis = summary.chunk_indexes
            return min(c.message_start_time for c in cis), max(c.message_end_time for c in cis)
        _, first, last = self._scan()
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
    """The reader for what the file is (by its first bytes)."""
    if not path.exists():
        raise FileNotFoundError(f"recording not found: {path}; check the path")
    fmt = recording_format(path)
    if fmt is None:
        head = _head(path) or b""
        raise UserError(f"{path} is not a robot recording: it does not start like a ROS 1 bag (#ROSBAG V2.0), an "
                        f"MCAP file or a ROS 2 .db3 (SQLite), and is not a rosbag2 folder (it starts with "
                        f"{head[:12]!r}); give a recording, or read it as a video without --topic")
    return _McapRecording(path) if fmt == "mcap" else _RosbagsRecording(path, fmt)


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
    if rec.truncated:  # what is listed is what could be read
        listing = (listing or "none") + (f" (the file cannot be read past some point ({rec.truncated}): it is "
                                         f"truncated or damaged; only the messages before that are listed)")
    if topic is None:
        if not images:
            others = ", ".join(f"{t} ({ty})" for t, (ty, _) in sorted(topics.items())) or "no topics at all"
            damage = (f"; the file cannot be read past some point ({rec.truncated}): it is truncated or damaged, "
                      f"and nothing before that is an image; record or copy it again" if rec.truncated else "")
            raise UserError(f"{path} holds no image topics (sensor_msgs/Image, sensor_msgs/CompressedImage, "
                            f"foxglove.RawImage or foxglove.CompressedImage); found {others}{damage}")
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
    """The frames of one image topic of a recording, sampled at `fps` (the package's rule), timed by header stamps
    (or log time, when the topic's stamps are zero).

    `clock_origin` (UTC unix seconds) is the stamp of the topic's first message: stream time 0. `time_basis` is
    "header" or "log", `clock_kind` says which in words and why, `log_offset_ns` is the first log time minus the
    first stamp (0 on log time). After a pass, `truncated` says why the file could not be read to its end (None: it
    was), the frames before having been yielded. With `replay_speed`
    set, frames are handed out paced at that multiple of the recorded speed (a robot replayed as a live camera);
    `stop` (a threading.Event) ends a paced replay at once. Without it, frames come as fast as they decode.
    """

    def __init__(self, path: str | Path, topic: str | None = None, fps: float = 1.0, start_time: float = 0.0,
                 end_time: float | None = None, replay_speed: float | None = None,
                 stop: threading.Event | None = None, clock_origin: float | None = None,
                 clock_kind: str = "--start-time"):
        self.path = Path(str(path).removeprefix("file://"))
        self.fps, self.start_time = check_fps(fps), check_start_time(start_time)
        self.end_time = end_time  # stream time (s) the source ends before; None = the end of the recording
        if replay_speed is not None and not (math.isfinite(replay_speed) and replay_speed > 0):
            raise UserError(f"replay_speed must be > 0, got {replay_speed}; 1.0 replays at the recorded speed")
        self.replay_speed, self.stop = replay_speed, stop
        self.decode_errors = 0  # messages of the current (last) pass that could not be decoded, their frames skipped
        self.decode_error_times: list[float] = []  # stream time of each (the time of the last good frame before it)
        self._last_log = -math.inf
        self.truncated: str | None = None  # the current (last) pass: why the file could not be read to its end
        rec = _open(self.path)
        try:
            self.topic, self.compressed = _pick_topic(self.path, rec, topic)
            self._first_log_ns, first_stamp = self._probe(rec)
            self._end_ns = rec.span_ns()[1]
        finally:
            rec.close()
        if first_stamp:
            self.time_basis, self._origin_ns = "header", first_stamp
            self.clock_kind: str | None = f"header stamps of {self.topic}"
        else:  # an unset stamp (zero): the topic runs on log time, all of it
            self.time_basis, self._origin_ns = "log", self._first_log_ns
            self.clock_kind = f"log time of {self.topic}: its header stamps are zero"
        self.log_offset_ns = self._first_log_ns - self._origin_ns  # log time - stream clock, at the first message
        self.clock_origin: float | None = self._origin_ns / 1e9  # UTC unix time of stream time 0
        if clock_origin is not None:  # the caller's clock (--start-time) for stream time 0, instead of the stamps'
            self.clock_origin, self.clock_kind = clock_origin, clock_kind

    @property
    def stream_clock(self) -> dict:
        """What the memory notes about this stream's clock (`Memory.set_stream_clock`): the time basis, the topic,
        and log time minus the stream's clock (ns) at its first message; an export places clips on Foxglove's log
        timeline with it."""
        return {"kind": "recording", "basis": self.time_basis, "topic": self.topic,
                "log_offset_ns": self.log_offset_ns}

    @property
    def duration(self) -> float | None:
        """Seconds from the topic's first message to the end of the recording (log time), plus one sample interval:
        the last message is a sample too, so ceil(duration / clip seconds) counts every clip (never fewer)."""
        return max(0.0, (self._end_ns - self._first_log_ns) / 1e9) + 1 / self.fps

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
            if not seen:
                raise UserError(f"{self.path} cannot be read as far as the first message of {self.topic} ({e}): it "
                                f"is truncated or damaged before any image; record or copy it again") from None
            reason = reason or f"the file cannot be read further ({e})"
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

    def _time_ns(self, m: _ImageMsg) -> int:
        """A message's time on the stream's clock: its stamp, or its log time (a log-time topic; a zero stamp in a
        stamped one, moved onto the stamps' clock by the first message's offset)."""
        if self.time_basis == "log":
            return m.log_ns
        return m.stamp_ns if m.stamp_ns else m.log_ns - self.log_offset_ns

    def __iter__(self) -> Iterator[Frame]:
        self.decode_errors, self.decode_error_times, self.truncated = 0, [], None
        start_ns = None
        if self.start_time > 0:
            start_ns = max(self._first_log_ns, self._first_log_ns + int(self.start_time * 1e9) - _SEEK_MARGIN_NS)
        sampler = Sampler(self.fps, self.start_time, self.end_time, self.clock_origin)
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
                t = (self._time_ns(m) - self._origin_ns) / 1e9
                if sampler.skip(t):
                    continue
                if sampler.ended(t):
                    return
                try:
                    image = decode_image(m)  # (H, W, 3) uint8
                except ValueError as e:
                    self._skip(t_last, e)
                    continue
                t_last = t
                if not self._pace(t, clock):
                    return
                yield from sampler.take(image, t)
        except _Truncated as e:  # what was read stays read: the pass ends here, and says why
            where = f"past {t_last:.1f} s" if t_last is not None else "as far as its first frame"
            self.truncated = f"cannot be read {where} ({e}): it is truncated (or was still being written) or damaged"
        finally:
            rec.close()
