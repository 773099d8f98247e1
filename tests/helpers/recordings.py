"""Small robot recordings for the tests, written with the readers' own libraries: ROS 1 bags and ROS 2 bags (sqlite3
and MCAP storage) with rosbags' writers, plain MCAP files (foxglove protobuf or JSON images) with mcap's writer, with
the summary each writer can leave out (no Statistics record, no message indexes, no summary at all), and the same
rosbags file without its Statistics record (`strip_statistics`: rosbags before 0.11 wrote none).

Frame i of a recording is a solid image of value `value(i)` (a JPEG of it when compressed), stamped at
`T0 + i / rate` seconds (unix time); log times are the stamps plus `log_lag` seconds.

For cutting MCAP files: `mcap_records(data)` lists the top-level records (start, end, opcode, messages in them),
`cut_points(data)` where to cut (every record boundary and offsets inside every record), `messages_before(data,
cut)` counts the messages a reader can get from the first `cut` bytes (those of the complete Message and Chunk
records before it), and `check_cut_ingest` runs `rlivs ingest` on one cut and checks what it says and stores.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

T0_NS = 1_700_000_000_250_000_000  # unix time of the first frame's header stamp, ns
T0 = T0_NS / 1e9
H, W = 16, 24  # frame size


def value(i: int) -> int:
    """Pixel value of frame i (distinct per frame, JPEG-safe steps)."""
    return (i * 20 + 10) % 250


def jpeg(v: int, size=(H, W)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), v, np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def raw_pixels(v: int, encoding: str) -> tuple[bytes, int]:
    """(data, step) of a solid RGB (v, v, v) frame in `encoding` (rgb8, bgr8, mono8, yuv422 = UYVY)."""
    if encoding in ("rgb8", "bgr8"):
        return np.full((H, W, 3), v, np.uint8).tobytes(), W * 3
    if encoding == "mono8":
        return np.full((H, W), v, np.uint8).tobytes(), W
    if encoding == "yuv422":  # UYVY of a grey: U = V = 128, Y = v (BT.601 limited range: Y = 16 + 219 v / 255)
        y = round(16 + 219 * v / 255)
        return np.tile(np.array([128, y], np.uint8), H * W).tobytes(), W * 2
    return b"\x00" * (H * W * 4), W * 4  # an encoding the reader refuses (e.g. 32FC1)


def _stamp(i: int, rate: float) -> int:
    return T0_NS + round(i * 1e9 / rate)


def _ros_msg(ts, ros1: bool, i: int, rate: float, compressed: bool, encoding: str, bad: set[int]):
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    ns = _stamp(i, rate)
    header = Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam", **({"seq": i} if ros1 else {}))
    if compressed:
        data = b"not a jpeg" if i in bad else jpeg(value(i))
        return ts.types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                           data=np.frombuffer(data, np.uint8))
    data, step = raw_pixels(value(i), "32FC1" if i in bad else encoding)
    return ts.types["sensor_msgs/msg/Image"](header=header, height=H, width=W, encoding="32FC1" if i in bad else encoding,
                                             is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))


def write_ros_bag(path: Path, kind: str, topics: dict[str, dict], log_lag: float = 0.05,
                  extra_topics: bool = True) -> Path:
    """A ROS bag: kind "ros1" (.bag), "db3" (rosbag2 sqlite3 folder) or "mcap" (rosbag2 MCAP folder). `topics`
    maps a topic to {n, rate, compressed, encoding, bad: set of frame indices written undecodable}. Returns the bag
    file (.bag, .db3 or .mcap; its folder holds metadata.yaml for ROS 2)."""
    from rosbags.typesys import Stores, get_typestore

    ros1 = kind == "ros1"
    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr
    if ros1:
        from rosbags.rosbag1 import Writer

        writer = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3)
    msgs = []
    with writer as w:
        for topic, spec in topics.items():
            compressed = spec.get("compressed", False)
            msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
            conn = w.add_connection(topic, msgtype, typestore=ts)
            for i in range(spec["n"]):
                m = _ros_msg(ts, ros1, i, spec["rate"], compressed, spec.get("encoding", "rgb8"), spec.get("bad", set()))
                msgs.append((_stamp(i, spec["rate"]) + int(log_lag * 1e9), conn, serialize(m, msgtype)))
        if extra_topics:  # a non-image topic, which the listing leaves out
            conn = w.add_connection("/rosout_count", "std_msgs/msg/String", typestore=ts)
            msgs.append((_stamp(0, 1.0), conn, serialize(ts.types["std_msgs/msg/String"](data="hi"),
                                                         "std_msgs/msg/String")))
        for t, conn, raw in sorted(msgs, key=lambda x: x[0]):
            w.write(conn, t, raw)
    if ros1:
        return path
    return next(path.glob("*.mcap" if kind == "mcap" else "*.db3"))


# Which summary an mcap Writer leaves: "full" (the default), "no-statistics" (chunk and message indexes, no Statistics
# record), "no-message-index" (chunk indexes only), "none" (no summary section at all).
SUMMARIES = ("full", "no-statistics", "no-message-index", "none")


def _mcap_writer(f, chunk_size: int, summary: str, chunked: bool):
    from mcap.writer import IndexType, Writer

    assert summary in SUMMARIES, summary
    if summary == "full":
        return Writer(f, chunk_size=chunk_size, use_chunking=chunked)
    if summary == "no-statistics":
        return Writer(f, chunk_size=chunk_size, use_chunking=chunked, use_statistics=False)
    if summary == "no-message-index":
        return Writer(f, chunk_size=chunk_size, use_chunking=chunked, use_statistics=False,
                      index_types=IndexType.CHUNK)
    return Writer(f, chunk_size=chunk_size, use_chunking=chunked, use_statistics=False, repeat_schemas=False,
                  repeat_channels=False, index_types=IndexType.NONE, use_summary_offsets=False)


def write_foxglove_mcap(path: Path, topic: str = "/cam/compressed", n: int = 20, rate: float = 4.0,
                        encoding: str = "protobuf", bad: set[int] = frozenset(), chunk_size: int = 1024,
                        summary: str = "full", chunked: bool = True, log_lag: float = 0.0,
                        zero_stamps: bool = False) -> Path:
    """A plain MCAP file (no ROS profile) of foxglove.CompressedImage JPEGs, protobuf or JSON encoded, in small
    chunks (so that a cut-off copy keeps most of them), with the `summary` of SUMMARIES (`chunked=False`: messages
    outside chunks). Log times are the stamps plus `log_lag` s; `zero_stamps` leaves every image's timestamp 0."""
    with open(path, "wb") as f:
        w = _mcap_writer(f, chunk_size, summary, chunked)
        w.start(profile="", library="rlivs-tests")
        if encoding == "protobuf":
            from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
            from mcap_protobuf.schema import register_schema

            sid = register_schema(w, CompressedImage)
        else:
            sid = w.register_schema(name="foxglove.CompressedImage", encoding="jsonschema", data=b"{}")
        cid = w.register_channel(topic=topic, message_encoding=encoding, schema_id=sid)
        for i in range(n):
            ns = _stamp(i, rate)
            stamp = 0 if zero_stamps else ns
            data = b"garbage" if i in bad else jpeg(value(i))
            if encoding == "protobuf":
                m = CompressedImage(format="jpeg", data=data, frame_id="cam")
                m.timestamp.seconds, m.timestamp.nanos = stamp // 10**9, stamp % 10**9
                raw = m.SerializeToString()
            else:
                raw = json.dumps({"timestamp": {"sec": stamp // 10**9, "nsec": stamp % 10**9}, "frame_id": "cam",
                                  "format": "jpeg", "data": base64.b64encode(data).decode()}).encode()
            log_ns = ns + round(log_lag * 1e9)
            w.add_message(channel_id=cid, log_time=log_ns, publish_time=log_ns, data=raw)
        w.finish()
    return path


def mcap_records(data: bytes) -> list[tuple[int, int, int, int]]:
    """The top-level records of an MCAP file: (start, end, opcode, messages in it: 1 for a Message, the Message
    records inside a Chunk, else 0), read with the mcap library's record parsers."""
    import struct

    from mcap.data_stream import ReadDataStream
    from mcap.reader import breakup_chunk
    from mcap.records import Chunk, Message

    out, pos = [], 8  # after the leading magic
    while pos + 9 <= len(data) - 8:
        op, length = struct.unpack_from("<BQ", data, pos)
        end = pos + 9 + length
        n = 0
        if op == 0x05:
            n = 1
        elif op == 0x06:
            chunk = Chunk.read(ReadDataStream(io.BytesIO(data[pos + 9:end])))
            n = sum(isinstance(r, Message) for r in breakup_chunk(chunk))
        out.append((pos, end, op, n))
        pos = end
        if op == 0x02:  # the footer; the trailing magic follows
            break
    return out


def cut_points(data: bytes) -> list[int]:
    """Where to cut an MCAP file: every record boundary, offsets inside each record (after its opcode, inside its
    length, right after the length, the middle of its body, its last byte), inside the leading and trailing
    magic, and the whole file."""
    cuts = {0, 3, 8, len(data) - 8, len(data) - 3, len(data)}
    for start, end, _, _ in mcap_records(data):
        cuts |= {start, start + 1, start + 5, start + 9, (start + 9 + end) // 2, end - 1, end}
    return sorted(c for c in cuts if 0 <= c <= len(data))


def messages_before(data: bytes, cut: int) -> int:
    """Messages a reader gets from data[:cut]: those of the complete Message and Chunk records."""
    return sum(n for _, end, _, n in mcap_records(data) if end <= cut)


def strip_statistics(path: Path) -> Path:
    """Rewrite an MCAP file without its Statistics record (and that record's summary offset), as rosbags before
    0.11 wrote its MCAP files: the Statistics group must be the last group before the summary offsets (rosbags'
    layout). Returns path."""
    import struct

    data = bytearray(path.read_bytes())
    footer = len(data) - 8 - 29  # opcode, length, summary_start, summary_offset_start, crc; then the magic
    op, length, summary_start, offsets_start, _ = struct.unpack_from("<BQQQI", data, footer)
    assert (op, length) == (0x02, 20) and summary_start and offsets_start, "an MCAP file with summary offsets"
    offsets, pos, stats = [], offsets_start, None
    while pos < footer:
        op, length = struct.unpack_from("<BQ", data, pos)
        assert op == 0x0E
        group, start, size = struct.unpack_from("<BQQ", data, pos + 9)
        if group == 0x0B:
            stats = (start, size)
        else:
            offsets.append(bytes(data[pos:pos + 9 + length]))
        pos += 9 + length
    assert stats is not None and stats[0] + stats[1] == offsets_start, "the Statistics group just before the offsets"
    start, size = stats
    out = data[:start] + b"".join(offsets)
    out += struct.pack("<BQQQI", 0x02, 20, summary_start, start, 0) + data[-8:]
    path.write_bytes(bytes(out))
    return path


def check_cut_ingest(data: bytes, c: int, tmp_path: Path, ingest_args: list[str]) -> None:
    """`rlivs ingest` of data[:c], an MCAP of foxglove images at 2 Hz read at `--fps 2 --frames-per-clip 4`
    (`ingest_args`): never an internal error (an exception fails the caller); exit 0 for the whole file, 2 (refused,
    nothing stored) when no image is complete before the cut, else 3 with every frame before the cut captioned:
    the whole clips of 4, then the frames after them as a last, short clip (one message per sample)."""
    import math

    from tests.helpers.cli import run_cli

    cut = tmp_path / f"cut-{c}.mcap"
    cut.write_bytes(data[:c])
    db = tmp_path / f"m-{c}.db"
    r = run_cli("ingest", cut, "--db", db, *ingest_args, "--stream", "cam")
    out = " ".join(r.output.split())
    m = messages_before(data, c)
    if c == len(data):
        assert r.exit_code == 0, out
    elif m == 0:
        assert r.exit_code == 2 and "truncated" in out and not db.exists(), (c, out)
        return
    else:
        assert r.exit_code == 3, (c, out)
        assert f"truncated input: {cut} (/cam/compressed) cannot be read past {(m - 1) / 2:.1f} s" in out, out
        assert f"holds clips 0..{math.ceil(m / 4) - 1}, all committed" in out, out
    rows = [json.loads(x) for x in run_cli("captions", "--db", db, "--json").output.strip().splitlines()]
    assert [x["t_start"] for x in rows] == [2.0 * k for k in range(math.ceil(m / 4))], (c, out)
