"""Robot recordings as frame sources (runtime/sources/bag.py): ROS 1 bags, ROS 2 bags (sqlite3 and MCAP storage) and
plain MCAP files written by the libraries' own writers (tests/helpers/recordings.py), read back frame by frame:
pixel values, header-stamp times, the clock origin, the sampling rule, topic listing, bad and truncated input."""

import io
import math

import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("mcap")

from rlivs.runtime.errors import UserError  # noqa: E402
from rlivs.runtime.sources import open_source  # noqa: E402
from rlivs.runtime.sources.bag import (  # noqa: E402
    BagSource, is_recording, list_image_topics, name_note, recording_format, topic_stream_name,
)
from tests.helpers.recordings import (  # noqa: E402
    SUMMARIES, T0, strip_statistics, value, write_foxglove_mcap, write_ros_bag,
)

RATE = 4.0  # messages per second in the recordings below
N = 12


def _expected(fps: float, n: int = N, rate: float = RATE, start: float = 0.0):
    """(frame index) of sample k under the package rule: the first message at or after start + k / fps."""
    out, k = [], 0
    while True:
        target = start + k / fps
        i = math.ceil(target * rate - 1e-6)
        if i >= n:
            return out
        out.append(i)
        k += 1


def _make(kind, tmp_path, **spec):
    spec = {"n": N, "rate": RATE, **spec}
    if kind in ("protobuf", "json"):
        return write_foxglove_mcap(tmp_path / f"fox-{kind}.mcap", n=spec["n"], rate=spec["rate"], encoding=kind,
                                   bad=spec.get("bad", set())), "/cam/compressed"
    return write_ros_bag(tmp_path / (f"{kind}.bag" if kind == "ros1" else kind), kind, {"/cam/image": spec}), "/cam/image"


def _grey(frame) -> float:
    return float(frame.image.astype(np.float32).mean())


@pytest.mark.parametrize("kind,compressed,encoding", [
    ("ros1", False, "rgb8"), ("ros1", True, None), ("db3", False, "bgr8"), ("db3", False, "mono8"),
    ("mcap", False, "yuv422"), ("mcap", True, None), ("protobuf", True, None), ("json", True, None),
])
def test_frames_values_and_stamps_of_every_kind(kind, compressed, encoding, tmp_path):
    path, topic = _make(kind, tmp_path, compressed=compressed, encoding=encoding or "rgb8")
    src = open_source(path, fps=3.0, topic=topic)
    assert isinstance(src, BagSource) and src.topic == topic
    assert src.clock_origin == pytest.approx(T0, abs=1e-6)  # the first message's header stamp, unix seconds
    frames = list(src)
    want = _expected(3.0)
    assert [round(f.t, 6) for f in frames] == [round(i / RATE, 6) for i in want]  # stamps relative to the origin
    assert all(f.image.shape == (16, 24, 3) and f.image.dtype == np.uint8 for f in frames)
    tol = 3.0 if (compressed or encoding == "yuv422") else 0.0  # JPEG and YUV round-trips
    assert [_grey(f) for f in frames] == pytest.approx([value(i) for i in want], abs=tol)
    assert src.decode_errors == 0


def test_bgr_is_turned_into_rgb(tmp_path):
    from rlivs.runtime.sources.bag import _ImageMsg, decode_image

    px = np.zeros((2, 2, 3), np.uint8)
    px[..., 0] = 200  # blue in BGR order
    out = decode_image(_ImageMsg(0, False, "bgr8", 2, 2, 6, False, px.tobytes()))
    assert out[..., 2].min() == 200 and out[..., 0].max() == 0
    padded = np.zeros((2, 8), np.uint8)  # step 8 > 2 * 3: the row padding is dropped
    padded[:, :6] = px.reshape(2, 6)
    assert np.array_equal(decode_image(_ImageMsg(0, False, "bgr8", 2, 2, 8, False, padded.tobytes())), out)


