"""Robot recordings end to end with the tiny model: `rlivs ingest run.mcap --topic A --topic B` (one stream per
topic, clips timed by the header stamps), the topic listing when no topic is given, and `rlivs serve` ingesting a
recording (replayed at its recorded speed, or as fast as it decodes) into a memory that answers over HTTP."""

import json
from datetime import datetime

import pytest

pytest.importorskip("rosbags")
pytest.importorskip("mcap")

from tests.helpers.cli import run_cli  # noqa: E402
from tests.helpers.recordings import write_foxglove_mcap, write_ros_bag  # noqa: E402

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
