"""Small robot recordings for the tests, written with the readers' own libraries: ROS 1 bags and ROS 2 bags (sqlite3
and MCAP storage) with rosbags' writers, plain MCAP files (foxglove protobuf or JSON images) with mcap's writer.

Frame i of a recording is a solid image of value `value(i)` (a JPEG of it when compressed), stamped at
`T0 + i / rate` seconds (unix time); log times are the stamps plus `log_lag` seconds.
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


def write_foxglove_mcap(path: Path, topic: str = "/cam/compressed", n: int = 20, rate: float = 4.0,
                        encoding: str = "protobuf", bad: set[int] = frozenset(), chunk_size: int = 1024) -> Path:
    """A plain MCAP file (no ROS profile) of foxglove.CompressedImage JPEGs, protobuf or JSON encoded, in small
    chunks (so that a cut-off copy keeps most of them)."""
    from mcap.writer import Writer

    with open(path, "wb") as f:
        if encoding == "protobuf":
            from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
            from mcap_protobuf.writer import Writer as ProtobufWriter

            with ProtobufWriter(f, chunk_size=chunk_size) as w:
                for i in range(n):
                    ns = _stamp(i, rate)
                    m = CompressedImage(format="jpeg", data=b"garbage" if i in bad else jpeg(value(i)), frame_id="cam")
                    m.timestamp.seconds, m.timestamp.nanos = ns // 10**9, ns % 10**9
                    w.write_message(topic, m, log_time=ns, publish_time=ns)
            return path
        w = Writer(f, chunk_size=chunk_size)
        w.start(profile="", library="rlivs-tests")
        sid = w.register_schema(name="foxglove.CompressedImage", encoding="jsonschema", data=b"{}")
        cid = w.register_channel(topic=topic, message_encoding="json", schema_id=sid)
        for i in range(n):
            ns = _stamp(i, rate)
            body = {"timestamp": {"sec": ns // 10**9, "nsec": ns % 10**9}, "frame_id": "cam", "format": "jpeg",
                    "data": base64.b64encode(b"garbage" if i in bad else jpeg(value(i))).decode()}
            w.add_message(channel_id=cid, log_time=ns, publish_time=ns, data=json.dumps(body).encode())
        w.finish()
    return path