def test_every_raw_encoding_against_a_known_answer():
    from rlivs.runtime.sources.bag import _ImageMsg, decode_image

    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [128, 128, 128]]], np.uint8)  # (2, 2, 3)
    alpha = np.concatenate([rgb, np.full((2, 2, 1), 7, np.uint8)], axis=2)
    grey = np.array([[10, 200], [90, 255]], np.uint8)
    cases = {
        "rgb8": (rgb.tobytes(), 6, False, rgb), "bgr8": (rgb[..., ::-1].tobytes(), 6, False, rgb),
        "rgba8": (alpha.tobytes(), 8, False, rgb), "bgra8": (alpha[..., [2, 1, 0, 3]].tobytes(), 8, False, rgb),
        "mono8": (grey.tobytes(), 2, False, np.repeat(grey[..., None], 3, 2)),
        "mono16": ((grey.astype(np.uint16) << 8).astype("<u2").tobytes(), 4, False, np.repeat(grey[..., None], 3, 2)),
        "16UC1": ((grey.astype(np.uint16) << 8).astype(">u2").tobytes(), 4, True, np.repeat(grey[..., None], 3, 2)),
    }
    for enc, (data, step, big, want) in cases.items():
        assert np.array_equal(decode_image(_ImageMsg(0, False, enc, 2, 2, step, big, data)), want), enc
    # YUV 4:2:2 of a flat grey (Y = 126 limited range, U = V = 128) is grey in both byte orders
    uyvy = np.tile(np.array([128, 126], np.uint8), 4).tobytes()
    yuyv = np.tile(np.array([126, 128], np.uint8), 4).tobytes()
    for enc, data in (("yuv422", uyvy), ("uyvy", uyvy), ("yuv422_yuy2", yuyv), ("yuyv", yuyv)):
        out = decode_image(_ImageMsg(0, False, enc, 2, 2, 4, False, data))
        assert out.shape == (2, 2, 3) and np.abs(out.astype(int) - 128).max() <= 2, enc
    for enc, data, message in (("32FC1", b"\0" * 16, "not supported"), ("rgb8", b"\0" * 5, "needs 12 bytes")):
        with pytest.raises(ValueError, match=message):
            decode_image(_ImageMsg(0, False, enc, 2, 2, 0, False, data))


def test_resuming_gives_the_frames_of_a_straight_read(tmp_path):
    path, topic = _make("mcap", tmp_path)
    src = BagSource(path, topic, fps=2.0)
    straight = [(f.t, _grey(f)) for f in src]
    resumed = src.starting_at(1.5)
    assert resumed.clock_origin == src.clock_origin  # the origin is the recording's, not the resume point's
    assert [(f.t, _grey(f)) for f in resumed] == [x for x in straight if x[0] >= 1.5 - 1e-6]
    ended = BagSource(path, topic, fps=2.0, end_time=1.0)
    assert [f.t for f in ended] == pytest.approx([0.0, 0.5], abs=1e-6)


def test_topics_are_listed_with_counts_and_rates(tmp_path):
    path = write_ros_bag(tmp_path / "two.bag", "ros1", {"/front/image_raw": {"n": 9, "rate": 4.0},
                                                          "/rear/compressed": {"n": 5, "rate": 2.0, "compressed": True}})
    topics = list_image_topics(path)
    assert [(t.topic, t.msgtype, t.count) for t in topics] == [
        ("/front/image_raw", "sensor_msgs/msg/Image", 9), ("/rear/compressed", "sensor_msgs/msg/CompressedImage", 5)]
    assert [t.rate_hz for t in topics] == pytest.approx([4.0, 2.0], rel=1e-6)  # over each topic's own span
    with pytest.raises(UserError, match=r"2 image topics: /front/image_raw \(sensor_msgs/msg/Image, 9 messages"):
        BagSource(path, None)  # several image topics: the user picks
    with pytest.raises(UserError, match="no topic '/nope'.*/rear/compressed"):
        BagSource(path, "/nope")
    with pytest.raises(UserError, match="'/rosout_count' .* carries std_msgs/msg/String, not images"):
        BagSource(path, "/rosout_count")
    assert topic_stream_name("/front/image_raw") == "front.image_raw"
    assert is_recording(path) and is_recording(path.with_suffix(".mcap")) and not is_recording(tmp_path / "a.mp4")


@pytest.mark.parametrize("kind", ["db3", "mcap"])
def test_a_rosbag2_folder_and_the_only_image_topic(kind, tmp_path):
    path, _ = _make(kind, tmp_path)
    src = open_source(path.parent, fps=1.0)  # the folder with metadata.yaml (rosbags); its only image topic
    assert src.topic == "/cam/image" and [f.t for f in src] == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)
    with pytest.raises(UserError, match="--topic /cam/image given, but .* is not a robot recording"):
        open_source(tmp_path / "clip.npy", fps=1.0, topic="/cam/image")


@pytest.mark.parametrize("kind", ["ros1", "mcap", "protobuf"])
def test_undecodable_messages_are_skipped_and_counted(kind, tmp_path):
    bad = {2, 5}
    path, topic = _make(kind, tmp_path, bad=bad, compressed=kind != "mcap")
    src = BagSource(path, topic, fps=RATE)  # every message is a sample target
    frames = list(src)
    good = [i for i in range(N) if i not in bad]
    # a bad message's target is served by the next good one (the first frame at or after it)
    assert sorted({round(f.t * RATE) for f in frames}) == good
    assert [_grey(f) for f in frames][:2] == pytest.approx([value(0), value(1)], abs=3)
    assert src.decode_errors == len(bad)


