"""Robot recordings end to end with the tiny model: `rlivs ingest run.mcap --topic A --topic B` (one stream per
topic, clips timed by the header stamps), the topic listing when no topic is given, and `rlivs serve` ingesting a
recording (replayed at its recorded speed, or as fast as it decodes) into a memory that answers over HTTP."""

import json
from datetime import datetime

import pytest

pytest.importorskip("rosbags")
pytest.importorskip("mcap")

from tests.helpers.cli import run_cli  # noqa: E402
from tests.helpers.recordings import check_cut_ingest, write_foxglove_mcap, write_ros_bag  # noqa: E402

INGEST = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "6"]


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    return write_ros_bag(d / "run", "mcap", {"/front/image_raw": {"n": 20, "rate": 4.0, "encoding": "rgb8"},
                                             "/rear/compressed": {"n": 12, "rate": 2.0, "compressed": True}})


def test_ingest_a_ros2_mcap_two_topics_two_streams(two_cameras, tmp_path, tiny_dir):
    db = tmp_path / "m.db"
    r = run_cli("ingest", two_cameras, "--db", db, *INGEST, "--topic", "/front/image_raw", "--topic",
                "/rear/compressed")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in run_cli("captions", "--db", db, "--json").output.strip().splitlines()]
    by = {}
    for x in rows:
        by.setdefault(x["stream"], []).append(x)
    # /front: 20 messages at 4 Hz sampled at 2 fps = 10 frames = clips of 4, 4, 2; /rear: 12 at 2 Hz = 3 clips of 4
    assert sorted(by) == ["run.front.image_raw", "run.rear.compressed"]
    assert [x["t_start"] for x in by["run.front.image_raw"]] == pytest.approx([0.0, 2.0, 4.0], abs=1e-6)
    assert [x["t_start"] for x in by["run.rear.compressed"]] == pytest.approx([0.0, 2.0, 4.0], abs=1e-6)
    # the robot's clock: wall-clock times from the header stamps (stream time 0 = the first message's stamp)
    for x in rows:
        since = datetime.fromisoformat(x["wall_start"]) - datetime.fromisoformat(rows[0]["wall_start"])
        assert since.total_seconds() == pytest.approx(x["t_start"] - rows[0]["t_start"], abs=1e-3)
    # resumable like a video: a second run has nothing left to add
    r = run_cli("ingest", two_cameras, "--db", db, *INGEST, "--topic", "/front/image_raw", "--topic",
                "/rear/compressed")
    assert r.exit_code == 0 and r.output.count("already ingested up to clip 2") == 2, r.output


def test_ingest_without_a_topic_lists_them_and_a_bad_topic_is_named(two_cameras, tmp_path, sample_video):
    db = tmp_path / "m.db"
    r = run_cli("ingest", two_cameras, "--db", db, *INGEST)
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "2 image topics" in out and "/front/image_raw (sensor_msgs/msg/Image, 20 messages" in out
    assert "/rear/compressed (sensor_msgs/msg/CompressedImage, 12 messages" in out and "--topic" in out
    r = run_cli("ingest", two_cameras, "--db", db, *INGEST, "--topic", "/nope")
    assert r.exit_code == 2 and "no topic '/nope'" in " ".join(r.output.split())
    r = run_cli("ingest", sample_video, "--db", db, *INGEST, "--topic", "/front/image_raw")
    assert r.exit_code == 2 and "no source is a robot recording" in " ".join(r.output.split())
    assert not db.exists()  # refused before the memory was created


def test_ingest_a_plain_mcap_with_a_bad_message_exits_3_and_keeps_the_rest(tmp_path, tiny_dir):
    path = write_foxglove_mcap(tmp_path / "fox.mcap", n=8, rate=2.0, bad={1})  # its only image topic: no --topic
    db = tmp_path / "m.db"
    r = run_cli("ingest", path, "--db", db, *INGEST, "--stream", "cam")
    assert r.exit_code == 3, r.output
    assert "1 messages of /cam/compressed could not be decoded" in " ".join(r.output.split())
    rows = [json.loads(x) for x in run_cli("captions", "--db", db, "--json").output.strip().splitlines()]
    # the bad message's sample time (0.5 s) is served by the next good one (1.0 s): 8 samples, 2 clips of 4
    assert [(x["stream"], x["t_start"], x["t_end"]) for x in rows] == [("cam", 0.0, 2.0), ("cam", 2.0, 4.0)]


def _rows(db):
    return [json.loads(x) for x in run_cli("captions", "--db", db, "--json").output.strip().splitlines()]


def test_a_rosbags_mcap_without_statistics_is_ingested_by_topic(tmp_path, tiny_dir):
    """rosbags' ROS 2 MCAP without its Statistics record (as rosbags before 0.11 wrote them): listed with the real
    counts, and --topic is taken."""
    from tests.helpers.recordings import strip_statistics

    path = strip_statistics(write_ros_bag(tmp_path / "run", "mcap", {"/a/image": {"n": 8, "rate": 2.0},
                                                                    "/b/image": {"n": 4, "rate": 2.0}}))
    db = tmp_path / "m.db"
    r = run_cli("ingest", path, "--db", db, *INGEST)
    assert r.exit_code == 2 and "/a/image (sensor_msgs/msg/Image, 8 messages" in " ".join(r.output.split())
    r = run_cli("ingest", path, "--db", db, *INGEST, "--topic", "/a/image", "--stream", "a")
    assert r.exit_code == 0, r.output
    assert [(x["stream"], x["t_start"]) for x in _rows(db)] == [("a", 0.0), ("a", 2.0)]  # 8 at 2 Hz: 2 clips of 4