def test_a_topic_without_decodable_images_is_refused_naming_what_was_found(tmp_path):
    path, topic = _make("db3", tmp_path, bad=set(range(N)))  # every message 32FC1 (a depth encoding)
    with pytest.raises(UserError, match=r"topic '/cam/image' .* none of its 12 messages could be decoded "
                                        r"\(encodings/formats \['32FC1'\].*not supported"):
        BagSource(path, topic)


def test_a_truncated_mcap_yields_its_frames_then_says_so(tmp_path):
    path, topic = _make("protobuf", tmp_path, n=40)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    [t] = list_image_topics(cut)  # no summary: counted by reading it as a stream
    assert 10 < t.count < 40
    src = BagSource(cut, topic, fps=RATE)
    frames = list(src)  # the pass ends at the cut, saying why
    assert src.truncated and "truncated" in src.truncated and f"past {(t.count - 1) / RATE:.1f} s" in src.truncated
    assert [round(f.t * RATE) for f in frames] == list(range(t.count))  # every message before the cut
    assert [_grey(f) for f in frames[-2:]] == pytest.approx([value(t.count - 2), value(t.count - 1)], abs=3)


def test_a_truncated_ros1_bag_and_non_recordings_are_refused(tmp_path):
    path, topic = _make("ros1", tmp_path)
    cut = tmp_path / "cut.bag"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="cannot be read as a ROS 1 bag .*rosbag reindex"):
        BagSource(cut, topic)
    fake = tmp_path / "fake.mcap"
    fake.write_bytes(b"hello world, not mcap")
    with pytest.raises(UserError, match=r"fake.mcap is not a robot recording: it does not start like .*b'hello wor"):
        BagSource(fake)


def test_a_paced_replay_keeps_the_recorded_speed_and_stops_at_once(tmp_path):
    import threading
    import time

    path, topic = _make("protobuf", tmp_path)  # 12 messages at 4 Hz: 2.75 s recorded
    t0 = time.monotonic()
    frames = list(BagSource(path, topic, fps=RATE, replay_speed=5.0))
    took = time.monotonic() - t0
    assert len(frames) == N and took >= 2.75 / 5.0  # not before the recorded time allows

    class Stop(threading.Event):  # notes every wait: the pause for the next frame is a wait on the stop event
        waits: list = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            return super().wait(timeout)

    stop = Stop()
    paced = iter(BagSource(path, topic, fps=RATE, replay_speed=0.1, stop=stop))  # 10x slower than recorded
    next(paced)
    stop.set()
    before = len(stop.waits)
    assert list(paced) == []  # nothing after the stop
    # the 2.5 s pause for the next frame was a wait on the (set) stop event, which returns at once: no sleep
    assert len(stop.waits) == before + 1 and stop.waits[-1] >= 2.0, stop.waits


def _summary(path):
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        return make_reader(f).get_summary()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "unchunked"])
@pytest.mark.parametrize("summary", SUMMARIES)
def test_an_mcap_without_statistics_or_summary_is_counted_and_read(summary, chunked, tmp_path):
    """mcap's Writer leaving out the Statistics record (use_statistics=False), the message indexes, or the whole
    summary: every topic is listed with its real count, and --topic reads it."""
    path = write_foxglove_mcap(tmp_path / "x.mcap", n=N, rate=RATE, summary=summary, chunked=chunked)
    written = _summary(path)
    assert (written is None) == (summary == "none")  # the file is what it says
    assert (written is not None and written.statistics is not None) == (summary == "full")
    [t] = list_image_topics(path)
    assert (t.topic, t.msgtype, t.count) == ("/cam/compressed", "foxglove.CompressedImage", N)
    assert t.rate_hz == pytest.approx(RATE)
    src = BagSource(path, "/cam/compressed", fps=RATE)
    assert src.duration == pytest.approx(N / RATE)  # to the last message, plus one sample interval
    frames = list(src)
    assert [round(f.t * RATE) for f in frames] == list(range(N)) and src.truncated is None
    assert [_grey(f) for f in frames] == pytest.approx([value(i) for i in range(N)], abs=3)


def test_a_rosbags_mcap_without_statistics_lists_its_counts_and_takes_topic(tmp_path):
    """rosbags' ROS 2 MCAP writer, its Statistics record taken out as rosbags before 0.11 wrote it: the counts come
    from the message indexes (they were all 0 and --topic was refused)."""
    path = write_ros_bag(tmp_path / "rb", "mcap", {"/front/image_raw": {"n": 9, "rate": 4.0},
                                                   "/rear/compressed": {"n": 5, "rate": 2.0, "compressed": True}})
    strip_statistics(path)
    summary = _summary(path)
    assert summary.statistics is None and summary.chunk_indexes  # no Statistics; the chunks are indexed
    assert [(t.topic, t.count) for t in list_image_topics(path)] == [("/front/image_raw", 9), ("/rear/compressed", 5)]
    src = BagSource(path, "/rear/compressed", fps=2.0)
    assert [round(f.t * 2) for f in src] == list(range(5))
    with pytest.raises(UserError, match=r"2 image topics: /front/image_raw \(sensor_msgs/msg/Image, 9 messages"):
        BagSource(path)


def test_the_format_comes_from_the_first_bytes_and_a_disagreeing_name_is_said(tmp_path, sample_video):
    from rlivs.runtime.sources.file import VideoFileSource

    mcap = write_foxglove_mcap(tmp_path / "fox.mcap", n=N, rate=RATE)
    ros1 = write_ros_bag(tmp_path / "r1.bag", "ros1", {"/cam/image": {"n": N, "rate": RATE}})
    db3 = write_ros_bag(tmp_path / "r2", "db3", {"/cam/image": {"n": N, "rate": RATE}})
    cases = {"mcap-named.bag": (mcap, "mcap", "/cam/compressed"), "ros1-named.mcap": (ros1, "ros1", "/cam/image"),
             "db3-named.bag": (db3, "db3", "/cam/image"), "ros1-named.mp4": (ros1, "ros1", "/cam/image")}
    for name, (real, fmt, topic) in cases.items():
        misnamed = tmp_path / name
        misnamed.write_bytes(real.read_bytes())
        assert recording_format(misnamed) == fmt and is_recording(misnamed)
        assert "its first bytes say it is" in (name_note(misnamed) or "") or "by its first bytes" in name_note(misnamed)
        src = open_source(misnamed, fps=RATE, topic=topic)  # read as what it is
        assert isinstance(src, BagSource) and [round(f.t * RATE) for f in src] == list(range(N)), name
    assert name_note(mcap) is None and name_note(ros1) is None and name_note(db3.parent) is None
    # a video named like a recording is read as the video it is, and says so
    video = tmp_path / "video.bag"
    video.write_bytes(sample_video.read_bytes())
    assert recording_format(video) is None and "does not start like one" in name_note(video)
    assert isinstance(open_source(video, fps=1.0), VideoFileSource)
    with pytest.raises(UserError, match="--topic /cam given, but .* is not a robot recording .*does not start like"):
        open_source(video, fps=1.0, topic="/cam")
    # neither a recording nor a video: refused, both said
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"minutes of the meeting\n" * 50)
    with pytest.raises(UserError, match=r"not a readable video.*junk.bag is named like a ROS 1 bag but does not start"):
        open_source(junk, fps=1.0)
    # a file cut off inside its magic, or empty, follows its name: refused as the recording it was meant to be
    for n in (0, 3):
        cut = tmp_path / f"cut{n}.mcap"
        cut.write_bytes(mcap.read_bytes()[:n])
        assert recording_format(cut) == "mcap"
        with pytest.raises(UserError, match="is not a readable MCAP file: it (is empty|ends after 3 bytes)"):
            BagSource(cut)


def test_zero_header_stamps_run_the_topic_on_log_time_and_say_so(tmp_path):
    lag = 5.0
    stamped = BagSource(write_foxglove_mcap(tmp_path / "s.mcap", n=N, rate=RATE, log_lag=lag), fps=RATE)
    assert stamped.time_basis == "header" and stamped.clock_kind == "header stamps of /cam/compressed"
    assert stamped.clock_origin == pytest.approx(T0, abs=1e-6) and stamped.log_offset_ns == round(lag * 1e9)
    zero = BagSource(write_foxglove_mcap(tmp_path / "z.mcap", n=N, rate=RATE, log_lag=lag, zero_stamps=True),
                     fps=RATE)
    assert zero.time_basis == "log" and zero.log_offset_ns == 0
    assert zero.clock_kind == "log time of /cam/compressed: its header stamps are zero"
    assert "header stamps)" not in zero.clock_kind
    assert zero.clock_origin == pytest.approx(T0 + lag, abs=1e-6)  # the first log time
    assert [round(f.t * RATE) for f in zero] == list(range(N))
    assert zero.stream_clock == {"kind": "recording", "basis": "log", "topic": "/cam/compressed", "log_offset_ns": 0}


def test_an_image_claiming_a_huge_size_is_an_undecodable_message():
    """A damaged PNG header declaring 60000 x 60000 pixels: Pillow refuses it as a decompression bomb; the reader
    counts it as one undecodable message (ValueError) instead of letting Pillow's error through."""
    import struct
    import zlib

    from rlivs.runtime.sources.bag import _ImageMsg, decode_image

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())  # signature (8), IHDR length (4), "IHDR", width, height, ..., its CRC at 29
    png[16:24] = struct.pack(">II", 60000, 60000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    png = bytes(png)
    with pytest.raises(ValueError, match="DecompressionBombError"):
        decode_image(_ImageMsg(0, True, "png", data=png))