def test_misnamed_files_are_read_as_what_they_are_and_the_name_is_noted(tmp_path, tiny_dir, sample_video):
    db = tmp_path / "m.db"
    fox = tmp_path / "camera.bag"  # an MCAP file named like a ROS 1 bag
    fox.write_bytes(write_foxglove_mcap(tmp_path / "fox.mcap", n=8, rate=2.0).read_bytes())
    r = run_cli("ingest", fox, "--db", db, *INGEST, "--stream", "fox")
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "camera.bag is named like a ROS 1 bag but its first bytes say it is an MCAP file" in out
    video = tmp_path / "video.bag"  # a video named like a ROS 1 bag
    video.write_bytes(sample_video.read_bytes())
    r = run_cli("ingest", video, "--db", db, *INGEST, "--stream", "vid", "--max-clips", "1")
    assert r.exit_code == 0, r.output
    assert "video.bag is named like a ROS 1 bag but does not start like one" in " ".join(r.output.split())
    assert [(x["stream"], x["clip"]) for x in _rows(db)] == [("fox", 0), ("fox", 1), ("vid", 0)]


def test_zero_stamps_say_the_stream_runs_on_log_time(tmp_path, tiny_dir):
    path = write_foxglove_mcap(tmp_path / "z.mcap", n=4, rate=2.0, zero_stamps=True, log_lag=7.0)
    r = run_cli("ingest", path, "--db", tmp_path / "m.db", *INGEST)
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "(log time of /cam/compressed: its header stamps are zero)" in out and "header stamps)" not in out


@pytest.fixture(scope="module")
def cut_source(tmp_path_factory):
    """A plain MCAP of 10 images at 2 Hz in small chunks (one or two images each), for cutting."""
    return write_foxglove_mcap(tmp_path_factory.mktemp("cut") / "rec.mcap", n=10, rate=2.0, chunk_size=900)


def test_ingest_of_a_cut_recording_keeps_every_frame_before_the_cut(cut_source, tmp_path, tiny_dir):
    """A handful of cuts through `rlivs ingest` (tests/unit/test_recording_cuts.py fuzzes every cut through the
    reader; tests/slow/test_recording_cuts_cli.py every cut through the CLI): inside the first chunk (nothing
    read), inside a MessageIndex record (struct.error in the mcap library), right after a chunk, inside the
    summary (every image read, the end missing), and the whole file."""
    from tests.helpers.recordings import mcap_records

    data = cut_source.read_bytes()
    recs = mcap_records(data)
    chunks = [(s, e) for s, e, op, _ in recs if op == 0x06]
    index = [(s, e) for s, e, op, _ in recs if op == 0x07]
    summary_start = next(s for s, _, op, _ in recs if op == 0x0F)  # after DataEnd
    cuts = [chunks[0][0] + 20, index[2][0] + 12, chunks[3][1], summary_start + 30, len(data)]
    for c in cuts:
        check_cut_ingest(data, c, tmp_path, INGEST)


def test_the_foxglove_export_lines_captions_up_with_the_recordings_images(tmp_path, tiny_dir):
    """A recording whose log times are an hour ahead of its header stamps (recorded on a machine with another
    clock): exported by default on log time, each caption's log time falls inside its clip's images' log times in
    the recording (read back side by side with the mcap reader); --time header puts them at the stamps instead.
    The export's own Metadata record says which."""
    from mcap.reader import make_reader

    from tests.helpers.recordings import T0_NS

    lag = 3600.25
    src = write_foxglove_mcap(tmp_path / "run.mcap", n=10, rate=2.0, log_lag=lag)
    db = tmp_path / "m.db"
    assert run_cli("ingest", src, "--db", db, *INGEST, "--stream", "cam").exit_code == 0
    with open(src, "rb") as f:
        image_logs = [m.log_time for _, _, m in make_reader(f).iter_messages(topics=["/cam/compressed"])]
    stamps = [T0_NS + i * 500_000_000 for i in range(10)]
    assert image_logs == [t + round(lag * 1e9) for t in stamps]  # the two clocks, as written
    clips = [(4 * k, min(9, 4 * k + 3)) for k in range(3)]  # 10 images at 2 fps: clips of images 0-3, 4-7, 8-9
    for time, images in (("log", image_logs), ("header", stamps)):
        out = tmp_path / f"{time}.mcap"
        chosen = ["--time", time] if time != "log" else []  # log: the default
        r = run_cli("memory", "export", out, "--db", db, "--format", "mcap", *chosen)
        assert r.exit_code == 0, r.output
        with open(out, "rb") as f:
            reader = make_reader(f)
            [meta] = list(reader.iter_metadata())
            captions = [m.log_time for _, _, m in reader.iter_messages(topics=["/rlivs/cam/captions"])]
        assert meta.name == "rlivs.export" and meta.metadata["time"] == time
        assert meta.metadata["cam.time"].startswith(f"{'log time' if time == 'log' else 'header stamps'} of /cam/")
        assert meta.metadata["cam.log_offset_ns"] == (str(round(lag * 1e9)) if time == "log" else "0")
        assert len(captions) == 3
        for t, (first, last) in zip(captions, clips):  # inside its clip's images (to the microsecond REAL holds)
            assert images[first] - 1_000 <= t <= images[last] + 1_000, (time, t, images[first], images[last])
        if time == "header":  # the other timeline is an hour away: nothing there lines up with the images
            assert all(t < image_logs[0] - 3_000 * 10**9 for t in captions)
    r = run_cli("memory", "export", tmp_path / "x.jsonl", "--db", db, "--time", "log")
    assert r.exit_code == 2 and "--time applies to --format mcap" in " ".join(r.output.split())
    r = run_cli("memory", "export", tmp_path / "x.mcap", "--db", db, "--format", "mcap", "--time", "wall")
    assert r.exit_code == 2 and "time 'wall' is unknown: use log" in " ".join(r.output.split())
